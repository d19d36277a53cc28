"""The dead-letter queue: ``faena dlq list``, ``faena dlq retry`` and ``faena dlq purge``.

Like the other admin commands, these work with ``-A`` or with only a broker URL.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence

import click
from rich.console import Console
from rich.table import Table

from faena.app.core import Faena
from faena.cli.common import (
    BadUsage,
    CommandFailed,
    age,
    app_option,
    broker_option,
    json_option,
    open_app,
    queues_option,
    stdout,
    yes_option,
)
from faena.contracts.broker import DeadLetter
from faena.foundation.exceptions import BrokerError, BrokerUnavailable, SerializationError
from faena.model.message import decode_message


# -- dead letters ---------------------------------------------------------------------------------
@click.group()
def dlq() -> None:
    """The dead-letter queue: messages that failed for good, or that no worker could run."""


@dlq.command("list")
@app_option(required=False)
@broker_option
@queues_option(required=False, help_text="Only dead letters from these queues.")
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=50,
    show_default=True,
    envvar="FAENA_DLQ_LIMIT",
    show_envvar=True,
    help="Show at most this many, newest first.",
)
@json_option
@click.pass_context
def dlq_list(
    ctx: click.Context,
    app_spec: str | None,
    broker_url: str | None,
    queues: tuple[str, ...],
    limit: int,
    as_json: bool,
) -> None:
    """List dead letters, newest first: id, queue, task, reason, detail, deliveries, when."""
    with open_app(ctx, app_spec, broker_url) as app:
        letters, total = asyncio.run(_dead_letters(app, queues, limit))
        now = app.settings.clock.time()
        if as_json:
            rows = [
                {
                    "id": d.id,
                    "queue": d.queue,
                    "task": _task_name(d),
                    "reason": d.reason,
                    "detail": d.detail,
                    "deliveries": d.deliveries,
                    "dead_at": d.dead_at,
                }
                for d in letters
            ]
            click.echo(json.dumps({"total": total, "dead_letters": rows}, indent=2))
            return
        console = stdout()
        if not letters:
            where = f" in {', '.join(queues)}" if queues else ""
            console.print(f"No dead letters{where}.")
            return
        if console.width >= WIDE_TABLE:
            console.print(_dead_letter_table(letters, now))
        else:
            _print_dead_letter_list(console, letters, now)
        if total > len(letters):
            console.print(f"Showing {len(letters)} of {total}; use --limit to see more.")


WIDE_TABLE = 120
"""Below this many columns a dead-letter table is unreadable; two lines per letter are not."""


def _dead_letter_table(letters: Sequence[DeadLetter], now: float) -> Table:
    table = Table(title="Dead letters", title_justify="left")
    table.add_column("id", no_wrap=True, min_width=36)
    table.add_column("queue", no_wrap=True)
    table.add_column("task", no_wrap=True)
    table.add_column("reason", no_wrap=True)
    table.add_column("detail", overflow="fold", ratio=1)
    table.add_column("deliveries", justify="right")
    table.add_column("when", no_wrap=True)
    for d in letters:
        table.add_row(
            d.id,
            d.queue,
            _task_name(d),
            d.reason,
            d.detail,
            str(d.deliveries),
            age(now - d.dead_at),
        )
    return table


def _print_dead_letter_list(console: Console, letters: Sequence[DeadLetter], now: float) -> None:
    console.print("Dead letters (newest first)")
    for d in letters:
        console.print(f"[bold]{d.id}[/]  {d.queue}  {_task_name(d)}")
        console.print(
            f"  {d.reason}, {age(now - d.dead_at)}, {d.deliveries} "
            f"deliver{'y' if d.deliveries == 1 else 'ies'}: {d.detail}",
            markup=False,
        )


async def _dead_letters(
    app: Faena, queues: Sequence[str], limit: int
) -> tuple[list[DeadLetter], int]:
    stats = await app.broker.stats()
    total = sum(s.dead for s in stats if not queues or s.queue in queues)
    if not queues:
        return await app.broker.dead_letters(limit), total
    merged: list[DeadLetter] = []
    for queue in queues:
        merged += await app.broker.dead_letters(limit, queue)
    merged.sort(key=lambda d: d.dead_at, reverse=True)
    return merged[:limit], total


def _task_name(letter: DeadLetter) -> str:
    try:
        return decode_message(letter.body).task
    except SerializationError:
        return "(unreadable message)"


def _ids_or_all(ids: tuple[str, ...], all_: bool) -> list[str] | None:
    if all_ and ids:
        raise BadUsage("give dead-letter ids or --all, not both")
    if not all_ and not ids:
        raise BadUsage("give the ids of dead letters (see `faena dlq list`), or --all")
    return None if all_ else list(dict.fromkeys(ids))


all_option = click.option(
    "--all", "all_", is_flag=True, help="Every dead letter. (Deliberately no environment variable.)"
)


@dlq.command("retry")
@click.argument("ids", nargs=-1, metavar="[ID]...")
@all_option
@app_option(required=False)
@broker_option
@click.pass_context
def dlq_retry(
    ctx: click.Context,
    ids: tuple[str, ...],
    all_: bool,
    app_spec: str | None,
    broker_url: str | None,
) -> None:
    """Put dead letters back in their queues, to run again.

    \b
    Examples:
      faena dlq retry 3f0c...-...  7a1b...-...
      faena dlq retry --all
    """
    chosen = _ids_or_all(ids, all_)
    with open_app(ctx, app_spec, broker_url) as app:
        if chosen is None:
            count = asyncio.run(app.broker.requeue_dead(None))
            click.echo(f"Requeued {count} dead letter(s).")
            left = sum(s.dead for s in asyncio.run(app.broker.stats()))
            if left:
                click.echo(
                    f"{left} dead letter(s) left: a message with the same id is waiting or "
                    "running again (`faena dlq list` shows them)."
                )
            return
        done, missing, failed = asyncio.run(_each(app, chosen, retry=True))
        # Still dead: a letter left as its id is in use again (maybe beside others requeued).
        tried = [i for i in chosen if i not in failed]
        in_use = [i for i in tried if app.broker.locate(i) == "dead"]
    _report(done, [i for i in missing if i not in in_use], "Requeued", in_use, failed)


@dlq.command("purge")
@click.argument("ids", nargs=-1, metavar="[ID]...")
@all_option
@yes_option
@app_option(required=False)
@broker_option
@click.pass_context
def dlq_purge(
    ctx: click.Context,
    ids: tuple[str, ...],
    all_: bool,
    yes: bool,
    app_spec: str | None,
    broker_url: str | None,
) -> None:
    """Delete dead letters for good.

    \b
    Examples:
      faena dlq purge 3f0c...-... --yes
      faena dlq purge --all
    """
    chosen = _ids_or_all(ids, all_)
    with open_app(ctx, app_spec, broker_url) as app:
        if chosen is None:
            total = sum(s.dead for s in asyncio.run(app.broker.stats()))
            if total == 0:
                click.echo("The dead-letter queue is empty.")
                return
            if not yes:
                click.confirm(f"Delete all {total} dead letter(s) for good?", abort=True)
            count = asyncio.run(app.broker.purge_dead(None))
            click.echo(f"Deleted {count} dead letter(s).")
            return
        if not yes:
            click.confirm(f"Delete {len(chosen)} dead letter(s) for good?", abort=True)
        done, missing, failed = asyncio.run(_each(app, chosen, retry=False))
    _report(done, missing, "Deleted", failed=failed)


async def _each(
    app: Faena, ids: Sequence[str], *, retry: bool
) -> tuple[int, list[str], dict[str, str]]:
    """Requeue or delete each id on its own, so the ones not done can be named: how many
    letters were (an id may be dead in several queues), the ids of none, and the ids the
    broker refused (in some queue: the others were done), each with its error. A broker that
    does not answer ends the command."""
    total = 0
    missing: list[str] = []
    failed: dict[str, str] = {}
    for job_id in ids:
        try:
            if retry:
                done = await app.broker.requeue_dead([job_id])
            else:
                done = await app.broker.purge_dead([job_id])
        except BrokerUnavailable:
            raise
        except BrokerError as error:
            failed[job_id] = str(error)
            continue
        total += done
        if not done:
            missing.append(job_id)
    return total, missing, failed


def _report(
    done: int,
    missing: Sequence[str],
    verb: str,
    in_use: Sequence[str] = (),
    failed: Mapping[str, str] | None = None,
) -> None:
    if failed:
        click.echo(
            f"{verb} {done} dead letter(s), besides what the errors below say of "
            f"{len(failed)} id(s) the broker refused in some queue."
        )
    else:
        click.echo(f"{verb} {done} dead letter(s).")
    problems = []
    if in_use:
        problems.append(
            f"not requeued, as a message with the same id is waiting or running again: "
            f"{', '.join(in_use)} (let it end, then retry the dead letter)"
        )
    if missing:
        problems.append(
            f"not in the dead-letter queue: {', '.join(missing)} (see `faena dlq list`)"
        )
    by_error: dict[str, list[str]] = {}
    for job_id, error in (failed or {}).items():
        by_error.setdefault(error, []).append(job_id)
    for error, job_ids in by_error.items():  # (one refused queue fails every id alike)
        problems.append(f"{', '.join(job_ids)}: {error}")
    if problems:
        raise CommandFailed("; ".join(problems))

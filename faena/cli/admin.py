"""Administration of queues: ``faena status`` and ``faena purge``.

Each command works with ``-A`` (the app's broker) or without it (``--broker`` /
``FAENA_BROKER_URL`` / the default SQLite file), so an operator needs no application code.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

import click
from rich.table import Table

from faena.app.core import Faena
from faena.cli.common import (
    age,
    app_option,
    broker_option,
    json_option,
    known_queues,
    open_app,
    queues_option,
    stdout,
    yes_option,
)
from faena.contracts.broker import QueueStats, WorkerInfo
from faena.foundation.util import redacted


# -- status ---------------------------------------------------------------------------------------
@click.command()
@app_option(required=False)
@broker_option
@json_option
@click.pass_context
def status(ctx: click.Context, app_spec: str | None, broker_url: str | None, as_json: bool) -> None:
    """Show queues (ready, scheduled, leased, dead) and live workers.

    \b
    Examples:
      faena status -A shop.tasks
      faena status --broker sqlite:///faena.sqlite3
    """
    with open_app(ctx, app_spec, broker_url) as app:
        stats, workers = asyncio.run(_status(app))
        now = app.settings.clock.time()
        if app_spec:
            present = {s.queue for s in stats}
            stats += [QueueStats(queue=q) for q in known_queues(app) if q not in present]
        stats.sort(key=lambda s: s.queue)
        if as_json:
            click.echo(json.dumps(_status_json(app, stats, workers, now), indent=2))
            return
        _print_status(app, stats, workers, now)


async def _status(app: Faena) -> tuple[list[QueueStats], list[WorkerInfo]]:
    return await app.broker.stats(), await app.broker.workers()


def _status_json(
    app: Faena, stats: Sequence[QueueStats], workers: Sequence[WorkerInfo], now: float
) -> dict[str, Any]:
    return {
        "broker": redacted(app.broker_url),
        "queues": [
            {
                "queue": s.queue,
                "ready": s.ready,
                "scheduled": s.scheduled,
                "leased": s.leased,
                "dead": s.dead,
            }
            for s in stats
        ],
        "workers": [
            {
                "id": w.id,
                "hostname": w.hostname,
                "pid": w.pid,
                "pool": w.pool,
                "concurrency": w.concurrency,
                "queues": list(w.queues),
                "processed": w.processed,
                "running": w.running,
                "heartbeat_age_s": round(max(0.0, now - w.heartbeat_at), 3),
            }
            for w in workers
        ],
    }


def _print_status(
    app: Faena, stats: Sequence[QueueStats], workers: Sequence[WorkerInfo], now: float
) -> None:
    console = stdout()
    console.print(f"Broker: {redacted(app.broker_url)}")
    if stats:
        queues = Table(title="Queues", title_justify="left")
        queues.add_column("queue", no_wrap=True)
        for name in ("ready", "scheduled", "leased", "dead"):
            queues.add_column(name, justify="right")
        for s in stats:
            queues.add_row(s.queue, str(s.ready), str(s.scheduled), str(s.leased), str(s.dead))
        console.print(queues)
    else:
        console.print("No messages in any queue.")
    if not workers:
        console.print("No live workers.")
        return
    table = Table(title="Workers", title_justify="left")
    table.add_column("id", no_wrap=True)
    table.add_column("pool")
    table.add_column("concurrency", justify="right")
    table.add_column("queues")
    table.add_column("processed", justify="right")
    table.add_column("running", justify="right")
    table.add_column("heartbeat")
    for w in sorted(workers, key=lambda w: w.id):
        table.add_row(
            w.id,
            w.pool,
            str(w.concurrency),
            ",".join(w.queues),
            str(w.processed),
            str(w.running),
            age(now - w.heartbeat_at),
        )
    console.print(table)


# -- purge ----------------------------------------------------------------------------------------
@click.command()
@app_option(required=False)
@broker_option
@queues_option(required=True, help_text="Queues to empty.")
@yes_option
@click.pass_context
def purge(
    ctx: click.Context,
    app_spec: str | None,
    broker_url: str | None,
    queues: tuple[str, ...],
    yes: bool,
) -> None:
    """Delete the ready and scheduled messages of queues. Leased ones are left to their workers.

    \b
    Example:
      faena purge -Q emails,reports --yes
    """
    with open_app(ctx, app_spec, broker_url) as app:
        by_queue = {s.queue: s for s in asyncio.run(app.broker.stats())}
        chosen = [by_queue.get(q, QueueStats(queue=q)) for q in queues]
        waiting = sum(s.ready + s.scheduled for s in chosen)
        names = ", ".join(queues)
        if waiting == 0:
            click.echo(f"Nothing to purge: no ready or scheduled messages in {names}.")
            return
        if not yes:
            click.confirm(
                f"Delete {waiting} ready and scheduled message(s) from {names} "
                f"on {redacted(app.broker_url)}? This cannot be undone",
                abort=True,
            )
        removed = asyncio.run(app.broker.purge(queues))
        click.echo(f"Purged {removed} message(s) from {names}.")
        leased = sum(s.leased for s in chosen)
        if leased:
            click.echo(f"{leased} leased message(s) were left to the workers running them.")

"""``faena control``: act on jobs — ``faena control revoke ID... [--terminate] [--reason]``."""

from __future__ import annotations

import click

from faena.cli.common import (
    BadUsage,
    app_option,
    broker_option,
    open_app,
    results_option,
    stdout,
)


@click.group()
def control() -> None:
    """Act on jobs: revoke them, before or while they run."""


@control.command()
@app_option(required=False)
@broker_option
@results_option
@click.argument("job_ids", nargs=-1, required=True, metavar="ID...")
@click.option(
    "--terminate",
    is_flag=True,
    help="Also stop the job if it is running (process pool: the child is killed; async: "
    "cancelled; threads: see docs/workers.md).",
)
@click.option("--reason", default="revoked from the command line", show_default=True)
@click.option("--by", "revoked_by", default=None, help="Who revokes (default: user@host pid).")
@click.pass_context
def revoke(
    ctx: click.Context,
    app_spec: str | None,
    broker_url: str | None,
    results_url: str | None,
    job_ids: tuple[str, ...],
    terminate: bool,
    reason: str,
    revoked_by: str | None,
) -> None:
    """Revoke jobs: a job that has not started never starts, on any worker, including
    workers started later; the revoke expires with the result TTL.

    \b
    The revoke is a record in the result store: give -A (or --results) when results are
    kept apart from the broker, or workers would not see it.

    \b
    Examples:
      faena control revoke 0b6f...e1 --reason "sent twice"
      faena control revoke -A shop.tasks 0b6f...e1 --terminate
      faena control revoke --broker redis://q/0 --results redis://r/0 0b6f...e1
    """
    console = stdout()
    with open_app(ctx, app_spec, broker_url, results_url) as app:
        try:
            handles = [app.AsyncResult(job_id) for job_id in job_ids]
        except (TypeError, ValueError) as exc:
            raise BadUsage(str(exc)) from None
        for handle in handles:
            job_id = handle.id
            before = app.results.fetch(job_id)
            known = before is not None or app.broker.locate(job_id) is not None
            removed = handle.revoke(terminate=terminate, reason=reason, by=revoked_by)
            if removed:
                console.print(f"{job_id}: revoked; its message was removed from the queue")
            elif before is not None and handle.state != "REVOKED":
                console.print(f"{job_id}: already finished ({before.state}); nothing to revoke")
            elif not known:
                console.print(
                    f"{job_id}: revoked; no job with this id is known yet (check the id): one "
                    "sent later with it will not start"
                )
            elif terminate:
                console.print(f"{job_id}: revoked; if it is running, its worker stops it")
            else:
                console.print(f"{job_id}: revoked; it will not start on any worker")

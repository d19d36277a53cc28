"""``faena control``: act on jobs — ``faena control revoke ID... [--terminate] [--reason]``."""

from __future__ import annotations

import click

from faena.cli.common import app_option, broker_option, open_app, stdout


@click.group()
def control() -> None:
    """Act on jobs: revoke them, before or while they run."""


@control.command()
@app_option(required=False)
@broker_option
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
    job_ids: tuple[str, ...],
    terminate: bool,
    reason: str,
    revoked_by: str | None,
) -> None:
    """Revoke jobs: a job that has not started never starts, on any worker, including
    workers started later; the revoke expires with the result TTL.

    \b
    Examples:
      faena control revoke 0b6f...e1 --reason "sent twice"
      faena control revoke -A shop.tasks 0b6f...e1 --terminate
    """
    console = stdout()
    with open_app(ctx, app_spec, broker_url) as app:
        for job_id in job_ids:
            handle = app.AsyncResult(job_id)
            before = app.results.fetch(job_id)
            removed = handle.revoke(terminate=terminate, reason=reason, by=revoked_by)
            if removed:
                console.print(f"{job_id}: revoked; its message was removed from the queue")
            elif before is not None and handle.state != "REVOKED":
                console.print(f"{job_id}: already finished ({before.state}); nothing to revoke")
            elif terminate:
                console.print(f"{job_id}: revoked; if it is running, its worker stops it")
            else:
                console.print(f"{job_id}: revoked; it will not start on any worker")

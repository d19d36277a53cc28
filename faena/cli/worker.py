"""``faena worker``: run a worker in this process until SIGTERM/SIGINT (or, with --burst, until
its queues are empty). The exit code is the worker's own (see :mod:`faena.cli.exits`)."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import time

import click

from faena.cli.common import BadUsage, app_option, load, queues_option
from faena.worker.logs import adopt_root, configure
from faena.worker.pools import POOL_NAMES
from faena.worker.worker import Worker, WorkerOptions

log = logging.getLogger("faena.worker")

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


@click.command()
@app_option(required=True)
@queues_option(
    required=False,
    help_text="Queues to consume, served round-robin. "
    "[default: the app's default queue and every queue its tasks declare]",
)
@click.option(
    "-c",
    "--concurrency",
    type=click.IntRange(min=1),
    envvar="FAENA_CONCURRENCY",
    show_envvar=True,
    help="Jobs run at once. [default: 10; processes: CPU count; solo: 1]",
)
@click.option(
    "-P",
    "--pool",
    type=click.Choice(POOL_NAMES),
    default="async",
    show_default=True,
    envvar="FAENA_POOL",
    show_envvar=True,
    help="Where jobs run: async (async tasks on the loop, sync ones in threads), threads, "
    "processes, or solo (one at a time).",
)
@click.option(
    "--prefetch",
    type=click.IntRange(min=0),
    envvar="FAENA_PREFETCH",
    show_envvar=True,
    help="Messages leased beyond the free slots, to hide broker latency. "
    "[default: 4 x concurrency]",
)
@click.option(
    "--max-tasks-per-child",
    type=click.IntRange(min=1),
    envvar="FAENA_MAX_TASKS_PER_CHILD",
    show_envvar=True,
    help="processes pool: replace a child after this many jobs.",
)
@click.option(
    "--max-memory-per-child",
    type=click.IntRange(min=1),
    envvar="FAENA_MAX_MEMORY_PER_CHILD",
    show_envvar=True,
    metavar="KIB",
    help="processes pool: replace a child once its resident memory passes this many KiB.",
)
@click.option(
    "--grace",
    "grace_s",
    type=click.FloatRange(min=0, max=1e9),
    envvar="FAENA_GRACE",
    show_envvar=True,
    metavar="SECONDS",
    help="On SIGTERM, how long running jobs may finish before they are stopped and handed "
    "back. [default: the app's shutdown_grace_s, 30]",
)
@click.option(
    "--burst",
    is_flag=True,
    envvar="FAENA_BURST",
    show_envvar=True,
    help="Stop (exit 0) once the queues are empty.",
)
@click.option(
    "--worker-id",
    envvar="FAENA_WORKER_ID",
    show_envvar=True,
    metavar="ID",
    help="This worker's id, as `faena status` shows it. [default: hostname:pid]",
)
@click.option(
    "-l",
    "--log-level",
    "--loglevel",
    "log_level",
    type=click.Choice(LOG_LEVELS, case_sensitive=False),
    default="INFO",
    show_default=True,
    envvar="FAENA_LOG_LEVEL",
    show_envvar=True,
)
@click.option(
    "--log-format",
    type=click.Choice(("text", "json")),
    default="text",
    show_default=True,
    envvar="FAENA_LOG_FORMAT",
    show_envvar=True,
    help="text for people, json (one object per line) for log collectors.",
)
@click.pass_context
def worker(
    ctx: click.Context,
    app_spec: str,
    queues: tuple[str, ...],
    concurrency: int | None,
    pool: str,
    prefetch: int | None,
    max_tasks_per_child: int | None,
    max_memory_per_child: int | None,
    grace_s: float | None,
    burst: bool,
    worker_id: str | None,
    log_level: str,
    log_format: str,
) -> None:
    """Run a worker: lease messages from the queues and run their jobs.

    \b
    Examples:
      faena worker -A shop.tasks
      faena worker -A shop.tasks:app -Q high,default -c 20
      FAENA_APP=shop.tasks FAENA_POOL=processes faena worker

    The first SIGTERM or Ctrl-C stops taking jobs and lets running ones finish (--grace);
    a second one stops them at once and hands their messages back.
    """
    if pool != "processes":
        for flag, value in (
            ("--max-tasks-per-child", max_tasks_per_child),
            ("--max-memory-per-child", max_memory_per_child),
        ):
            if value is not None:
                raise BadUsage(
                    f"{flag} applies to --pool processes only (this worker uses --pool {pool})"
                )
    if pool == "solo" and concurrency not in (None, 1):
        raise BadUsage(f"--pool solo runs one job at a time; drop -c {concurrency} or pick a pool")
    if worker_id is not None and (not worker_id.strip() or worker_id != worker_id.strip()):
        raise BadUsage(
            f"--worker-id {worker_id!r}: give a name without leading or trailing spaces, or "
            "leave it out for hostname:pid"
        )
    configure(log_level, log_format)  # before the import, so the app's own logs show too
    app = load(app_spec)
    for what, url in (("broker", app.broker_url), ("result store", app.results_url)):
        if url.startswith("memory://"):
            raise BadUsage(
                f"app {app_spec!r} uses the {what} {url}, which lives inside one process: other "
                "processes would never see what this worker receives or stores. Use sqlite:// "
                "(one machine) or redis:// (several); memory:// is for tests "
                "(faena.testing.drain)"
            )
    adopt_root(log_level)  # after the import: an app that configured logging keeps its setup
    options = WorkerOptions(
        queues=queues,
        concurrency=concurrency,
        pool=pool,
        prefetch=prefetch,
        max_tasks_per_child=max_tasks_per_child,
        max_memory_per_child=max_memory_per_child,
        app_spec=app_spec,
        worker_id=worker_id,
        burst=burst,
        grace_s=grace_s,
    )
    runner = Worker(app, options)
    loop = asyncio.Runner()
    try:
        code = loop.run(runner.run())
    finally:
        if not runner.leftover:
            # (as asyncio.run: cancel what is left and wait for it; a job that never ends is
            # not waited for, and the process leaves below)
            loop.close()
        app.close()
    if runner.leftover:
        # A job thread stuck in its job cannot be killed, and Python would wait for it at
        # exit: everything is settled and written, so leave now.
        _leave(code)
    # Python waits at exit for every thread that is not a daemon, and then runs the app's
    # atexit handlers: an idle executor's threads end at once, but a thread a task started
    # and left running may never end. The normal exit gets EXIT_THREADS_S; past that, the
    # threads still there are named in the log and the process leaves without them.
    watchdog = threading.Thread(
        target=_leave_after, args=(EXIT_THREADS_S, code), name="faena-exit", daemon=True
    )
    watchdog.start()
    ctx.exit(code)


EXIT_THREADS_S = 5.0
"""How long ``faena worker`` lets threads that tasks started end by themselves at exit."""


def _leave_after(seconds: float, code: int) -> None:
    time.sleep(seconds)  # the process has not ended by itself within the time
    left = [
        t.name
        for t in threading.enumerate()
        if t is not threading.current_thread() and not t.daemon and t.is_alive()
    ]
    log.warning(
        "leaving %d thread(s) that tasks started and did not end: %s",
        len(left),
        ", ".join(left) or "none",
    )
    _leave(code)


def _leave(code: int) -> None:
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)

"""``faena demo``: the whole path on a fresh machine, with nothing but Python installed.

It creates a SQLite file (in a temporary directory, or ``./faena-demo.sqlite3`` with
``--keep``), starts a real worker process on it (``python -m faena worker -A
faena.cli.demo_tasks``), sends a mix of jobs (plain, retried once, delayed, async, reporting
progress), shows them live until they finish, prints a summary, and stops the worker with
SIGTERM as an operator would. It exits 0 only if every job succeeded and the worker stopped
cleanly.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

import faena
from faena.app.core import Faena
from faena.cli import exits
from faena.cli.common import CommandFailed, stdout
from faena.foundation.clock import SYSTEM_CLOCK
from faena.model import states
from faena.model.outcome import JobRecord
from faena.model.task import Task

_APP = "faena.cli.demo_tasks"
KEPT_DATABASE = "faena-demo.sqlite3"
REFRESH_S = 0.1
"""How often the live display reads the job states (a display period, not a synchronisation)."""
STOP_TIMEOUT_S = 15.0
LOG_TAIL_LINES = 15
STATE_STYLES = {
    states.SUCCESS: "green",
    states.FAILURE: "bold red",
    states.REVOKED: "red",
    states.RETRY: "yellow",
    states.STARTED: "cyan",
}


@dataclass(frozen=True, slots=True)
class Planned:
    task: Task[..., Any]
    args: tuple[Any, ...]
    options: dict[str, Any]
    shows: str


def _plan(count: int) -> list[Planned]:
    """``count`` jobs, cycling through the kinds of task the demo shows."""
    # Imported here, not at the top: the module creates an app, which `faena status` and the
    # other commands have no use for.
    from faena.cli import demo_tasks

    kinds: list[Callable[[int], Planned]] = [
        lambda i: Planned(demo_tasks.add, (i, 10 * i), {}, "a plain task"),
        lambda i: Planned(demo_tasks.flaky_fetch, (f"feed-{i}",), {}, "fails once, retried"),
        lambda i: Planned(demo_tasks.send_reminder, (f"user{i}",), {"countdown": 1}, "delayed 1 s"),
        lambda i: Planned(demo_tasks.fetch_price, (f"SKU-{i}",), {}, "an async def task"),
        lambda i: Planned(demo_tasks.resize_images, (5,), {}, "reports progress"),
    ]
    return [kinds[n % len(kinds)](n + 1) for n in range(count)]


@dataclass(slots=True)
class Job:
    number: int
    planned: Planned
    id: str
    state: str = states.PENDING
    record: JobRecord | None = None
    seen: tuple[str, float | None] = field(default=("", None))
    reported: bool = False
    """Whether the job reported progress while it ran (a finished record keeps no message)."""

    @property
    def label(self) -> str:
        return self.planned.task.__name__

    @property
    def done(self) -> bool:
        return self.state in states.READY_STATES

    @property
    def attempts(self) -> int:
        return self.record.retries + 1 if self.record else 0


class DemoFailed(Exception):
    """The demo could not finish; ``log_tail`` holds the worker's last log lines."""

    def __init__(self, message: str, log_tail: str = "") -> None:
        super().__init__(message)
        self.log_tail = log_tail


@click.command()
@click.option(
    "-n",
    "--jobs",
    "job_count",
    type=click.IntRange(1, 200),
    default=10,
    show_default=True,
    envvar="FAENA_DEMO_JOBS",
    show_envvar=True,
    help="How many jobs to send (a mix of five kinds).",
)
@click.option(
    "--keep",
    is_flag=True,
    envvar="FAENA_DEMO_KEEP",
    show_envvar=True,
    help=f"Keep the SQLite file as ./{KEPT_DATABASE}, to look at with `faena status`.",
)
@click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(min=1),
    default=45.0,
    show_default=True,
    envvar="FAENA_DEMO_TIMEOUT",
    show_envvar=True,
    metavar="SECONDS",
    help="Give up if the jobs have not all finished by then.",
)
@click.pass_context
def demo(ctx: click.Context, job_count: int, keep: bool, timeout_s: float) -> None:
    """See faena work: a real worker process and a mix of jobs on an embedded SQLite file.

    No server is needed. The worker is stopped with SIGTERM at the end, as in production.
    """
    _require_sqlite()
    console = stdout()
    with tempfile.TemporaryDirectory(prefix="faena-demo-") as scratch:
        database = Path.cwd() / KEPT_DATABASE if keep else Path(scratch) / KEPT_DATABASE
        url = f"sqlite:///{database}"
        log_path = Path(scratch) / "worker.log"
        console.print(f"[bold]faena demo[/]: {job_count} jobs, one worker process, SQLite file")
        console.print(f"  {database}")
        try:
            _run(console, url, log_path, job_count, timeout_s)
        except DemoFailed as failure:
            if failure.log_tail:
                click.echo(failure.log_tail, err=True)
            raise CommandFailed(f"faena demo failed: {failure}") from None
    if keep:
        console.print(
            f"The database is kept: try `faena status --broker sqlite:///{KEPT_DATABASE}`."
        )
    ctx.exit(exits.OK)


def _require_sqlite() -> None:
    try:
        import faena.backends.sqlite  # noqa: F401
    except ImportError as exc:
        raise CommandFailed(
            f"faena demo needs the embedded SQLite backend, which cannot be imported: {exc}"
        ) from None


def _run(console: Console, url: str, log_path: Path, job_count: int, timeout_s: float) -> None:
    """Send the jobs, follow them, summarise, stop the worker. Raises DemoFailed on trouble."""
    started = SYSTEM_CLOCK.monotonic()
    with _worker_process(url, log_path) as worker, Faena("faena-demo", broker=url) as producer:
        console.print(f"Started worker pid {worker.pid}: python -m faena worker -A {_APP} …")
        jobs = [
            Job(n, p, producer.enqueue(p.task.name, *p.args, **p.options).id)
            for n, p in enumerate(_plan(job_count), start=1)
        ]
        console.print(f"Sent {len(jobs)} jobs.")
        problem = _follow(console, producer, jobs, worker, started + timeout_s)
        elapsed = SYSTEM_CLOCK.monotonic() - started
        console.print(_summary(producer, jobs))
        stop_problem = _stop(worker)
    failed = [f"#{j.number} {j.label} ({j.state})" for j in jobs if j.state != states.SUCCESS]
    problems = [p for p in (problem, stop_problem) if p]
    if failed and not problem:
        problems.append(f"{len(failed)} job(s) did not succeed: {', '.join(failed)}")
    if problems:
        raise DemoFailed("; ".join(problems), _tail(log_path))
    console.print(
        f"[green]All {len(jobs)} jobs succeeded[/] in {elapsed:.1f} s, and the worker stopped "
        "cleanly on SIGTERM (exit 0)."
    )
    console.print(
        "Next: declare tasks on your own app (app = Faena('shop'), then @app.task) and run "
        "`faena worker -A yourmodule`."
    )


@contextmanager
def _worker_process(url: str, log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``python -m faena worker`` on ``url``; killed on the way out if still running."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAENA_")}
    env["FAENA_BROKER_URL"] = url
    # The child must import this same faena, installed or not.
    root = str(Path(faena.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    command = [
        sys.executable,
        "-m",
        "faena",
        "worker",
        "-A",
        _APP,
        "-Q",
        "default",
        "-c",
        "4",
        "--worker-id",
        f"faena-demo-{os.getpid()}",
        "--grace",
        "5",
    ]
    with log_path.open("wb") as log:
        # cwd: the scratch directory, so nothing in the user's directory shadows faena.
        process = subprocess.Popen(
            command, cwd=log_path.parent, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _follow(
    console: Console,
    app: Faena,
    jobs: list[Job],
    worker: subprocess.Popen[bytes],
    deadline: float,
) -> str | None:
    """Show the jobs' states until all have finished; live on a terminal, line by line if not.

    Returns why it stopped early (the worker died, time ran out), or ``None``.
    """

    def step() -> str | None:
        _refresh(app, jobs)
        if all(j.done for j in jobs):
            return ""
        if worker.poll() is not None:
            return f"the worker exited early with code {worker.returncode}"
        if SYSTEM_CLOCK.monotonic() > deadline:
            waiting = [f"#{j.number} {j.label} ({j.state})" for j in jobs if not j.done]
            more = f" and {len(waiting) - 5} more" if len(waiting) > 5 else ""
            return f"timed out; still waiting for {', '.join(waiting[:5])}{more}"
        return None

    if console.is_terminal:
        with Live(_board(jobs), console=console, refresh_per_second=10, transient=True) as live:
            while (outcome := step()) is None:
                live.update(_board(jobs))
                time.sleep(REFRESH_S)
        return outcome or None
    while True:
        outcome = step()
        for job in jobs:
            seen = (job.state, job.record.progress if job.record else None)
            if seen != job.seen:
                job.seen = seen
                console.print(_line(job))
        if outcome is not None:
            return outcome or None
        time.sleep(REFRESH_S)


def _refresh(app: Faena, jobs: list[Job]) -> None:
    for job in jobs:
        if job.done:
            continue
        job.record = app.results.fetch(job.id)
        job.state = job.record.state if job.record else app.AsyncResult(job.id).state
        if job.state == states.STARTED and job.record and job.record.progress is not None:
            job.reported = True


def _styled(state: str) -> Text:
    return Text(state, style=STATE_STYLES.get(state, "dim"))


def _progress(job: Job) -> Any:
    record = job.record
    if not job.reported or record is None or record.progress is None:
        return ""
    bar = ProgressBar(total=1.0, completed=record.progress, width=12)
    note = "done" if job.done else record.progress_message or f"{record.progress:.0%}"
    grid = Table.grid(padding=(0, 1))
    grid.add_row(bar, note)
    return grid


def _board(jobs: list[Job]) -> Group:
    table = Table(title="Jobs", title_justify="left")
    for name in ("#", "task", "shows", "state", "progress", "attempts"):
        table.add_column(name, justify="right" if name in ("#", "attempts") else "left")
    for job in jobs:
        table.add_row(
            str(job.number),
            job.label,
            job.planned.shows,
            _styled(job.state),
            _progress(job),
            str(job.attempts or ""),
        )
    done = sum(j.done for j in jobs)
    return Group(table, Text(f"{done}/{len(jobs)} finished"))


def _line(job: Job) -> Text:
    text = Text(f"#{job.number:<3} {job.label:<14} ")
    text.append_text(_styled(job.state))
    record = job.record
    if record is not None and record.progress is not None and job.state == states.STARTED:
        text.append(f"  {record.progress_message or f'{record.progress:.0%}'}")
    return text


def _summary(app: Faena, jobs: list[Job]) -> Table:
    table = Table(title="Summary", title_justify="left")
    for name in ("#", "task", "state", "result", "attempts", "runtime"):
        table.add_column(name, justify="right" if name in ("#", "attempts", "runtime") else "left")
    for job in jobs:
        record = job.record
        runtime = ""
        if record is not None and record.started_at and record.finished_at:
            runtime = _duration(record.finished_at - record.started_at)
        table.add_row(
            str(job.number),
            job.label,
            _styled(job.state),
            _result(app, job),
            str(job.attempts or ""),
            runtime,
        )
    return table


def _duration(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def _result(app: Faena, job: Job) -> str:
    outcome = app.AsyncResult(job.id).result
    if isinstance(outcome, BaseException):
        return f"{type(outcome).__name__}: {outcome}"
    return "" if outcome is None else repr(outcome)


def _stop(worker: subprocess.Popen[bytes]) -> str | None:
    """SIGTERM, as an operator would; returns what went wrong, if anything."""
    if worker.poll() is not None:
        return None  # already reported by _follow
    worker.send_signal(signal.SIGTERM)
    try:
        code = worker.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait()
        return f"the worker did not stop within {STOP_TIMEOUT_S:g} s of SIGTERM"
    if code != exits.OK:
        return f"the worker exited with code {code} after SIGTERM"
    return None


def _tail(log_path: Path) -> str:
    try:
        lines = log_path.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
    except OSError:
        return ""
    if not lines:
        return ""
    return "Last lines of the worker's log:\n  " + "\n  ".join(lines)

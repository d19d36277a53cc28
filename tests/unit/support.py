"""Helpers shared by the unit tests: run a burst worker, read the dead-letter queue, run a
worker in a thread, and wait on job events instead of sleeping."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterable

from faena import Faena, JobEvent
from faena.contracts.broker import DeadLetter, QueueStats
from faena.worker.worker import Worker, WorkerOptions

AppFactory = Callable[..., Faena]
"""``make_app(name="unit", **settings)``: the fixture that builds memory apps."""

WAIT_S = 5.0
"""Upper bound for any wait on a worker; a test that needs it has already failed."""


def drain(
    app: Faena, queues: Iterable[str] = (), *, pool: str = "async", concurrency: int | None = None
) -> Worker:
    """Run a burst worker until its queues are empty; it must exit cleanly."""
    worker = Worker(
        app,
        WorkerOptions(queues=tuple(queues), pool=pool, concurrency=concurrency, burst=True),
    )
    code = asyncio.run(worker.run())
    assert code == 0, f"burst worker exited with {code}"
    return worker


def dead_letters(app: Faena) -> dict[str, DeadLetter]:
    """The dead-letter queue, by message id."""
    return {d.id: d for d in asyncio.run(app.broker.dead_letters())}


def queue_stats(app: Faena) -> list[QueueStats]:
    """Ready/scheduled/leased/dead counts per queue that holds anything."""
    return asyncio.run(app.broker.stats())


class Events:
    """Records the app's job events and lets a test wait for one without sleeping."""

    def __init__(self, app: Faena) -> None:
        self.seen: list[JobEvent] = []
        self._cond = threading.Condition()
        self.unsubscribe = app.events.subscribe(self._on_event)

    def _on_event(self, event: JobEvent) -> None:
        with self._cond:
            self.seen.append(event)
            self._cond.notify_all()

    def kinds(self, job_id: str) -> list[str]:
        with self._cond:
            return [e.kind for e in self.seen if e.job_id == job_id]

    def wait_for(self, kind: str, job_id: str, timeout: float = WAIT_S) -> None:
        with self._cond:
            found = self._cond.wait_for(lambda: kind in self.kinds(job_id), timeout)
        assert found, f"no {kind} event for {job_id} within {timeout} s: {self.seen}"


class WorkerThread:
    """A (non-burst) worker running in a background thread until ``stop()``."""

    def __init__(self, app: Faena, options: WorkerOptions | None = None) -> None:
        self.worker = Worker(app, options or WorkerOptions())
        self.exit_code: int | None = None
        self._thread = threading.Thread(target=self._main, name="unit-worker", daemon=True)

    def _main(self) -> None:
        self.exit_code = asyncio.run(self.worker.run())

    def start(self) -> WorkerThread:
        self._thread.start()
        return self

    def stop(self, timeout: float = WAIT_S) -> int | None:
        """Ask for a graceful stop from this (another) thread and wait for the exit code."""
        self.worker.request_stop()
        return self.join(timeout)

    def join(self, timeout: float = WAIT_S) -> int | None:
        """Wait for the worker to exit; its exit code."""
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "worker did not stop"
        return self.exit_code


class LogLine(logging.Handler):
    """Lets a test wait for a log line (the worker's ledger) instead of sleeping.

    Use as a context manager around the code that should log it.
    """

    def __init__(self, logger: str, starts_with: str) -> None:
        super().__init__(logging.DEBUG)
        self._logger = logging.getLogger(logger)
        self._prefix = starts_with
        self._seen = threading.Event()
        self._old_level = self._logger.level

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith(self._prefix):
            self._seen.set()

    def __enter__(self) -> LogLine:
        self._logger.addHandler(self)
        if self._logger.getEffectiveLevel() > logging.INFO:
            self._logger.setLevel(logging.INFO)
        return self

    def __exit__(self, *exc: object) -> None:
        self._logger.removeHandler(self)
        self._logger.setLevel(self._old_level)

    def wait(self, timeout: float = WAIT_S) -> None:
        assert self._seen.wait(timeout), f"no log line starting {self._prefix!r}"


def wait_until(condition: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    """Poll ``condition`` until it holds (a state another thread brings about); fail naming
    ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.005)

"""Jobs that end in odd ways on a real worker: a task's ``sys.exit()``, error text UTF-8
cannot encode (a file name ``os.listdir`` decoded with ``surrogateescape``), an exception whose
``str()`` fails, a rejection or a progress message carrying such text. Each ends its own job
with a readable record, on every in-process pool; the worker writes every other job's result
and acknowledgement. SQLite stores records and dead letters as encoded text, as Redis does."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from faena import FAILURE, SUCCESS, Faena, JobContext, Reject, TaskFailed, TaskRevoked
from faena.contracts.broker import Delivery, Settlement
from faena.model.outcome import JobRecord
from faena.worker.outbox import Outbox

from .support import WAIT_S, drain, queue_stats

ODD_NAME = b"caf\xe9.csv".decode("utf-8", "surrogateescape")
ESCAPED = "caf\\udce9.csv"


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text")


def declare(app: Faena, kind: str) -> dict[str, Any]:
    """The odd tasks, ``async def`` or sync, by name."""
    if kind == "async def":

        @app.task(name="odd.exits")
        async def exits(code: int) -> None:
            raise SystemExit(code)

        @app.task(name="odd.bad_text")
        async def bad_text() -> None:
            raise ValueError(f"cannot import {ODD_NAME}")

        @app.task(name="odd.unprintable")
        async def unprintable() -> None:
            raise Unprintable()

        @app.task(name="odd.rejects")
        async def rejects() -> None:
            raise Reject(f"no such file {ODD_NAME}")

        @app.task(name="odd.reports", bind=True)
        async def reports(self: JobContext) -> str:
            self.update_progress(0.5, f"reading {ODD_NAME}")
            return "read"

    else:

        @app.task(name="odd.exits")
        def exits(code: int) -> None:
            raise SystemExit(code)

        @app.task(name="odd.bad_text")
        def bad_text() -> None:
            raise ValueError(f"cannot import {ODD_NAME}")

        @app.task(name="odd.unprintable")
        def unprintable() -> None:
            raise Unprintable()

        @app.task(name="odd.rejects")
        def rejects() -> None:
            raise Reject(f"no such file {ODD_NAME}")

        @app.task(name="odd.reports", bind=True)
        def reports(self: JobContext) -> str:
            self.update_progress(0.5, f"reading {ODD_NAME}")
            return "read"

    @app.task(name="odd.fine")
    def fine() -> str:
        return "ok"

    return {
        "exits": exits,
        "bad_text": bad_text,
        "unprintable": unprintable,
        "rejects": rejects,
        "reports": reports,
        "fine": fine,
    }


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
@pytest.mark.parametrize("pool", ["async", "threads", "solo", "async def"])
def test_a_job_ending_oddly_ends_alone_and_the_worker_writes_every_other_job(
    tmp_path: Path, backend: str, pool: str
) -> None:
    url = "memory://" if backend == "memory" else f"sqlite:///{tmp_path / 'odd.sqlite3'}"
    app = Faena("odd", broker=url, results=url)
    try:
        tasks = declare(app, pool)
        sent = {
            name: tasks[name].delay(2) if name == "exits" else tasks[name].delay() for name in tasks
        }
        # When a burst worker runs them (it exits 0 only once every message is settled)
        drain(app, pool="async" if pool == "async def" else pool)
        # Then sys.exit() failed its job, saying so
        with pytest.raises(TaskFailed) as caught:
            sent["exits"].get(timeout=WAIT_S)
        assert (caught.value.type_name, caught.value.error_message) == (
            "SystemExit",
            "the task called sys.exit(2)",
        )
        # And text UTF-8 cannot encode is stored with escapes, in errors, rejections, progress
        with pytest.raises(TaskFailed) as caught:
            sent["bad_text"].get(timeout=WAIT_S)
        assert caught.value.error_message == f"cannot import {ESCAPED}"
        with pytest.raises((TaskFailed, TaskRevoked)) as rejected:
            sent["rejects"].get(timeout=WAIT_S)
        assert f"no such file {ESCAPED}" in str(rejected.value)
        assert sent["reports"].get(timeout=WAIT_S) == "read"
        # And an exception whose str() fails is stored under its type
        with pytest.raises(TaskFailed) as caught:
            sent["unprintable"].get(timeout=WAIT_S)
        assert caught.value.type_name == f"{__name__}.Unprintable"
        assert "str() of this" in caught.value.error_message
        # And the job sent after them ran; the failures are dead letters, nothing is leased
        assert sent["fine"].get(timeout=WAIT_S) == "ok"
        assert [(q.ready, q.leased, q.dead) for q in queue_stats(app)] == [(0, 0, 4)]
    finally:
        app.close()


def declare_interrupting(app: Faena, kind: str) -> dict[str, Any]:
    """Tasks whose own code raises ``KeyboardInterrupt`` or lets a ``CancelledError`` out."""
    if kind == "async def":

        @app.task(name="odd.interrupts")
        async def interrupts() -> None:
            raise KeyboardInterrupt

        async def awaits_a_cancelled_future() -> None:
            cancelled = asyncio.get_running_loop().create_future()
            cancelled.cancel()
            await cancelled  # raises CancelledError in the task's own code

        cancels = app.task(name="odd.cancels")(awaits_a_cancelled_future)
        cancels_limited = app.task(name="odd.cancels_limited", time_limit=30)(
            awaits_a_cancelled_future
        )
    else:

        @app.task(name="odd.interrupts")
        def interrupts() -> None:
            raise KeyboardInterrupt

        @app.task(name="odd.cancels")
        def cancels() -> None:
            raise asyncio.CancelledError

        @app.task(name="odd.cancels_limited", time_limit=30)
        def cancels_limited() -> None:
            raise asyncio.CancelledError

    @app.task(name="odd.fine")
    def fine() -> str:
        return "ok"

    return {
        "interrupts": interrupts,
        "cancels": cancels,
        "cancels_limited": cancels_limited,
        "fine": fine,
    }


@pytest.mark.timeout(60)
@pytest.mark.parametrize("pool", ["async", "threads", "solo", "async def"])
def test_a_job_raising_keyboard_interrupt_or_a_cancel_of_its_own_fails_alone(
    tmp_path: Path, pool: str
) -> None:
    url = f"sqlite:///{tmp_path / 'odd.sqlite3'}"
    app = Faena("odd", broker=url, results=url)
    try:
        tasks = declare_interrupting(app, pool)
        sent = {name: task.delay() for name, task in tasks.items()}
        # When a burst worker of one slot runs them (it ends once every message is settled)
        drain(app, pool="async" if pool == "async def" else pool, concurrency=1)
        # Then each one failed with its own error: the worker lived on, nothing was retried
        for name, error in [
            ("interrupts", "KeyboardInterrupt"),
            ("cancels", "CancelledError"),
            ("cancels_limited", "CancelledError"),
        ]:
            with pytest.raises(TaskFailed) as caught:
                sent[name].get(timeout=WAIT_S)
            assert caught.value.type_name.rpartition(".")[2] == error, name
            assert sent[name].record is not None
            assert sent[name].record.deliveries == 1
        # And the job after them ran, with the failures in the dead-letter queue
        assert sent["fine"].get(timeout=WAIT_S) == "ok"
        assert [(q.ready, q.leased, q.dead) for q in queue_stats(app)] == [(0, 0, 3)]
    finally:
        app.close()


def test_a_record_that_cannot_be_encoded_is_dropped_and_the_other_writes_go_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a worker's outbox on a SQLite result store, and a record holding text UTF-8
    # cannot encode, as a store or pool of another make might hand over
    url = f"sqlite:///{tmp_path / 'odd.sqlite3'}"
    app = Faena("odd", broker=url, results=url)
    settled: list[str] = []

    class Broker:
        async def settle(self, settlements: list[Settlement]) -> list[bool]:
            return [True] * len(settlements)

    outbox = Outbox(app.results, Broker(), lambda s, ok: settled.append(s.delivery.id))  # type: ignore[arg-type]
    delivery = Delivery(
        id="good", queue="q", body=b"", priority=0, deliveries=1, fence=1, enqueued_at=0
    )
    bad = JobRecord(id="bad", state=FAILURE, reason=f"lost {ODD_NAME}")
    good = JobRecord(id="good", state=SUCCESS)

    async def flush() -> None:
        outbox.record(bad)
        outbox.settle(Settlement(delivery=delivery, action="ack"), good)
        await outbox.flush()

    try:
        # When they are flushed together
        asyncio.run(flush())
        # Then the good record is written and its job acknowledged; the other is dropped,
        # with an error naming it
        assert app.results.fetch("good") is not None
        assert app.results.fetch("bad") is None
        assert settled == ["good"]
        assert any(
            "record of job bad (FAILURE) cannot be encoded" in r.getMessage()
            for r in caplog.records
        )
    finally:
        app.close()

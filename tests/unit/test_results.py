"""``AsyncResult``: states, values, failures, waiting (sync and async), progress, forget,
revoke and result expiry."""

from __future__ import annotations

import asyncio
import builtins
import logging
import threading
import uuid
from typing import Any

import msgspec
import pytest

from faena import (
    FAILURE,
    PENDING,
    QUEUED,
    REVOKED,
    STARTED,
    SUCCESS,
    BrokerUnavailable,
    ConfigurationError,
    Faena,
    FakeClock,
    JobContext,
    Progress,
    TaskFailed,
    TaskRevoked,
    TimeoutError,
    group,
)
from faena.contracts.broker import Location
from faena.model.outcome import JobRecord
from faena.worker.options import WorkerOptions

from .support import WAIT_S, AppFactory, Events, WorkerThread, drain, wait_until


def test_states_from_unknown_to_queued_to_started_to_success(app: Faena) -> None:
    # Given a task that looks at its own state while it runs
    seen: list[str] = []

    @app.task(bind=True)
    def add(self: JobContext, x: int, y: int) -> int:
        seen.append(app.AsyncResult(self.request.id).state)
        return x + y

    # Then an id nobody sent is PENDING
    assert app.AsyncResult("never-sent").state == PENDING
    # When it is sent, it is QUEUED and not ready
    r = add.delay(2, 3)
    assert r.state == QUEUED
    assert not r.ready()
    assert r.result is None
    # When a worker runs it, it is STARTED while running and SUCCESS after
    drain(app)
    assert seen == [STARTED]
    assert r.state == r.status == SUCCESS
    assert r.ready()
    assert r.successful()
    assert not r.failed()
    assert r.result == 5
    assert r.get(timeout=5) == 5


def test_failure_carries_the_remote_type_message_and_traceback(app: Faena) -> None:
    # Given a task that raises
    @app.task
    def explode(x: int) -> None:
        raise ValueError(f"bad value {x}")

    r = explode.delay(7)
    drain(app)
    # Then the result is FAILURE
    assert r.state == FAILURE
    assert r.ready()
    assert r.failed()
    assert not r.successful()
    # And get raises TaskFailed with what happened on the worker
    with pytest.raises(TaskFailed) as caught:
        r.get(timeout=5)
    error = caught.value
    assert error.job_id == r.id
    assert error.type_name == "ValueError"
    assert error.error_message == "bad value 7"
    assert "in explode" in error.remote_traceback
    assert "ValueError: bad value 7" in error.remote_traceback
    assert r.traceback == error.remote_traceback
    # And .result gives the same error without raising
    assert isinstance(r.result, TaskFailed)
    assert r.result.type_name == "ValueError"


def test_get_without_propagate_returns_the_error(app: Faena) -> None:
    # Given a job that failed
    @app.task
    def explode() -> None:
        raise KeyError("k")

    r = explode.delay()
    drain(app)
    # When get is told not to propagate
    error = r.get(timeout=5, propagate=False)
    # Then it returns the error instead of raising it
    assert isinstance(error, TaskFailed)
    assert error.type_name == "KeyError"


def test_user_exception_type_is_named_with_its_module(app: Faena) -> None:
    # Given a task raising an exception class of the application
    class PaymentDeclined(Exception):
        pass

    @app.task
    def charge() -> None:
        raise PaymentDeclined("card expired")

    # When it runs
    r = charge.delay()
    drain(app)
    # Then the failure names the type with its module
    failed = r.get(timeout=5, propagate=False)
    assert isinstance(failed, TaskFailed)
    assert failed.type_name == f"{__name__}.{PaymentDeclined.__qualname__}"


def test_get_times_out_when_no_worker_runs_the_job(app: Faena) -> None:
    @app.task
    def noop() -> None: ...

    r = noop.delay()
    # When nobody consumes the queue, Then get gives up with a helpful TimeoutError
    with pytest.raises(TimeoutError, match=r"QUEUED.*is a worker consuming") as caught:
        r.get(timeout=0.05)
    assert isinstance(caught.value, builtins.TimeoutError)  # `except TimeoutError` works too


@pytest.mark.parametrize("timeout", [float("nan"), "5", True, -float("inf")])
def test_a_get_timeout_that_is_not_a_number_of_seconds_is_refused(app: Faena, timeout: Any) -> None:
    @app.task
    def noop() -> None: ...

    r = noop.delay()
    group_result = group(noop.s(), noop.s()).delay()
    # When a caller waits with a timeout no clock can reach (nan waited for ever), Then it is
    # refused at once
    with pytest.raises(ConfigurationError, match=r"get\(\) timeout must be a finite number"):
        r.get(timeout=timeout)
    with pytest.raises(ConfigurationError, match=r"get\(\) timeout must be a finite number"):
        asyncio.run(r.aget(timeout=timeout))
    with pytest.raises(ConfigurationError, match=r"get\(\) timeout must be a finite number"):
        group_result.get(timeout=timeout)


def test_a_job_id_may_be_a_uuid_and_must_be_text(app: Faena) -> None:
    @app.task
    def double(x: int) -> int:
        return 2 * x

    r = double.delay(2)
    drain(app)
    # A job id given as a UUID reads the same job
    assert app.AsyncResult(uuid.UUID(r.id)).get(timeout=1) == 4
    assert app.AsyncResult(uuid.UUID(r.id)) == r
    # And anything else that is not text is refused
    with pytest.raises(TypeError, match="a job id is a non-empty str"):
        app.AsyncResult(12)  # type: ignore[arg-type]


@pytest.mark.parametrize("given", [{"reason": 123}, {"by": b"ops"}])
def test_a_revoke_reason_or_author_that_is_not_text_is_refused(
    app: Faena, given: dict[str, Any]
) -> None:
    r = app.AsyncResult("job-1")
    with pytest.raises(TypeError, match=r"a revoke's .* is text"):
        r.revoke(**given)
    # And nothing was written: the job is not revoked
    assert r.state == PENDING


def test_aget_and_await_return_the_value(app: Faena) -> None:
    # Given a finished job
    @app.task
    async def double(x: int) -> int:
        return 2 * x

    r = double.delay(21)
    drain(app)

    # When an async caller waits for it with aget and with await
    async def read() -> tuple[int, int]:
        return await r.aget(timeout=5), await r

    # Then both give the value
    assert asyncio.run(read()) == (42, 42)


def test_aget_times_out_and_propagates_failures(app: Faena) -> None:
    # Given a job that will fail
    @app.task
    def explode() -> None:
        raise RuntimeError("nope")

    pending = explode.delay()

    # When an async caller waits before any worker ran it, Then it times out
    async def wait_pending() -> None:
        await pending.aget(timeout=0.05)

    with pytest.raises(TimeoutError):
        asyncio.run(wait_pending())
    # When it has failed, Then aget raises the failure
    drain(app)
    with pytest.raises(TaskFailed, match="RuntimeError: nope"):
        asyncio.run(pending.aget(timeout=5))


def test_progress_is_visible_while_running_and_complete_after(app: Faena) -> None:
    # Given a task that reports progress, then reads it back through its own result
    seen: list[Any] = []

    @app.task(bind=True)
    async def work(self: JobContext) -> None:
        self.update_progress(0.5, message="parsed")
        progress = None
        for _ in range(100):  # yield to the worker's loop until the record is written
            progress = app.AsyncResult(self.request.id).progress
            if progress is not None:
                break
            await asyncio.sleep(0)
        seen.append(progress)

    r = work.delay()
    assert r.progress is None
    drain(app)
    # Then the running job's progress was stored, and a finished job is complete
    assert seen == [Progress(0.5, "parsed")]
    assert r.progress == Progress(1.0, None)


def test_progress_from_a_thread_task_reaches_the_record(
    app: Faena, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a sync task (run in a thread) that reports progress, then waits to be released
    release = threading.Event()

    @app.task(bind=True)
    def work(self: JobContext) -> None:
        self.update_progress(0.25, message="a quarter")
        release.wait(WAIT_S)

    # (the worker writes progress from its loop: note when that write happens)
    progress_written = threading.Event()
    store_many = app.results.store_many

    async def spy(records: Any) -> list[bool]:
        written = await store_many(records)
        if any(record.progress == 0.25 for record in records):
            progress_written.set()
        return written

    monkeypatch.setattr(app.results, "store_many", spy)
    runner = WorkerThread(app).start()
    try:
        r = work.delay()
        assert progress_written.wait(WAIT_S)
        # When the record is read while the job is still running
        # Then it shows the reported progress
        assert r.progress == Progress(0.25, "a quarter")
        assert r.state == STARTED
    finally:
        release.set()
        assert runner.stop() == 0
    assert r.state == SUCCESS


def test_progress_must_be_a_fraction(app: Faena) -> None:
    # Given a bound task reporting a given fraction
    @app.task(bind=True)
    def work(self: JobContext, fraction: float) -> None:
        self.update_progress(fraction)

    # When it reports 0.0 or 1.0, Then that is fine
    work(0.0)
    work(1.0)
    # When it reports more than 1.0, Then it is refused
    with pytest.raises(ValueError, match=r"fraction from 0\.0 to 1\.0"):
        work(1.5)


def test_forget_deletes_the_result(app: Faena) -> None:
    # Given a finished job
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    r = add.delay(1, 2)
    drain(app)
    assert r.result == 3
    # When its result is forgotten
    r.forget()
    # Then nothing is known about it any more
    assert r.state == PENDING
    assert r.result is None


def test_aget_keeps_the_event_loop_running_while_it_asks_the_broker(app: Faena) -> None:
    # Given a job no worker runs, and a broker whose answer needs the event loop to turn
    @app.task
    def work() -> None:
        pass

    r = work.delay()
    real_locate = app.broker.locate
    asked: list[bool] = []

    def locate(message_id: str, *, live_first: bool = False) -> Location | None:
        answered = threading.Event()
        loop.call_soon_threadsafe(answered.set)
        asked.append(answered.wait(5))
        return real_locate(message_id, live_first=live_first)

    app.broker.locate = locate  # type: ignore[method-assign]

    async def wait() -> None:
        # When an async caller waits for it
        with pytest.raises(TimeoutError, match="state QUEUED"):
            await r.aget(timeout=0.2)

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(wait())
    finally:
        loop.close()
    # Then every look at the broker left the loop free to run meanwhile
    assert asked
    assert all(asked)


def test_a_job_sent_again_after_it_was_dead_lettered_reads_as_the_new_run(
    make_app: AppFactory,
) -> None:
    # Given a job that failed for good (its message dead-lettered), sent again with its id
    app = make_app(max_deliveries=1)
    release = threading.Event()
    calls: list[int] = []

    @app.task(max_retries=0)
    def flaky(x: int) -> int:
        calls.append(x)
        if len(calls) == 1:
            raise RuntimeError("first run fails")
        assert release.wait(WAIT_S)
        return x

    first = flaky.apply_async((1,), task_id="again")
    drain(app)
    assert first.state == FAILURE
    assert app.broker.locate("again") == "dead"
    worker = WorkerThread(app).start()
    try:
        second = flaky.apply_async((2,), task_id="again")
        wait_until(
            lambda: (record := second.record) is not None and record.state == STARTED,
            "the new run's STARTED record",
        )
        # When it is read while its new run goes on
        # Then it reads as that run (not as the dead letter's failure), and get() waits for it
        assert second.state == STARTED
        release.set()
        assert second.get(timeout=WAIT_S) == 2
    finally:
        release.set()
        worker.stop()
    assert calls == [1, 2]


def test_revoke_before_start_means_it_never_runs(app: Faena) -> None:
    # Given a queued job
    ran: list[int] = []

    @app.task
    def work(x: int) -> None:
        ran.append(x)

    r = work.delay(1)
    # When it is revoked before any worker takes it
    assert r.revoke() is True
    worker = drain(app)
    # Then it never runs, and is REVOKED for good
    assert ran == []
    assert worker.processed == 0
    assert r.state == REVOKED
    assert r.ready()
    assert not r.failed()
    with pytest.raises(TaskRevoked) as caught:
        r.get(timeout=5)
    assert caught.value.reason == "revoked"


def test_a_worker_that_takes_the_message_during_a_revoke_reads_it_revoked(app: Faena) -> None:
    # Given a queued job
    @app.task
    def work(x: int) -> None:
        raise AssertionError("a revoked job ran")

    r = work.delay(1)
    # And a worker that claims its message just as the revoke comes to remove it
    real_take = app.broker.take
    seen: list[tuple[list[str], str]] = []

    def take(job_id: str) -> bytes | None:
        async def claim() -> list[str]:
            consumer = await app.broker.open_consumer(["default"], "racer")
            got = [d.id for d in await consumer.receive(1, 0)]
            await consumer.close()
            return got

        seen.append((asyncio.run(claim()), r.state))
        return real_take(job_id)

    app.broker.take = take  # type: ignore[method-assign]
    # When the job is revoked
    assert r.revoke() is False  # the message was leased by then
    # Then the worker that took it already read REVOKED, the record it skips a job on
    assert seen == [([r.id], REVOKED)]


def test_a_revoke_removes_the_message_even_when_the_result_store_fails(app: Faena) -> None:
    # Given a queued job, and a result store that does not answer
    ran: list[int] = []

    @app.task
    def work(x: int) -> None:
        ran.append(x)

    r = work.delay(1)
    real_store = app.results.store

    def store(record: JobRecord, **options: bool) -> bool:
        raise BrokerUnavailable("result store down")

    app.results.store = store  # type: ignore[method-assign]
    # When the job is revoked, Then the store's error is raised
    with pytest.raises(BrokerUnavailable, match="result store down"):
        r.revoke()
    app.results.store = real_store  # type: ignore[method-assign]
    # And the message is gone all the same: the job never runs
    assert app.broker.locate(r.id) is None
    assert drain(app).processed == 0
    assert ran == []


def test_a_revoke_the_broker_does_not_answer_is_recorded_and_the_job_skipped(
    app: Faena,
) -> None:
    # Given a queued job, and a broker that does not answer the revoke's removal
    ran: list[int] = []

    @app.task
    def work(x: int) -> None:
        ran.append(x)

    r = work.delay(1)
    real_take = app.broker.take

    def take(job_id: str) -> bytes | None:
        raise BrokerUnavailable("broker down")

    app.broker.take = take  # type: ignore[method-assign]
    # When the job is revoked, Then the broker's error is raised
    with pytest.raises(BrokerUnavailable, match="broker down"):
        r.revoke()
    app.broker.take = real_take  # type: ignore[method-assign]
    # And the record was written first: the message still waits, and the worker skips it
    assert r.state == REVOKED
    assert app.broker.locate(r.id) == "queued"
    drain(app)
    assert ran == []
    assert app.broker.locate(r.id) is None


def test_a_revoke_both_stores_fail_raises_the_records_error_naming_the_brokers(
    app: Faena,
) -> None:
    # Given a queued job, a result store that refuses the record and a broker that does not
    # answer
    @app.task
    def work(x: int) -> None:
        pass

    r = work.delay(1)
    cause = OSError("connection reset")

    def store(record: JobRecord, **options: bool) -> bool:
        raise BrokerUnavailable("result store down") from cause

    def take(job_id: str) -> bytes | None:
        raise BrokerUnavailable("broker down")

    app.results.store = store  # type: ignore[method-assign]
    app.broker.take = take  # type: ignore[method-assign]
    # When the job is revoked, Then the store's error is raised with its own cause, and its
    # notes say the message may still be queued
    with pytest.raises(BrokerUnavailable, match="result store down") as caught:
        r.revoke()
    assert caught.value.__cause__ is cause
    assert caught.value.__notes__ == [
        "Removing its message failed as well, so it may still be queued: broker down"
    ]


def test_a_revoke_of_a_job_sent_again_after_it_finished_replaces_its_outcome(
    app: Faena,
) -> None:
    # Given a job that ran and succeeded, then was sent again with the same id
    ran: list[int] = []

    @app.task
    def work(x: int) -> int:
        ran.append(x)
        return x

    first = work.apply_async((1,), task_id="again")
    drain(app)
    assert first.get(timeout=WAIT_S) == 1
    work.apply_async((2,), task_id="again")
    # When it is revoked while its new message waits
    assert app.AsyncResult("again").revoke() is True
    # Then the second run never happens and the record reads REVOKED
    assert drain(app).processed == 0
    assert ran == [1]
    assert app.AsyncResult("again").state == REVOKED


def test_revoke_of_a_scheduled_job(app: Faena, clock: FakeClock) -> None:
    # Given a job scheduled a minute ahead
    ran: list[int] = []

    @app.task
    def work(x: int) -> None:
        ran.append(x)

    r = work.apply_async((1,), countdown=60)
    # When it is revoked before it is due
    assert r.revoke(reason="not needed") is True
    clock.advance(61)
    drain(app)
    # Then it never runs, and reading it says why
    assert ran == []
    with pytest.raises(TaskRevoked, match="not needed"):
        r.get(timeout=5)


def test_a_revoked_id_is_skipped_if_it_arrives_later(app: Faena) -> None:
    # Given an id revoked before any message carries it
    ran: list[int] = []

    @app.task
    def work(x: int) -> None:
        ran.append(x)

    assert app.AsyncResult("late-id").revoke() is False
    # When a message with that id arrives afterwards
    work.apply_async((1,), task_id="late-id")
    drain(app)
    # Then the worker skips it: a revoke is for good
    assert ran == []
    assert app.AsyncResult("late-id").state == REVOKED


def test_a_revoke_records_who_and_expires_with_the_result_ttl(
    make_app: AppFactory, clock: FakeClock
) -> None:
    app = make_app(result_ttl=100)
    ran: list[int] = []

    @app.task
    def work(x: int) -> None:
        ran.append(x)

    # Given an id revoked by someone, with a reason
    app.AsyncResult("id-1").revoke(reason="duplicate", by="ops")
    record = app.results.fetch("id-1")
    assert record is not None
    assert (record.revoked_by, record.reason, record.finished_at) == (
        "ops",
        "duplicate",
        clock.time(),
    )
    # And one revoked without saying who: the record names this user, host and process
    app.AsyncResult("id-2").revoke()
    assert " pid " in (app.results.fetch("id-2") or record).revoked_by  # type: ignore[operator]
    # When the result TTL has passed
    clock.advance(100)
    # Then the revoke is gone with it: a message with that id runs
    work.apply_async((1,), task_id="id-1")
    drain(app)
    assert ran == [1]


@pytest.mark.parametrize("kind", ["async", "thread"])
def test_revoke_with_terminate_stops_a_running_job(make_app: AppFactory, kind: str) -> None:
    # Given a job that runs until stopped (the worker looks for revokes every 0.1 s)
    app = make_app(lease_s=0.3, revoke_check_s=0.1)
    stopped = threading.Event()
    release = threading.Event()

    if kind == "async":

        @app.task
        async def endless() -> None:
            try:
                await asyncio.Event().wait()
            finally:
                stopped.set()

    else:

        @app.task
        def endless() -> None:
            try:
                while not release.wait(0.005):  # runs Python code often: stoppable
                    pass
            finally:
                stopped.set()

    events = Events(app)
    runner = WorkerThread(app).start()
    try:
        r = endless.delay()
        events.wait_for(STARTED, r.id)
        # When it is revoked with terminate
        r.revoke(terminate=True)
        # Then the worker stops it and reports it REVOKED
        events.wait_for(REVOKED, r.id)
        assert stopped.is_set()
    finally:
        release.set()
        code = runner.stop()
    assert code == 0
    assert r.state == REVOKED


class _BusyWorker:
    """A worker with one slot, busy with ``hold`` until ``release`` once ``first`` has started,
    whose prefetch then holds the ``work`` jobs sent with it (all queued before it started: one
    claim takes them)."""

    def __init__(self, make_app: AppFactory, works: int) -> None:
        self.app = app = make_app(revoke_check_s=0.05)
        self.release = threading.Event()
        self.ran: list[int] = []

        @app.task
        def hold() -> None:
            assert self.release.wait(WAIT_S)

        @app.task
        def work(x: int) -> None:
            self.ran.append(x)

        self.events = Events(app)
        self.first = hold.delay()
        self.waiting = [work.delay(i) for i in range(works)]
        self.runner = WorkerThread(app, WorkerOptions(concurrency=1, prefetch=4)).start()


def test_a_job_revoked_while_it_waits_in_a_workers_prefetch_never_runs(
    make_app: AppFactory,
) -> None:
    # Given a worker busy with one job, and a second job it has already fetched
    busy = _BusyWorker(make_app, works=1)
    (second,) = busy.waiting
    try:
        busy.events.wait_for(STARTED, busy.first.id)
        assert busy.app.broker.locate(second.id) == "leased"

        # When the waiting job is revoked (its message is leased: only its record changes)
        assert second.revoke() is False

        # Then the worker skips it at its next look for revokes, before the slot frees up
        busy.events.wait_for(REVOKED, second.id)
        busy.release.set()
        assert busy.first.get(timeout=WAIT_S) is None
    finally:
        busy.release.set()
        code = busy.runner.stop()
    assert code == 0
    assert busy.ran == []
    assert STARTED not in busy.events.kinds(second.id)
    assert second.state == REVOKED
    assert busy.app.broker.locate(second.id) is None


def test_a_worker_stopped_after_skipping_a_revoked_job_hands_nothing_back_twice(
    make_app: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a worker with one busy slot that has skipped a revoked job still in its prefetch
    caplog.set_level(logging.WARNING, logger="faena.worker")
    busy = _BusyWorker(make_app, works=2)
    second, third = busy.waiting
    try:
        busy.events.wait_for(STARTED, busy.first.id)
        second.revoke()
        busy.events.wait_for(REVOKED, second.id)

        # When the worker is stopped while the busy job still runs
        busy.runner.worker.request_stop()
        busy.release.set()
        code = busy.runner.join()
    finally:
        busy.release.set()

    # Then it stops cleanly: the running job ends, the revoked one stays acknowledged, and
    # the job that never started goes back to the queue, once
    assert code == 0
    assert busy.first.get(timeout=WAIT_S) is None
    assert busy.ran == []
    assert busy.app.broker.locate(second.id) is None
    assert busy.app.broker.locate(third.id) == "queued"
    assert [r.getMessage() for r in caplog.records if "lease lost" in r.getMessage()] == []


def test_result_expires_after_result_ttl(make_app: AppFactory, clock: FakeClock) -> None:
    # Given an app that keeps results for a minute
    app = make_app(result_ttl=60)

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    r = add.delay(1, 2)
    drain(app)
    clock.advance(59)
    assert r.get(timeout=5) == 3
    # When the minute has passed
    clock.advance(1)
    # Then the result is gone
    assert r.state == PENDING
    assert r.result is None
    with pytest.raises(TimeoutError):
        r.get(timeout=0.01)


def test_task_result_ttl_overrides_the_app_setting(make_app: AppFactory, clock: FakeClock) -> None:
    # Given an app keeping results a minute, and a task keeping its own an hour
    app = make_app(result_ttl=60)

    @app.task(result_ttl=3600)
    def keep() -> int:
        return 1

    r = keep.delay()
    drain(app)
    # When two minutes pass, Then its result is still there
    clock.advance(120)
    assert r.get(timeout=5) == 1
    # When the hour has passed, Then it is gone
    clock.advance(3600)
    assert r.state == PENDING


def test_result_handles_compare_by_id(app: Faena) -> None:
    # Given two handles on one id, When they are compared, Then they are equal
    a, b = app.AsyncResult("x"), app.AsyncResult("x")
    assert a == b
    assert hash(a) == hash(b)
    assert a != app.AsyncResult("y")
    assert "x" in repr(a)


def test_started_job_is_reported_started_through_the_broker_lease(app: Faena) -> None:
    # Given a job a worker has leased (no record written yet)
    @app.task
    def noop() -> None: ...

    r = noop.delay()

    async def lease() -> None:
        consumer = await app.broker.open_consumer(["default"], "w1")
        assert [d.id for d in await consumer.receive(1, 1.0)] == [r.id]
        await consumer.close()

    asyncio.run(lease())
    # Then its state is STARTED, and it is not ready
    assert r.state == STARTED
    assert not r.ready()


def test_get_without_propagate_returns_the_revocation(app: Faena) -> None:
    # Given a revoked job
    r = app.AsyncResult("gone")
    r.revoke(reason="duplicate order")
    # When get is told not to propagate
    revoked = r.get(timeout=1, propagate=False)
    # Then it returns the revocation, with its reason
    assert isinstance(revoked, TaskRevoked)
    assert revoked.reason == "duplicate order"


def test_revoking_a_finished_job_keeps_its_result(app: Faena) -> None:
    # Given a job that has finished
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    r = add.delay(1, 2)
    drain(app)
    # When it is revoked afterwards
    assert r.revoke() is False
    # Then nothing changes: it succeeded, and its value stays readable
    assert r.state == SUCCESS
    assert r.get(timeout=1) == 3


def test_job_dead_lettered_by_the_broker_reads_failure(make_app, clock) -> None:
    # Given a job that started on a worker which then died on its last allowed delivery
    app = make_app(max_deliveries=1, lease_s=5)
    r = app.enqueue("shop.tasks.charge", 1)

    async def claim_and_lose() -> None:
        consumer = await app.broker.open_consumer(["default"], "doomed")
        assert [d.id for d in await consumer.receive(1, 0)] == [r.id]
        await consumer.close()

    asyncio.run(claim_and_lose())
    app.results.store(JobRecord(id=r.id, state="STARTED", fence=1, updated_at=clock.time()))
    assert r.state == "STARTED"
    # When its lease runs out and the broker dead-letters it at the next claim
    clock.advance(6)

    async def claim_again() -> list[str]:
        consumer = await app.broker.open_consumer(["default"], "next")
        got = [d.id for d in await consumer.receive(1, 0)]
        await consumer.close()
        return got

    assert asyncio.run(claim_again()) == []
    # Then the job reads FAILURE, not the STARTED its dead worker left behind
    assert app.broker.locate(r.id) == "dead"
    assert r.state == "FAILURE"
    # and waiting on it ends (within a second's look at the broker), as a failure
    with pytest.raises(TaskFailed) as failure:
        r.get(timeout=5)
    assert failure.value.type_name == "faena.DeadLettered"


def test_a_revoke_never_replaces_an_outcome_written_just_before_it(app: Faena) -> None:
    # Given a running job (its message leased, so the revoke cannot remove it)
    @app.task
    def work() -> int:
        return 42

    r = work.delay()
    consumer = asyncio.run(app.broker.open_consumer(["default"], "w1"))
    (delivery,) = asyncio.run(consumer.receive(1, 0))
    started = JobRecord(id=r.id, state=STARTED, fence=delivery.fence)
    app.results.store(started)
    success = msgspec.structs.replace(started, state=SUCCESS, value=b"42")
    # And the worker's SUCCESS lands the moment before the revoke's own write
    real_store = app.results.store

    def store(record: JobRecord, **options: bool) -> bool:
        if record.state == REVOKED:
            real_store(success)
        return real_store(record, **options)

    app.results.store = store  # type: ignore[method-assign]
    # When the job is revoked
    assert r.revoke() is False
    # Then the outcome a caller may already have read stands
    assert r.state == SUCCESS
    assert r.get(timeout=1) == 42
    asyncio.run(consumer.close())

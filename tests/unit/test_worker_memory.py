"""The worker on the memory backend: draining, dead-lettering what it cannot run (and carrying
on), graceful stop, concurrency, time limits, events and log lines."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
from typing import Any

import pytest

from faena import (
    FAILURE,
    QUEUED,
    RETRY,
    STARTED,
    SUCCESS,
    BrokerUnavailable,
    ConfigurationError,
    Faena,
    JobEvent,
    SoftTimeLimitExceeded,
    TaskFailed,
)
from faena.contracts.broker import Outgoing, WorkerInfo
from faena.features.flow import FlowGate
from faena.model.message import Message, encode_message
from faena.model.serialization import dumps_pickle
from faena.worker.logs import JobIdFilter
from faena.worker.worker import Worker, WorkerOptions

from .support import (
    WAIT_S,
    AppFactory,
    Events,
    LogLine,
    WorkerThread,
    dead_letters,
    drain,
    queue_stats,
    wait_until,
)

THREAD_POOLS = ["async", "threads", "solo"]


def _inject(app: Faena, message_id: str, body: bytes, queue: str = "default") -> None:
    """Put raw bytes on a queue, as a foreign or broken producer might."""
    app.broker.enqueue([Outgoing(id=message_id, queue=queue, body=body)])


def test_burst_worker_drains_every_queue_it_consumes_and_exits_0(app: Faena) -> None:
    # Given jobs on two queues
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    results = [add.apply_async((i, i), queue=q) for i in range(5) for q in ("a", "b")]
    # When a burst worker consumes both
    worker = Worker(app, WorkerOptions(queues=("a", "b"), burst=True))
    assert asyncio.run(worker.run()) == 0
    # Then it ran them all, left nothing, and exited 0
    assert worker.processed == 10
    assert [r.get(timeout=5) for r in results] == [2 * i for i in range(5) for _ in "ab"]
    assert queue_stats(app) == []


def test_worker_consumes_only_its_queues(app: Faena) -> None:
    # Given a job on another queue
    @app.task
    def noop() -> None: ...

    other = noop.apply_async(queue="other")
    # When a worker consumes only the default queue, Then it leaves that job alone
    assert drain(app, ["default"]).processed == 0
    assert other.state == QUEUED


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"pool": "greenlets"}, "unknown pool"),
        ({"concurrency": 0}, "concurrency must be >= 1"),
        ({"prefetch": -1}, "prefetch must be >= 0"),
        ({"grace_s": float("nan")}, "grace period is a number of seconds >= 0, got nan"),
        ({"grace_s": -1.0}, "grace period is a number of seconds >= 0"),
        ({"grace_s": "30"}, "grace period is a number of seconds >= 0, got '30'"),
        ({"grace_s": True}, "grace period is a number of seconds >= 0, got True"),
    ],
)
def test_bad_worker_options_are_refused(app: Faena, options: dict[str, Any], message: str) -> None:
    # When a worker is created with a bad option, Then it is refused
    with pytest.raises(ConfigurationError, match=message):
        Worker(app, WorkerOptions(**options))


# -- nothing is silently dropped ------------------------------------------------------------


def _bad_body(case: str, task_name: str) -> bytes:
    """A body the worker cannot run, for each dead-letter reason."""
    if case == "malformed":
        return b"{this is not an envelope"
    fields: dict[str, Any] = {
        "malformed-version": {"v": 99},
        "unknown_task": {"task": "nobody.knows.me", "args": [1]},
        "serializer_refused": {"serializer": "pickle", "body": dumps_pickle(((1,), {}))},
        "undecodable_arguments": {"args": [{"~dt": "not-a-date"}]},
        "undecodable_arguments-tag": {"args": [{"~from-the-future": 1}]},
        "wrong_arguments": {"args": [1, 2, 3]},
        "too_large": {"args": ["x" * 2000]},
    }[case]
    fields.setdefault("task", task_name)
    return encode_message(Message(id="bad", queue="default", **fields))


@pytest.mark.parametrize(
    "case",
    [
        "malformed",
        "malformed-version",
        "unknown_task",
        "serializer_refused",
        "undecodable_arguments",
        "undecodable_arguments-tag",
        "wrong_arguments",
        "too_large",
    ],
)
def test_unrunnable_message_is_dead_lettered_with_its_reason_and_work_goes_on(
    make_app: AppFactory, case: str
) -> None:
    # Given a json-only app with a 1 KiB message limit, and a task taking one argument
    app = make_app(max_message_size=1024)
    ran: list[Any] = []

    @app.task
    def work(x: Any) -> None:
        ran.append(x)

    # When a message it cannot run arrives ahead of a good one
    _inject(app, "bad", _bad_body(case, work.name))
    good = work.delay("good")
    worker = drain(app, pool="solo")
    # Then the bad one is in the dead-letter queue with a readable reason
    reason = case.split("-", maxsplit=1)[0]
    letter = dead_letters(app)["bad"]
    assert letter.reason == reason
    assert letter.detail
    # And the worker went on to run the good one, and exited cleanly
    assert ran == ["good"]
    assert good.state == SUCCESS
    assert worker.processed == 1
    # And the bad job reads as failed
    assert app.AsyncResult("bad").state == FAILURE


def test_refused_message_with_an_id_records_a_readable_failure(app: Faena) -> None:
    # Given a message for a task nobody declared
    _inject(app, "orphan", encode_message(Message(id="orphan", task="gone.task", queue="default")))
    # When a worker receives it
    drain(app)
    # Then reading the job says why it failed
    with pytest.raises(TaskFailed, match=r"unknown_task.*no task named 'gone\.task'"):
        app.AsyncResult("orphan").get(timeout=5)


# -- stopping -------------------------------------------------------------------------------


def test_graceful_stop_from_another_thread_lets_the_running_job_finish(app: Faena) -> None:
    # Given a one-slot worker running a job that waits to be released, with another queued
    release = threading.Event()

    @app.task
    def slow(label: str) -> str:
        release.wait(WAIT_S)
        return label

    events = Events(app)
    runner = WorkerThread(app, WorkerOptions(pool="solo")).start()
    first = slow.delay("first")
    events.wait_for(STARTED, first.id)
    second = slow.delay("second")
    # When a stop is requested from this thread while the job runs
    with LogLine("faena.worker", "graceful shutdown") as stopping:
        runner.worker.request_stop()
        stopping.wait()
    release.set()
    code = runner.join()
    # Then the running job finished, the waiting one was handed back, and the exit code is 0
    assert code == 0
    assert first.get(timeout=5) == "first"
    assert second.state == QUEUED
    assert events.kinds(second.id) == []


def _cold_stop_while_running(app: Faena) -> tuple[int | None, str]:
    """Run a job that outlives the worker, stop the worker twice; (exit code, job id)."""
    release = threading.Event()

    @app.task
    def slow() -> None:
        release.wait(WAIT_S)

    events = Events(app)
    runner = WorkerThread(app, WorkerOptions(pool="solo")).start()
    r = slow.delay()
    events.wait_for(STARTED, r.id)
    try:
        with LogLine("faena.worker", "graceful shutdown") as stopping:
            runner.worker.request_stop()
            stopping.wait()
        runner.worker.request_stop()
        code = runner.join()
    finally:
        release.set()
    return code, r.id


def test_second_stop_request_is_a_cold_stop(app: Faena) -> None:
    # Given a worker running a job that would outlive any grace period
    # When stop is requested twice
    code, job_id = _cold_stop_while_running(app)
    # Then the worker gives up on the job, hands its message back, and exits with 3
    assert code == 3
    assert app.broker.locate(job_id) == "queued"


@pytest.mark.parametrize("time_limit", [None, 30.0], ids=["no limit", "with a limit"])
def test_a_cold_stop_cancels_a_running_async_job(
    app: Faena, time_limit: float | None, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a running async def job (one with a time limit runs as a task of its own)
    caplog.set_level(logging.INFO)

    @app.task(time_limit=time_limit)
    async def waits() -> None:
        try:
            await asyncio.sleep(WAIT_S)
        except asyncio.CancelledError:
            logging.getLogger("tests.job").info("job cancelled")
            raise

    events = Events(app)
    runner = WorkerThread(app).start()
    r = waits.delay()
    events.wait_for(STARTED, r.id)
    # When the worker is stopped twice
    with LogLine("faena.worker", "graceful shutdown") as stopping:
        runner.worker.request_stop()
        stopping.wait()
    runner.worker.request_stop()
    # Then the job was cancelled before the worker stopped, and its message handed back
    assert runner.join() == 3
    said = [m for m in caplog.messages if m == "job cancelled" or " stopped after " in m]
    assert said == ["job cancelled", said[1]]
    assert app.AsyncResult(r.id).state == QUEUED


def test_a_cold_stop_of_an_early_acked_workflow_step_ends_its_workflow(app: Faena) -> None:

    # Given a chain whose first step (acks_late=False) is running, with an error callback
    release, running = threading.Event(), threading.Event()
    ran: list[str] = []

    @app.task(name="cold.first", acks_late=False)
    def first() -> int:
        running.set()
        release.wait(WAIT_S)
        return 1

    @app.task(name="cold.then")
    def then(x: int) -> None:
        ran.append("then")

    @app.task(name="cold.errback")
    def errback(job_id: str, error: dict[str, str]) -> None:
        ran.append(error["type"])

    runner = WorkerThread(app, WorkerOptions(pool="solo")).start()
    result = (first.s() | then.s()).apply_async(link_error=errback.s())
    assert running.wait(WAIT_S)
    try:
        # When the worker is stopped twice (a cold stop)
        with LogLine("faena.worker", "graceful shutdown") as stopping:
            runner.worker.request_stop()
            stopping.wait()
        runner.worker.request_stop()
        assert runner.join() == 3
    finally:
        release.set()
    # Then the chain failed (the step will never run again), and its error callback runs
    drain(app)
    with pytest.raises(TaskFailed, match="WorkerLost"):
        result.get(timeout=WAIT_S)
    assert ran == ["faena.WorkerLost"]


def test_job_handed_back_at_a_cold_stop_reads_as_queued(app: Faena) -> None:
    # Given a job handed back at a cold stop
    _, job_id = _cold_stop_while_running(app)
    # Then it reads as QUEUED, not as running on a stopped worker
    assert app.AsyncResult(job_id).state == QUEUED


@pytest.mark.parametrize("acks_late", [True, False])
def test_a_cold_stop_while_a_finished_job_frees_its_slot_keeps_its_outcome(
    app: Faena, monkeypatch: pytest.MonkeyPatch, acks_late: bool
) -> None:
    # Given a job with a concurrency limit whose slot is slow to free (a slow coordination
    # store), after its SUCCESS was written and its message acknowledged
    @app.task(concurrency_limit=1, acks_late=acks_late)
    def double(x: int) -> int:
        return 2 * x

    freeing = threading.Event()

    async def slow_leave(self: FlowGate, run: str) -> None:
        freeing.set()
        await asyncio.Event().wait()  # never frees: only a stop ends it

    monkeypatch.setattr(FlowGate, "leave", slow_leave)
    worker = WorkerThread(app).start()
    r = double.delay(21)
    assert r.get(timeout=WAIT_S) == 42
    assert freeing.wait(WAIT_S)
    wait_until(lambda: app.broker.locate(r.id) is None, "the acknowledgement")
    # When the worker is stopped cold meanwhile
    worker.worker.request_stop(cold=True)
    code = worker.join()
    # Then the outcome stands (not QUEUED or "interrupted"), nothing is handed back, and the
    # worker stopped no job
    assert r.state == SUCCESS
    assert r.get(timeout=1) == 42
    assert app.broker.locate(r.id) is None
    assert code == 0


def test_an_early_acked_jobs_started_record_is_written_before_its_ack(
    app: Faena, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a task acknowledged before it runs
    @app.task(acks_late=False)
    def double(x: int) -> int:
        return 2 * x

    seen: list[str | None] = []
    consumer_class = type(asyncio.run(app.broker.open_consumer(["default"], "probe")))
    real_settle = consumer_class.settle

    async def settle(self: Any, settlements: Any) -> list[bool]:
        for s in settlements:
            if s.action == "ack":
                record = app.results.fetch(s.delivery.id)
                seen.append(record.state if record else None)
        return await real_settle(self, settlements)

    monkeypatch.setattr(consumer_class, "settle", settle)
    r = double.delay(21)
    # When a worker runs it
    drain(app)
    # Then its record read STARTED when the acknowledgement went: a worker that died right
    # after it would leave the job reading STARTED, as docs/guarantees.md says
    assert seen == [STARTED]
    assert r.get(timeout=WAIT_S) == 42


def test_an_early_acked_job_whose_started_record_fails_runs_later_uncounted(
    make_app: AppFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a task acknowledged before it runs, one delivery allowed, and a result store that
    # fails the first write (its STARTED record)
    app = make_app(max_deliveries=1)
    ran: list[int] = []

    @app.task(acks_late=False)
    def double(x: int) -> int:
        ran.append(x)
        return 2 * x

    real = type(app.results).store_many
    failures = [BrokerUnavailable("result store down")]

    async def store_many(self: Any, records: Any) -> Any:
        if failures:
            raise failures.pop()
        return await real(self, records)

    monkeypatch.setattr(type(app.results), "store_many", store_many)
    r = double.delay(21)
    # When a worker takes it
    drain(app)
    # Then it was not run without its record, but handed back uncounted and run once after
    assert failures == []
    assert ran == [21]
    assert r.get(timeout=WAIT_S) == 42
    assert dead_letters(app) == {}


def test_a_cold_stop_keeps_the_record_of_a_job_whose_early_ack_got_no_answer(
    app: Faena, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a job acknowledged before it runs whose acknowledgement applied but got no answer
    # (so it is not run, and its record says why), and whose concurrency slot is slow to free
    @app.task(concurrency_limit=1, acks_late=False)
    def double(x: int) -> int:
        return 2 * x

    consumer_class = type(asyncio.run(app.broker.open_consumer(["default"], "probe")))
    real_settle = consumer_class.settle
    lost = [True]

    async def settle(self: Any, settlements: Any) -> list[bool]:
        done = await real_settle(self, settlements)
        if lost and [s.action for s in settlements] == ["ack"]:
            lost.pop()
            raise BrokerUnavailable("the reply was lost")
        return done

    freeing = threading.Event()

    async def slow_leave(self: FlowGate, run: str) -> None:
        freeing.set()
        await asyncio.Event().wait()  # never frees: only a stop ends it

    monkeypatch.setattr(consumer_class, "settle", settle)
    monkeypatch.setattr(FlowGate, "leave", slow_leave)
    worker = WorkerThread(app).start()
    r = double.delay(21)
    assert freeing.wait(WAIT_S)
    wait_until(lambda: (rec := r.record) is not None and rec.state == FAILURE, "its FAILURE record")
    # When the worker is stopped cold meanwhile
    worker.worker.request_stop(cold=True)
    code = worker.join()
    # Then the record still says why it did not run, and no job was stopped
    record = r.record
    assert record is not None
    assert (record.state, record.reason) == (FAILURE, "ack_unknown")
    assert code == 0


def test_stop_requested_before_run_exits_at_once(app: Faena) -> None:
    # Given a queued job
    @app.task
    def noop() -> None: ...

    r = noop.delay()
    # When a stop is requested before the worker runs
    worker = Worker(app, WorkerOptions())
    worker.request_stop()
    # Then it exits 0 at once, leaving the job queued
    assert asyncio.run(worker.run()) == 0
    assert worker.processed == 0
    assert r.state == QUEUED


# -- concurrency ----------------------------------------------------------------------------


@pytest.mark.parametrize("pool", ["async", "threads"])
def test_sync_jobs_run_concurrently_up_to_the_concurrency(make_app: AppFactory, pool: str) -> None:
    # Given two jobs that can only finish if both run at the same time
    # Given two jobs that can only finish if both run at the same time
    app = make_app()
    barrier = threading.Barrier(2, timeout=WAIT_S)

    @app.task
    def meet() -> int:
        return barrier.wait()

    # When a worker with two slots runs them
    results = [meet.delay(), meet.delay()]
    drain(app, pool=pool, concurrency=2)
    # Then both finished
    assert sorted(r.get(timeout=5) for r in results) == [0, 1]


def test_async_jobs_share_the_event_loop(app: Faena) -> None:
    # Given two async jobs that can only finish if both run at the same time
    barrier: list[asyncio.Barrier] = []

    @app.task
    async def meet() -> int:
        if not barrier:
            barrier.append(asyncio.Barrier(2))
        async with asyncio.timeout(WAIT_S):
            return await barrier[0].wait()

    # When a worker with two slots runs them
    results = [meet.delay(), meet.delay()]
    drain(app, concurrency=2)
    # Then both finished on the one loop
    assert sorted(r.get(timeout=5) for r in results) == [0, 1]


# -- time limits ----------------------------------------------------------------------------


def test_soft_limit_cancels_an_async_task(app: Faena) -> None:
    # Given an async task that would wait forever, with a soft limit
    cancelled = threading.Event()

    @app.task(soft_time_limit=0.05)
    async def hang() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    r = hang.delay()
    drain(app)
    # Then it is cancelled at the limit and fails with SoftTimeLimitExceeded
    assert cancelled.is_set()
    failed = r.get(timeout=5, propagate=False)
    assert isinstance(failed, TaskFailed)
    assert failed.type_name == "faena.SoftTimeLimitExceeded"


def test_soft_limit_lets_an_async_task_clean_up_and_return(app: Faena) -> None:
    # Given an async task that cleans up when cancelled
    @app.task(soft_time_limit=0.05, time_limit=2)
    async def hang() -> str:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            return "cleaned up"
        return "finished"

    # When it passes its soft limit
    r = hang.delay()
    drain(app)
    # Then what it returned while cleaning up is its result
    assert r.get(timeout=5) == "cleaned up"


def test_hard_limit_abandons_an_async_task_that_ignores_cancellation(app: Faena) -> None:
    # Given an async task that ignores the soft limit's cancellation
    @app.task(soft_time_limit=0.05, time_limit=0.1)
    async def stubborn() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            await asyncio.Event().wait()  # ignores the first cancellation

    # When it passes its hard limit
    r = stubborn.delay()
    drain(app)
    # Then it is abandoned and fails with TimeLimitExceeded
    failed = r.get(timeout=5, propagate=False)
    assert isinstance(failed, TaskFailed)
    assert failed.type_name == "faena.TimeLimitExceeded"


def test_hard_limit_alone_stops_an_async_task(app: Faena) -> None:
    # Given an async task that would wait forever, with only a hard limit
    @app.task(time_limit=0.05)
    async def hang() -> None:
        await asyncio.Event().wait()

    # When it passes the limit
    r = hang.delay()
    drain(app)
    # Then it fails with TimeLimitExceeded
    failed = r.get(timeout=5, propagate=False)
    assert isinstance(failed, TaskFailed)
    assert failed.type_name == "faena.TimeLimitExceeded"


@pytest.mark.parametrize("pool", THREAD_POOLS)
def test_hard_limit_on_a_thread_task_is_reported_as_time_limit_exceeded(
    app: Faena, pool: str
) -> None:
    # Given a sync task that runs until stopped, with a hard limit
    stopped = threading.Event()
    release = threading.Event()

    @app.task(time_limit=0.1)
    def busy() -> None:
        try:
            while not release.wait(0.005):  # Python code between waits: stoppable
                pass
        finally:
            stopped.set()

    try:
        r = busy.delay()
        drain(app, pool=pool)
        # Then the job fails with TimeLimitExceeded, and the thread was stopped
        failed = r.get(timeout=5, propagate=False)
        assert isinstance(failed, TaskFailed)
        assert failed.type_name == "faena.TimeLimitExceeded"
        assert "0.1 s" in failed.error_message
        assert stopped.wait(WAIT_S)
    finally:
        release.set()


@pytest.mark.parametrize("pool", THREAD_POOLS)
def test_soft_limit_raises_inside_a_thread_task(app: Faena, pool: str) -> None:
    # Given a sync task that handles the soft limit by returning early
    release = threading.Event()

    @app.task(soft_time_limit=0.05, time_limit=WAIT_S)
    def careful() -> str:
        try:
            while not release.wait(0.005):
                pass
        except SoftTimeLimitExceeded:
            return "stopped early"
        return "finished"

    try:
        r = careful.delay()
        drain(app, pool=pool)
        # Then SoftTimeLimitExceeded was raised inside it, and it returned
        assert r.get(timeout=5) == "stopped early"
    finally:
        release.set()


def test_unhandled_soft_limit_in_a_thread_task_fails_the_job(app: Faena) -> None:
    # Given a sync task that does not handle its soft limit
    release = threading.Event()

    @app.task(soft_time_limit=0.05)
    def careless() -> None:
        while not release.wait(0.005):
            pass

    try:
        # When it passes the limit
        r = careless.delay()
        drain(app)
        # Then the job fails with SoftTimeLimitExceeded
        failed = r.get(timeout=5, propagate=False)
        assert isinstance(failed, TaskFailed)
        assert failed.type_name.endswith("SoftTimeLimitExceeded")
    finally:
        release.set()


# -- events and logs ------------------------------------------------------------------------


def test_events_are_emitted_for_each_state_change(app: Faena) -> None:
    # Given a listener on the app's events
    events = Events(app)

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    @app.task
    def explode() -> None:
        raise ValueError("no")

    @app.task(bind=True, max_retries=1)
    def again(self: Any) -> None:
        raise self.retry(countdown=60)

    ok, bad, retried = add.delay(1, 2), explode.delay(), again.delay()
    worker = drain(app)
    # Then each job's events follow its states
    assert events.kinds(ok.id) == [STARTED, SUCCESS]
    assert events.kinds(bad.id) == [STARTED, FAILURE]
    assert events.kinds(retried.id) == [STARTED, RETRY]
    event = next(e for e in events.seen if e.job_id == ok.id and e.kind == SUCCESS)
    assert event.task == add.name
    assert event.worker == worker.id
    assert event.root_id == ok.id


def test_a_failing_listener_is_logged_and_kept(
    app: Faena, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a listener that raises
    calls: list[str] = []

    def broken(event: JobEvent) -> None:
        calls.append(event.kind)
        raise RuntimeError("listener bug")

    app.events.subscribe(broken)

    @app.task
    def noop() -> None: ...

    # When a job runs
    r = noop.delay()
    with caplog.at_level(logging.ERROR, logger="faena.events"):
        drain(app)
    # Then the listener is still called for later events, the job is unharmed, the error is logged
    assert calls == [STARTED, SUCCESS]  # still called after the first failure
    assert r.state == SUCCESS
    assert "event listener" in caplog.text
    assert "listener bug" in caplog.text


def test_unsubscribed_listener_is_not_called(app: Faena) -> None:
    # Given a listener subscribed, then removed
    calls: list[JobEvent] = []
    unsubscribe = app.events.subscribe(calls.append)
    unsubscribe()

    @app.task
    def noop() -> None: ...

    # When a job runs
    noop.delay()
    drain(app)
    # Then it is not called
    assert calls == []


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_log_lines_carry_the_job_id(
    app: Faena, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    # Given a task that logs, and the job-id filter on the capturing handler
    log = logging.getLogger("shop.tasks")

    if kind == "sync":

        @app.task
        def work() -> None:
            log.info("working")
            raise ValueError("broken")

    else:

        @app.task
        async def work() -> None:
            log.info("working")
            raise ValueError("broken")

    caplog.handler.addFilter(JobIdFilter())
    r = work.delay()
    with caplog.at_level(logging.INFO):
        drain(app)
    # Then the task's own line and the worker's failure line both name the job
    mine = [rec for rec in caplog.records if rec.getMessage() == "working"]
    assert [rec.job_id for rec in mine] == [r.id]  # type: ignore[attr-defined]
    failure = [rec for rec in caplog.records if "failed" in rec.getMessage()]
    assert failure
    assert all(rec.job_id == r.id for rec in failure)  # type: ignore[attr-defined]
    # And lines outside a job say so
    outside = [rec for rec in caplog.records if "ready" in rec.getMessage()]
    assert outside
    assert all(rec.job_id == "-" for rec in outside)  # type: ignore[attr-defined]


def test_worker_registers_while_running(app: Faena) -> None:
    # Given a task that lists the live workers
    seen: list[list[str]] = []

    @app.task
    async def look() -> None:
        seen.append([w.id for w in await app.broker.workers()])

    # When a worker runs it
    look.delay()
    worker = drain(app)
    # Then the worker was registered while running, and is gone after
    assert seen == [[worker.id]]
    assert asyncio.run(app.broker.workers()) == []


def test_intake_checks_keyword_only_and_variadic_signatures(app: Faena) -> None:
    # Given tasks with a required keyword-only argument and with *args
    @app.task
    def report(day: str, *, fmt: str) -> str:
        return f"{day}:{fmt}"

    @app.task
    def total(first: int, *rest: int) -> int:
        return first + sum(rest)

    def send(message_id: str, task: str, **fields: Any) -> None:
        _inject(app, message_id, encode_message(Message(id=message_id, task=task, **fields)))

    # When messages with and without the arguments they need arrive
    send("no-fmt", report.name, queue="default", args=["mon"])
    send("with-fmt", report.name, queue="default", args=["mon"], kwargs={"fmt": "pdf"})
    send("no-first", total.name, queue="default")
    send("many", total.name, queue="default", args=[1, 2, 3, 4])
    drain(app)
    # Then the ones that cannot be called are dead-lettered, the others run
    letters = dead_letters(app)
    assert {i: letters[i].reason for i in letters} == {
        "no-fmt": "wrong_arguments",
        "no-first": "wrong_arguments",
    }
    assert app.AsyncResult("with-fmt").get(timeout=5) == "mon:pdf"
    assert app.AsyncResult("many").get(timeout=5) == 10


def test_refused_message_emits_a_failure_event(app: Faena) -> None:
    # Given a listener, and a message for an unknown task
    events = Events(app)
    _inject(app, "orphan", encode_message(Message(id="orphan", task="gone.task", queue="default")))
    # When a worker refuses it
    drain(app)
    # Then its FAILURE is recorded and announced
    assert app.AsyncResult("orphan").state == FAILURE
    assert events.kinds("orphan") == [FAILURE]


def test_a_limited_job_waiting_for_a_thread_counts_its_time_from_its_start(app: Faena) -> None:
    from faena.contracts.pool import Job
    from faena.model.task import Request
    from faena.worker.pools.threads import SPARE_THREADS, ThreadPool

    release = threading.Event()

    @app.task(name="wait.stuck")
    def stuck() -> None:
        release.wait(WAIT_S)  # blocked in C: a hard limit cannot stop it

    @app.task(name="wait.quick")
    def quick() -> str:
        return "ran"

    def job(name: str, limit: float) -> Job:
        return Job(
            request=Request(id=name, task=name),
            body=b"",
            args=(),
            kwargs={},
            serializer="json",
            time_limit=limit,
            soft_time_limit=None,
            progress=lambda fraction, message: None,
        )

    async def scenario() -> None:
        pool = ThreadPool(1, app.registry)
        await pool.start()
        try:
            # Given every thread the pool may start stuck past its hard limit, abandoned
            stuck_jobs = [pool.run(job("wait.stuck", 0.05)) for _ in range(1 + SPARE_THREADS)]
            assert {o.status for o in await asyncio.gather(*stuck_jobs)} == {"failure"}
            # When a job with a 0.1 s limit waits for a thread longer than that
            waiting = asyncio.ensure_future(pool.run(job("wait.quick", 0.1)))
            done, _ = await asyncio.wait({waiting}, timeout=0.3)
            # Then it is not reported over its limit while it has not started
            assert not done
            # And once a thread is free, it runs, within its limit
            release.set()
            outcome = await asyncio.wait_for(waiting, WAIT_S)
            assert outcome.status == "success", outcome
        finally:
            release.set()
            await pool.stop(graceful=False, timeout_s=1.0)

    asyncio.run(scenario())


TENANT: contextvars.ContextVar[str | None] = contextvars.ContextVar("tenant", default=None)


@pytest.mark.parametrize("pool", ["async", "threads", "solo"])
def test_a_context_variable_a_job_sets_never_reaches_another_job(make_app: Any, pool: str) -> None:
    # Given tasks that read a context variable, then set it (as request-scoped helpers do)
    app = make_app()
    seen: list[tuple[str, str | None]] = []

    @app.task(name="ctx.async_job")
    async def async_job(tenant: str) -> None:
        seen.append(("async", TENANT.get()))
        TENANT.set(tenant)
        await asyncio.sleep(0)
        assert TENANT.get() == tenant  # the job's own value holds across its awaits

    @app.task(name="ctx.sync_job")
    def sync_job(tenant: str) -> None:
        seen.append(("sync", TENANT.get()))
        TENANT.set(tenant)

    for n in range(3):
        async_job.delay(f"customer-{n}")
        sync_job.delay(f"customer-{n}")
    # When one slot runs them all, one after the other
    drain(app, pool=pool, concurrency=1)
    # Then every job started from the worker's own context, not from what the last one set
    assert sorted(seen) == [("async", None)] * 3 + [("sync", None)] * 3


def test_a_huge_error_is_kept_cut_in_its_record_dead_letter_and_log(
    app: Faena, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a task whose error message is 5 MB
    @app.task(name="huge.fails")
    def fails() -> None:
        raise ValueError("start " + "E" * 5_000_000 + " end")

    job = fails.delay()
    with caplog.at_level(logging.INFO):
        drain(app)
    # Then its record keeps the start and the end of the message and of the traceback
    record = app.results.fetch(job.id)
    assert record is not None
    assert record.error is not None
    assert len(record.error.message) < 10_000
    assert record.error.message.startswith("start EEE")
    assert record.error.message.endswith("EEE end")
    assert "characters left out" in record.error.message
    assert len(record.error.traceback) < 70_000
    assert record.error.traceback.rstrip().endswith("EEE end")
    # And so do the dead letter and the worker's log lines
    [letter] = asyncio.run(app.broker.dead_letters())
    assert len(letter.detail) < 10_000
    assert max(len(r.getMessage()) for r in caplog.records) < 10_000


def test_a_blocking_get_in_an_async_job_is_refused_and_an_await_works(app: Faena) -> None:
    @app.task(name="sub.add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="sub.blocks")
    async def blocks() -> int:
        return add.delay(1, 1).get(timeout=5)  # would hold the worker's loop

    @app.task(name="sub.awaits")
    async def awaits() -> int:
        return await add.delay(2, 2).aget(timeout=5)

    blocked, awaited = blocks.delay(), awaits.delay()
    drain(app, concurrency=2)
    # Then the blocking get() failed its job at once, saying what to do instead
    with pytest.raises(TaskFailed, match=r"would block the worker's event loop.*await result"):
        blocked.get(timeout=WAIT_S)
    # And an await of the sub-job's result works
    assert awaited.get(timeout=WAIT_S) == 4


def test_a_blocking_get_in_an_async_job_on_a_loop_of_its_own_may_wait(app: Faena) -> None:
    @app.task(name="own.add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="own.blocks")
    async def blocks() -> int:
        return add.delay(1, 1).get(timeout=5)  # its own loop, in a thread of the pool

    waited = blocks.delay()
    # When the threads pool runs it (each async def job on an event loop of its own)
    drain(app, pool="threads", concurrency=2)
    # Then its get() waited for the sub-job like a sync task's would
    assert waited.get(timeout=WAIT_S) == 2


def test_a_worker_id_a_live_worker_already_has_is_warned_about(
    app: Faena, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a live worker registered as "web1" from another process
    now = app.settings.clock.time()
    other = WorkerInfo(
        id="web1",
        hostname="elsewhere",
        pid=4242,
        queues=("default",),
        concurrency=1,
        pool="async",
        started_at=now,
        heartbeat_at=now,
    )
    asyncio.run(app.broker.register_worker(other))
    # When a worker starts with the same id
    with caplog.at_level(logging.WARNING, logger="faena.worker"):
        asyncio.run(Worker(app, WorkerOptions(burst=True, worker_id="web1")).run())
    # Then it says so, naming the other one
    assert any(
        "worker id web1 is already taken by a live worker (elsewhere, pid 4242)" in r.getMessage()
        for r in caplog.records
    )


@pytest.mark.timeout(60)
def test_a_cancel_request_left_by_one_job_does_not_turn_the_next_ones_error_into_a_cancel(
    app: Faena,
) -> None:
    @app.task(name="tg.group")
    async def with_a_failing_group() -> str:
        async def fails() -> None:
            raise ValueError("child")

        try:
            async with asyncio.TaskGroup() as group:  # may leave a cancel request (3.11)
                group.create_task(fails())
        except ExceptionGroup:
            return "handled"
        return "not reached"

    @app.task(name="tg.sub")
    async def awaits_a_cancelled_sub_task() -> None:
        sub = asyncio.ensure_future(asyncio.sleep(5))
        asyncio.get_running_loop().call_later(0.01, sub.cancel)
        await sub

    @app.task(name="tg.plain")
    async def plain() -> str:
        return "ok"

    grouped, sub, last = (
        with_a_failing_group.delay(),
        awaits_a_cancelled_sub_task.delay(),
        plain.delay(),
    )
    # When one slot runs them in order
    drain(app, concurrency=1)
    # Then the second fails with its own CancelledError, and the worker went on to the third
    assert grouped.get(timeout=WAIT_S) == "handled"
    with pytest.raises(TaskFailed, match="CancelledError"):
        sub.get(timeout=WAIT_S)
    assert last.get(timeout=WAIT_S) == "ok"

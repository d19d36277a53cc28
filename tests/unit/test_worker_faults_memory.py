"""The worker under faults of its own and of its backends, on the memory backend."""

from __future__ import annotations

import asyncio
import threading

import pytest

from faena import (
    FAILURE,
    RETRY,
    SUCCESS,
    BrokerError,
    BrokerUnavailable,
    Faena,
    FakeClock,
    JobContext,
    Task,
    TaskFailed,
    chord,
)
from faena.backends.memory import broker as memory_broker
from faena.contracts.broker import Delivery, Outgoing, WorkerInfo
from faena.model.message import Message, encode_message
from faena.worker import worker as worker_module
from faena.worker.endings import Endings
from faena.worker.worker import Worker, WorkerOptions

from .support import WAIT_S, AppFactory, WorkerThread, dead_letters, drain


def test_at_most_once_jobs_never_stall_a_worker_without_prefetch(app: Faena) -> None:
    # Given three at-most-once jobs and a worker with one slot and no prefetch
    @app.task(acks_late=False)
    def once(i: int) -> int:
        return i

    results = [once.delay(i) for i in range(3)]
    # When it drains the queue (it would hang if an early-acked job never freed its room)
    run = Worker(app, WorkerOptions(concurrency=1, prefetch=0, burst=True))
    assert asyncio.run(asyncio.wait_for(run.run(), 10)) == 0
    # Then every job ran once
    assert [r.get(timeout=1) for r in results] == [0, 1, 2]


def test_a_message_that_breaks_the_worker_itself_ends_in_the_dead_letter_queue(
    make_app: AppFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a worker allowing 3 deliveries, and one job whose handling fails inside the worker
    # itself every time (a fault of faena's, simulated where the STARTED record is built)
    app = make_app(max_deliveries=3)

    @app.task
    def fine() -> str:
        return "fine"

    broken = fine.delay()
    good = fine.delay()
    attempts = {"n": 0}
    real = worker_module.base_record

    def base_record(message, *args, **kwargs):  # type: ignore[no-untyped-def]
        if message.id == broken.id:
            attempts["n"] += 1
            raise RuntimeError("a bug in the worker")
        return real(message, *args, **kwargs)

    monkeypatch.setattr(worker_module, "base_record", base_record)
    # When a burst worker runs until the queue is empty
    drain(app)
    # Then the good job ran, and the broken one was counted out into the DLQ after 3 tries
    assert good.get(timeout=1) == "fine"
    assert attempts["n"] == 3
    assert dead_letters(app)[broken.id].reason == "worker_error"


def test_fetch_failures_are_retried_and_the_worker_goes_on(app: Faena) -> None:
    # Given a result store that fails the worker's revoke check once
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    r = add.delay(2, 3)
    real = app.results.fetch_many
    failures = {"left": 1}

    async def flaky_fetch_many(ids):  # type: ignore[no-untyped-def]
        if failures["left"]:
            failures["left"] -= 1
            raise ConnectionError("the result store is unreachable")
        return await real(ids)

    app.results.fetch_many = flaky_fetch_many  # type: ignore[method-assign]
    # When a worker drains the queue
    drain(app)
    # Then the job still ran (the revoke check failing open), once
    assert r.get(timeout=1) == 5
    assert failures["left"] == 0


def test_undecodable_header_is_dead_lettered_not_retried_forever(app: Faena) -> None:
    # Given a message whose header has a corrupt tag
    @app.task
    def ok() -> str:
        return "ok"

    bad = Message(id="bad-header", task=ok.name, queue="default", headers={"when": {"~dt": "x"}})
    app.broker.enqueue([Outgoing(id=bad.id, queue="default", body=encode_message(bad))])
    after = ok.delay()
    # When a worker drains the queue
    drain(app)
    # Then it is refused once, with a reason, and the next job runs
    assert dead_letters(app)["bad-header"].reason == "undecodable_arguments"
    assert app.AsyncResult("bad-header").state == FAILURE
    assert after.get(timeout=1) == "ok"


@pytest.mark.parametrize("pool", ["async", "threads"])
def test_a_soft_limit_reaching_a_finished_thread_job_fails_only_that_job(
    app: Faena, pool: str
) -> None:
    # Given jobs that finish right at their soft limit, then ordinary jobs on the same threads
    @app.task(bind=True, soft_time_limit=0.01)
    def edge(self: JobContext) -> str:
        total = 0
        for i in range(200_000):
            total += i
        return self.request.id

    @app.task
    def plain(i: int) -> int:
        return i

    edges = [edge.delay() for _ in range(5)]
    plains = [plain.delay(i) for i in range(20)]
    # When a worker drains them
    drain(app, pool=pool, concurrency=2)
    # Then every ordinary job succeeded: no limit exception leaked into another job
    assert [r.get(timeout=1) for r in plains] == list(range(20))
    assert {r.state for r in edges} <= {SUCCESS, FAILURE}


def test_a_lost_renewal_lets_go_of_only_the_delivery_it_renewed(app: Faena) -> None:
    # Given a worker that sent its delivery of m (fence 1) for renewal, and meanwhile leased m
    # again (its lease had run out: fence 2)
    ends = Endings("w1", app)
    first = Delivery(id="m", queue="q", body=b"", priority=0, deliveries=1, fence=1, enqueued_at=0)
    second = Delivery(id="m", queue="q", body=b"", priority=0, deliveries=2, fence=2, enqueued_at=0)
    ends.hold(second)
    # When the renewal of the first comes back lost
    dropped = ends.lost([first], {"m"})
    # Then the newer delivery is still held (and renewed by the next beat)
    assert dropped == []
    assert ends.held[("q", "m")] is second
    # and a lost renewal of the delivery actually held lets go of it
    assert ends.lost([second], {"m"}) == [second]
    assert ends.held == {}


def test_a_lost_renewal_of_a_delivery_being_settled_is_left_to_the_settlement(app: Faena) -> None:
    # Given a delivery whose acknowledgement is on its way, and a renewal of it that reached
    # the broker after the acknowledgement (so the broker no longer holds it)
    ends = Endings("w1", app)
    done = Delivery(id="m", queue="q", body=b"", priority=0, deliveries=1, fence=1, enqueued_at=0)
    ends.hold(done)
    ends.settling.add(("q", "m", 1))
    # When the renewal comes back lost
    # Then it is not reported lost: the acknowledgement's own reply settles it
    assert ends.lost([done], {"m"}) == []
    assert ends.held[("q", "m")] is done


def _ack_without_answer(monkeypatch: pytest.MonkeyPatch, applied: bool) -> list[int]:
    """The first early acknowledgement gets no answer from the broker (a cut connection):
    after it applied (``applied``: the reply was lost) or before. Returns the call count."""
    real = memory_broker._MemoryConsumer.settle
    calls: list[int] = []

    async def settle(self, settlements):  # type: ignore[no-untyped-def]
        first_ack = not calls and [s.action for s in settlements] == ["ack"]
        calls.append(1)
        if first_ack:
            if applied:
                await real(self, settlements)
            raise BrokerUnavailable("the broker did not answer (injected)")
        return await real(self, settlements)

    monkeypatch.setattr(memory_broker._MemoryConsumer, "settle", settle)
    return calls


def _at_most_once(app: Faena) -> tuple[Task[[int], int], list[int]]:
    """An ``acks_late=False`` task, and the arguments of its runs."""
    ran: list[int] = []

    @app.task(acks_late=False)
    def once(i: int) -> int:
        ran.append(i)
        return i

    return once, ran


def test_an_early_ack_whose_reply_was_lost_ends_the_job_failed_not_waiting_for_ever(
    app: Faena, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an at-most-once job whose acknowledgement before the run deletes its message but
    # loses its reply
    once, ran = _at_most_once(app)
    _ack_without_answer(monkeypatch, applied=True)
    r = once.delay(1)
    # When a worker takes it
    drain(app)
    # Then it is not run (it may be gone), and its record says why: get() ends
    assert ran == []
    with pytest.raises(TaskFailed, match="acknowledgement before the run got no answer"):
        r.get(timeout=1)
    assert r.record is not None
    assert r.record.reason == "ack_unknown"
    assert dead_letters(app) == {}


def test_an_early_ack_the_broker_never_got_hands_the_message_back_uncounted(
    app: Faena, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an at-most-once job whose acknowledgement before the run never reached the broker
    once, ran = _at_most_once(app)
    _ack_without_answer(monkeypatch, applied=False)
    r = once.delay(2)
    # When a worker drains the queue
    drain(app)
    # Then the message was handed back, not counted as a delivery, and ran once
    assert ran == [2]
    assert r.get(timeout=1) == 2
    assert r.record is not None
    assert r.record.deliveries == 1


def test_an_early_acked_retry_the_broker_refused_once_is_sent_again(
    app: Faena, clock: FakeClock
) -> None:
    # Given an at-most-once task asking for a retry, and a broker that fails the first send
    attempts: list[int] = []

    @app.task(bind=True, acks_late=False)
    def flaky(self: JobContext) -> None:
        attempts.append(self.request.attempt)
        if self.request.attempt == 1:
            raise self.retry(countdown=10)

    real = app.broker.aenqueue
    failed: list[int] = []

    async def aenqueue(batch):  # type: ignore[no-untyped-def]
        if not failed:
            failed.append(1)
            raise BrokerUnavailable("the broker did not answer (injected)")
        await real(batch)

    app.broker.aenqueue = aenqueue  # type: ignore[method-assign]
    r = flaky.delay()
    # When it runs, Then the retry is sent after all, and runs when due
    drain(app)
    assert failed == [1]
    assert r.state == RETRY
    clock.advance(10)
    drain(app)
    assert attempts == [1, 2]
    assert r.state == SUCCESS


def test_a_lease_renewal_the_broker_refuses_does_not_stop_the_rest_of_the_heartbeat(
    make_app: AppFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a worker whose lease renewals the broker refuses, running a job that waits
    app = make_app(lease_s=1.0, heartbeat_s=0.05)
    release = threading.Event()

    @app.task
    def waits() -> str:
        assert release.wait(WAIT_S)
        return "done"

    async def refuse(self, deliveries, lease_s):  # type: ignore[no-untyped-def]
        raise BrokerError("Redis refused renewing leases in queue default (injected)")

    monkeypatch.setattr(memory_broker._MemoryConsumer, "extend", refuse)
    registered = threading.Event()
    real_register = app.broker.register_worker

    async def register_worker(info: WorkerInfo) -> None:
        await real_register(info)
        if info.running:
            registered.set()

    app.broker.register_worker = register_worker  # type: ignore[method-assign]
    r = waits.delay()
    runner = WorkerThread(app).start()
    try:
        # When heartbeats come, Then the worker still refreshes its registration (and its
        # concurrency slots), which only heartbeats do while a job runs
        assert registered.wait(WAIT_S), "the heartbeat stopped at the refused renewal"
    finally:
        release.set()
        runner.stop()
    assert r.get(timeout=WAIT_S) == "done"


def _first_ack_lost(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The first acknowledgement never reaches the broker, as when its worker dies right after
    writing the job's result: the message stays leased until its lease ends. Returns the id
    whose acknowledgement was lost, once it is."""
    real = memory_broker._MemoryConsumer.settle
    lost: list[str] = []

    async def settle(self, settlements):  # type: ignore[no-untyped-def]
        if not lost and settlements[0].action == "ack":
            lost.append(settlements[0].delivery.id)
            return [True, *await real(self, settlements[1:])]
        return await real(self, settlements)

    monkeypatch.setattr(memory_broker._MemoryConsumer, "settle", settle)
    return lost


@pytest.mark.parametrize("expires", [None, 10.0], ids=["no expiry", "expired since"])
def test_a_job_whose_acknowledgement_was_lost_is_not_run_again(
    app: Faena, clock: FakeClock, monkeypatch: pytest.MonkeyPatch, expires: float | None
) -> None:
    # Given a chord whose first member ran and was counted, but whose acknowledgement was lost
    # (its worker died after the result), while the other member waited on another queue
    ran: list[tuple[str, object]] = []

    @app.task(name="lost.add")
    def add(x: int, y: int) -> int:
        ran.append(("add", (x, y)))
        return x + y

    @app.task(name="lost.total")
    def total(values: list[int]) -> list[int]:
        ran.append(("total", values))
        return values

    # (with an expiry that passes before its next delivery: it ran, so it did not expire)
    result = chord(
        [add.s(1, 1).set(expires=expires), add.s(2, 2).set(queue="later")], total.s()
    ).delay()
    lost = _first_ack_lost(monkeypatch)
    drain(app)
    assert ran == [("add", (1, 1))]
    assert [(q.queue, q.leased) for q in asyncio.run(app.broker.stats())] == [
        ("default", 1),
        ("later", 0),
    ]
    # When its lease ends and a worker takes it again, with the other member
    clock.advance(app.settings.lease_s + 1)
    drain(app, ["default", "later"])
    # Then it did not run again; the body got both members' results; nothing is left
    assert ran == [("add", (1, 1)), ("add", (2, 2)), ("total", [2, 4])]
    assert result.get(timeout=WAIT_S) == [2, 4]
    assert app.AsyncResult(lost[0]).get(timeout=WAIT_S) == 2
    assert asyncio.run(app.broker.stats()) == []


def test_a_job_sent_again_with_the_id_of_a_finished_one_runs_again(app: Faena) -> None:
    # Given a job that ran and succeeded
    ran: list[int] = []

    @app.task(name="again.note")
    def note(i: int) -> int:
        ran.append(i)
        return i

    note.apply_async((1,), task_id="same")
    drain(app)
    # When a new send with the same id is made, Then it runs: its record is an earlier send's
    note.apply_async((2,), task_id="same")
    drain(app)
    assert ran == [1, 2]
    assert app.AsyncResult("same").get(timeout=WAIT_S) == 2

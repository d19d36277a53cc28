"""One message id sent to two queues of one Redis broker: two messages (a queue's keys live
in one slot, so no step can see both queues), and a worker of both queues runs each once."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterator

import pytest
import redis

from faena import BrokerError, Faena
from faena.contracts.broker import Outgoing
from faena.worker.worker import Worker, WorkerOptions
from tests.integration.conftest import wait_until
from tests.services import drop_prefix, redis_url, require

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def app() -> Iterator[Faena]:
    require("redis", "127.0.0.1", 6379)
    url = redis_url()
    app = Faena("same-id", broker=url, lease_s=5.0, heartbeat_s=0.5)
    yield app
    app.close()
    drop_prefix(url)


def test_a_worker_of_two_queues_runs_the_same_id_once_in_each(app: Faena) -> None:
    runs: list[str] = []
    lock = threading.Lock()

    # Given a task limited to two runs at once, sent with one id to two queues
    @app.task(concurrency_limit=2)
    def slow(where: str) -> str:
        with lock:
            runs.append(where)
        time.sleep(0.3)  # the job's own work, so both runs overlap
        return where

    slow.apply_async(("from-a",), task_id="job-1", queue="a")
    slow.apply_async(("from-b",), task_id="job-1", queue="b")
    # When one worker of both queues drains them
    options = WorkerOptions(queues=("a", "b"), pool="threads", concurrency=4, burst=True)
    assert asyncio.run(asyncio.wait_for(Worker(app, options).run(), 30)) == 0
    # Then each message ran once, and both were acknowledged
    assert sorted(runs) == ["from-a", "from-b"]
    assert asyncio.run(app.broker.stats()) == []
    assert asyncio.run(app.broker.dead_letters()) == []
    # And each run gave back its own concurrency slot
    assert [app.coordination.get(f"faena:slot:{slow.name}:{i}") for i in range(2)] == [None, None]


def test_a_refused_queue_does_not_keep_the_other_queues_leases_from_renewing(app: Faena) -> None:
    # Given a worker holding one id from two queues (renewed apart) and another message
    sends = [("j1", "b"), ("j1", "a"), ("a1", "a")]
    app.broker.enqueue([Outgoing(id=mid, queue=queue, body=b"x") for mid, queue in sends])
    worker = Worker(app, WorkerOptions(queues=("a", "b")))
    raw = redis.Redis.from_url(app.broker_url.split("?")[0])
    prefix = app.broker_url.rsplit("prefix=", 1)[1]

    async def scenario() -> None:
        # (b first: its messages are held, and renewed, first)
        consumer = await app.broker.open_consumer(["b", "a"], "w1")
        worker._consumer = consumer
        try:
            for delivery in await consumer.receive(10, 0):
                worker._ends.hold(delivery)
            # (their expiries moved a second back, so a renewal shows)
            leased_a = f"{prefix}:{{a}}:leased"
            before = {m: t - 1000 for m, t in raw.zrange(leased_a, 0, -1, withscores=True)}
            raw.zadd(leased_a, before)
            # When queue b's keys are taken over by another program, and the leases renewed
            raw.delete(f"{prefix}:{{b}}:leased")
            raw.rpush(f"{prefix}:{{b}}:leased", "not ours")
            with pytest.raises(BrokerError, match="queue b"):
                await worker._renew_leases()
            # Then queue a's leases were renewed all the same
            after = dict(raw.zrange(leased_a, 0, -1, withscores=True))
            assert set(after) == {b"j1", b"a1"}
            assert all(after[m] > before[m] for m in after)
        finally:
            raw.delete(f"{prefix}:{{b}}:leased")
            await consumer.close()

    asyncio.run(scenario())


@pytest.mark.parametrize(("concurrency", "prefetch"), [(4, 8), (1, 0)])
def test_a_queue_redis_refuses_holds_back_only_its_own_settlements(
    app: Faena, caplog: pytest.LogCaptureFixture, concurrency: int, prefetch: int
) -> None:
    caplog.set_level(logging.INFO, "faena.worker")
    raw = redis.Redis.from_url(app.broker_url.split("?")[0])
    prefix = app.broker_url.rsplit("prefix=", 1)[1]
    dead, leased_b = f"{prefix}:{{b}}:dead", f"{prefix}:{{b}}:leased"
    running, finish = threading.Event(), threading.Event()

    @app.task(queue="b", max_retries=0)
    def doomed() -> None:
        running.set()
        finish.wait(10)
        raise RuntimeError("boom")

    @app.task(queue="a")
    def quick(i: int) -> int:
        return i

    # Given a worker of two queues (at most 4 + 8, or 1, messages held) running a job of
    # queue b that will fail, for good
    sent = doomed.delay()
    options = WorkerOptions(queues=("a", "b"), concurrency=concurrency, prefetch=prefetch)
    worker = Worker(app, options)
    thread = threading.Thread(target=lambda: asyncio.run(worker.run()))
    thread.start()
    try:
        assert running.wait(10)
        # When another program's value takes queue b's dead set before the job's end
        raw.set(dead, "not ours")
        finish.set()
        # Then the job's dead-lettering is refused, and queue a is served and acknowledged
        # all the same, far past what the worker can hold at once
        results = [quick.delay(i) for i in range(60)]
        assert [r.get(timeout=10) for r in results] == list(range(60))
        assert [quick.delay(i).get(timeout=10) for i in range(20)] == list(range(20))
        # (queue b is left out of the counts while it is refused)
        wait_until(lambda: asyncio.run(app.broker.stats()) == [], 10, "queue a acknowledged")
        assert raw.zrange(leased_b, 0, -1) == [sent.id.encode()]

        # And the refused settlement is sent again on a pause of its own, twice as long each
        # time, whatever the other queue's writes do meanwhile
        def pauses() -> list[float]:
            refusals = [r for r in caplog.records if "refused by the broker" in r.message]
            return [float(r.getMessage().split(" in ", 1)[1].split("s:", 1)[0]) for r in refusals]

        n = 0
        while len(pauses()) < 3:
            assert quick.delay(n).get(timeout=10) == n
            n += 1
            assert n < 10_000, "the refused settlement was not sent again"
        assert pauses()[:3] == [0.5, 1.0, 2.0]
        # And once the value is gone, the job's message is dead-lettered (once, no lease lost)
        raw.delete(dead)
        wait_until(lambda: bool(asyncio.run(app.broker.dead_letters())), 15, "the dead letter")
        (letter,) = asyncio.run(app.broker.dead_letters())
        assert letter.id == sent.id
        assert any("had refused are written" in r.message for r in caplog.records)
        stats = asyncio.run(app.broker.stats())
        assert [(s.queue, s.ready, s.scheduled, s.leased, s.dead) for s in stats] == [
            ("b", 0, 0, 0, 1)
        ]
        assert not any("lease lost" in r.message for r in caplog.records)
    finally:
        finish.set()
        raw.delete(dead)
        worker.request_stop()
        thread.join(30)
        raw.close()


def test_a_revoke_is_written_even_when_a_queue_redis_refuses_stops_the_removal(
    app: Faena,
) -> None:
    @app.task(queue="a")
    def later() -> None:
        raise AssertionError("a revoked job ran")

    # Given a waiting job, and another queue under another program's value
    app.broker.enqueue([Outgoing(id="b0", queue="b", body=b"x")])
    raw = redis.Redis.from_url(app.broker_url.split("?")[0])
    ready_b = f"{app.broker_url.rsplit('prefix=', 1)[1]}:{{b}}:ready"
    raw.delete(ready_b)
    raw.set(ready_b, "not ours")
    try:
        sent = later.delay()
        # When it is revoked, Then the refusal is raised, after the job was revoked all the
        # same: its message removed from its queue, its record REVOKED for good
        with pytest.raises(BrokerError, match="queue b: WRONGTYPE"):
            sent.revoke()
        assert app.broker.locate(sent.id) is None
        assert sent.state == "REVOKED"
    finally:
        raw.delete(ready_b)
        raw.close()

"""One message id sent to two queues of one Redis broker: two messages (a queue's keys live
in one slot, so no step can see both queues), and a worker of both queues runs each once."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import pytest
import redis

from faena import BrokerError, Faena
from faena.contracts.broker import Outgoing
from faena.worker.worker import Worker, WorkerOptions
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

"""One message id sent to two queues of one Redis broker: two messages (a queue's keys live
in one slot, so no step can see both queues), and a worker of both queues runs each once."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import pytest

from faena import Faena
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

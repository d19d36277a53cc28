"""What a worker process on Redis carries while it waits for work: no thread and no module
that only some jobs, eager mode or other commands need."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from faena import Faena
from tests.integration.conftest import WorkerProcess
from tests.integration.idle_tasks import look_around
from tests.integration.redis_servers import RedisServer, private_redis

pytestmark = pytest.mark.timeout(120)
__all__ = ["private_redis"]


@pytest.fixture
def client(private_redis: RedisServer) -> Iterator[Faena]:
    app = Faena("idle-client", broker=private_redis.url)
    yield app
    app.close()


def test_a_worker_talks_to_redis_from_its_event_loop_and_loads_only_what_it_uses(
    client: Faena, private_redis: RedisServer, env: dict[str, str], tmp_path
) -> None:
    # Given a job that reports its worker's threads and loaded modules
    result = client.enqueue(look_around.name)
    # When a worker with the default pool registers itself, checks the server's settings and
    # runs it
    worker = WorkerProcess(
        ["-A", "tests.integration.idle_tasks", "--burst"],
        {**env, "FAENA_BROKER_URL": private_redis.url},
        tmp_path / "worker.log",
    )
    try:
        assert worker.wait(60) == 0, worker.output()
    finally:
        worker.stop()
    report = result.get(timeout=10)
    # Then those calls ran on the event loop: no executor thread was started for them
    assert report["threads"] == ["MainThread"], report
    # and none of the modules it has no use for was imported
    assert report["loaded"] == [], report

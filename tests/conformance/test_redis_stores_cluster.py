"""The conformance suites of the Redis result store and coordination store on a private
three-node Redis Cluster: keys spread over slots and nodes, scripts routed by their keys,
pipelines and multi-key reads split per node."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import cast

import pytest
import redis
from redis.crc import key_slot

from faena.backends.redis.coordination import RedisCoordinationStore
from faena.backends.redis.results import RedisResultStore
from faena.contracts.broker import Consumer
from faena.contracts.coordination import CoordinationStore
from faena.contracts.results import ResultStore
from faena.foundation.clock import Clock
from faena.foundation.exceptions import BrokerError
from faena.model.states import SUCCESS
from faena.testing.conformance import (
    CoordinationConformance,
    ResultStoreConformance,
    record,
    run,
)
from faena.worker.outbox import Outbox
from tests.integration.redis_servers import redis_cluster


@pytest.fixture(scope="module")
def cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with contextlib.ExitStack() as stack:
        for attempt in range(5):
            try:
                nodes = stack.enter_context(redis_cluster(tmp_path_factory.mktemp("cluster")))
                break
            except RuntimeError:
                # A node refuses a port above 55535 (its bus port is 10000 higher), and the
                # free port drawn may be one: draw again.
                if attempt == 4:
                    raise
        yield "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in nodes)


class _OnACluster:
    """A fresh key prefix on a private three-node cluster for each test."""

    url: str
    cluster: str

    @pytest.fixture(autouse=True, scope="class")
    @classmethod
    def _cluster(cls, cluster_url: str) -> None:
        cls.cluster = cluster_url

    def setup_method(self) -> None:
        self.url = f"{self.cluster}?prefix=c{time.monotonic_ns()}"
        super().setup_method()  # type: ignore[misc]


@pytest.mark.timeout(120)
class TestRedisResultStoreOnACluster(_OnACluster, ResultStoreConformance):
    def make_result_store(self, clock: Clock) -> ResultStore:
        return RedisResultStore(self.url, clock)


@pytest.mark.timeout(120)
class TestRedisCoordinationStoreOnACluster(_OnACluster, CoordinationConformance):
    def make_coordination_store(self, clock: Clock) -> CoordinationStore:
        return RedisCoordinationStore(self.url, clock)


def test_a_shard_refusing_writes_makes_the_outbox_wait_not_drop(cluster_url: str) -> None:
    # Given a cluster where one shard is out of memory, and two results, one for a job on that
    # shard and one for a job elsewhere
    ports = [int(hp.rsplit(":", 1)[1]) for hp in cluster_url.split("//", 1)[1].split(",")]
    full = redis.Redis(port=ports[0])
    prefix = f"oom{time.monotonic_ns()}"
    store = RedisResultStore(f"{cluster_url}?prefix={prefix}")
    owner = {
        slot: port
        for start, end, (_, port, *_), *_ in full.execute_command("CLUSTER SLOTS")
        for slot in range(start, end + 1)
    }
    on_full, elsewhere = None, None
    for i in range(1000):
        job = f"job-{i}"
        if owner[key_slot(f"{prefix}:{{{job}}}:r".encode())] == ports[0]:
            on_full = on_full or job
        else:
            elsewhere = elsewhere or job
    assert on_full is not None
    assert elsewhere is not None
    outbox = Outbox(store, cast(Consumer, None), lambda s, ok: None)

    async def flush() -> None:
        outbox.record(record(on_full, SUCCESS))
        outbox.record(record(elsewhere, SUCCESS))
        # When the outbox writes them
        with pytest.raises(BrokerError, match="maxmemory"):
            await outbox.flush()
        # Then the refused one is kept for the next try, not dropped as if it were bad
        assert outbox.pending()
        full.config_set("maxmemory", 0)
        await outbox.flush()

    full.config_set("maxmemory", 1)
    try:
        run(flush())
    finally:
        full.config_set("maxmemory", 0)
        full.close()
    assert [store.fetch(j) is not None for j in (on_full, elsewhere)] == [True, True]
    store.close()

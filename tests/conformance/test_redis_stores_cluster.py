"""The conformance suites of the Redis result store and coordination store on a private
three-node Redis Cluster: keys spread over slots and nodes, scripts routed by their keys,
pipelines and multi-key reads split per node."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import pytest

from faena.backends.redis.coordination import RedisCoordinationStore
from faena.backends.redis.results import RedisResultStore
from faena.contracts.coordination import CoordinationStore
from faena.contracts.results import ResultStore
from faena.foundation.clock import Clock
from faena.testing.conformance import CoordinationConformance, ResultStoreConformance
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

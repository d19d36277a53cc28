"""faena on a real three-node Redis Cluster, started by the test on private ports."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import redis.cluster

from faena import Faena
from faena.backends.redis.broker import RedisBroker
from faena.contracts.broker import BrokerConfig, Settlement
from faena.foundation.exceptions import BrokerUnavailable
from faena.testing import drain
from faena.testing.conformance import out, run
from tests.integration.redis_servers import redis_cluster

pytestmark = pytest.mark.timeout(120)

QUEUES = ("default", "emails", "reports", "billing.high", "images")


def test_several_queues_enqueue_and_drain_on_a_three_node_cluster(tmp_path: Path) -> None:
    with redis_cluster(tmp_path) as nodes:
        url = "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in nodes)
        app = Faena("cluster", broker=url)
        try:

            @app.task
            def double(x: int) -> int:
                return 2 * x

            # Given messages in five queues, spread over the cluster's slots (one bulk call,
            # then single ones)
            bulk = app.enqueue_many(double.name, [(i,) for i in range(100)])
            single = [
                double.apply_async((i,), queue=QUEUES[i % len(QUEUES)]) for i in range(100, 200)
            ]
            # Then the queues live on more than one node (each queue's keys share its hash tag)
            probe = redis.cluster.RedisCluster(host="127.0.0.1", port=nodes[0].port)
            try:
                owners = {probe.get_node_from_key(f"{{{q}}}").name for q in QUEUES}
            finally:
                probe.close()
            assert len(owners) > 1

            # When a worker drains every queue
            ran = drain(app, queues=QUEUES)

            # Then every message ran once and every result is readable from the cluster
            assert ran == 200
            assert [r.get(timeout=5) for r in bulk + single] == [2 * i for i in range(200)]
            stats = asyncio.run(app.broker.stats())
            assert all(s.ready == s.scheduled == s.leased == s.dead == 0 for s in stats)

            # And a worker starting on this cluster (no AOF, no snapshots on any node) is told,
            # node by node
            warnings = asyncio.run(app.broker.warnings())
            assert sorted(w.split(" of ")[0] for w in warnings) == sorted(
                f"Redis node 127.0.0.1:{n.port}" for n in nodes
            )
            assert all("keeps nothing on disk" in w for w in warnings)
        finally:
            app.close()


def test_a_fetch_keeps_what_it_leased_when_another_queues_node_fails(tmp_path: Path) -> None:
    # Nodes that keep serving their own slots when another node is down
    with redis_cluster(tmp_path, 3, "--cluster-require-full-coverage", "no") as nodes:
        url = "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in nodes)
        probe = redis.cluster.RedisCluster(host="127.0.0.1", port=nodes[0].port)
        try:
            owner = {q: probe.get_node_from_key(f"{{{q}}}").port for q in QUEUES}
        finally:
            probe.close()
        first = QUEUES[0]
        second = next(q for q in QUEUES if owner[q] != owner[first])
        broker = RedisBroker(url + "?timeout=2", BrokerConfig(lease_s=60))

        async def scenario() -> None:
            # Given a running consumer of two queues that live on different nodes, with
            # messages in both
            consumer = await broker.open_consumer([first, second], "w1")
            try:
                # (two fetches: each starts at the next queue, so the next starts at the first)
                assert await consumer.receive(10, 0) == []
                assert await consumer.receive(10, 0) == []
                broker.enqueue([out("a1", first), out("a2", first), out("b1", second)])
                # When the second queue's node dies
                next(n for n in nodes if n.port == owner[second]).kill()
                # Then a fetch hands out what it leased from the first queue, not dropped
                got = await consumer.receive(10, 0)
                assert sorted(d.id for d in got) == ["a1", "a2"]
                # And the next fetch, with nothing to give, says the node is unreachable
                with pytest.raises(BrokerUnavailable):
                    await consumer.receive(10, 0)
                assert await consumer.settle([Settlement(delivery=d, action="ack") for d in got])
            finally:
                await consumer.close()

        try:
            run(scenario())
        finally:
            broker.close()

"""The connections a sync producer sends single commands on (``SyncSender``): they survive a
server restart, are never shared with a forked child, and stay within ``max_connections``."""

from __future__ import annotations

import multiprocessing
import threading
from multiprocessing.connection import Connection

import pytest
import redis

from faena.backends.redis._client import SyncSender, parse_url, sync_client
from faena.backends.redis.broker import RedisBroker
from faena.contracts.broker import BrokerConfig
from faena.testing.conformance import out
from tests.integration.redis_servers import RedisServer, private_redis

__all__ = ["private_redis"]

pytestmark = pytest.mark.timeout(60)


def _queued(url: str) -> int:
    broker = RedisBroker(url, BrokerConfig())
    try:
        return sum(1 for m in ("a", "b") if broker.locate(m) == "queued")
    finally:
        broker.close()


def test_a_producer_sends_again_after_the_server_restarts(private_redis: RedisServer) -> None:
    broker = RedisBroker(private_redis.url, BrokerConfig())
    try:
        # Given a producer whose connection was used once
        broker.enqueue([out("a")])

        # When the server restarts (its files keep what it had) and the producer sends again
        private_redis.stop()
        private_redis.start()
        broker.enqueue([out("b")])
    finally:
        broker.close()

    # Then the closed connection was replaced before the send: no error, both are queued
    assert _queued(private_redis.url) == 2


def _child_connection(sender: SyncSender, answer: Connection) -> None:
    answer.send(sender.execute("CLIENT", "ID"))


def test_a_forked_child_does_not_send_on_its_parents_connections(
    private_redis: RedisServer,
) -> None:
    # Given a producer's sender whose connection is in use, then a child forked from it
    sender = SyncSender(sync_client(parse_url(private_redis.url), private_redis.url))
    try:
        parent_id = sender.execute("CLIENT", "ID")
        receive, answer = multiprocessing.get_context("fork").Pipe(duplex=False)
        child = multiprocessing.get_context("fork").Process(
            target=_child_connection, args=(sender, answer)
        )
        child.start()
        child.join(30)

        # Then the child sent on a connection of its own, and the parent's still works
        assert child.exitcode == 0
        assert receive.recv() != parent_id
        assert sender.execute("CLIENT", "ID") == parent_id
    finally:
        sender.close()


def test_more_callers_than_connections_wait_their_turn(private_redis: RedisServer) -> None:
    url = private_redis.url + "?max_connections=2"
    broker = RedisBroker(url, BrokerConfig())
    errors: list[BaseException] = []

    def produce(n: int) -> None:
        try:
            for i in range(100):
                broker.enqueue([out(f"t{n}-{i}")])
        except BaseException as exc:
            errors.append(exc)

    # Given 8 threads sending at once to a broker allowed 2 connections per pool
    threads = [threading.Thread(target=produce, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    client = redis.Redis.from_url(private_redis.url)
    try:
        peak = 0
        while any(t.is_alive() for t in threads):
            peak = max(peak, int(client.info("clients")["connected_clients"]))
        for t in threads:
            t.join()
        # Then every message is sent, on at most 2 lines and the pool's 2 (and this client)
        assert errors == []
        assert client.zcard("faena:{default}:ready") == 800
        assert peak <= 5
    finally:
        client.close()
        broker.close()

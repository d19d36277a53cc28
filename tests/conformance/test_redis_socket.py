"""Redis over its Unix socket (``redis+socket://``): the broker, result store and coordination
conformance suites on a private server reached only through its socket, the URL forms, and a
real worker process that runs jobs over it."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from faena import Faena
from faena.backends.redis.broker import RedisBroker
from faena.backends.redis.coordination import RedisCoordinationStore
from faena.backends.redis.results import RedisResultStore
from faena.contracts.broker import Broker, BrokerConfig
from faena.contracts.coordination import CoordinationStore
from faena.contracts.results import ResultStore
from faena.foundation.clock import Clock
from faena.foundation.exceptions import BrokerUnavailable, ConfigurationError
from faena.testing.conformance import (
    BrokerConformance,
    CoordinationConformance,
    ResultStoreConformance,
    out,
    run,
)
from tests.integration.conftest import ROOT, WorkerProcess
from tests.integration.redis_servers import RedisServer

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def socket_path(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private redis-server; its socket's path. (A Unix socket path is limited to about 100
    bytes, so the socket lives in a short directory of its own.)"""
    directory = tmp_path_factory.mktemp("sock")
    path = f"/tmp/faena-{uuid.uuid4().hex[:10]}.sock"
    server = RedisServer(directory, "--unixsocket", path, "--unixsocketperm", "700")
    server.start()
    try:
        yield path
    finally:
        server.stop()
        if os.path.exists(path):
            os.unlink(path)


def socket_url(path: str, db: int = 0) -> str:
    return f"redis+socket://{path}?db={db}&prefix=t{uuid.uuid4().hex[:12]}"


class OnSocket:
    """A fresh prefix on the private server for each test (``self.url``)."""

    url: str

    @pytest.fixture(autouse=True)
    def _on_the_socket(self, socket_path: str) -> None:
        self.url = socket_url(socket_path)


class TestSocketBroker(OnSocket, BrokerConformance):
    def make_broker(self, config: BrokerConfig) -> Broker:
        return RedisBroker(self.url, config)


class TestSocketResultStore(OnSocket, ResultStoreConformance):
    def make_result_store(self, clock: Clock) -> ResultStore:
        return RedisResultStore(self.url, clock)


class TestSocketCoordinationStore(OnSocket, CoordinationConformance):
    def make_coordination_store(self, clock: Clock) -> CoordinationStore:
        return RedisCoordinationStore(self.url, clock)


@pytest.mark.parametrize(
    "url",
    [
        "redis+socket:///run/redis/redis.sock",
        "redis+socket:///run/redis/redis.sock?db=3&prefix=shop&timeout=2",
        "redis+socket://:secret@/run/redis/redis.sock",
        "redis+socket://user:secret@/run/redis/redis.sock?db=1",
    ],
)
def test_socket_url_forms_are_accepted_without_connecting(url: str) -> None:
    # A broker connects on first use, so a socket that is not there is fine until then
    RedisBroker(url, BrokerConfig()).close()


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis+socket://localhost/run/redis.sock", "names no host"),
        ("redis+socket://:secret@localhost/run/redis.sock", "names no host"),
        ("redis+socket://", "absolute path"),
        ("redis+socket:///", "absolute path"),
        ("redis+socket:///run/redis.sock?db=first", "database number"),
        ("redis+socket:///run/redis.sock?prefix=a%7Bb%7D", "invalid key prefix"),
        ("redis+socket:///run/redis.sock?ssl_cert_reqs=required", "no TLS settings"),
    ],
)
def test_bad_socket_urls_are_configuration_errors(url: str, problem: str) -> None:
    with pytest.raises(ConfigurationError, match=problem):
        RedisBroker(url, BrokerConfig())


def test_the_database_number_keeps_apps_apart(socket_path: str) -> None:
    # Given one app on database 1 and one on database 2 of the same server, same prefix
    one = RedisBroker(f"redis+socket://{socket_path}?db=1&prefix=same", BrokerConfig())
    two = RedisBroker(f"redis+socket://{socket_path}?db=2&prefix=same", BrokerConfig())
    try:
        one.enqueue([out("m1", "q")])
        # Then each sees only its own messages
        assert one.locate("m1") is not None
        assert two.locate("m1") is None
    finally:
        run(one.purge(["q"]))
        one.close()
        two.close()


def test_a_socket_nobody_listens_on_is_broker_unavailable(tmp_path: Path) -> None:
    broker = RedisBroker(f"redis+socket://{tmp_path}/none.sock?timeout=1", BrokerConfig())
    try:
        with pytest.raises(BrokerUnavailable, match=f"Redis at {tmp_path}/none.sock"):
            broker.enqueue([out("m1")])
    finally:
        broker.close()


def test_a_worker_runs_jobs_and_stores_results_over_the_socket(
    socket_path: str, tmp_path: Path
) -> None:
    # Given jobs sent over the socket
    url = socket_url(socket_path)
    app = Faena("socket-client", broker=url)
    try:
        results = [app.enqueue("tests.integration.fault_tasks.work", i) for i in range(20)]
        # When a real worker on the same URL drains them
        worker = WorkerProcess(
            ["-A", "tests.integration.fault_tasks", "--burst"],
            {**os.environ, "PYTHONPATH": str(ROOT), "FAENA_BROKER_URL": url},
            tmp_path / "worker.log",
        )
        try:
            assert worker.wait(60) == 0, worker.output()
        finally:
            worker.stop()
        # Then every job ran once and its result came back over the socket
        assert [r.get(timeout=10) for r in results] == list(range(20))
        assert {r.record.deliveries for r in results if r.record} == {1}
    finally:
        app.close()

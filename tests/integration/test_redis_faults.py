"""Real worker processes on a private Redis server, under the faults the guarantees speak of:
a worker killed or paused while holding leases, and Redis itself crashing mid-run."""

from __future__ import annotations

import asyncio
import signal
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from faena import BrokerError, BrokerUnavailable, Faena
from faena.backends.redis.broker import RedisBroker
from faena.contracts.broker import BrokerConfig
from faena.testing.conformance import out
from tests.integration.conftest import WorkerProcess, ledger_lines, wait_until
from tests.integration.redis_servers import RedisServer, private_redis

TASKS = "tests.integration.fault_tasks"
pytestmark = pytest.mark.timeout(120)
__all__ = ["private_redis"]


@pytest.fixture
def env(env: dict[str, str], private_redis: RedisServer) -> dict[str, str]:
    return {**env, "FAENA_BROKER_URL": private_redis.url + "?timeout=2"}


@pytest.fixture
def client(env: dict[str, str]) -> Iterator[Faena]:
    app = Faena("faults-client", broker=env["FAENA_BROKER_URL"])
    yield app
    app.close()


def lines(env: dict[str, str], kind: str) -> list[list[str]]:
    return [line for line in ledger_lines(env) if line[0] == kind]


def test_sigkill_of_a_worker_holding_leases_loses_nothing(client, env, start_worker):
    # Given a worker holding 50 leased messages, all running long jobs
    results = [client.enqueue(f"{TASKS}.work", i) for i in range(50)]
    first = start_worker(
        "--pool", "threads", "-c", "50", "--prefetch", "0", FAULT_SLEEP_S="600", FAULT_LEASE_S="2"
    )
    wait_until(lambda: len(lines(env, "start")) == 50, 30, "50 jobs running on the first worker")

    # When it is killed outright
    first.signal(signal.SIGKILL)
    first.wait(10)

    # Then a second worker completes all 50 once the leases expire, each exactly once
    start_worker("-c", "10", FAULT_SLEEP_S="0", FAULT_LEASE_S="2")
    assert [r.get(timeout=60) for r in results] == list(range(50))
    assert Counter(int(line[1]) for line in lines(env, "done")) == Counter(range(50))
    # and the duplicate delivery of each is counted on its job
    assert {r.record.deliveries for r in results} == {2}


def test_a_worker_paused_past_its_lease_cannot_ack_or_overwrite_the_result(
    client, env, start_worker
):
    # Given a worker running a job with a 1-second lease
    result = client.enqueue(f"{TASKS}.whose", 7)
    paused = start_worker("-c", "1", "--prefetch", "0", FAULT_SLEEP_S="2", FAULT_LEASE_S="1")
    wait_until(lambda: len(lines(env, "start")) == 1, 30, "the job running")

    # When it is paused (SIGSTOP) past its lease, and another worker takes the job over
    paused.signal(signal.SIGSTOP)
    try:
        start_worker("-c", "1", FAULT_SLEEP_S="0", FAULT_LEASE_S="1")
        winner = result.get(timeout=30)
        assert winner != paused.pid
    finally:
        # And the paused worker wakes up and finishes its own run
        paused.signal(signal.SIGCONT)
    wait_until(
        lambda: [int(line[2]) for line in lines(env, "done")].count(paused.pid) == 1,
        30,
        "the paused worker finishing its run",
    )
    wait_until(
        lambda: "not written: a newer delivery" in paused.output(),
        30,
        "the paused worker's result being refused",
    )

    # Then its result was refused: the stored one is the winner's, from the second delivery
    record = client.results.fetch(result.id)
    assert record is not None
    assert result.get(timeout=1) == winner
    assert record.deliveries == 2
    # and its ack too: the message is gone and was not run a third time
    assert client.broker.locate(result.id) is None
    assert len(lines(env, "start")) == 2


def test_redis_crash_with_aof_always_loses_no_acknowledged_enqueue(
    client, env, start_worker, private_redis: RedisServer
):
    # Given a worker consuming while a producer enqueues one message at a time
    worker = start_worker("-c", "4", FAULT_LEASE_S="3")
    acknowledged: list[int] = []
    refused: list[int] = []
    stop = threading.Event()

    def produce() -> None:
        i = 0
        while not stop.is_set():
            try:
                client.enqueue(f"{TASKS}.mark", i)
            except BrokerUnavailable:
                refused.append(i)
                stop.wait(0.05)  # pacing while Redis is down, not synchronisation
            else:
                acknowledged.append(i)
            i += 1

    producer = threading.Thread(target=produce, name="producer")
    producer.start()
    try:
        wait_until(lambda: len(lines(env, "mark")) >= 200, 30, "the worker running jobs")

        # When Redis crashes (SIGKILL) mid-run and comes back on the same files
        private_redis.kill()
        wait_until(lambda: len(refused) >= 1, 30, "the producer noticing")
        wait_until(lambda: "retrying with back-off" in worker.output(), 30, "the worker noticing")
        enqueued_before = len(acknowledged)
        private_redis.start()
        wait_until(lambda: len(acknowledged) > enqueued_before + 200, 30, "enqueues resuming")
    finally:
        stop.set()
        producer.join(30)

    def ran() -> set[int]:
        return {int(line[1]) for line in lines(env, "mark")}

    # Then the same worker process resumes within 30 s, with no restart
    first_after = acknowledged[enqueued_before]
    wait_until(lambda: first_after in ran(), 30, "the worker resuming after the restart")
    assert worker.proc.poll() is None
    assert "works again" in worker.output()
    # and every enqueue the producer saw acknowledged runs (refused ones may or may not)
    wait_until(lambda: set(acknowledged) <= ran(), 60, "every acknowledged enqueue to run")


def test_the_worker_warns_about_a_server_that_keeps_nothing_on_disk(
    tmp_path: Path, env: dict[str, str], start_worker
):
    # Given a Redis server with no persistence and an evicting memory policy
    bare = RedisServer(tmp_path / "bare", "--appendonly", "no", "--maxmemory-policy", "allkeys-lru")
    bare.start()
    try:
        # When a worker starts on it
        worker: WorkerProcess = start_worker(FAENA_BROKER_URL=bare.url)
        wait_until(lambda: "ready" in worker.output(), 30, "the worker to start")
        # Then it says, in plain words, what can be lost
        output = worker.output()
        assert "keeps nothing on disk" in output
        assert "maxmemory-policy allkeys-lru" in output
    finally:
        bare.stop()


def test_a_worker_whose_user_may_not_run_info_starts_says_so_and_works(
    tmp_path: Path, env: dict[str, str], start_worker
):
    # Given a Redis server whose application user may not run INFO or CONFIG (a common
    # hardening: +@all -@dangerous)
    server = RedisServer(tmp_path / "acl", "--appendonly", "no")
    server.start()
    try:
        with redis.Redis.from_url(server.url) as admin:
            admin.execute_command(
                "ACL", "SETUSER", "app", "on", ">pw", "~*", "&*", "+@all", "-@dangerous"
            )
        url = server.url.replace("redis://", "redis://app:pw@") + "?timeout=2"
        # When a worker starts on it as that user
        worker: WorkerProcess = start_worker(FAENA_BROKER_URL=url)
        wait_until(lambda: "ready" in worker.output(), 30, "the worker to start")
        # Then it says what it could not check, and runs jobs
        assert "refused INFO" in worker.output()
        producer = Faena("acl-producer", broker=url)
        try:
            assert producer.enqueue(f"{TASKS}.work", 7).get(timeout=30) == 7
        finally:
            producer.close()
    finally:
        server.stop()


@pytest.mark.parametrize("credentials", [":wrong@", ""])
def test_refused_credentials_are_a_fault_to_fix_not_an_outage(
    private_redis: RedisServer, credentials: str
) -> None:
    # Given a server that wants a password, and an app with a wrong one or none
    admin = redis.Redis(port=private_redis.port)
    admin.config_set("requirepass", "secret")
    admin.close()
    url = f"redis://{credentials}127.0.0.1:{private_redis.port}/0"
    app = Faena("credentials", broker=url, results=url)

    @app.task
    def work() -> None:
        pass

    async def receive() -> None:
        consumer = await app.broker.open_consumer(["default"], "w1")
        try:
            await consumer.receive(1, 0)
        finally:
            await consumer.close()

    try:
        # When it sends, waits for a result or claims
        for call in (work.delay, lambda: app.AsyncResult("x").get(timeout=1)):
            with pytest.raises(BrokerError) as caught:
                call()
            # Then each says the credentials were refused: not BrokerUnavailable, which a
            # caller waits out as if the server were down
            assert not isinstance(caught.value, BrokerUnavailable)
            assert "refused the connection's credentials" in str(caught.value)
        with pytest.raises(BrokerError, match="credentials") as claimed:
            asyncio.run(receive())
        assert not isinstance(claimed.value, BrokerUnavailable)
    finally:
        app.close()


def test_a_busy_server_during_a_lease_renewal_does_not_set_its_queue_aside(
    private_redis: RedisServer,
) -> None:
    # Given a worker's consumer holding a lease in queue q, with more messages waiting there
    admin = redis.Redis(port=private_redis.port)
    admin.config_set("busy-reply-threshold", 100)
    broker = RedisBroker(private_redis.url, BrokerConfig(lease_s=30))
    broker.enqueue([out(f"m{i}", "q") for i in range(3)])
    runner = redis.Redis(port=private_redis.port)
    busy = threading.Thread(
        target=lambda: _killed(runner, "while true do redis.call('TIME') end"), daemon=True
    )

    async def scenario() -> tuple[str, list[str]]:
        consumer = await broker.open_consumer(["q", "other"], "w1")
        try:
            held = await consumer.receive(1, 0)
            # When another client's script holds the server past busy-reply-threshold while
            # the lease is renewed
            busy.start()
            wait_until(lambda: _answers_busy(admin), 10, "the server to answer BUSY")
            with pytest.raises(BrokerError) as caught:
                await consumer.extend(held, 30)
            admin.script_kill()
            busy.join(10)
            # Then the renewal fails as a whole, and once the server is free again the queue
            # is claimed from at once: it was not taken for another program's keys
            return str(caught.value), [d.id for d in await consumer.receive(2, 0)]
        finally:
            await consumer.close()

    try:
        error, claimed = asyncio.run(scenario())
        assert "BUSY" in error
        assert claimed == ["m1", "m2"]
    finally:
        if busy.is_alive():
            admin.script_kill()
            busy.join(10)
        broker.close()
        runner.close()
        admin.close()


def _killed(client: redis.Redis, script: str) -> None:
    with pytest.raises(redis.exceptions.ResponseError, match="killed"):
        client.eval(script, 0)


def _answers_busy(client: redis.Redis) -> bool:
    try:
        client.ping()
    except redis.exceptions.BusyLoadingError:
        raise
    except redis.exceptions.ResponseError as error:
        return str(error).startswith("BUSY")
    return False

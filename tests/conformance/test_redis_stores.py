"""The conformance suites against the Redis result store and coordination store, plus what
only Redis promises: waits woken by the server, memory freed by Redis's own expiry, exact
fences, sets of members, and typed errors from a server that does not answer (the suites on a
Redis Cluster are in ``test_redis_stores_cluster.py``)."""

from __future__ import annotations

import asyncio
import gc
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import msgspec
import pytest
import redis
from redis.crc import key_slot

from faena import AsyncResult, Faena, chain, chord
from faena.backends.redis._client import parse_url
from faena.backends.redis.broker import RedisBroker
from faena.backends.redis.coordination import RedisCoordinationStore
from faena.backends.redis.results import RedisResultStore
from faena.contracts.broker import BrokerConfig, Consumer, Delivery
from faena.contracts.coordination import CoordinationStore
from faena.contracts.results import ResultStore
from faena.foundation.clock import Clock, FakeClock
from faena.foundation.exceptions import BrokerError, BrokerUnavailable, RecordRefused
from faena.model.outcome import FINAL_FENCE, JobRecord
from faena.model.states import STARTED, SUCCESS
from faena.testing.conformance import (
    PROMPT_S,
    CoordinationConformance,
    ResultStoreConformance,
    out,
    record,
    run,
)
from faena.testing.drain import adrain
from faena.worker.outbox import Outbox
from tests.integration.redis_servers import RedisServer, free_port, private_redis
from tests.services import OnRedis, drop_prefix, redis_url

__all__ = ["private_redis"]

ROOT = Path(__file__).resolve().parents[2]


class TestRedisResultStore(OnRedis, ResultStoreConformance):
    def make_result_store(self, clock: Clock) -> ResultStore:
        return RedisResultStore(self.url, clock)


class TestRedisCoordinationStore(OnRedis, CoordinationConformance):
    def make_coordination_store(self, clock: Clock) -> CoordinationStore:
        return RedisCoordinationStore(self.url, clock)


# -- helpers --------------------------------------------------------------------------------
def eventually(condition: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.005)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A private redis-server: its command counts and key counts are this module's alone."""
    private = RedisServer(tmp_path_factory.mktemp("redis"), "--appendonly", "no")
    private.start()
    yield private
    private.stop()


@pytest.fixture
def admin(server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis(port=server.port)
    client.flushall()  # the private server only
    client.config_resetstat()
    yield client
    client.close()


def calls(admin: redis.Redis) -> dict[str, int]:
    """Commands the server ran since the last ``CONFIG RESETSTAT``, by lower-case name."""
    stats: dict[str, Any] = admin.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(s["calls"]) for name, s in stats.items()}


def blocked(admin: redis.Redis) -> int:
    return int(admin.info("clients")["blocked_clients"])


class Waiting:
    """``wait`` (or ``await_ready``) on a thread of its own, with its answer kept."""

    def __init__(self, store: RedisResultStore, job_id: str, *, use_async: bool = False) -> None:
        self.answer: Any = None
        if use_async:
            target = lambda: run(store.await_ready(job_id, 10.0))  # noqa: E731
        else:
            target = lambda: store.wait(job_id, 10.0)  # noqa: E731
        self._thread = threading.Thread(target=lambda: setattr(self, "answer", target()))
        self._thread.start()

    def join(self) -> Any:
        self._thread.join(10)
        assert not self._thread.is_alive(), "the waiter did not return"
        return self.answer


# -- waiting without polling ----------------------------------------------------------------
@pytest.mark.parametrize("use_async", [False, True], ids=["wait", "await_ready"])
def test_a_waiter_blocks_on_the_server_and_is_woken_by_the_write(
    server: RedisServer, admin: redis.Redis, use_async: bool
) -> None:
    url = server.url + "?prefix=w"
    store, writer = RedisResultStore(url), RedisResultStore(url)
    try:
        store.store(record("j1", STARTED))
        admin.config_resetstat()
        # Given a caller waiting for a running job
        waiting = Waiting(store, "j1", use_async=use_async)
        # Then it waits inside the server (a blocking command), not by asking again and again
        eventually(lambda: blocked(admin) == 1, "the waiter to block on the server")
        # When another client stores the final record
        writer.store(record("j1", SUCCESS, fence=2))
        # Then the waiter returns it, having read the record once and blocked once (the wake
        # element carries the record)
        assert waiting.join() == record("j1", SUCCESS, fence=2)
        counts = calls(admin)
        assert (counts.get("get"), counts.get("blmove")) == (1, 1)
    finally:
        store.close()
        writer.close()


def test_a_write_from_another_process_wakes_every_waiter(
    server: RedisServer, admin: redis.Redis
) -> None:
    url = server.url + "?prefix=w"
    store = RedisResultStore(url)
    try:
        # Given three sync waiters and one async waiter on the same job
        waiters = [Waiting(store, "j1") for _ in range(3)]
        waiters.append(Waiting(store, "j1", use_async=True))
        eventually(lambda: blocked(admin) == 4, "four waiters to block on the server")
        # When a process of its own stores the job's result
        code = (
            "from faena.backends.redis.results import RedisResultStore\n"
            "from faena.testing.conformance import record\n"
            f"s = RedisResultStore({url!r})\n"
            "s.store(record('j1', 'SUCCESS', value=b'42'))\n"
            "s.close()\n"
        )
        subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)
        # Then every waiter wakes with it (the wake element rotates, it is not taken)
        assert [w.join() for w in waiters] == [record("j1", SUCCESS, value=b"42")] * 4
        assert store.wait("j1", 0) == record("j1", SUCCESS, value=b"42")
    finally:
        store.close()


def test_a_record_that_is_no_longer_ready_does_not_wake_waiters(
    server: RedisServer, admin: redis.Redis
) -> None:
    store = RedisResultStore(server.url + "?prefix=w")
    try:
        # Given a job that finished, then was delivered again and is running anew
        store.store(record("j1", SUCCESS, fence=1))
        store.store(record("j1", STARTED, fence=2))
        admin.config_resetstat()
        # When a caller waits for it a little while
        got = store.wait("j1", 0.3)
        # Then it blocked quietly until the timeout instead of being woken by the old result
        assert got == record("j1", STARTED, fence=2)
        assert calls(admin).get("blmove", 0) == 1
    finally:
        store.close()


# -- expiry on the server ------------------------------------------------------------------
def test_expired_keys_are_freed_by_the_server_itself_on_the_system_clock(
    server: RedisServer, admin: redis.Redis
) -> None:
    url = server.url + "?prefix=x"
    results, keys = RedisResultStore(url), RedisCoordinationStore(url)
    try:
        # Given a result, a text key, a counter and a set, each living 1 s, and a token
        soon = time.time() + 1
        assert results.store(record("j1", SUCCESS, expires_at=soon)) is True
        assert keys.set_if_absent("lock", "me", 1) is True
        assert keys.incr("hits", 1, 1) == 1
        assert keys.add_member("members", "a", 1) == (True, 1)
        assert keys.next_token("lock") == 1
        # Then each Redis key carries a native expiry of at most that, the wake list included
        names = admin.keys("*")
        reading = admin.pipeline(transaction=True)  # all at one instant
        for name in names:
            reading.pttl(name)
        ttls = {n.decode(): ttl for n, ttl in zip(names, reading.execute(), strict=True)}
        assert ttls.pop("x:{lock}:c:token") == -1
        assert len(ttls) == 6
        assert all(0 < ttl <= 1000 for ttl in ttls.values()), ttls
        assert ttls["x:{j1}:r:wake"] <= ttls["x:{j1}:r"]
        # When the time has passed, the server has deleted them by itself (nothing read them)
        eventually(lambda: admin.dbsize() == 1, "the server to free the expired keys")
        assert run(results.cleanup()) == 0
        assert run(keys.cleanup()) == 0
        assert (results.fetch("j1"), keys.get("lock"), keys.next_token("lock")) == (None, None, 2)
    finally:
        results.close()
        keys.close()


@pytest.fixture
def shared() -> Iterator[str]:
    """A URL with a fresh key prefix on the shared Redis, deleted afterwards."""
    url = redis_url()
    yield url
    drop_prefix(url)


def pttl(url: str, name: str) -> int:
    """The native expiry left on ``prefix:name`` in ms (-1: none, -2: no such key)."""
    raw = redis.Redis.from_url(url.split("?", maxsplit=1)[0])
    try:
        return int(raw.pttl(f"{url.rsplit('prefix=', 1)[1]}:{name}"))
    finally:
        raw.close()


class Foreign:
    """Another program writing under the shared prefix: ``plant(job_id)`` puts its value where
    faena keeps that job's record; ``read(job_id)`` reads it back."""

    def __init__(self, url: str) -> None:
        self.prefix = url.rsplit("prefix=", 1)[1]
        self.raw = redis.Redis.from_url(url.split("?", maxsplit=1)[0])

    def key(self, job_id: str) -> str:
        return f"{self.prefix}:{{{job_id}}}:r"

    def plant(self, job_id: str) -> None:
        self.raw.set(self.key(job_id), b"not a record")

    def read(self, job_id: str) -> bytes | None:
        return cast("bytes | None", self.raw.get(self.key(job_id)))


@pytest.fixture
def foreign(shared: str) -> Iterator[Foreign]:
    other = Foreign(shared)
    yield other
    other.raw.close()


def test_on_a_test_clock_native_expiry_is_generous_and_absent_without_a_ttl(
    shared: str,
) -> None:
    clock = FakeClock()
    results, keys = RedisResultStore(shared, clock), RedisCoordinationStore(shared, clock)
    try:
        # Given keys expiring in 10 s of fake time, and keys without a TTL
        results.store(record("short", SUCCESS, expires_at=clock.time() + 10))
        results.store(record("forever", SUCCESS))
        keys.set_if_absent("lock", "me", 10)
        keys.incr("total")
        # Then Redis keeps the first kind about an hour (fake time is not the server's), the
        # wake list 10 s at most, and the second kind for ever
        hour_ms = 3_600_000
        assert hour_ms - 60_000 < pttl(shared, "{short}:r") <= hour_ms
        assert 0 < pttl(shared, "{short}:r:wake") <= 10_000
        assert hour_ms - 60_000 < pttl(shared, "{lock}:c") <= hour_ms
        assert (pttl(shared, "{forever}:r"), pttl(shared, "{total}:c")) == (-1, -1)
        # And fake time alone expires them for every reader
        clock.advance(10)
        assert (results.fetch("short"), keys.get("lock")) == (None, None)
    finally:
        results.close()
        keys.close()


@pytest.mark.parametrize("use_async", [False, True], ids=["wait", "await_ready"])
def test_on_a_test_clock_a_wait_for_an_expired_record_blocks_instead_of_spinning(
    server: RedisServer, admin: redis.Redis, use_async: bool
) -> None:
    # Given a finished record that has expired by the test clock (its wake list, kept in real
    # time, still holds it)
    clock = FakeClock()
    store = RedisResultStore(server.url + "?prefix=spin", clock)
    try:
        store.store(record("j", SUCCESS, expires_at=clock.time() + 1))
        clock.advance(2)
        admin.config_resetstat()
        # When a caller waits for it for a while
        got = run(store.await_ready("j", 0.3)) if use_async else store.wait("j", 0.3)
        # Then there is no record, and the wait blocked on the server instead of asking again
        # and again
        assert got is None
        assert calls(admin).get("blmove", 0) <= 2
    finally:
        store.close()


def test_fences_compare_exactly_up_to_the_final_fence(shared: str) -> None:
    store = RedisResultStore(shared, FakeClock())
    try:
        # 2**62 - 1 and 2**62 are one number to Lua's doubles, two to the store
        assert store.store(record("j1", SUCCESS, fence=FINAL_FENCE)) is True
        assert store.store(record("j1", STARTED, fence=FINAL_FENCE - 1)) is False
        assert store.store(record("j1", SUCCESS, fence=FINAL_FENCE, worker="w")) is True
        assert store.fetch("j1") == record("j1", SUCCESS, fence=FINAL_FENCE, worker="w")
    finally:
        store.close()


def test_a_foreign_value_under_the_prefix_is_a_clear_error(shared: str, foreign: Foreign) -> None:
    store = RedisResultStore(shared)
    try:
        # Given another program's value where faena keeps job j1's record
        foreign.plant("j1")
        # Then reading or writing it fails with a BrokerError that says so, and nothing changes
        with pytest.raises(BrokerError, match="not a faena job record"):
            store.fetch("j1")
        with pytest.raises(BrokerError, match="does not hold a job record"):
            store.store(record("j1", SUCCESS))
        assert foreign.read("j1") == b"not a record"
    finally:
        store.close()


def test_a_foreign_value_reads_as_no_record_in_a_batch_look_up(
    shared: str, foreign: Foreign, caplog: pytest.LogCaptureFixture
) -> None:
    store = RedisResultStore(shared)
    try:
        # Given two records and, between them, another program's value under a job's key
        store.store(record("a", SUCCESS))
        store.store(record("b", SUCCESS))
        foreign.plant("c")
        # When a worker looks them up at once (a revoke check, a chord's member results)
        found = run(store.fetch_many(["a", "c", "b"]))
        # Then the foreign value reads as no record, and says so, instead of failing them all
        assert sorted(found) == ["a", "b"]
        assert "result of job c left out" in caplog.text
    finally:
        store.close()


def test_a_record_the_store_refuses_does_not_hold_back_the_others(
    shared: str, foreign: Foreign, caplog: pytest.LogCaptureFixture
) -> None:
    store = RedisResultStore(shared)
    try:
        # Given a worker's outbox holding two jobs' results, one of which the store will never
        # take (another program's value sits where faena keeps its record)
        foreign.plant("bad")
        outbox = Outbox(store, cast(Consumer, None), lambda s, ok: None)

        async def flush() -> None:
            outbox.record(record("bad", SUCCESS))
            outbox.record(record("good", SUCCESS))
            await outbox.flush()
            # and so is one refused alone
            outbox.record(record("bad", SUCCESS))
            await outbox.flush()

        # When it flushes
        run(flush())
        # Then the good one is written, the refused one dropped with an error naming it
        got = store.fetch("good")
        assert got is not None
        assert got.state == SUCCESS
        assert foreign.read("bad") == b"not a record"
        assert "record of job bad (SUCCESS) refused by the result store" in caplog.text
        assert not outbox.pending()
    finally:
        store.close()


def test_a_full_server_still_renews_a_held_coordination_key(
    server: RedisServer, admin: redis.Redis
) -> None:
    store = RedisCoordinationStore(server.url + "?prefix=oomc")
    try:
        # Given a held key (a lock, a concurrency slot), and a server out of memory
        assert store.set_if_absent("lock:report", "A", 60.0)
        admin.config_set("maxmemory", 1)
        try:
            # When its owner renews it, Then the renewal goes through (a refused renewal would
            # let the key lapse under its working owner and pass to a second one)
            assert store.compare_and_expire("lock:report", "A", 60.0)
            assert store.expire("lock:report", 60.0)
            # While taking a new key still needs memory
            with pytest.raises(BrokerError, match="maxmemory"):
                store.set_if_absent("lock:other", "B", 60.0)
        finally:
            admin.config_set("maxmemory", 0)
        assert store.get("lock:report") == "A"
    finally:
        store.close()


def test_a_server_refusing_writes_loses_no_record(server: RedisServer, admin: redis.Redis) -> None:
    store = RedisResultStore(server.url + "?prefix=oom")
    try:
        # Given a server out of memory (it refuses every write), and two results to write
        admin.config_set("maxmemory", 1)
        outbox = Outbox(store, cast(Consumer, None), lambda s, ok: None)

        async def flush() -> None:
            outbox.record(record("a", SUCCESS))
            outbox.record(record("b", SUCCESS))
            with pytest.raises(BrokerError, match="maxmemory") as refused:
                await outbox.flush()
            assert not isinstance(refused.value, RecordRefused)
            # Then nothing is dropped: once the server takes writes again, both are written
            assert outbox.pending()
            admin.config_set("maxmemory", 0)
            await outbox.flush()

        try:
            run(flush())
        finally:
            admin.config_set("maxmemory", 0)
        assert [store.fetch(i) is not None for i in ("a", "b")] == [True, True]
    finally:
        store.close()


# -- async clients and event loops ---------------------------------------------------------
def test_each_event_loop_gets_its_own_connections_closed_with_it(
    server: RedisServer, admin: redis.Redis
) -> None:
    store = RedisResultStore(server.url + "?prefix=l")
    keys = RedisCoordinationStore(server.url + "?prefix=l")

    def connected() -> int:
        return int(admin.info("clients")["connected_clients"]) - 1  # less the admin itself

    async def use() -> None:
        await asyncio.gather(*(store.afetch(f"j{i}") for i in range(5)))
        assert await keys.aincr("n") >= 1
        assert connected() >= 2

    async def use_then_close_inside() -> None:
        await use()
        keys.close()  # a sync close on the running loop closes its connections at once after

    try:
        # When two loops in a row use the stores, and the second closes one inside the loop
        run(use())
        eventually(lambda: connected() == 0, "the first loop's connections to close")
        run(use_then_close_inside())
        # Then each loop's connections are closed when it ends, with no unclosed warnings
        eventually(lambda: connected() == 0, "the second loop's connections to close")
        gc.collect()
        assert run(store.afetch("j1")) is None
    finally:
        store.close()
        keys.close()


# -- a server that does not answer ----------------------------------------------------------
def _every_operation(url: str) -> list[Callable[[], object]]:
    results, keys = RedisResultStore(url), RedisCoordinationStore(url)
    return [
        lambda: results.store(record("j1")),
        lambda: results.fetch("j1"),
        lambda: results.wait("j1", 5.0),
        lambda: run(results.store_many([record("j1")])),
        lambda: run(results.await_ready("j1", 5.0)),
        lambda: keys.set_if_absent("k", "v", 10),
        lambda: keys.get("k"),
        lambda: keys.next_token("t"),
        lambda: run(keys.aincr("n")),
        lambda: keys.add_member("s", "m", 10),
        lambda: keys.add_members([("s", "m"), ("t", "m")], 10),
        results.close,
        keys.close,
    ]


@pytest.mark.parametrize("kind", ["refused", "silent"])
def test_a_server_that_does_not_answer_is_broker_unavailable_within_the_timeout(
    kind: str,
) -> None:
    # Given a port where nothing listens, or a socket that accepts and never answers
    silent = socket.create_server(("127.0.0.1", 0)) if kind == "silent" else None
    port = silent.getsockname()[1] if silent else free_port()
    operations = _every_operation(f"redis://127.0.0.1:{port}/0?timeout=0.5")
    try:
        for operation in operations[:-2]:
            started = time.monotonic()
            # When an operation runs, Then it fails with BrokerUnavailable within the timeout
            with pytest.raises(BrokerUnavailable, match=r"127\.0\.0\.1.*timeout 0\.5 s"):
                operation()
            assert time.monotonic() - started < 0.5 + PROMPT_S
    finally:
        for close in operations[-2:]:
            close()
        if silent is not None:
            silent.close()


def test_a_call_beyond_the_loops_connections_waits_at_most_the_timeout(shared: str) -> None:
    store = RedisResultStore(shared + "&max_connections=1&timeout=0.5")

    async def scenario() -> None:
        # Given the loop's only connection taken by a call that does not end
        async with store._io.limited():
            started = time.monotonic()
            # When another call needs a connection, Then it gives up at the URL's timeout
            with pytest.raises(BrokerUnavailable, match="every connection of this event loop"):
                await store.afetch("other")
            assert 0.5 <= time.monotonic() - started < 0.5 + PROMPT_S
        # And once the connection is free, a call takes it at once
        assert await store.afetch("other") is None

    try:
        run(scenario())
    finally:
        store.close()


# -- records read with a claim ---------------------------------------------------------------
_ODD_IDS = ["plain", "}starts-with-brace", "a%b}c", "{tagged}", "percent%"]


def _claimed(broker: RedisBroker, records: ResultStore | None, n: int) -> dict[str, object]:
    async def claim() -> dict[str, object]:
        consumer = await broker.open_consumer(["q"], "w", records=records)
        try:
            return {d.id: d.record for d in await consumer.receive(n, 0)}
        finally:
            await consumer.close()

    return run(claim())


def test_a_claim_reads_each_jobs_record_from_a_store_on_the_same_server(shared: str) -> None:
    broker = RedisBroker(shared, BrokerConfig())
    store = RedisResultStore(shared)
    try:
        # Given jobs with and without a record, ids that the store's key names escape included
        broker.enqueue([out(i, "q") for i in [*_ODD_IDS, "no-record"]])
        for job_id in _ODD_IDS:
            store.store(record(job_id, SUCCESS, fence=FINAL_FENCE))
        # When a consumer opened with that store claims them
        found = _claimed(broker, store, 10)
        # Then each delivery carries its job's record as the store reads it, and None for none
        assert found == {**{i: store.fetch(i) for i in _ODD_IDS}, "no-record": None}
        assert all(found[i] is not None for i in _ODD_IDS)
    finally:
        broker.close()
        store.close()


def test_a_claim_leaves_records_it_cannot_read_to_the_worker(shared: str, foreign: Foreign) -> None:
    other_db = shared.replace("/0?", "/1?", 1)
    broker = RedisBroker(shared, BrokerConfig())
    here, elsewhere = RedisResultStore(shared), RedisResultStore(other_db)
    try:
        # Given another program's values under three jobs' record keys (a string that is no
        # record, an empty one, and a list), and a fourth job's record in the store
        broker.enqueue([out(i, "q") for i in ("garbage", "empty", "listed", "kept", "again")])
        foreign.plant("garbage")
        foreign.raw.set(foreign.key("empty"), b"")
        foreign.raw.rpush(foreign.key("listed"), b"x")
        here.store(record("kept", SUCCESS, fence=FINAL_FENCE))
        # When a consumer opened with that store claims four, Then the claim goes through and
        # the three it cannot read are left UNSET (the worker's own look-up reports them)
        found = _claimed(broker, here, 4)
        assert found["garbage"] is msgspec.UNSET
        assert found["empty"] is msgspec.UNSET
        assert found["listed"] is msgspec.UNSET
        assert found["kept"] == here.fetch("kept")
        # And a store in another database, or none, is never read by a claim
        assert _claimed(broker, elsewhere, 1) == {"again": msgspec.UNSET}
        broker.enqueue([out("last", "q")])
        assert _claimed(broker, None, 1) == {"last": msgspec.UNSET}
    finally:
        broker.close()
        here.close()
        elsewhere.close()


def test_a_worker_skips_a_job_revoked_before_its_claim_without_a_look_up(
    private_redis: RedisServer,
) -> None:
    url = private_redis.url
    app = Faena("revoked-at-claim", broker=url, results=url)
    ran: list[int] = []

    @app.task
    def note(i: int) -> int:
        ran.append(i)
        return i

    admin = redis.Redis.from_url(url)
    try:
        # Given three jobs, the second with an id revoked before it was sent (its message is
        # queued; only its record says it is revoked)
        AsyncResult("revoked-first", app).revoke()
        sent = [note.apply_async((i,), task_id=f"job-{i}") for i in (0, 2)]
        note.apply_async((1,), task_id="revoked-first")
        before = admin.info("commandstats").get("cmdstat_mget", {}).get("calls", 0)
        # When a worker drains the queue
        run(adrain(app), timeout_s=30)
        # Then the revoked job never ran, the others did, and the claim's own read of their
        # records replaced the worker's look-up (no MGET sent)
        assert sorted(ran) == [0, 2]
        assert AsyncResult("revoked-first", app).state == "REVOKED"
        assert [r.get(timeout=5) for r in sent] == [0, 2]
        after = admin.info("commandstats").get("cmdstat_mget", {}).get("calls", 0)
        assert after == before
    finally:
        admin.close()
        app.close()


def test_a_claim_during_a_revoke_reads_the_revoked_record(private_redis: RedisServer) -> None:
    url = private_redis.url
    app = Faena("revoked-mid-way", broker=url, results=url)

    @app.task
    def note(i: int) -> int:
        raise AssertionError("a revoked job ran")

    sent = note.delay(1)
    real_take = app.broker.take
    claimed: list[Delivery] = []

    def take(job_id: str) -> bytes | None:
        # a worker's claim lands between the revoke's two steps
        async def claim() -> list[Delivery]:
            consumer = await app.broker.open_consumer(["default"], "racer", records=app.results)
            try:
                return await consumer.receive(1, 0)
            finally:
                await consumer.close()

        claimed.extend(run(claim(), timeout_s=10))
        return real_take(job_id)

    app.broker.take = take  # type: ignore[method-assign]
    try:
        # When the job is revoked while a worker claims its message
        assert sent.revoke() is False
        # Then the claim read the REVOKED record with the message: the worker skips the job
        (delivery,) = claimed
        assert delivery.id == sent.id
        assert isinstance(delivery.record, JobRecord)
        assert delivery.record.state == "REVOKED"
    finally:
        app.close()


# -- sets of members (add_member) -------------------------------------------------------------
class TestMembers:
    """Where a set lives in Redis; the set semantics are in the conformance suite."""

    @pytest.fixture(autouse=True)
    def _store(self, shared: str) -> Iterator[None]:
        self.url = shared
        self.clock = FakeClock()
        self.store = RedisCoordinationStore(shared, self.clock)
        yield
        self.store.close()

    @pytest.mark.timeout(60)
    def test_delete_expire_and_cleanup_treat_sets_like_any_key(self) -> None:
        store = self.store
        store.add_member("a", "x", 10)
        store.add_member("b", "x", 10)
        store.add_member("c", "x", 10)
        assert store.delete("a") is True
        assert store.delete("a") is False
        assert store.expire("b", 100) is True
        self.clock.advance(10)
        # Then the deleted set starts afresh, the extended one lives on, the third is cleaned up
        assert run(store.cleanup()) == 1
        assert store.add_member("a", "y", 10) == (True, 1)
        assert store.add_member("b", "y", 10) == (True, 2)
        left = sorted(k.decode() for k in self.raw_keys())
        assert left == [f"{self.prefix}:{{{k}}}:{s}" for k in "ab" for s in ("c", "c:set")]

    @pytest.mark.timeout(60)
    def test_add_members_loads_its_script_when_the_server_has_lost_it(self) -> None:
        store = self.store
        assert store.add_members([("a", "x")], 10) == [(True, 1)]
        # Given a server that forgot its scripts (a restart, a failover, SCRIPT FLUSH)
        raw = redis.Redis.from_url(self.url.split("?", maxsplit=1)[0])
        try:
            raw.script_flush()
        finally:
            raw.close()
        # When many adds go in one pipeline, Then the script is loaded and every add answered
        assert store.add_members([("a", "y"), ("b", "x"), ("a", "x")], 10) == [
            (True, 2),
            (True, 1),
            (False, 2),
        ]

    @property
    def prefix(self) -> str:
        return self.url.rsplit("prefix=", 1)[1]

    def raw_keys(self) -> list[bytes]:
        raw = redis.Redis.from_url(self.url.split("?", maxsplit=1)[0])
        try:
            return list(raw.scan_iter(match=f"{self.prefix}:*"))
        finally:
            raw.close()


def test_key_names_stay_plain_unless_the_tag_would_split_across_slots() -> None:
    target = parse_url("redis://127.0.0.1?prefix=p")
    # Ids and keys whose hash tag works as written keep their plain names
    assert target.key("job-1", "r") == "p:{job-1}:r"
    assert target.key("50%", "c") == "p:{50%}:c"
    assert target.key("a}b", "r") == "p:{a}b}:r"
    # and those that would leave the tag empty get a name of their own, in one slot
    assert target.key("}x", "r") == "p:~{%7Dx}:r"
    assert target.key("", "c") == "p:~{%}:c"
    for tag in ("}x", "", "a}b", "}"):
        assert key_slot(target.key(tag, "r").encode()) == key_slot(
            target.key(tag, "r:wake").encode()
        )
    # and no two tags share a name
    tags = ["}x", "%7Dx", "~{%7Dx}", "", "%", "}", "%7D", "a}b"]
    assert len({target.key(t, "r") for t in tags}) == len(tags)


def test_a_refused_record_in_a_workflow_follow_up_holds_back_nothing(
    shared: str, foreign: Foreign, caplog: pytest.LogCaptureFixture
) -> None:
    app = Faena("poison", broker="memory://", results=shared)

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    @app.task
    def boom(x: int) -> int:
        raise ValueError("boom")

    @app.task
    def double(x: int) -> int:
        return 2 * x

    try:
        # Given a chain whose second step fails, and another program's value where the result
        # store keeps the record of its third step (which the failure rules mark failed)
        flow = chain(add.s(1, 1), boom.s(), double.s()).delay()
        foreign.plant(flow.id)
        others = [add.delay(i, i) for i in range(3)]
        # When a worker drains the queue
        run(adrain(app), timeout_s=30)
        # Then it finishes: the other jobs' results are written and every message settled
        assert [r.get(timeout=5) for r in others] == [0, 2, 4]
        assert app.broker.locate(flow.id) is None
        assert f"record of job {flow.id} (FAILURE) refused by the result store" in caplog.text
    finally:
        app.close()


def test_a_foreign_value_under_a_chord_members_key_holds_back_nothing(
    shared: str, foreign: Foreign, caplog: pytest.LogCaptureFixture
) -> None:
    app = Faena("poisoned-chord", broker="memory://", results=shared)

    @app.task
    async def ident(x: int, pause: float) -> int:
        await asyncio.sleep(pause)  # the poisoned member ends first: the others read it
        return x

    @app.task
    def listed(values: list[int | None]) -> list[int | None]:
        return values

    try:
        # Given a chord of three whose middle member's key holds another program's value
        flow = chord([ident.s(0, 0.2), ident.s(1, 0.0), ident.s(2, 0.2)], listed.s()).delay()
        member = flow.ids[2]
        foreign.plant(member)
        others = [ident.delay(10 + i, 0.0) for i in range(3)]
        # When a worker drains the queue
        run(adrain(app), timeout_s=30)
        # Then it finishes: the body runs without that member's value, every other job ends
        assert flow.get(timeout=5) == [0, None, 2]
        assert [r.get(timeout=5) for r in others] == [10, 11, 12]
        assert f"result of job {member} left out" in caplog.text
    finally:
        app.close()

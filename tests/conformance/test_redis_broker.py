"""The broker conformance suite against Redis (one server, and a three-node Redis Cluster), plus
what only the Redis broker promises: URL forms, keys in one cluster slot per queue, typed
errors (a script error, a server that is gone or never answers), claims that stay atomic under
concurrent consumers, prompt wake-ups, and a server restart that loses nothing with AOF."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from redis.crc import key_slot

from faena.backends.redis import consumer as redis_consumer
from faena.backends.redis._client import refusal
from faena.backends.redis._keys import QUEUE_KEY_NAMES
from faena.backends.redis.broker import RedisBroker
from faena.contracts.broker import (
    Broker,
    BrokerConfig,
    Delivery,
    QueueStats,
    Settlement,
    WorkerInfo,
)
from faena.foundation.clock import SYSTEM_CLOCK, FakeClock
from faena.foundation.exceptions import (
    BrokerError,
    BrokerUnavailable,
    ConfigurationError,
    SettlementsRefused,
)
from faena.testing.conformance import PROMPT_S, BrokerConformance, async_test, out, run
from tests.integration.redis_servers import (
    RedisServer,
    free_port,
    private_redis,
    redis_cluster,
)
from tests.services import REDIS_HOST, REDIS_PORT, OnRedis, drop_prefix, redis_url

pytestmark = pytest.mark.timeout(120)

__all__ = ["private_redis"]  # a fixture of redis_servers, used below


class TestRedisBroker(OnRedis, BrokerConformance):
    def make_broker(self, config: BrokerConfig) -> Broker:
        return RedisBroker(self.url, config)


# -- a private three-node cluster -----------------------------------------------------------
@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Three masters on private ports joined into one cluster; yields their host list."""
    with redis_cluster(tmp_path_factory.mktemp("cluster")) as nodes:
        yield ",".join(f"127.0.0.1:{n.port}" for n in nodes)


async def claim_once(broker: Broker, queues: list[str], n: int) -> list[Delivery]:
    """One consumer's claim of up to ``n`` messages, without waiting."""
    consumer = await broker.open_consumer(queues, "w1")
    try:
        return await consumer.receive(n, 0)
    finally:
        await consumer.close()


def until_blocked(check: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Wait, looking every millisecond, until ``check()`` (a client blocked on the server)."""
    deadline = SYSTEM_CLOCK.monotonic() + timeout_s
    while not check():
        assert SYSTEM_CLOCK.monotonic() < deadline, "the client never blocked"
        time.sleep(0.001)


async def async_until(check: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """``until_blocked`` on an event loop, which goes on running meanwhile."""
    deadline = SYSTEM_CLOCK.monotonic() + timeout_s
    while not check():
        assert SYSTEM_CLOCK.monotonic() < deadline, "the client never blocked"
        await asyncio.sleep(0.001)


def cluster_url(hosts: str) -> str:
    return f"redis+cluster://{hosts}/0?prefix=t{uuid.uuid4().hex[:12]}"


class TestRedisClusterBroker(BrokerConformance):
    url: str

    @pytest.fixture(autouse=True)
    def _on_the_cluster(self, cluster: str) -> None:
        self.url = cluster_url(cluster)

    def make_broker(self, config: BrokerConfig) -> Broker:
        return RedisBroker(self.url, config)


# -- what only the Redis broker promises ----------------------------------------------------
# The keys each write to a queue uses, where not all ten (see lua/*.lua)
USES = {
    "enqueue": ("seq", "state", "body", "ready", "scheduled", "wake"),
    "remove": ("ready", "scheduled", "state", "body"),
    "purge": ("ready", "scheduled", "leased", "state", "body"),
    "purge_dead": ("dead", "dead:state", "dead:body"),
}


class TestRedisOnly:
    url: str

    def setup_method(self) -> None:
        self.url = redis_url()
        self.clock = FakeClock()
        self.brokers: list[RedisBroker] = []

    def teardown_method(self) -> None:
        try:
            for broker in self.brokers:
                broker.close()
        finally:
            drop_prefix(self.url)

    def broker(self, url: str | None = None, **config: object) -> RedisBroker:
        settings = {"clock": self.clock, "lease_s": 30.0, "max_deliveries": 3, **config}
        broker = RedisBroker(url or self.url, BrokerConfig(**settings))  # type: ignore[arg-type]
        self.brokers.append(broker)
        return broker

    def raw(self) -> redis.Redis:
        return redis.Redis(host=REDIS_HOST, port=REDIS_PORT)

    @property
    def prefix(self) -> str:
        return self.url.rsplit("prefix=", 1)[1]

    @pytest.mark.parametrize(
        "url",
        [
            "redis://127.0.0.1:6379",
            "redis://:secret@127.0.0.1:6379/3?prefix=shop.v2&timeout=2.5",
            "rediss://user:secret@192.0.2.1:6380/0?ssl_cert_reqs=required",
            "redis+cluster://192.0.2.1:7000,192.0.2.2:7001/0?prefix=shop",
            "rediss+cluster://192.0.2.1:7000",
        ],
    )
    def test_url_forms_are_accepted_without_connecting(self, url: str) -> None:
        # A broker connects on first use, so a URL to a machine that is not there is fine
        RedisBroker(url, BrokerConfig()).close()

    @pytest.mark.parametrize(
        ("url", "problem"),
        [
            ("redis://127.0.0.1/zero", "database number"),
            ("redis+cluster://192.0.2.1:7000/2", "only database 0"),
            ("redis://127.0.0.1?prefix=a%7Bb%7D", "invalid key prefix"),
            ("redis://127.0.0.1?timeout=0", "invalid timeout"),
            ("redis://127.0.0.1?timeout=soon", "invalid timeout"),
            ("http://127.0.0.1:6379", "not a Redis URL"),
            ("redis://127.0.0.1?decode_responses=true", "remove decode_responses"),
            ("redis+cluster://127.0.0.1:7000?encoding=latin-1", "remove encoding"),
            ("redis+socket:///run/redis.sock?decode_responses=1", "remove decode_responses"),
            ("redis://127.0.0.1?timout=5", "unknown query parameter 'timout'"),
            ("redis://127.0.0.1?ssl_cert_reqs=required", "unknown query parameter 'ssl_cert_reqs'"),
            ("redis+socket:///run/redis.sock?dbb=1", "unknown query parameter 'dbb'"),
            ("redis://127.0.0.1?health_check_interval=often", "health_check_interval"),
        ],
    )
    def test_bad_urls_are_configuration_errors(self, url: str, problem: str) -> None:
        with pytest.raises(ConfigurationError, match=problem):
            RedisBroker(url, BrokerConfig())

    def test_a_bad_url_is_told_without_its_password(self) -> None:
        with pytest.raises(ConfigurationError) as raised:
            RedisBroker("redis://app:s3cret@127.0.0.1/0?timout=5", BrokerConfig())
        assert "s3cret" not in str(raised.value)
        assert "redis://app:***@127.0.0.1/0?timout=5" in str(raised.value)

    def test_bad_queue_names_and_priorities_are_refused_before_anything_is_sent(self) -> None:
        broker = self.broker()
        with pytest.raises(ConfigurationError, match="invalid queue name"):
            broker.enqueue([out("m1", "no{braces}")])
        with pytest.raises(ValueError, match="priority 10"):
            broker.enqueue([out("m2"), out("m3", priority=10)])
        assert [broker.locate(m) for m in ("m1", "m2", "m3")] == [None, None, None]

    def test_a_lost_set_of_known_queues_is_filled_again_within_a_minute(self) -> None:
        broker = self.broker()
        # Given a queue the producer has made known, and then a server that lost the set of
        # known queues (a restart without persistence), though not the queue itself
        broker.enqueue([out("a", "emails")])
        self.raw().delete(broker._keys.queues)
        assert broker.locate("a") is None  # lookups go through the set of known queues

        # When the producer sends to the queue again within the minute, nothing is re-added
        broker.enqueue([out("b", "emails")])
        assert broker.locate("b") is None

        # Then the first send a minute after the last registration adds the queue again
        self.clock.advance(60)
        broker.enqueue([out("c", "emails")])
        assert [broker.locate(m) for m in ("a", "b", "c")] == ["queued", "queued", "queued"]

    @async_test
    async def test_every_key_of_a_queue_shares_the_queue_hash_tag(self) -> None:
        broker = self.broker()
        # Given messages in every state in two queues, and a registered worker
        queues = ("emails", "billing.high")
        broker.enqueue([out(f"{q}-{i}", q) for q in queues for i in range(3)])
        broker.enqueue([out("later", "emails", due=self.clock.time() + 60)])
        consumer = await broker.open_consumer(list(queues), "w1")
        first, second, *_ = await consumer.receive(4, 0)
        await consumer.settle([Settlement(delivery=second, action="dead", reason="r")])
        await consumer.close()
        info = WorkerInfo(
            id="w1", hostname="h", pid=1, queues=queues, concurrency=1, pool="solo", started_at=0
        )
        await broker.register_worker(info)
        # Then every key starts with the prefix, and a queue's keys hash to one slot
        with contextlib.closing(self.raw()) as raw:
            keys = sorted(k.decode() for k in raw.scan_iter(match=f"{self.prefix}:*"))
        shared = {f"{self.prefix}:queues", f"{self.prefix}:workers"}
        assert shared <= set(keys)
        per_queue = [k for k in keys if k not in shared]
        for queue in queues:
            mine = [k for k in per_queue if k.startswith(f"{self.prefix}:{{{queue}}}:")]
            assert {key_slot(k.encode()) for k in mine} == {key_slot(queue.encode())}
            assert len(mine) >= 6  # ready, scheduled, leased, state, body, seq (and more)
        assert all(any(f":{{{q}}}:" in k for q in queues) for k in per_queue)
        assert first.queue == "emails"

    @async_test
    async def test_ids_reasons_and_bodies_of_any_content_round_trip(self) -> None:
        broker = self.broker(max_deliveries=5)
        # Given ids, reasons and bodies full of the characters the scripts' encodings use
        awkward = ["a|b,c", "7,x", "ünï|cödé\n", "L1|2|3|4|5|", ""]
        bodies = [b"\x00\xff|,\n" * 3, b"", b"12,", b"|", bytes(range(256))]
        broker.enqueue([out(m or "empty", body=b) for m, b in zip(awkward, bodies, strict=True)])
        consumer = await broker.open_consumer(["default"], "w1")
        try:
            got = await consumer.receive(10, 0)
            assert sorted(d.id for d in got) == sorted(m or "empty" for m in awkward)
            by_id = {d.id: d for d in got}
            # When each is settled in a different way, with awkward reasons and new bodies
            reason = "why|not,1\nü"
            results = await consumer.settle(
                [
                    Settlement(delivery=by_id["a|b,c"], action="release", reason=reason),
                    Settlement(delivery=by_id["7,x"], action="retry", body=b"|2,\x00"),
                    Settlement(
                        delivery=by_id["ünï|cödé\n"],
                        action="dead",
                        reason=reason,
                        detail="d|e,t\nail",
                    ),
                    Settlement(delivery=by_id["L1|2|3|4|5|"], action="ack"),
                    Settlement(delivery=by_id["empty"], action="release"),
                ]
            )
            assert results == [True, True, True, True, True]
            again = {d.id: d for d in await consumer.receive(10, 0)}
        finally:
            await consumer.close()
        # Then every field comes back exactly
        assert (again["a|b,c"].last_reason, again["a|b,c"].deliveries) == (reason, 2)
        assert again["a|b,c"].body == bodies[0]
        assert (again["7,x"].body, again["7,x"].deliveries) == (b"|2,\x00", 1)
        assert set(again) == {"a|b,c", "7,x", "empty"}
        assert again["empty"].body == bytes(range(256))
        (letter,) = await broker.dead_letters()
        assert (letter.id, letter.reason, letter.detail) == ("ünï|cödé\n", reason, "d|e,t\nail")
        assert letter.body == b"12,"

    @async_test
    async def test_a_script_error_is_a_broker_error_not_an_outage(self) -> None:
        broker = self.broker()
        # Given something else wrote a plain string where the queue keeps its ready messages
        with contextlib.closing(self.raw()) as raw:
            raw.set(f"{self.prefix}:{{jobs}}:ready", "not a sorted set")
        consumer = await broker.open_consumer(["jobs"], "w1")
        try:
            # Then the scripts fail with the server's reason, as a BrokerError
            with pytest.raises(BrokerError, match="WRONGTYPE") as raised:
                broker.enqueue([out("m1", "jobs")])
            assert not isinstance(raised.value, BrokerUnavailable)
            with pytest.raises(BrokerError, match="WRONGTYPE"):
                await consumer.receive(1, 0)
        finally:
            await consumer.close()

    @pytest.mark.parametrize(
        "broken_key",
        ["scheduled", "leased", "dead", "dead:state", "dead:body", "seq", "wake", "ready", "state"],
    )
    def test_a_queue_redis_refuses_costs_only_itself(
        self, broken_key: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        broker = self.broker(lease_s=0.5, max_deliveries=2)
        broker.enqueue([out(f"a{i}", "a") for i in range(3)] + [out("b0", "b")])
        # Given a consumer of two queues, the second of which has another program's value
        # under one of its keys
        foreign = f"{self.prefix}:{{b}}:{broken_key}"
        with contextlib.closing(self.raw()) as raw:
            kept = raw.dump(foreign)
            raw.delete(foreign)
            if broken_key == "wake":  # (a list: anything else is the wrong type)
                raw.set(foreign, "not ours")
            else:
                raw.rpush(foreign, "not ours")

        async def consume(queues: list[str], rounds: int) -> list[Delivery]:
            consumer = await broker.open_consumer(queues, "w1")
            try:
                # When it claims, from either queue first
                got = [d for _ in range(rounds) for d in await consumer.receive(10, 0)]
                await consumer.settle([Settlement(delivery=d, action="ack") for d in got])
                return got
            finally:
                await consumer.close()

        # Then the healthy queue's messages are handed out and settled, none left leased to
        # nobody and dead-lettered
        assert sorted(d.id for d in run(consume(["a", "b"], 3))) == ["a0", "a1", "a2"]
        assert run(broker.dead_letters(queue="a")) == []
        with contextlib.closing(self.raw()) as raw:
            assert raw.hlen(f"{self.prefix}:{{a}}:state") == 0
        # And the refused queue is named once in the log, with Redis's reason
        refusals = [r for r in caplog.records if "refused claiming from queue b" in r.message]
        assert len(refusals) == 1
        assert "WRONGTYPE" in refusals[0].message
        # And nothing of it was touched: once the other program's value is gone, its message
        # comes, handed out for the first time
        if broken_key in ("ready", "state"):
            return  # (the value replaced the message itself)
        with contextlib.closing(self.raw()) as raw:
            raw.delete(foreign)
            if kept is not None:
                raw.restore(foreign, 0, kept)
        (b0,) = run(consume(["b"], 1))
        assert (b0.id, b0.deliveries) == ("b0", 1)

    @pytest.mark.parametrize("broken_key", QUEUE_KEY_NAMES)
    @pytest.mark.parametrize(
        "write",
        ["enqueue", "ack", "release", "retry", "dead", "remove", "purge", "requeue", "purge_dead"],
    )
    def test_a_write_redis_refuses_leaves_the_queue_as_it_was(
        self, write: str, broken_key: str
    ) -> None:
        broker = self.broker(clock=SYSTEM_CLOCK)
        names = [f"{self.prefix}:{{q}}:{name}" for name in QUEUE_KEY_NAMES]
        foreign = f"{self.prefix}:{{q}}:{broken_key}"

        async def scenario() -> None:
            broker.enqueue([out("l0", "q"), out("gone", "q"), out("w0", "q")])
            broker.enqueue([out("s0", "q", due=SYSTEM_CLOCK.time() + 3600)])
            consumer = await broker.open_consumer(["q"], "w1")
            try:
                # Given a queue with a waiting, a scheduled, a leased message and a dead letter
                held, gone = await consumer.receive(2, 0)
                assert (held.id, gone.id) == ("l0", "gone")
                dead = Settlement(delivery=gone, action="dead", reason="boom")
                assert await consumer.settle([dead]) == [True]
                # And another program's value under one of its keys
                with contextlib.closing(self.raw()) as raw:
                    raw.delete(foreign)
                    if broken_key == "wake":  # (a list: anything else is the wrong type)
                        raw.set(foreign, "not ours")
                    else:
                        raw.rpush(foreign, "not ours")
                    before = {name: raw.dump(name) for name in names}
                # When a write to that queue is sent
                actions = {"ack": {}, "release": {}, "retry": {"body": b"b"}, "dead": {}}

                async def write_once() -> None:
                    if write == "enqueue":
                        broker.enqueue([out("n1", "q")])
                    elif write in actions:
                        settle = Settlement(delivery=held, action=write, **actions[write])
                        await consumer.settle([settle])
                    elif write == "remove":
                        broker.remove("w0")
                    elif write == "purge":
                        await broker.purge(["q"])
                    elif write == "requeue":
                        await broker.requeue_dead()
                    else:
                        await broker.purge_dead()

                if broken_key in USES.get(write, QUEUE_KEY_NAMES):
                    # Then, refused, it changed nothing: no message is half moved
                    with pytest.raises(BrokerError, match=r"WRONGTYPE|not a counter"):
                        await write_once()
                    with contextlib.closing(self.raw()) as raw:
                        assert {name: raw.dump(name) for name in names} == before
                else:
                    await write_once()  # (a key it does not use)
                # And the other program's value is still there, whatever the write did
                with contextlib.closing(self.raw()) as raw:
                    assert raw.type(foreign) == (b"string" if broken_key == "wake" else b"list")
            finally:
                await consumer.close()

        run(scenario())

    @async_test
    async def test_a_queue_whose_counter_is_not_a_number_loses_no_expired_lease(self) -> None:
        broker = self.broker(lease_s=5.0)
        broker.enqueue([out("a0", "a"), out("b0", "b")])

        async def claim(*queues: str) -> list[Delivery]:
            consumer = await broker.open_consumer(list(queues), "w1")
            try:
                return await consumer.receive(10, 0)
            finally:
                await consumer.close()

        # Given a message of queue b leased by a worker that died (its lease has run out)
        assert [d.id for d in await claim("b")] == ["b0"]
        self.clock.advance(6)
        # And another program's text under queue b's counter
        counter = f"{self.prefix}:{{b}}:seq"
        with contextlib.closing(self.raw()) as raw:
            kept = raw.get(counter)
            raw.set(counter, "not a number")
        # When a worker of both queues claims, Then queue a is served
        assert [d.id for d in await claim("a", "b")] == ["a0"]
        # And once the counter is restored, b's message is recovered, not lost
        with contextlib.closing(self.raw()) as raw:
            raw.set(counter, kept or b"0")
        (b0,) = await claim("b")
        assert (b0.id, b0.deliveries, b0.last_reason) == ("b0", 2, "lease_expired")

    def test_only_a_lasting_refusal_sets_a_queue_aside(self) -> None:
        # A cluster node failing over, or a replica loading, is an outage to wait out; another
        # program's value under a key is a refusal
        assert refusal(redis.exceptions.ResponseError("WRONGTYPE Operation against a key"))
        for transient in (
            redis.exceptions.ClusterDownError("CLUSTERDOWN The cluster is down"),
            redis.exceptions.TryAgainError("TRYAGAIN"),
            redis.exceptions.ReadOnlyError("READONLY"),
            redis.exceptions.BusyLoadingError("LOADING"),
        ):
            assert not refusal(transient)

    @async_test
    async def test_a_queue_redis_refuses_does_not_stop_the_others_lease_renewals(self) -> None:
        broker = self.broker()
        broker.enqueue([out("a0", "a"), out("b0", "b")])
        consumer = await broker.open_consumer(["a", "b"], "w1")
        try:
            held = await consumer.receive(10, 0)
            assert sorted(d.id for d in held) == ["a0", "b0"]
            # Given one queue's keys taken over by another program while its message is held
            with contextlib.closing(self.raw()) as raw:
                raw.delete(f"{self.prefix}:{{b}}:leased")
                raw.rpush(f"{self.prefix}:{{b}}:leased", "not ours")
            # When the leases are renewed, Then the other queue's renewal stands
            assert await consumer.extend(held, 30) == set()
            a0 = next(d for d in held if d.id == "a0")
            assert await consumer.settle([Settlement(delivery=a0, action="ack")]) == [True]
        finally:
            await consumer.close()

    def test_status_locate_and_dead_letters_show_the_queues_redis_does_not_refuse(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        broker = self.broker()
        broker.enqueue([out("a0", "a"), out("b0", "b")])
        # Given one queue under another program's value
        with contextlib.closing(self.raw()) as raw:
            raw.delete(f"{self.prefix}:{{b}}:ready")
            raw.rpush(f"{self.prefix}:{{b}}:ready", "not ours")
        # When the queues are counted and a message looked for, Then the healthy queue shows
        stats = run(broker.stats())
        assert [(st.queue, st.ready) for st in stats] == [("a", 1)]
        assert broker.locate("a0") == "queued"
        assert run(broker.dead_letters()) == []
        # And the refused queue is named in the log
        assert any("queue b" in r.message and "WRONGTYPE" in r.message for r in caplog.records)

    @pytest.mark.parametrize(
        "counter", ["007", "-0", "-5", "99999999999999999999", "562949953421312", "1.5", " 1"]
    )
    @pytest.mark.parametrize("action", ["retry", "release"])
    def test_a_counter_redis_cannot_add_to_refuses_the_write_before_it_starts(
        self, counter: str, action: str
    ) -> None:
        broker = self.broker()
        broker.enqueue([out("m0", "q")])
        names = [f"{self.prefix}:{{q}}:{name}" for name in QUEUE_KEY_NAMES]

        async def scenario() -> None:
            consumer = await broker.open_consumer(["q"], "w1")
            try:
                (d,) = await consumer.receive(1, 0)
                # Given another program's text under the queue's counter, which INCR refuses
                with contextlib.closing(self.raw()) as raw:
                    raw.set(f"{self.prefix}:{{q}}:seq", counter)
                    before = {name: raw.dump(name) for name in names}
                # When the held message is sent back to the line (which counts)
                due = {"release": {"due": self.clock.time() + 60}, "retry": {}}[action]
                settle = Settlement(delivery=d, action=action, **due)  # type: ignore[arg-type]
                with pytest.raises(SettlementsRefused, match="not a counter") as refused:
                    await consumer.settle([settle])
                # Then nothing of the queue was touched, and the caller is told so
                assert "Nothing was changed there" in str(refused.value)
                with contextlib.closing(self.raw()) as raw:
                    assert {name: raw.dump(name) for name in names} == before
            finally:
                await consumer.close()

        run(scenario())

    @pytest.mark.parametrize("counter", ["0", "7", "137438953470"])
    def test_every_counter_the_scripts_can_go_on_from_is_accepted(self, counter: str) -> None:
        broker = self.broker()
        with contextlib.closing(self.raw()) as raw:
            raw.set(f"{self.prefix}:{{q}}:seq", counter)
        broker.enqueue([out("m0", "q")])
        (m0,) = run(claim_once(broker, ["q"], 1))
        assert (m0.id, m0.deliveries) == ("m0", 1)

    @pytest.mark.parametrize("counter", ["-5", "562949953421312"])
    def test_a_send_to_a_queue_whose_counter_cannot_go_on_is_refused(self, counter: str) -> None:
        broker = self.broker()
        with contextlib.closing(self.raw()) as raw:
            raw.set(f"{self.prefix}:{{q}}:seq", counter)
        with pytest.raises(BrokerError, match="not a counter"):
            broker.enqueue([out("m0", "q")])
        assert broker.locate("m0") is None

    def test_a_held_message_whose_state_is_unreadable_past_its_fence_is_dead_lettered(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        broker = self.broker()
        broker.enqueue([out("m0", "q"), out("m1", "q")])

        async def scenario() -> list[bool]:
            consumer = await broker.open_consumer(["q"], "w1")
            try:
                m0, m1 = await consumer.receive(2, 0)
                # Given held messages whose state entries keep their fence but are garbage
                # past it
                with contextlib.closing(self.raw()) as raw:
                    for d in (m0, m1):
                        raw.hset(f"{self.prefix}:{{q}}:state", d.id, f"L{d.fence}|garbage")
                # When they are retried or dead-lettered
                return await consumer.settle(
                    [
                        Settlement(delivery=m0, action="retry"),
                        Settlement(delivery=m1, action="dead", reason="boom"),
                    ]
                )
            finally:
                await consumer.close()

        assert run(scenario()) == [True, True]
        # Then both are dead letters with what is known, none left in no line
        letters = run(broker.dead_letters())
        assert sorted((x.id, x.reason, x.body) for x in letters) == [
            ("m0", "corrupt_state", b"m0"),
            ("m1", "corrupt_state", b"m1"),
        ]
        stats = run(broker.stats())
        assert stats == [QueueStats(queue="q", ready=0, scheduled=0, leased=0, dead=2)]
        # And the log says so for each, with the settlement it replaced
        for mid, action in (("m0", "retry"), ("m1", "dead")):
            assert any(
                f"message {mid} of queue q" in r.message and f"instead of the {action}" in r.message
                for r in caplog.records
            )

    def test_a_queue_takes_sends_while_their_fences_stay_exact(self) -> None:
        broker = self.broker()
        counter = f"{self.prefix}:{{q}}:seq"
        names = [f"{self.prefix}:{{q}}:{name}" for name in QUEUE_KEY_NAMES]
        # Given a queue one send short of its lifetime's 2^37 - 1 sends
        with contextlib.closing(self.raw()) as raw:
            raw.set(counter, str(2**37 - 2))
            before = {name: raw.dump(name) for name in names}
        # When two messages are sent at once, Then they are refused, nothing written
        with pytest.raises(BrokerError, match="would pass 137438953471, the most entries"):
            broker.enqueue([out("m0", "q"), out("m1", "q")])
        with contextlib.closing(self.raw()) as raw:
            assert {name: raw.dump(name) for name in names} == before
        # And the last send is taken, and its deliveries' fences still grow one by one
        broker.enqueue([out("m0", "q")])

        async def deliver_twice() -> tuple[Delivery, Delivery]:
            consumer = await broker.open_consumer(["q"], "w1")
            try:
                (first,) = await consumer.receive(1, 0)
                again = Settlement(delivery=first, action="release")
                assert await consumer.settle([again]) == [True]
                (second,) = await consumer.receive(1, 0)
                ack = Settlement(delivery=first, action="ack")
                assert await consumer.settle([ack]) == [False]  # the older fence is refused
                return first, second
            finally:
                await consumer.close()

        first, second = run(deliver_twice())
        assert second.fence == first.fence + 1 < 2**53
        with pytest.raises(BrokerError, match="would pass 137438953471") as refused:
            broker.enqueue([out("m2", "q")])
        assert "user_script" not in str(refused.value)

    def test_a_message_whose_next_hand_out_would_pass_the_exact_fences_is_dead_lettered(
        self,
    ) -> None:
        broker = self.broker()
        broker.enqueue([out("m0", "q"), out("m1", "q")])
        # Given a waiting message whose fence is one short of the last exact one (a send of
        # the queue's last seqs, handed out 65,535 times), beside a healthy one
        state = f"{self.prefix}:{{q}}:state"
        with contextlib.closing(self.raw()) as raw:
            rest = raw.hget(state, "m0").split(b"|", 1)[1]
            raw.hset(state, "m0", b"W%d|" % (2**53 - 2) + rest)
        # When it is claimed, Then it is dead-lettered, and the other one handed out
        assert [d.id for d in run(claim_once(broker, ["q"], 10))] == ["m1"]
        (letter,) = run(broker.dead_letters())
        assert (letter.id, letter.reason) == ("m0", "fences_exhausted")

    @async_test
    async def test_a_settle_refused_in_one_queue_applies_and_reports_the_others(self) -> None:
        broker = self.broker()
        broker.enqueue([out("a0", "a"), out("b0", "b"), out("a1", "a")])
        consumer = await broker.open_consumer(["a", "b"], "w1")
        try:
            held = {d.id: d for d in await consumer.receive(10, 0)}
            # Given another program's value under one of queue b's keys while its message is held
            dead = f"{self.prefix}:{{b}}:dead"
            with contextlib.closing(self.raw()) as raw:
                raw.set(dead, "not ours")
            # When messages of both queues are settled in one write
            acks = [Settlement(delivery=held[m], action="ack") for m in ("a0", "b0", "a1")]
            with pytest.raises(SettlementsRefused, match="queue b: WRONGTYPE") as refused:
                await consumer.settle(acks)
            # Then queue a's are applied and reported so, and b's refused, changing nothing
            assert refused.value.applied == [True, None, True]
            assert (broker.locate("a0"), broker.locate("a1"), broker.locate("b0")) == (
                None,
                None,
                "leased",
            )
            # And once the value is gone, the refused one sent again is applied
            with contextlib.closing(self.raw()) as raw:
                raw.delete(dead)
            assert await consumer.settle([acks[1]]) == [True]
            assert broker.locate("b0") is None
        finally:
            await consumer.close()

    @pytest.mark.parametrize("flavour", ["sync", "async"])
    def test_a_send_to_several_queues_names_the_one_redis_refuses_and_those_sent(
        self, flavour: str
    ) -> None:
        broker = self.broker()
        # Given a queue under another program's value, beside a healthy one
        with contextlib.closing(self.raw()) as raw:
            raw.rpush(f"{self.prefix}:{{b}}:ready", "not ours")
        messages = [out("a0", "a"), out("b0", "b"), out("a1", "a")]
        # When one send carries messages of both
        send = {"sync": broker.enqueue, "async": lambda m: run(broker.aenqueue(m))}[flavour]
        with pytest.raises(BrokerError, match=r"queue b: WRONGTYPE") as refused:
            send(messages)
        # Then the error says what was sent, and it was
        assert "nothing was written there; the messages of queue(s) a were sent" in str(
            refused.value
        )
        assert (broker.locate("a0"), broker.locate("a1"), broker.locate("b0")) == (
            "queued",
            "queued",
            None,
        )

    def test_a_send_stands_when_redis_refuses_the_set_of_known_queues(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        broker = self.broker()
        # Given another program's value where the broker lists the queues it has sent to
        with contextlib.closing(self.raw()) as raw:
            raw.set(f"{self.prefix}:queues", "not ours")
        # When messages are sent, twice within a minute
        broker.enqueue([out("a0", "a"), out("b0", "b")])
        broker.enqueue([out("a1", "a")])
        # Then they are sent (the list is only for finding queues), and the refusal is said
        # once, naming the queues the list misses
        with contextlib.closing(self.raw()) as raw:
            for queue, mid in (("a", "a0"), ("b", "b0"), ("a", "a1")):
                assert raw.zscore(f"{self.prefix}:{{{queue}}}:ready", mid) is not None
        said = [r.message for r in caplog.records if "set of known queues" in r.message]
        assert len(said) == 1
        assert "queue(s) a, b" in said[0]
        assert "WRONGTYPE" in said[0]

    def test_admin_writes_do_the_queues_redis_accepts_and_name_the_one_it_refuses(self) -> None:
        broker = self.broker()
        broker.enqueue([out(f"{q}{n}", q) for q in "ab" for n in range(3)])

        async def bury(queue: str, mid: str) -> None:
            consumer = await broker.open_consumer([queue], "w1")
            try:
                (d,) = await consumer.receive(1, 0)
                assert d.id == mid
                settle = Settlement(delivery=d, action="dead", reason="boom")
                assert await consumer.settle([settle]) == [True]
            finally:
                await consumer.close()

        # Given a dead letter in each of two queues, the second under another program's value
        run(bury("a", "a0"))
        run(bury("b", "b0"))
        body = f"{self.prefix}:{{b}}:body"
        with contextlib.closing(self.raw()) as raw:
            kept = raw.dump(body)
            raw.delete(body)
            raw.rpush(body, "not ours")
        # When dead letters are requeued and a message removed from every queue
        with pytest.raises(BrokerError, match=r"queue b: WRONGTYPE.*1 requeued"):
            run(broker.requeue_dead())
        with pytest.raises(BrokerError, match=r"queue b: WRONGTYPE.*it was removed"):
            broker.remove("a2")
        # Then the healthy queue's letter is back in line and its message removed
        assert [d.id for d in run(broker.dead_letters(queue="a"))] == []
        assert broker.locate("a0") == "queued"
        assert broker.locate("a2") is None
        # And the refused queue is as it was, once the other program's value is gone
        with contextlib.closing(self.raw()) as raw:
            raw.delete(body)
            raw.restore(body, 0, kept)
        assert [d.id for d in run(broker.dead_letters(queue="b"))] == ["b0"]
        assert broker.locate("b2") == "queued"
        assert run(broker.requeue_dead()) == 1

    @async_test
    async def test_a_consumer_whose_every_queue_is_refused_raises(self) -> None:
        broker = self.broker()
        with contextlib.closing(self.raw()) as raw:
            raw.set(f"{self.prefix}:{{b}}:leased", "not ours")
        consumer = await broker.open_consumer(["b"], "w1")
        try:
            with pytest.raises(BrokerError, match="queue b: WRONGTYPE"):
                await consumer.receive(1, 0)
        finally:
            await consumer.close()

    @pytest.mark.parametrize("state", ["garbage", "W7|9|garbage", "W7|1|garbage", "L7|1|0|1|1|"])
    def test_an_unreadable_message_is_dead_lettered_and_the_queue_moves_on(
        self, state: str
    ) -> None:
        broker = self.broker()  # (3 deliveries at most: W7|9|... has used them up)
        broker.enqueue([out("good1", "jobs"), out("good2", "jobs")])
        # Given a ready message whose state entry is garbage (or only partly readable, or
        # says leased), between two good ones
        with contextlib.closing(self.raw()) as raw:
            ready = f"{self.prefix}:{{jobs}}:ready"
            score = (raw.zscore(ready, "good1") + raw.zscore(ready, "good2")) / 2
            raw.zadd(ready, {"broken": score})
            raw.hset(f"{self.prefix}:{{jobs}}:state", "broken", state)

        async def claim() -> list[str]:
            consumer = await broker.open_consumer(["jobs"], "w1")
            try:
                return [d.id for d in await consumer.receive(10, 0)]
            finally:
                await consumer.close()

        # When a consumer claims, Then the good messages come and the broken one is dead
        assert run(claim()) == ["good1", "good2"]
        (letter,) = run(broker.dead_letters())
        assert (letter.id, letter.reason) == ("broken", "corrupt_state")
        assert state in letter.detail

    def test_a_server_out_of_memory_can_still_be_drained(self, private_redis: RedisServer) -> None:
        async def claim() -> list[Delivery]:
            consumer = await broker.open_consumer(["jobs"], "w1")
            try:
                got = await consumer.receive(10, 0)
                acks = [Settlement(delivery=d, action="ack") for d in got if d.id != "retried"]
                retry = [
                    Settlement(delivery=d, action="retry", body=b"again", due=self.clock.time())
                    for d in got
                    if d.id == "retried" and d.deliveries == 1
                ]
                assert await consumer.settle(acks + retry) == [True] * len(acks + retry)
                return got
            finally:
                await consumer.close()

        config = BrokerConfig(lease_s=30.0, clock=self.clock)
        broker = RedisBroker(private_redis.url + "?timeout=2", config)
        self.brokers.append(broker)
        admin = redis.Redis(port=private_redis.port)
        try:
            # Given an expired lease, a scheduled message that has fallen due and ready ones
            broker.enqueue([out("lost", "jobs")])

            async def lease_and_die() -> list[str]:
                consumer = await broker.open_consumer(["jobs"], "w0")
                try:
                    return [d.id for d in await consumer.receive(1, 0)]
                finally:
                    await consumer.close()

            assert run(lease_and_die()) == ["lost"]
            broker.enqueue([out(f"m{i}", "jobs") for i in range(5)] + [out("retried", "jobs")])
            broker.enqueue([out("later", "jobs", due=self.clock.time() + 10)])
            self.clock.advance(31)
            # And a server that refuses every write that needs memory (maxmemory reached)
            admin.config_set("maxmemory", 1)
            with pytest.raises(BrokerError, match="maxmemory"):
                broker.enqueue([out("refused", "jobs")])
            # When a worker claims and settles, Then every message is handed out, promoted and
            # recovered ones included, and acknowledged or retried, while memory is still full
            got = run(claim())
            assert sorted(d.id for d in got) == [
                "later",
                "lost",
                "m0",
                "m1",
                "m2",
                "m3",
                "m4",
                "retried",
            ]
            assert [d.id for d in run(claim())] == ["retried"]
        finally:
            admin.config_set("maxmemory", 0)
            admin.close()

    def test_a_server_out_of_memory_still_renews_leases_and_takes_heartbeats(
        self, private_redis: RedisServer
    ) -> None:
        config = BrokerConfig(lease_s=30.0, clock=self.clock)
        broker = RedisBroker(private_redis.url + "?timeout=2", config)
        self.brokers.append(broker)
        admin = redis.Redis(port=private_redis.port)
        info = WorkerInfo(
            id="w1", hostname="h", pid=1, queues=("jobs",), concurrency=1, pool="solo", started_at=0
        )

        async def scenario() -> tuple[set[str], list[str], list[str]]:
            worker = await broker.open_consumer(["jobs"], "w1")
            other = await broker.open_consumer(["jobs"], "w2")
            try:
                (held,) = await worker.receive(1, 0)
                # And a server that refuses every write that needs memory (maxmemory reached)
                admin.config_set("maxmemory", 1)
                # When the worker renews its lease 20 s in, and beats, and 20 s more pass
                self.clock.advance(20)
                lost = await worker.extend([held], 30.0)
                await broker.register_worker(info)
                self.clock.advance(20)
                # Then the lease held (nobody else gets the job), and the worker is listed
                taken = [d.id for d in await other.receive(1, 0)]
                return lost, taken, [w.id for w in await broker.workers()]
            finally:
                await worker.close()
                await other.close()

        broker.enqueue([out("long", "jobs")])
        try:
            assert run(scenario()) == (set(), [], ["w1"])
        finally:
            admin.config_set("maxmemory", 0)
            admin.close()

    @async_test
    async def test_each_message_is_leased_exactly_once_under_concurrent_consumers(self) -> None:
        broker = self.broker(clock=SYSTEM_CLOCK)
        total = 1500
        broker.enqueue([out(f"m{i}", priority=i % 10) for i in range(total)])
        got: list[list[str]] = []

        async def consume(worker: str) -> list[str]:
            consumer = await broker.open_consumer(["default"], worker)
            seen: list[str] = []
            try:
                while batch := await consumer.receive(random.randint(1, 40), 0):
                    seen += [d.id for d in batch]
                    settled = [Settlement(delivery=d, action="ack") for d in batch]
                    assert all(await consumer.settle(settled))
            finally:
                await consumer.close()
            return seen

        def in_thread(worker: str) -> None:
            got.append(run(consume(worker)))

        # When eight consumers, each on its own thread, loop and connections, drain the queue
        threads = [threading.Thread(target=in_thread, args=(f"w{n}",)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        # Then every message was handed out exactly once, and nothing is left
        counts = Counter(mid for seen in got for mid in seen)
        assert len(got) == 8
        assert set(counts) == {f"m{i}" for i in range(total)}
        assert set(counts.values()) == {1}
        assert sum(len(seen) > 0 for seen in got) > 1
        assert await broker.stats() == []

    @async_test
    async def test_a_receive_wakes_when_a_delayed_message_falls_due(self) -> None:
        broker = self.broker(clock=SYSTEM_CLOCK)
        due = SYSTEM_CLOCK.time() + 0.3
        broker.enqueue([out("soon", due=due)])
        consumer = await broker.open_consumer(["default"], "w1")
        try:
            # When a receive waits up to 5 s, Then it gets the message once due, not before
            (d,) = await consumer.receive(1, 5.0)
            assert d.id == "soon"
            assert due <= SYSTEM_CLOCK.time() < due + PROMPT_S
        finally:
            await consumer.close()

    def test_after_a_claim_that_emptied_the_queue_the_next_receive_waits_for_news(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # Given a consumer whose receive got one message of the ten it asked for (the queue is
        # empty after it), and blocks long enough that only a wake-up ends them
        monkeypatch.setattr(redis_consumer, "MAX_BLOCK_S", 30.0)
        broker = self.broker(clock=SYSTEM_CLOCK)
        broker.enqueue([out("first")])

        async def scenario() -> None:
            consumer = await broker.open_consumer(["default"], "w1")
            try:
                (first,) = await consumer.receive(10, 5.0)
                assert first.id == "first"
                # When a message is sent from another thread while the next receive waits
                waiting = asyncio.create_task(consumer.receive(10, 20.0))
                producer = threading.Timer(0.1, broker.enqueue, ([out("next")],))
                started = SYSTEM_CLOCK.monotonic()
                producer.start()
                got = await waiting
                producer.join()
                # Then the waiting receive has it promptly
                assert [d.id for d in got] == ["next"]
                assert SYSTEM_CLOCK.monotonic() - started < PROMPT_S
            finally:
                await consumer.close()

        run(scenario())

    def test_an_idle_consumer_claims_once_per_receive(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # Given a consumer of an empty queue, its claims counted
        broker = self.broker(clock=SYSTEM_CLOCK)
        claims = 0
        claim = redis_consumer.RedisConsumer._claim

        async def counted(
            consumer: redis_consumer.RedisConsumer, limit: int, early: Any = None
        ) -> tuple[list[Any], float | None]:
            # one call per claim the server ran: sent now, or sent with a wait (early)
            nonlocal claims
            claims += 1
            return await claim(consumer, limit, early)

        monkeypatch.setattr(redis_consumer.RedisConsumer, "_claim", counted)

        async def scenario() -> None:
            consumer = await broker.open_consumer(["default"], "w1")
            try:
                # When it receives with a short timeout three times, and nothing comes
                for _ in range(3):
                    assert await consumer.receive(10, 0.2) == []
                # Then the first receive claims before and after its wait, the next ones only
                # after theirs (the claim that ended the previous receive found nothing)
                assert claims == 4
                # And a message sent while it is idle still comes at once
                broker.enqueue([out("late")])
                started = SYSTEM_CLOCK.monotonic()
                (late,) = await consumer.receive(10, 5.0)
                assert late.id == "late"
                assert SYSTEM_CLOCK.monotonic() - started < PROMPT_S
            finally:
                await consumer.close()

        run(scenario())

    @async_test
    async def test_after_a_claim_that_emptied_the_queue_a_message_already_sent_comes_at_once(
        self,
    ) -> None:
        # Given a consumer whose receive emptied the queue
        broker = self.broker(clock=SYSTEM_CLOCK)
        broker.enqueue([out("first")])
        consumer = await broker.open_consumer(["default"], "w1")
        try:
            (first,) = await consumer.receive(10, 5.0)
            assert first.id == "first"
            # When messages are sent (one of them due shortly) before the next receive starts
            due = SYSTEM_CLOCK.time() + 0.3
            broker.enqueue([out("now"), out("soon", due=due)])
            # Then the next receives get the one due now at once, and the other once due
            started = SYSTEM_CLOCK.monotonic()
            (now,) = await consumer.receive(10, 5.0)
            assert now.id == "now"
            assert SYSTEM_CLOCK.monotonic() - started < PROMPT_S
            (soon,) = await consumer.receive(10, 5.0)
            assert soon.id == "soon"
            assert due <= SYSTEM_CLOCK.time() < due + PROMPT_S
            # And a receive that may not wait still claims
            broker.enqueue([out("polled")])
            (polled,) = await consumer.receive(10, 0)
            assert polled.id == "polled"
        finally:
            await consumer.close()

    def test_idle_consumers_wake_one_another_while_work_is_left(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # Given two consumers waiting on blocks long enough that only a wake-up ends them
        monkeypatch.setattr(redis_consumer, "MAX_BLOCK_S", 30.0)
        broker = self.broker(clock=SYSTEM_CLOCK)

        async def scenario() -> None:
            consumers = [await broker.open_consumer(["default"], f"w{n}") for n in range(2)]
            waiting = [asyncio.create_task(c.receive(1, 20.0)) for c in consumers]
            try:
                # When a producer on another thread sends two messages in one call (one token)
                producer = threading.Timer(0.1, broker.enqueue, ([out("m1"), out("m2")],))
                started = SYSTEM_CLOCK.monotonic()
                producer.start()
                got = await asyncio.gather(*waiting)
                producer.join()
                # Then the first to wake passes the token on and each gets one, promptly
                assert sorted(d.id for batch in got for d in batch) == ["m1", "m2"]
                assert SYSTEM_CLOCK.monotonic() - started < PROMPT_S
            finally:
                for c in consumers:
                    await c.close()

        run(scenario())

    @async_test
    async def test_a_cancelled_receive_loses_no_message(self) -> None:
        broker = self.broker(clock=SYSTEM_CLOCK)
        broker.enqueue([out("m1")])
        first = await broker.open_consumer(["default"], "w1")
        second = await broker.open_consumer(["default"], "w2")
        try:
            # Given a receive cancelled while its claim may be on its way to the server
            doomed = asyncio.create_task(first.receive(1, 5.0))
            await asyncio.sleep(0)  # a yield, not a delay: lets the claim start
            doomed.cancel()
            with pytest.raises(asyncio.CancelledError):
                await doomed
            # Then the message is handed back uncounted, not left leased until expiry
            (d,) = await second.receive(1, 2.0)
            assert (d.id, d.deliveries) == ("m1", 1)
        finally:
            await first.close()
            await second.close()

    def blocked_clients(self) -> int:
        return int(self.raw().info("clients")["blocked_clients"])

    def kill_the_wait(self) -> None:
        """Close, from the server's side, the one connection blocked in ``BLPOP``."""
        raw = self.raw()
        (line,) = [c for c in raw.client_list() if c["cmd"] == "blpop"]
        raw.client_kill_filter(_id=line["id"])

    @contextlib.contextmanager
    def broker_denied(self, command: str) -> Iterator[RedisBroker]:
        """A broker logged in as a Redis user that may run every command but ``command``."""
        raw = self.raw()
        user = f"faena-no-{command}-{uuid.uuid4().hex[:8]}"
        raw.execute_command("ACL", "SETUSER", user, "on", ">pw", "~*", "&*", "+@all", f"-{command}")
        try:
            yield self.broker(
                self.url.replace("redis://", f"redis://{user}:pw@", 1), clock=SYSTEM_CLOCK
            )
        finally:
            raw.execute_command("ACL", "DELUSER", user)

    @pytest.mark.parametrize("end", ["close", "cancel", "close, then cancel while handing back"])
    def test_a_wait_ended_early_hands_back_what_the_claim_sent_with_it_leased(
        self, monkeypatch: pytest.MonkeyPatch, end: str
    ) -> None:
        # Given a consumer waiting on a block only a wake-up or Redis ends, its claim sent
        # with the wait, and another client blocked on the queue's wake list before it (Redis
        # hands the next token to the longest waiting)
        monkeypatch.setattr(redis_consumer, "MAX_BLOCK_S", 30.0)
        broker = self.broker(clock=SYSTEM_CLOCK)
        raw = self.raw()
        wake = f"{self.prefix}:{{default}}:wake"
        before = self.blocked_clients()
        thief = threading.Thread(target=raw.blpop, args=([wake], 20))
        thief.start()
        try:
            until_blocked(lambda: self.blocked_clients() == before + 1)

            async def scenario() -> None:
                consumer = await broker.open_consumer(["default"], "w1")
                waiting = asyncio.create_task(consumer.receive(1, 20.0))
                await async_until(lambda: self.blocked_clients() == before + 2)
                # When a message is sent (its token goes to the other client, so the consumer
                # sleeps on with the message ready), and the wait is then ended
                broker.enqueue([out("m1")])
                thief.join()
                state = raw.hget(f"{self.prefix}:{{default}}:state", "m1")
                fence = int(state.split(b"|")[0][1:])
                if end == "close":
                    await consumer.close()
                    assert await waiting == []
                elif end.startswith("close, then cancel"):
                    handing_back = asyncio.Event()
                    settle = consumer.settle

                    async def slow_settle(settlements: Any) -> list[bool]:
                        handing_back.set()
                        await asyncio.sleep(0.05)  # a slow network: room for the cancel
                        return await settle(settlements)

                    consumer.settle = slow_settle  # type: ignore[method-assign]
                    closing = asyncio.create_task(consumer.close())
                    await handing_back.wait()
                    waiting.cancel()
                    with pytest.raises(asyncio.CancelledError):
                        await waiting
                    await closing
                else:
                    waiting.cancel()
                    with pytest.raises(asyncio.CancelledError):
                        await waiting
                    await consumer.close()
                # Then the claim that ran as the wait ended leased the message and handed it
                # back uncounted: another consumer gets it at once, as its first delivery,
                # under the fence after that lease's
                other = await broker.open_consumer(["default"], "w2")
                try:
                    (d,) = await other.receive(1, 2.0)
                    assert (d.id, d.deliveries, d.fence) == ("m1", 1, fence + 2)
                finally:
                    await other.close()

            run(scenario())
        finally:
            raw.lpush(wake, "1")  # ends the other client's wait if the test failed before
            thief.join()

    def test_a_server_that_refuses_client_id_still_wakes_and_closes_consumers(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # Given a Redis user that may not run CLIENT commands
        monkeypatch.setattr(redis_consumer, "MAX_BLOCK_S", 30.0)
        raw = self.raw()
        with self.broker_denied("client") as broker:

            async def scenario() -> None:
                consumer = await broker.open_consumer(["default"], "w1")
                try:
                    # When its consumer waits, a message sent meanwhile wakes it at once
                    waiting = asyncio.create_task(consumer.receive(1, 20.0))
                    await async_until(lambda: raw.llen(f"{self.prefix}:{{default}}:wake") == 0)
                    started = SYSTEM_CLOCK.monotonic()
                    broker.enqueue([out("m1")])
                    (d,) = await waiting
                    assert d.id == "m1"
                    assert SYSTEM_CLOCK.monotonic() - started < PROMPT_S
                    # And closing it ends its next wait at once (one it sends alone)
                    before = self.blocked_clients()
                    waiting = asyncio.create_task(consumer.receive(1, 20.0))
                    await async_until(lambda: self.blocked_clients() == before + 1)
                    started = SYSTEM_CLOCK.monotonic()
                    await consumer.close()
                    assert await waiting == []
                    assert SYSTEM_CLOCK.monotonic() - started < PROMPT_S
                finally:
                    await consumer.close()

            run(scenario())

    def test_a_wait_whose_connection_is_killed_waits_on_and_wakes_for_the_next_message(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # Given a consumer waiting on a block only a wake-up ends
        monkeypatch.setattr(redis_consumer, "MAX_BLOCK_S", 30.0)
        broker = self.broker(clock=SYSTEM_CLOCK)

        async def scenario() -> None:
            consumer = await broker.open_consumer(["default"], "w1")
            try:
                before = self.blocked_clients()
                waiting = asyncio.create_task(consumer.receive(1, 20.0))
                await async_until(lambda: self.blocked_clients() == before + 1)
                # When Redis closes the connection it waits on (as a proxy or an admin may)
                self.kill_the_wait()
                # Then it waits again, on a fresh connection, without a failure
                await async_until(lambda: self.blocked_clients() == before + 1)
                assert not waiting.done()
                # And a message sent then comes at once
                started = SYSTEM_CLOCK.monotonic()
                broker.enqueue([out("m1")])
                (d,) = await waiting
                assert d.id == "m1"
                assert SYSTEM_CLOCK.monotonic() - started < PROMPT_S
            finally:
                await consumer.close()

        run(scenario())

    def test_a_wait_broken_late_still_ends_at_the_receives_deadline(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # Given a consumer waiting up to 2 s, in one block
        monkeypatch.setattr(redis_consumer, "MAX_BLOCK_S", 30.0)
        broker = self.broker(clock=SYSTEM_CLOCK)

        async def scenario() -> None:
            consumer = await broker.open_consumer(["default"], "w1")
            try:
                before = self.blocked_clients()
                started = SYSTEM_CLOCK.monotonic()
                waiting = asyncio.create_task(consumer.receive(1, 2.0))
                await async_until(lambda: self.blocked_clients() == before + 1)
                # When Redis closes the connection it waits on, late in the block
                await asyncio.sleep(1.4 - (SYSTEM_CLOCK.monotonic() - started))
                self.kill_the_wait()
                # Then the receive still ends near its 2 s, not a whole block later
                assert await waiting == []
                assert SYSTEM_CLOCK.monotonic() - started < 2.0 + 0.8
            finally:
                await consumer.close()

        run(scenario())

    def test_a_server_that_refuses_blpop_is_an_error_not_a_busy_loop(self) -> None:
        # Given a Redis user that may claim but not block on a list
        with self.broker_denied("blpop") as broker:

            async def scenario() -> None:
                consumer = await broker.open_consumer(["default"], "w1")
                try:
                    # When its consumer, with nothing to do, goes to wait
                    started = SYSTEM_CLOCK.monotonic()
                    with pytest.raises(BrokerError, match=r"(?i)blpop"):
                        await consumer.receive(1, 5.0)
                    # Then the receive fails at once, naming the refused command
                    assert SYSTEM_CLOCK.monotonic() - started < PROMPT_S
                finally:
                    await consumer.close()

            run(scenario())

    @async_test
    async def test_a_closed_consumer_refuses_to_settle(self) -> None:
        broker = self.broker()
        broker.enqueue([out("m1")])
        consumer = await broker.open_consumer(["default"], "w1")
        (d,) = await consumer.receive(1, 0)
        await consumer.close()
        assert await consumer.receive(1, 0) == []
        with pytest.raises(BrokerError, match="closed"):
            await consumer.settle([Settlement(delivery=d, action="ack")])


# -- a consumer of several queues on a cluster ----------------------------------------------
@pytest.mark.parametrize("target", ["a", "d"])
def test_a_cluster_consumer_of_several_queues_wakes_for_any_of_them(
    cluster: str, target: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given queues spread over the cluster's nodes and blocks only a wake-up ends
    monkeypatch.setattr(redis_consumer, "MAX_BLOCK_S", 30.0)
    queues = ["a", "b", "c", "d"]
    broker = RedisBroker(cluster_url(cluster), BrokerConfig())

    async def scenario() -> None:
        consumer = await broker.open_consumer(queues, "w1")
        try:
            # (both sides connected to the cluster first: the wait is what is timed)
            assert await consumer.receive(1, 0) == []
            assert await broker.stats() == []
            waiting = asyncio.create_task(consumer.receive(1, 20.0))
            # When one of them gets a message from another thread
            producer = threading.Timer(0.1, broker.enqueue, ([out("m1", target)],))
            started = SYSTEM_CLOCK.monotonic()
            producer.start()
            got = await waiting
            producer.join()
            # Then the waiting receive has it promptly
            assert [(d.id, d.queue) for d in got] == [("m1", target)]
            assert SYSTEM_CLOCK.monotonic() - started < PROMPT_S
        finally:
            await consumer.close()

    try:
        seed = cluster.split(",", 1)[0]
        with contextlib.closing(redis.cluster.RedisCluster.from_url(f"redis://{seed}")) as probe:
            assert len({probe.get_node_from_key(f"{{{q}}}").name for q in queues}) > 1
        run(scenario())
    finally:
        broker.close()


# -- faults: a private server, stopped and started by the test ------------------------------
def test_no_server_is_broker_unavailable_within_the_timeout() -> None:
    # Given a URL to a port where nothing listens, with a 1 s timeout
    broker = RedisBroker(f"redis://127.0.0.1:{free_port()}/0?timeout=1", BrokerConfig())

    async def receive() -> None:
        consumer = await broker.open_consumer(["default"], "w1")
        try:
            await consumer.receive(1, 0)
        finally:
            await consumer.close()

    try:
        started = SYSTEM_CLOCK.monotonic()
        # Then every kind of call fails with BrokerUnavailable, within the timeout
        with pytest.raises(BrokerUnavailable, match="did not answer while enqueueing"):
            broker.enqueue([out("m1")])
        with pytest.raises(BrokerUnavailable, match="claiming"):
            run(receive())
        with pytest.raises(BrokerUnavailable):
            run(broker.stats())
        assert SYSTEM_CLOCK.monotonic() - started < 3 * 1.0
    finally:
        broker.close()


def test_a_server_that_never_answers_is_broker_unavailable_within_the_timeout() -> None:
    # Given a socket that accepts connections and never says a word
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        broker = RedisBroker(f"redis://127.0.0.1:{port}/0?timeout=0.5", BrokerConfig())
        try:
            started = SYSTEM_CLOCK.monotonic()
            # Then the call gives up after the URL's timeout, not redis-py's default retries
            with pytest.raises(BrokerUnavailable, match=r"timeout 0\.5 s"):
                broker.enqueue([out("m1")])
            assert SYSTEM_CLOCK.monotonic() - started < 0.5 + PROMPT_S
        finally:
            broker.close()


def test_a_restart_of_redis_with_aof_loses_nothing_and_calls_work_again(
    private_redis: RedisServer,
) -> None:
    broker = RedisBroker(private_redis.url + "?timeout=2", BrokerConfig(clock=SYSTEM_CLOCK))

    async def scenario() -> None:
        consumer = await broker.open_consumer(["default"], "w1")
        try:
            # Given one message leased and one waiting, after a wait on the blocking connection
            broker.enqueue([out("m1")])
            (m1,) = await consumer.receive(1, 0)
            assert await consumer.receive(1, 0.05) == []
            broker.enqueue([out("m2")])
            # When Redis crashes, Then each call is BrokerUnavailable, none hangs
            private_redis.kill()
            with pytest.raises(BrokerUnavailable):
                await consumer.receive(1, 0)
            with pytest.raises(BrokerUnavailable):
                await consumer.extend([m1], 30)
            with pytest.raises(BrokerUnavailable):
                await consumer.settle([Settlement(delivery=m1, action="ack")])
            # And once it is back (AOF, fsync always), the same consumer goes on
            private_redis.start()
            assert await consumer.extend([m1], 30) == set()
            assert await consumer.settle([Settlement(delivery=m1, action="ack")]) == [True]
            (m2,) = await consumer.receive(1, 1.0)
            assert (m2.id, m2.deliveries) == ("m2", 1)
            # And its waits, on a connection of their own, are woken again too
            producer = threading.Timer(0.1, broker.enqueue, ([out("m3")],))
            producer.start()
            try:
                (m3,) = await consumer.receive(1, 5.0)
            finally:
                producer.join()
            assert m3.id == "m3"
        finally:
            await consumer.close()

    try:
        run(scenario())
        assert broker.locate("m1") is None
        assert broker.locate("m2") == "leased"
    finally:
        broker.close()

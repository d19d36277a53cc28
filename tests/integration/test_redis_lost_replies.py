"""A reply lost after Redis ran the command: faena reports it and never sends it again.

A proxy (``cut_proxy``) delivers one command to the shared test Redis and cuts the connection
before the reply comes back, as a network failure at the worst moment would.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import redis

from faena.backends.redis import _keys
from faena.backends.redis.broker import RedisBroker
from faena.backends.redis.coordination import _OPS, RedisCoordinationStore
from faena.contracts.broker import BrokerConfig, Settlement
from faena.foundation.exceptions import BrokerUnavailable
from faena.testing.conformance import PROMPT_S, out, run
from tests.integration.cut_proxy import CutProxy
from tests.services import REDIS_HOST, REDIS_PORT, drop_prefix, redis_url

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def urls() -> Iterator[tuple[str, str, CutProxy]]:
    """(direct URL, URL through the proxy, the proxy), one fresh key prefix."""
    url = redis_url()
    proxy = CutProxy((REDIS_HOST, REDIS_PORT))
    # Scripts loaded beforehand, so each is sent by its SHA1, which the proxy looks for.
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT)
    for source in (_keys.CLAIM.source, _keys.SETTLE.source, _OPS.source):
        client.script_load(source)
    client.close()
    yield url, url.replace(f":{REDIS_PORT}/", f":{proxy.port}/", 1) + "&timeout=2", proxy
    proxy.close()
    drop_prefix(url)


def test_a_claim_whose_reply_is_lost_fails_and_leases_nothing_more(urls) -> None:
    direct_url, cut_url, proxy = urls
    direct = RedisBroker(direct_url, BrokerConfig(lease_s=60))
    broker = RedisBroker(cut_url, BrokerConfig(lease_s=60))
    direct.enqueue([out(f"m{i}", "q") for i in range(4)])

    async def claim() -> None:
        consumer = await broker.open_consumer(["q"], "w1")
        try:
            # When the reply to a claim of two is lost
            proxy.arm(_keys.CLAIM.sha.encode())
            with pytest.raises(BrokerUnavailable, match="may or may not have taken effect"):
                await consumer.receive(2, 0)
        finally:
            await consumer.close()

    try:
        run(claim())
        # Then the claim ran once: two messages wait out their lease, two are still ready
        assert proxy.cut.is_set()
        (stats,) = run(direct.stats())
        assert (stats.leased, stats.ready) == (2, 2)
    finally:
        broker.close()
        direct.close()


def test_an_ack_whose_reply_is_lost_fails_and_a_repeat_is_refused(urls) -> None:
    direct_url, cut_url, proxy = urls
    direct = RedisBroker(direct_url, BrokerConfig(lease_s=60))
    broker = RedisBroker(cut_url, BrokerConfig(lease_s=60))
    direct.enqueue([out("m1", "q")])

    async def ack() -> list[bool]:
        consumer = await broker.open_consumer(["q"], "w1")
        try:
            (delivery,) = await consumer.receive(1, 1)
            ack = Settlement(delivery=delivery, action="ack")
            # When the reply to the acknowledgement is lost
            proxy.arm(_keys.SETTLE.sha.encode())
            with pytest.raises(BrokerUnavailable):
                await consumer.settle([ack])
            # Then the acknowledgement applied once; sent again, it is refused harmlessly
            assert direct.locate("m1") is None
            return await consumer.settle([ack])
        finally:
            await consumer.close()

    try:
        assert run(ack()) == [False]
        assert proxy.cut.is_set()
    finally:
        broker.close()
        direct.close()


def test_coordination_calls_whose_reply_is_lost_fail_and_apply_once(urls) -> None:
    direct_url, cut_url, proxy = urls
    direct = RedisCoordinationStore(direct_url)
    store = RedisCoordinationStore(cut_url)
    try:
        # When the reply to a set-if-absent is lost
        proxy.arm(_OPS.sha.encode())
        with pytest.raises(BrokerUnavailable):
            store.set_if_absent("lock", "me", 60)
        # Then it applied, once (not sent again and answered "taken")
        assert direct.get("lock") == "me"
        # And an increment whose reply is lost counts once
        proxy.arm(_OPS.sha.encode())
        with pytest.raises(BrokerUnavailable):
            store.incr("counter")
        assert direct.get("counter") == "1"
    finally:
        store.close()
        direct.close()


def test_a_fetch_cancelled_while_its_reply_is_slow_gives_its_messages_back(urls) -> None:
    direct_url, cut_url, proxy = urls
    direct = RedisBroker(direct_url, BrokerConfig(lease_s=60))
    broker = RedisBroker(cut_url, BrokerConfig(lease_s=60))
    direct.enqueue([out(f"m{i}", "q") for i in range(3)])

    async def cancel_then_close() -> None:
        consumer = await broker.open_consumer(["q"], "w1")
        # Given a fetch whose reply is slow
        proxy.arm(_keys.CLAIM.sha.encode(), late_s=0.5)
        fetch = asyncio.ensure_future(consumer.receive(3, 1))
        await asyncio.to_thread(proxy.cut.wait, 10)  # the claim ran on the server
        # When the caller cancels it and closes the consumer
        fetch.cancel()
        await asyncio.gather(fetch, return_exceptions=True)
        await consumer.close()

    try:
        run(cancel_then_close())
        # Then the three messages are back in line, not leased to nobody, and uncounted
        (stats,) = run(direct.stats())
        assert (stats.ready, stats.leased) == (3, 0)
        consumer_deliveries = run(_first_deliveries(direct))
        assert consumer_deliveries == [1, 1, 1]
    finally:
        broker.close()
        direct.close()


async def _first_deliveries(broker: RedisBroker) -> list[int]:
    consumer = await broker.open_consumer(["q"], "w2")
    try:
        return [d.deliveries for d in await consumer.receive(3, 0)]
    finally:
        await consumer.close()


def test_closing_a_consumer_whose_wait_gets_no_answer_is_prompt(urls) -> None:
    _, cut_url, proxy = urls
    broker = RedisBroker(cut_url.replace("&timeout=2", "&timeout=5"), BrokerConfig(lease_s=60))

    async def scenario() -> None:
        consumer = await broker.open_consumer(["q"], "w1")
        assert await consumer.receive(1, 0.05) == []  # its connections are open
        # Given a consumer waiting (its claim sent with the wait), whose server has stopped
        # answering it: the replies to that write are held back
        proxy.arm(b"BLPOP", late_s=30)
        waiting = asyncio.create_task(consumer.receive(1, 20.0))
        while not proxy.cut.is_set():  # the server answered; the answer is held back
            await asyncio.sleep(0.001)
        # When the consumer is closed
        started = asyncio.get_running_loop().time()
        await consumer.close()
        # Then it gives up on that wait within UNBLOCK_S (it cannot ask Redis to end it
        # without the connection's id), not at the wait's read timeout, 6 s away
        assert asyncio.get_running_loop().time() - started < PROMPT_S
        assert await waiting == []

    try:
        run(scenario())
    finally:
        broker.close()

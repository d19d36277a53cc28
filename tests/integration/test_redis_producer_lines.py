"""The connections single commands travel on, a sync producer's (``SyncSender``) and an event
loop's (``AsyncSender``): they survive a server restart, are never shared with a forked child
or reused after a cancelled call, and stay within ``max_connections``; an event loop's call
fails at its timeout, is sent again after a cut only when its sender says so, and a pipeline
keeps each reply in its place."""

from __future__ import annotations

import asyncio
import multiprocessing
import threading
from multiprocessing.connection import Connection

import pytest
import redis
import redis.asyncio

from faena.backends.redis._client import (
    AsyncSender,
    SyncSender,
    async_client,
    parse_url,
    sync_client,
)
from faena.backends.redis.broker import RedisBroker
from faena.contracts.broker import BrokerConfig
from faena.testing.conformance import out
from tests.integration.cut_proxy import CutProxy
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


# -- the asyncio lines (AsyncSender) ----------------------------------------------------------
def _async_sender(url: str) -> AsyncSender:
    return AsyncSender(async_client(parse_url(url), url))


def test_an_async_sender_sends_again_after_the_server_restarts(
    private_redis: RedisServer,
) -> None:
    async def scenario() -> None:
        sender = _async_sender(private_redis.url)
        try:
            # Given a line used once
            await sender.execute("SET", "k", "before")
            # When the server restarts (its files keep what it had), the loop goes on with other
            # work (a call on another connection: the loop reads the old line's hang-up meanwhile)
            # and the sender sends again
            private_redis.stop()
            private_redis.start()
            other = redis.asyncio.Redis.from_url(private_redis.url)
            assert await other.ping()
            await other.aclose()
            # Then the closed line was replaced before the send: no error, the data is there
            assert await sender.execute("GET", "k") == b"before"
        finally:
            await sender.aclose()

    asyncio.run(scenario())


def test_a_cancelled_call_leaves_no_reply_for_the_next_one(private_redis: RedisServer) -> None:
    watcher = redis.Redis.from_url(private_redis.url)

    def blocked() -> bool:
        return any(c.get("cmd") == "blpop" for c in watcher.client_list())

    async def scenario() -> None:
        sender = _async_sender(private_redis.url)
        try:
            await sender.execute("SET", "other", "x")
            # Given a call blocked on the server, waiting for a reply
            call = asyncio.ensure_future(sender.execute("BLPOP", "empty", 10))
            while not blocked():  # a condition, not a pause: the server says when it blocks
                await asyncio.sleep(0.005)
            # When the call is cancelled, and its reply then becomes available
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
            watcher.lpush("empty", "late")
            # Then the next call reads its own reply, not the cancelled one's
            assert await sender.execute("GET", "other") == b"x"
        finally:
            await sender.aclose()

    try:
        asyncio.run(scenario())
    finally:
        watcher.close()


def test_async_lines_stay_within_max_connections(private_redis: RedisServer) -> None:
    async def scenario() -> None:
        sender = _async_sender(private_redis.url + "?max_connections=3")
        try:
            # Given more calls at once than the URL allows connections
            replies = await asyncio.gather(
                *(sender.execute("INCR", "n") for _ in range(20)), return_exceptions=True
            )
            # Then every call is answered, and the sender opened at most 3 lines of its own
            assert sorted(replies) == list(range(1, 21))  # type: ignore[type-var]
            assert sender._lines.made <= 3
        finally:
            await sender.aclose()

    asyncio.run(scenario())


def _through(proxy: CutProxy, query: str = "") -> str:
    return f"redis://127.0.0.1:{proxy.port}/0{query}"


def test_an_async_call_without_an_answer_fails_within_its_timeout(
    private_redis: RedisServer,
) -> None:
    proxy = CutProxy(("127.0.0.1", private_redis.port))

    async def scenario() -> None:
        sender = _async_sender(_through(proxy, "?timeout=0.5"))
        try:
            await sender.execute("SET", "slow", "x")
            # Given a server whose answer to the next call comes 3 s late
            proxy.arm(b"slow", late_s=3)
            started = asyncio.get_running_loop().time()
            # When the call waits for it, with a timeout of 0.5 s
            with pytest.raises(redis.exceptions.TimeoutError):
                await sender.execute("GET", "slow")
            # Then it fails at its timeout, not when the answer comes
            assert asyncio.get_running_loop().time() - started < 2.5
            # And the next call goes on a fresh line and reads its own answer
            assert await sender.execute("GET", "slow") == b"x"
        finally:
            await sender.aclose()

    try:
        asyncio.run(scenario())
    finally:
        proxy.close()


def test_an_async_pipeline_keeps_each_reply_in_its_place(private_redis: RedisServer) -> None:
    async def scenario() -> list[object]:
        sender = _async_sender(private_redis.url)
        try:
            # Given one write of three commands, the second refused by the server
            return await sender.execute_many([("SET", "k", "v"), ("LPUSH", "k", "x"), ("GET", "k")])
        finally:
            await sender.aclose()

    # Then every command got its own reply, the refusal as an error in its place
    ok, refused, value = asyncio.run(scenario())
    assert (ok, value) == (b"OK", b"v")
    assert isinstance(refused, redis.exceptions.ResponseError)
    assert "WRONGTYPE" in str(refused)


def test_an_async_pipeline_of_no_commands_returns_at_once(private_redis: RedisServer) -> None:
    async def scenario() -> list[object]:
        sender = _async_sender(private_redis.url)
        try:
            # Given a batch that turned out empty, then a call on the same sender
            empty = await sender.execute_many([])
            return [empty, await sender.execute("PING")]
        finally:
            await sender.aclose()

    # Then the empty batch has no replies, without waiting for one, and the line still works
    assert asyncio.run(asyncio.wait_for(scenario(), 5.0)) == [[], b"PONG"]


@pytest.mark.parametrize("resend", [0, 2])
def test_an_async_sender_resends_after_a_cut_only_when_told(
    private_redis: RedisServer, resend: int
) -> None:
    proxy = CutProxy(("127.0.0.1", private_redis.port))

    async def scenario() -> object:
        sender = AsyncSender(async_client(parse_url(url), url), resend=resend)
        try:
            await sender.execute("PING")
            # Given a wait whose answer is cut off on its way back
            proxy.arm(b"BLPOP")
            # When the wait ends
            return await sender.execute("BLPOP", "empty", 0.2)
        finally:
            await sender.aclose()

    url = _through(proxy)
    try:
        if resend:
            # Then a sender told to resend waits again on a fresh line, and that wait's answer
            # (nothing came) is the call's
            assert asyncio.run(scenario()) is None
        else:
            # Then any other sender reports the broken connection
            with pytest.raises(redis.exceptions.ConnectionError):
                asyncio.run(scenario())
        assert proxy.cut.is_set()
    finally:
        proxy.close()


def test_an_argument_redis_cannot_take_is_refused_by_name(private_redis: RedisServer) -> None:
    async def scenario() -> None:
        sender = _async_sender(private_redis.url)
        try:
            # Given a value neither packer takes
            with pytest.raises(redis.exceptions.DataError, match="NoneType"):
                await sender.execute("SET", "k", None)
            # Then nothing was sent, and the sender goes on
            assert await sender.execute("EXISTS", "k") == 0
        finally:
            await sender.aclose()

    asyncio.run(scenario())
    # And a sync producer's lines alike, which pack with hiredis too (floats and ints as well)
    sync = SyncSender(sync_client(parse_url(private_redis.url), private_redis.url))
    try:
        with pytest.raises(redis.exceptions.DataError):
            sync.execute("SET", "k", None)
        assert sync.execute("EXISTS", "k") == 0
        assert sync.execute("SET", "k", 1.5) == b"OK"
        assert sync.execute("INCRBYFLOAT", "k", 1) == b"2.5"
        assert sync.execute("GET", "k") == b"2.5"
    finally:
        sync.close()


def test_a_cancel_in_the_same_turn_as_the_timeout_wins(private_redis: RedisServer) -> None:
    async def scenario() -> asyncio.Task[object]:
        sender = _async_sender(private_redis.url + "?timeout=0.3")
        expire = sender._expire
        call: asyncio.Task[object] | None = None

        def expire_then_cancel(line: object) -> None:
            expire(line)
            assert call is not None
            call.cancel()  # a shutdown or an outer timeout, in the same turn as the expiry

        sender._expire = expire_then_cancel  # type: ignore[method-assign]
        try:
            await sender.execute("PING")
            # Given a call that waits past its timeout, and a cancel that comes in that turn
            call = asyncio.ensure_future(sender.execute("BLPOP", "empty", 5))
            await asyncio.gather(call, return_exceptions=True)
            return call
        finally:
            await sender.aclose()

    # Then the call ends cancelled, as its caller asked, not with a timeout error
    assert asyncio.run(scenario()).cancelled()


def test_a_sender_closed_while_it_waits_to_resend_opens_no_connection(
    private_redis: RedisServer,
) -> None:
    async def scenario() -> None:
        sender = AsyncSender(
            async_client(parse_url(private_redis.url), private_redis.url, resend=True), resend=2
        )
        exchange = sender._exchange
        cuts = 0
        closing: list[asyncio.Future[None]] = []

        async def cut_once(line: object, commands: object) -> object:
            nonlocal cuts
            cuts += 1
            if cuts == 1:
                # Given a call whose connection breaks, and the sender closed in its pause
                closing.append(asyncio.ensure_future(sender.aclose()))
                sender._drop(line)
                raise redis.exceptions.ConnectionError("cut")
            return await exchange(line, commands)  # type: ignore[arg-type]

        sender._exchange = cut_once  # type: ignore[method-assign]
        # When the pause ends, Then the call reports the break instead of sending again
        with pytest.raises(redis.exceptions.ConnectionError, match="cut"):
            await sender.execute("BLPOP", "empty", 0.05)
        assert cuts == 1
        await asyncio.gather(*closing)
        # And the closed client holds no open connection
        pool = sender.client.connection_pool
        assert not [c for c in pool._available_connections if c.is_connected]
        assert not [c for c in pool._in_use_connections if c.is_connected]

    asyncio.run(scenario())

"""What the Redis result store and coordination store share: their clients and their scripts.

Clients: one pooled sync client for the store's life, and one async client per event loop.
An asyncio client's connections belong to the loop that opened them and cannot be closed from
another, so each loop gets its own, closed when that loop shuts down (``asyncio.run`` closes
the loop's async generators last, and a small guard generator closes the client then) or when
the store is closed, whichever comes first.

Scripts: ``EVALSHA``, loading the script only when the server answers ``NOSCRIPT`` (a restart,
a ``SCRIPT FLUSH``, a failover), so a pipelined batch costs one round trip, not the extra
``SCRIPT EXISTS`` redis-py's own script objects send before every pipeline.

Expiry: every TTL becomes an expiry time in milliseconds kept beside the value and compared
with the store's time inside the script (``now_ms`` in ``lua/_common.lua``). The key also gets
a native Redis expiry so its memory is freed: at that very time on the system clock (so Redis
hides an expired key exactly when faena considers it gone), and a generous one on a test clock,
whose time has nothing to do with the server's.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import math
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import AbstractContextManager, asynccontextmanager
from dataclasses import dataclass
from types import AsyncGeneratorType
from typing import Any, Final
from urllib.parse import parse_qsl, urlsplit

import redis.asyncio.cluster
import redis.exceptions

from faena.backends.redis._client import (
    DEFAULT_MAX_CONNECTIONS,
    AsyncClient,
    AsyncSender,
    SyncClient,
    SyncSender,
    Target,
    async_client,
    load_script,
    now_arg,
    parse_url,
    sync_client,
    translated,
)
from faena.foundation.clock import SYSTEM_CLOCK, Clock
from faena.foundation.exceptions import BrokerUnavailable

TEST_CLOCK_EXPIRY_MS: Final = 3_600_000
"""The least native expiry on a test clock: fake time says when a key is gone, this only
frees the memory of keys a test left behind."""
_LONGEST_TTL_MS: Final = 1 << 50
"""About 35,000 years: longer TTLs are cut to this, which Redis's millisecond expiry can hold."""
_SWEEP: Final = 500
"""Keys per SCAN step and per pipeline of a cleanup."""
_SLICE_S: Final = 1.0
"""The longest single blocking command a waiter sends: it reads its record again at least this
often, which bounds the cost of any wake-up it could miss."""


def ttl_ms(ttl_s: float) -> int:
    """A checked TTL in whole milliseconds, rounded up so a key lives at least ``ttl_s``."""
    return max(1, min(math.ceil(ttl_s * 1000), _LONGEST_TTL_MS))


@dataclass(frozen=True, slots=True)
class Call:
    """One script invocation: its keys and its arguments."""

    keys: tuple[str, ...]
    args: tuple[str | bytes | int, ...]


class Script:
    """A Lua script of ``lua/``, run by SHA1 and loaded on demand."""

    def __init__(self, name: str) -> None:
        self.name = name

    # Read on first use, as the broker's scripts are (see ``_keys.Script``).
    @functools.cached_property
    def source(self) -> str:
        return load_script(self.name)

    @functools.cached_property
    def sha(self) -> str:
        return hashlib.sha1(self.source.encode(), usedforsecurity=False).hexdigest()

    def run(self, sender: SyncSender, call: Call) -> Any:
        try:
            return sender.execute("EVALSHA", self.sha, len(call.keys), *call.keys, *call.args)
        except redis.exceptions.NoScriptError:
            return sender.execute("EVAL", self.source, len(call.keys), *call.keys, *call.args)

    async def arun(self, sender: AsyncSender, call: Call) -> Any:
        keys, args = call.keys, call.args
        try:
            return await sender.execute("EVALSHA", self.sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            return await sender.execute("EVAL", self.source, len(keys), *keys, *args)

    def run_many(self, client: SyncClient, calls: Sequence[Call]) -> list[Any]:
        """Every call in one pipeline (one round trip); the replies in order."""
        replies: list[Any] = [None] * len(calls)
        pending = list(range(len(calls)))
        for attempt in range(2):
            pipe = client.pipeline(transaction=False)
            self._queue(pipe, calls, pending)
            pending = self._sort(pending, pipe.execute(raise_on_error=False), replies, attempt)
            if not pending:
                break
            client.script_load(self.source)
        return replies

    async def arun_many(self, sender: AsyncSender, calls: Sequence[Call]) -> list[Any]:
        """Every call in one pipeline (one round trip); the replies in order."""
        if len(calls) == 1:  # a pipeline of one costs twice the plain call in redis-py
            return [await self.arun(sender, calls[0])]
        replies: list[Any] = [None] * len(calls)
        pending = list(range(len(calls)))
        for attempt in range(2):
            commands = [self._command(calls[i]) for i in pending]
            answers = await sender.execute_many(commands)
            pending = self._sort(pending, answers, replies, attempt)
            if not pending:
                break
            await sender.client.script_load(self.source)
        return replies

    def _queue(self, pipe: Any, calls: Sequence[Call], pending: list[int]) -> None:
        for i in pending:
            # Through execute_command: redis-py's cluster pipeline refuses ``evalsha()``
            # itself, yet routes EVALSHA by its keys like any command.
            pipe.execute_command(*self._command(calls[i]))

    def _command(self, call: Call) -> tuple[Any, ...]:
        return ("EVALSHA", self.sha, len(call.keys), *call.keys, *call.args)

    @staticmethod
    def _sort(
        pending: list[int], answers: list[Any], replies: list[Any], attempt: int
    ) -> list[int]:
        """Put each answer in its place in ``replies``; the calls to send again once the
        script is loaded (the first attempt found it missing). Any other error is raised."""
        missing = []
        for i, answer in zip(pending, answers, strict=True):
            if isinstance(answer, redis.exceptions.NoScriptError) and attempt == 0:
                missing.append(i)
            elif isinstance(answer, Exception):
                raise answer
            else:
                replies[i] = answer
        return missing


async def _close_with_loop(sender: AsyncSender) -> AsyncGenerator[None]:
    """Suspended until its loop shuts its async generators down (or the store closes it),
    then closes ``sender`` (its lines and its client) on that loop."""
    try:
        yield
    finally:
        await sender.aclose()


@dataclass(slots=True)
class _LoopClient:
    """One event loop's client, with what its callers share."""

    sender: AsyncSender
    guard: AsyncGenerator[None]
    ready: asyncio.Event
    """Set once the client is ready for use (for a cluster: the slot map is loaded)."""
    slots: asyncio.Semaphore
    """Commands in flight at once, at most the connections of a pool: past that, redis-py's
    cluster client fails with MaxConnectionsError instead of waiting."""


def _max_connections(target: Target) -> int:
    given = dict(parse_qsl(urlsplit(target.url).query)).get("max_connections")
    return int(given) if given and given.isdigit() and int(given) > 0 else DEFAULT_MAX_CONNECTIONS


class Connections:
    """A store's clients: pooled sync, one async per event loop; see the module docstring."""

    def __init__(self, url: str, clock: Clock) -> None:
        self.url = url
        self.target: Target = parse_url(url)
        self.clock = clock
        self.test_clock = clock is not SYSTEM_CLOCK
        self._sync: SyncSender | None = None
        # A blocking command must answer well within the read timeout, or a long wait would
        # look like a dead server: a waiter blocks in slices of at most half the timeout.
        self.slice_s = min(_SLICE_S, self.target.timeout_s / 2)
        self._lock = threading.Lock()
        self._loops: dict[asyncio.AbstractEventLoop, _LoopClient] = {}

    @property
    def sync(self) -> SyncClient:
        """The pooled sync client, made on first use (a cluster client connects as it is made,
        and a store is often built where no call is sent). Use inside :meth:`translated`."""
        return self.sender.client

    @property
    def sender(self) -> SyncSender:
        """The sync client with its lines for single commands (see :class:`SyncSender`)."""
        with self._lock:
            if self._sync is None:
                client = sync_client(self.target, self.url)
                self._sync = SyncSender(client)
            return self._sync

    def now(self) -> str:
        """The ``now`` argument of a script (empty: the server's clock)."""
        return now_arg(self.clock)

    def now_ms(self) -> int | None:
        """The store's time in milliseconds on a test clock; ``None`` on the system clock,
        where Redis's own expiry already hides every expired key."""
        return int(self.clock.time() * 1000) if self.test_clock else None

    def translated(self, doing: str) -> AbstractContextManager[None]:
        return translated(self.target, doing)

    async def aclient(self) -> AsyncClient:
        """The running event loop's client, made on first use."""
        return (await self._entry()).sender.client

    @asynccontextmanager
    async def limited(self) -> AsyncIterator[AsyncSender]:
        """The running event loop's sender, for one operation among at most as many at once
        as its pool has connections (a burst beyond that waits its turn)."""
        entry = await self._entry()
        # A burst beyond the pool waits its turn, but no longer than the URL's timeout: a
        # caller hears back within it, as from the server itself. A free slot is taken at
        # once, without the timer.
        try:
            if entry.slots.locked():
                async with asyncio.timeout(self.target.timeout_s):
                    await entry.slots.acquire()
            else:
                await entry.slots.acquire()
        except TimeoutError:
            raise BrokerUnavailable(
                f"Redis at {self.target.display}: every connection of this event loop's pool "
                f"stayed busy for {self.target.timeout_s:g} s; raise max_connections in the URL "
                "or send fewer calls at once"
            ) from None
        try:
            yield entry.sender
        finally:
            entry.slots.release()

    @asynccontextmanager
    async def using(self, doing: str) -> AsyncIterator[AsyncSender]:
        """:meth:`limited`, with redis-py's errors translated as :meth:`translated` does."""
        with self.translated(doing):
            async with self.limited() as sender:
                yield sender

    async def sweep(self, name: str, sibling: str, script: Script, *args: str | int) -> int:
        """Run ``script`` on every key of ``name`` (``prefix:{*}:<name>``, and the escaped form
        of :meth:`Target.key`), and its ``sibling`` key (the same name plus ``sibling``), in
        pipelined batches; the sum of its replies.

        Only a test clock needs it: on the system clock Redis deletes keys at their expiry
        time itself.
        """
        removed = 0
        async with self.using("cleaning up expired keys") as sender:
            batch: list[Call] = []
            for pattern in self.target.key_patterns(name):
                async for raw in sender.client.scan_iter(match=pattern, count=_SWEEP):
                    key = raw.decode() if isinstance(raw, bytes) else str(raw)
                    batch.append(Call((key, key + sibling), args))
                    if len(batch) >= _SWEEP:
                        removed += sum(map(int, await script.arun_many(sender, batch)))
                        batch = []
            if batch:
                removed += sum(map(int, await script.arun_many(sender, batch)))
        return removed

    async def _entry(self) -> _LoopClient:
        loop = asyncio.get_running_loop()
        with self._lock:
            entry = self._loops.get(loop)
            made = entry is None
            if entry is None:
                for old in [lp for lp in self._loops if lp.is_closed()]:
                    del self._loops[old]
                sender = AsyncSender(async_client(self.target, self.url))
                entry = self._loops[loop] = _LoopClient(
                    sender,
                    _close_with_loop(sender),
                    asyncio.Event(),
                    asyncio.Semaphore(_max_connections(self.target)),
                )
        if made:
            await self._prepare(loop, entry)
        else:
            await entry.ready.wait()
        return entry

    async def _prepare(self, loop: asyncio.AbstractEventLoop, entry: _LoopClient) -> None:
        try:
            # The guard's first step registers it with the loop (asyncio keeps a loop's async
            # generators to close them when it shuts down) and stops at its ``yield``.
            await anext(entry.guard)
            if isinstance(entry.sender.client, redis.asyncio.cluster.RedisCluster):
                # Loaded once before anyone uses the client: redis-py's cluster client, first
                # used by many coroutines at once, loads it in each and drops connections
                # with commands in flight, which it then sends again.
                await entry.sender.client.initialize()
        except BaseException:
            with self._lock:
                if self._loops.get(loop) is entry:
                    del self._loops[loop]
            raise
        finally:
            entry.ready.set()

    def close(self) -> None:
        """Close the sync client, and the async clients of loops that are still open."""
        with self._lock:
            entries, self._loops = list(self._loops.items()), {}
            sync, self._sync = self._sync, None
        if sync is not None:
            sync.close()
        for loop, entry in entries:
            guard = entry.guard
            if loop.is_closed():
                continue  # its shutdown closed the client
            if loop.is_running():
                # Perhaps this thread's own loop: the client closes at the loop's next turn.
                loop.call_soon_threadsafe(_spawn_close, loop, guard)
            elif not _loop_running_here():
                loop.run_until_complete(_finish(guard))
            # Else another loop runs in this thread, so the guard's cannot be run now; once
            # dropped, asyncio's finalizer hook closes it when that loop runs again.


_closing: set[AsyncGenerator[None]] = set()
"""Guards being closed on a running loop. Kept until they finish: a guard whose closing task
is cancelled before it starts (the loop shutting down) must stay alive and registered, so
that the loop's own shutdown closes it rather than a task it would create too late."""


async def _finish(guard: AsyncGenerator[None]) -> None:
    try:
        await guard.aclose()
    finally:
        _closing.discard(guard)


def _spawn_close(loop: asyncio.AbstractEventLoop, guard: AsyncGenerator[None]) -> None:
    # Guards closed by their loop's shutdown instead are dropped here.
    for done in [g for g in _closing if isinstance(g, AsyncGeneratorType) and g.ag_frame is None]:
        _closing.discard(done)
    _closing.add(guard)
    loop.create_task(_finish(guard))


def _loop_running_here() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True

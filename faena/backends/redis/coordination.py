"""The Redis coordination store: keys, counters, sets and fencing tokens, each step atomic.

Key layout (``prefix`` from the URL; the coordination key is the hash tag, so its two Redis
keys share a cluster slot):

- ``prefix:{<key>}:c`` — a hash: ``t`` the kind (``s`` text, ``n`` counter, ``m`` set), ``v``
  the text or the counter, ``x`` the expiry time in ms (absent: never).
- ``prefix:{<key>}:c:set`` — the members of a set key, expiring with it.
- ``prefix:{<window>}:w`` — the uses of a sliding window (``take_in_window``, ``lua/window.lua``):
  a sorted set of unique members scored by their time in ms, expiring a window after its last
  use. A keyspace of its own: no key operation touches it.
- ``prefix:{<name>}:c:token`` — a fencing token sequence: a plain ``INCR`` counter that never
  expires and that no key operation touches.

Every operation that reads then writes is one call of ``lua/coord_ops.lua``; ``get`` is one
``HMGET`` and ``next_token`` one ``INCR``; ``add_members`` pipelines one call per key.
Expiry: see :mod:`faena.backends.redis._stores`.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any, cast

from faena.backends.redis._stores import TEST_CLOCK_EXPIRY_MS, Call, Connections, Script, ttl_ms
from faena.contracts.coordination import (
    CoordinationStore,
    check_amount,
    check_limit,
    check_ttl,
    not_a_counter,
)
from faena.foundation.clock import SYSTEM_CLOCK, Clock

_OPS = Script("coord_ops")
_WINDOW = Script("window")
_KINDS = {b"s": "a text value set by set_if_absent", b"n": "a counter", b"m": "a set"}


def wrong_kind(key: str, holds: bytes, wanted: str, advice: str) -> ValueError:
    """The error for an operation on a key that holds another kind of value."""
    if holds == b"s" and wanted == "a counter":
        return not_a_counter(key)
    return ValueError(
        f"coordination key {key!r} holds {_KINDS.get(holds, 'another kind of value')}, not "
        f"{wanted}; {advice}"
    )


def _flag(reply: Any) -> bool:
    return bool(int(reply))


class RedisCoordinationStore(CoordinationStore):
    """Coordination keys in Redis; ``redis://``, ``rediss://``, ``redis+cluster://``,
    ``redis+socket://``.

    Every client of the same server and prefix shares the keys, counters and tokens.

    Example:
        >>> store = RedisCoordinationStore("redis://localhost:6379/0")  # doctest: +SKIP
        >>> store.set_if_absent("leader", "host-1", ttl_s=10)  # doctest: +SKIP
        True
    """

    def __init__(self, url: str, clock: Clock = SYSTEM_CLOCK) -> None:
        super().__init__(url, clock)
        self._io = Connections(url, clock)

    # -- calls, built once for both flavours ------------------------------------------------
    def _call(self, op: str, key: str, *args: str | int) -> Call:
        main = self._io.target.key(key, "c")
        return Call((main, main + ":set"), (op, self._io.now(), TEST_CLOCK_EXPIRY_MS, *args))

    def _run(self, call: Call, doing: str) -> Any:
        with self._io.translated(doing):
            return _OPS.run(self._io.sender, call)

    async def _arun(self, call: Call, doing: str) -> Any:
        async with self._io.using(doing) as sender:
            return await _OPS.arun(sender, call)

    def _set_if_absent(self, key: str, value: str, ttl_s: float) -> Call:
        return self._call("set_if_absent", key, value, ttl_ms(check_ttl(ttl_s)))

    def _compare_and_expire(self, key: str, expected: str, ttl_s: float) -> Call:
        return self._call("compare_and_expire", key, expected, ttl_ms(check_ttl(ttl_s)))

    def _incr(self, key: str, amount: int, ttl_s: float | None) -> Call:
        check_amount(amount)
        ttl = "" if ttl_s is None else ttl_ms(check_ttl(ttl_s))
        return self._call("incr", key, amount, ttl)

    def _expire(self, key: str, ttl_s: float) -> Call:
        return self._call("expire", key, ttl_ms(check_ttl(ttl_s)))

    def _add_member(self, key: str, member: str, ttl_s: float) -> Call:
        return self._call("add_member", key, member, ttl_ms(check_ttl(ttl_s)))

    def _window_call(self, key: str, limit: int, window_s: float) -> Call:
        check_limit(limit)
        window_ms = ttl_ms(check_ttl(window_s))
        member = uuid.uuid4().hex
        args = (self._io.now(), TEST_CLOCK_EXPIRY_MS, limit, window_ms, member)
        return Call((self._io.target.key(key, "w"),), args)

    @staticmethod
    def _counted(key: str, reply: list[bytes]) -> int:
        if reply[0] != b"ok":
            raise wrong_kind(key, reply[0], "a counter", "use a separate key for counting")
        return int(reply[1])

    @staticmethod
    def _added(key: str, reply: list[Any]) -> tuple[bool, int]:
        if reply[0] != b"ok":
            raise wrong_kind(key, reply[0], "a set", "use a separate key for the set")
        return bool(reply[1]), int(reply[2])

    # -- text values --------------------------------------------------------------------------
    def set_if_absent(self, key: str, value: str, ttl_s: float) -> bool:
        return _flag(self._run(self._set_if_absent(key, value, ttl_s), "setting a key"))

    async def aset_if_absent(self, key: str, value: str, ttl_s: float) -> bool:
        return _flag(await self._arun(self._set_if_absent(key, value, ttl_s), "setting a key"))

    def get(self, key: str) -> str | None:
        """The text ``key`` holds (a counter as decimal digits), or ``None`` if absent.

        Raises:
            ValueError: ``key`` holds a set (from :meth:`add_member`).
        """
        with self._io.translated("reading a key"):
            reply = self._io.sync.hmget(self._io.target.key(key, "c"), ["t", "v", "x"])
        kind, value, expires = cast("list[bytes | None]", reply)
        if kind is None:
            return None
        now_ms = self._io.now_ms()
        if now_ms is not None and expires is not None and int(expires) <= now_ms:
            return None  # a test clock: Redis's own expiry does not follow it
        if kind == b"m":
            raise wrong_kind(key, kind, "a text value", "read it with add_member's answers")
        return value.decode() if value is not None else ""

    def compare_and_delete(self, key: str, expected: str) -> bool:
        call = self._call("compare_and_delete", key, expected)
        return _flag(self._run(call, "deleting a key"))

    async def acompare_and_delete(self, key: str, expected: str) -> bool:
        call = self._call("compare_and_delete", key, expected)
        return _flag(await self._arun(call, "deleting a key"))

    def compare_and_expire(self, key: str, expected: str, ttl_s: float) -> bool:
        call = self._compare_and_expire(key, expected, ttl_s)
        return _flag(self._run(call, "extending a key"))

    async def acompare_and_expire(self, key: str, expected: str, ttl_s: float) -> bool:
        call = self._compare_and_expire(key, expected, ttl_s)
        return _flag(await self._arun(call, "extending a key"))

    # -- counters -----------------------------------------------------------------------------
    def incr(self, key: str, amount: int = 1, ttl_s: float | None = None) -> int:
        reply = self._run(self._incr(key, amount, ttl_s), "counting on a key")
        return self._counted(key, reply)

    async def aincr(self, key: str, amount: int = 1, ttl_s: float | None = None) -> int:
        reply = await self._arun(self._incr(key, amount, ttl_s), "counting on a key")
        return self._counted(key, reply)

    # -- sets ---------------------------------------------------------------------------------
    def add_member(self, key: str, member: str, ttl_s: float) -> tuple[bool, int]:
        """Add ``member`` to the set ``key``; ``(added, size after)``, in one atomic step.

        An absent key is created as a set expiring in ``ttl_s``; an existing set keeps its
        expiry. ``added`` is ``False`` when ``member`` was already there.

        Raises:
            ValueError: ``key`` holds text or a counter, or ``ttl_s`` is invalid.

        Example:
            >>> store.add_member("chord:42:done", "job-7", ttl_s=3600)  # doctest: +SKIP
            (True, 1)
        """
        reply = self._run(self._add_member(key, member, ttl_s), "adding to a set")
        return self._added(key, reply)

    async def aadd_member(self, key: str, member: str, ttl_s: float) -> tuple[bool, int]:
        """``add_member`` for async callers."""
        reply = await self._arun(self._add_member(key, member, ttl_s), "adding to a set")
        return self._added(key, reply)

    def add_members(self, items: Sequence[tuple[str, str]], ttl_s: float) -> list[tuple[bool, int]]:
        """Every :meth:`add_member` of ``items`` in one round trip: one script call per key,
        adding that key's members in order (so atomic together), all calls in one pipeline
        (in a cluster, each node gets its own keys' calls)."""
        places, calls = self._add_members(items, ttl_s)
        if not calls:
            return []
        with self._io.translated("adding to sets"):
            replies = _OPS.run_many(self._io.sync, calls)
        return self._answers(len(items), places, replies)

    async def aadd_members(
        self, items: Sequence[tuple[str, str]], ttl_s: float
    ) -> list[tuple[bool, int]]:
        """``add_members`` for async callers."""
        places, calls = self._add_members(items, ttl_s)
        if not calls:
            return []
        async with self._io.using("adding to sets") as sender:
            replies = await _OPS.arun_many(sender, calls)
        return self._answers(len(items), places, replies)

    def _add_members(
        self, items: Sequence[tuple[str, str]], ttl_s: float
    ) -> tuple[dict[str, list[int]], list[Call]]:
        """The places in ``items`` of each key's members, and one call per key."""
        ttl = ttl_ms(check_ttl(ttl_s))
        places: dict[str, list[int]] = {}
        for n, (key, _) in enumerate(items):
            places.setdefault(key, []).append(n)
        calls = [
            self._call("add_members", key, ttl, *(items[n][1] for n in at))
            for key, at in places.items()
        ]
        return places, calls

    @staticmethod
    def _answers(
        count: int, places: dict[str, list[int]], replies: list[Any]
    ) -> list[tuple[bool, int]]:
        answers: list[tuple[bool, int]] = [(False, 0)] * count
        for (key, at), reply in zip(places.items(), replies, strict=True):
            if reply[0] != b"ok":
                raise wrong_kind(key, reply[0], "a set", "use a separate key for the set")
            for i, n in enumerate(at):
                answers[n] = (bool(reply[1 + 2 * i]), int(reply[2 + 2 * i]))
        return answers

    # -- any key ------------------------------------------------------------------------------
    def expire(self, key: str, ttl_s: float) -> bool:
        return _flag(self._run(self._expire(key, ttl_s), "setting the expiry of a key"))

    async def aexpire(self, key: str, ttl_s: float) -> bool:
        call = self._expire(key, ttl_s)
        return _flag(await self._arun(call, "setting the expiry of a key"))

    def delete(self, key: str) -> bool:
        return _flag(self._run(self._call("delete", key), "deleting a key"))

    # -- fencing tokens -----------------------------------------------------------------------
    def next_token(self, name: str) -> int:
        with self._io.translated("taking a fencing token"):
            return int(self._io.sync.incr(self._io.target.key(name, "c:token")))

    # -- sliding windows ----------------------------------------------------------------------
    def take_in_window(self, key: str, limit: int, window_s: float) -> float:
        with self._io.translated("taking a use of a window"):
            wait_ms = _WINDOW.run(self._io.sender, self._window_call(key, limit, window_s))
        return int(wait_ms) / 1000

    async def atake_in_window(self, key: str, limit: int, window_s: float) -> float:
        call = self._window_call(key, limit, window_s)
        async with self._io.using("taking a use of a window") as sender:
            wait_ms = await _WINDOW.arun(sender, call)
        return int(wait_ms) / 1000

    # -- lifetime -----------------------------------------------------------------------------
    async def cleanup(self) -> int:
        """Delete expired keys; returns how many.

        On the system clock Redis deletes each key at its expiry time by itself, so there is
        nothing left to do; on a test clock the store scans its prefix for keys whose expiry
        has come on that clock. Tokens are never scanned.
        """
        if not self._io.test_clock:
            return 0
        return await self._io.sweep("c", ":set", _OPS, "cleanup", self._io.now(), 0)

    def close(self) -> None:
        self._io.close()

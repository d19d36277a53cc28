"""The SQLite coordination store: keys with TTLs in ``faena_keys``, tokens in ``faena_tokens``,
sliding-window uses in ``faena_window_uses``.

Each operation is one SQL statement in its own ``BEGIN IMMEDIATE`` transaction, so it is atomic
for every connection to the file, in this process or another (``add_members``: all its adds in
one transaction). Expiry is a ``WHERE`` on
``expires_at`` against the store's clock, read afresh on every attempt of the transaction (a
busy file retries it). Sync callers use a pooled connection; the async twins run the same
statement on the executor thread the broker and result store on this file share.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import TypeVar

from faena.backends.sqlite._connection import read, write
from faena.backends.sqlite._database import SharedDatabase
from faena.contracts.coordination import (
    CoordinationStore,
    check_amount,
    check_limit,
    check_ttl,
    not_a_counter,
    wrong_kind,
)
from faena.foundation.clock import SYSTEM_CLOCK, Clock

T = TypeVar("T")
_Op = Callable[[sqlite3.Connection], T]

_LIVE = "(expires_at IS NULL OR expires_at > :now)"
# ``expires_at <= :now`` is NULL, so false, for a key without expiry: it is never replaced.
_SET_IF_ABSENT = """
INSERT INTO faena_keys (key, value, expires_at) VALUES (:key, :value, :expires_at)
ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at
WHERE faena_keys.expires_at <= :now
"""
_GET = f"SELECT value, typeof(value) FROM faena_keys WHERE key = :key AND {_LIVE}"
_KIND = f"SELECT typeof(value) FROM faena_keys WHERE key = :key AND {_LIVE}"
# An expired key restarts at the amount with the new expiry; a live counter adds and keeps its
# expiry; a live text value is left alone and returns no row, which the caller reports.
_INCR = """
INSERT INTO faena_keys (key, value, expires_at) VALUES (:key, :amount, :expires_at)
ON CONFLICT (key) DO UPDATE SET
    value = CASE WHEN faena_keys.expires_at <= :now THEN excluded.value
                 ELSE faena_keys.value + excluded.value END,
    expires_at = CASE WHEN faena_keys.expires_at <= :now THEN excluded.expires_at
                      ELSE faena_keys.expires_at END
WHERE faena_keys.expires_at <= :now OR typeof(faena_keys.value) = 'integer'
RETURNING value
"""
# Compared as text, so a counter matches its decimal digits, as get() returns them; a set
# (an empty BLOB) matches nothing.
_OWNED = f"key = :key AND typeof(value) != 'blob' AND CAST(value AS TEXT) = :expected AND {_LIVE}"
_COMPARE_AND_DELETE = f"DELETE FROM faena_keys WHERE {_OWNED}"
_COMPARE_AND_EXPIRE = f"UPDATE faena_keys SET expires_at = :expires_at WHERE {_OWNED}"
_EXPIRE = f"UPDATE faena_keys SET expires_at = :expires_at WHERE key = :key AND {_LIVE}"
# An expired row is deleted too (it is garbage), but reported as not there.
_DELETE = f"DELETE FROM faena_keys WHERE key = :key RETURNING {_LIVE}"
_NEXT_TOKEN = """
INSERT INTO faena_tokens (name, value) VALUES (:name, 1)
ON CONFLICT (name) DO UPDATE SET value = faena_tokens.value + 1
RETURNING value
"""
_CLEANUP_MEMBERS = """
DELETE FROM faena_key_members
WHERE key IN (SELECT key FROM faena_keys WHERE expires_at <= :now)
"""
_CLEANUP = "DELETE FROM faena_keys WHERE expires_at <= :now"
_WINDOW_DROP_OLD = "DELETE FROM faena_window_uses WHERE key = :key AND at <= :now - :window"
# The use whose departure frees a place: the limit-th newest (the oldest when exactly full).
_WINDOW_BLOCKING = """
SELECT at FROM faena_window_uses WHERE key = :key ORDER BY at DESC LIMIT 1 OFFSET :limit - 1
"""
_WINDOW_TAKE = (
    "INSERT INTO faena_window_uses (key, at, expires_at) VALUES (:key, :now, :now + :window)"
)
_WINDOW_CLEANUP = "DELETE FROM faena_window_uses WHERE expires_at <= :now"
_DELETE_MEMBERS = "DELETE FROM faena_key_members WHERE key = :key"
_NEW_SET = """
INSERT INTO faena_keys (key, value, expires_at) VALUES (:key, x'', :expires_at)
ON CONFLICT (key) DO UPDATE SET value = x'', expires_at = excluded.expires_at
"""
_ADD_MEMBER = "INSERT OR IGNORE INTO faena_key_members (key, member) VALUES (:key, :member)"
_SET_SIZE = "SELECT count(*) FROM faena_key_members WHERE key = :key"
_KINDS = {"text": "a text value set by set_if_absent", "integer": "a counter", "blob": "a set"}


def _add(
    c: sqlite3.Connection, key: str, member: str, now: float, ttl_s: float
) -> tuple[bool, int]:
    """Add ``member`` to the set ``key`` inside the caller's transaction."""
    size = _open_set(c, key, now, ttl_s)
    added = c.execute(_ADD_MEMBER, {"key": key, "member": member}).rowcount == 1
    return added, size + added


def _open_set(c: sqlite3.Connection, key: str, now: float, ttl_s: float) -> int:
    """The size of the live set ``key``, made afresh (empty) if absent or expired, inside the
    caller's transaction; ``ValueError`` if the key holds text or a counter."""
    params = {"key": key, "now": now, "expires_at": now + ttl_s}
    kind = c.execute(_KIND, params).fetchone()
    if kind is None:  # absent or expired: a fresh set, without a past life's members
        c.execute(_NEW_SET, params)
        c.execute(_DELETE_MEMBERS, params)
        return 0
    if kind[0] != "blob":
        holds = _KINDS.get(kind[0], "another kind of value")
        raise wrong_kind(key, holds, "a set", "use a separate key for the set")
    return int(c.execute(_SET_SIZE, params).fetchone()[0])


def _add_many(
    c: sqlite3.Connection, items: Sequence[tuple[str, str]], now: float, ttl_s: float
) -> list[tuple[bool, int]]:
    """:func:`_add` of each item, in order, inside the caller's transaction: each set is
    looked up once, then counted as its members go in."""
    sizes: dict[str, int] = {}
    answers = []
    for key, member in items:
        if key not in sizes:
            sizes[key] = _open_set(c, key, now, ttl_s)
        added = c.execute(_ADD_MEMBER, {"key": key, "member": member}).rowcount == 1
        sizes[key] += added
        answers.append((added, sizes[key]))
    return answers


class SQLiteCoordinationStore(CoordinationStore):
    """Coordination keys in a SQLite file; may share the broker's file.

    Example:
        >>> store = SQLiteCoordinationStore("sqlite:///faena.sqlite3")  # doctest: +SKIP
        >>> store.set_if_absent("leader", "host-1", ttl_s=10)  # doctest: +SKIP
        True
    """

    def __init__(self, url: str, clock: Clock = SYSTEM_CLOCK) -> None:
        super().__init__(url, clock)
        self._db = SharedDatabase(url)

    # -- running a statement -----------------------------------------------------------------
    def _write(self, what: str, body: Callable[[sqlite3.Connection, float], T]) -> _Op[T]:
        """A transaction running ``body(conn, now)``; ``now`` is read again on each attempt."""
        return lambda conn: write(conn, lambda c: body(c, self.clock.time()), what)

    def _here(self, op: _Op[T]) -> T:
        """``op`` on a pooled connection, for sync callers."""
        with self._db.connection() as conn:
            return op(conn)

    # -- the operations, each built once for both flavours ------------------------------------
    def _set_if_absent(self, key: str, value: str, ttl_s: float) -> _Op[bool]:
        check_ttl(ttl_s)

        def body(c: sqlite3.Connection, now: float) -> bool:
            params = {"key": key, "value": value, "expires_at": now + ttl_s, "now": now}
            return c.execute(_SET_IF_ABSENT, params).rowcount == 1

        return self._write("set a coordination key", body)

    def _compare_and_delete(self, key: str, expected: str) -> _Op[bool]:
        def body(c: sqlite3.Connection, now: float) -> bool:
            params = {"key": key, "expected": expected, "now": now}
            return c.execute(_COMPARE_AND_DELETE, params).rowcount == 1

        return self._write("delete a coordination key", body)

    def _compare_and_expire(self, key: str, expected: str, ttl_s: float) -> _Op[bool]:
        check_ttl(ttl_s)

        def body(c: sqlite3.Connection, now: float) -> bool:
            params = {"key": key, "expected": expected, "expires_at": now + ttl_s, "now": now}
            return c.execute(_COMPARE_AND_EXPIRE, params).rowcount == 1

        return self._write("extend a coordination key", body)

    def _incr(self, key: str, amount: int, ttl_s: float | None) -> _Op[int]:
        check_amount(amount)
        if ttl_s is not None:
            check_ttl(ttl_s)

        def body(c: sqlite3.Connection, now: float) -> int:
            expires_at = None if ttl_s is None else now + ttl_s
            params = {"key": key, "amount": amount, "expires_at": expires_at, "now": now}
            row = c.execute(_INCR, params).fetchone()
            if row is None:
                kind = c.execute(_KIND, {"key": key, "now": now}).fetchone()
                if kind is not None and kind[0] == "blob":
                    raise wrong_kind(key, "a set", "a counter", "use a separate key for counting")
                raise not_a_counter(key)
            return int(row[0])

        return self._write("count on a coordination key", body)

    def _add_member(self, key: str, member: str, ttl_s: float) -> _Op[tuple[bool, int]]:
        check_ttl(ttl_s)

        def body(c: sqlite3.Connection, now: float) -> tuple[bool, int]:
            return _add(c, key, member, now, ttl_s)

        return self._write("add to a coordination set", body)

    def _add_members(
        self, items: Sequence[tuple[str, str]], ttl_s: float
    ) -> _Op[list[tuple[bool, int]]]:
        check_ttl(ttl_s)

        def body(c: sqlite3.Connection, now: float) -> list[tuple[bool, int]]:
            return _add_many(c, items, now, ttl_s)

        return self._write("add to coordination sets", body)

    def _expire(self, key: str, ttl_s: float) -> _Op[bool]:
        check_ttl(ttl_s)

        def body(c: sqlite3.Connection, now: float) -> bool:
            params = {"key": key, "expires_at": now + ttl_s, "now": now}
            return c.execute(_EXPIRE, params).rowcount == 1

        return self._write("set the expiry of a coordination key", body)

    def _take_in_window(self, key: str, limit: int, window_s: float) -> _Op[float]:
        check_limit(limit)
        check_ttl(window_s)

        def body(c: sqlite3.Connection, now: float) -> float:
            params = {"key": key, "limit": limit, "window": window_s, "now": now}
            c.execute(_WINDOW_DROP_OLD, params)
            row = c.execute(_WINDOW_BLOCKING, params).fetchone()
            if row is None:
                c.execute(_WINDOW_TAKE, params)
                return 0.0
            return max(float(row[0]) + window_s - now, 1e-3)

        return self._write("take a use of a sliding window", body)

    # -- text values --------------------------------------------------------------------------
    def set_if_absent(self, key: str, value: str, ttl_s: float) -> bool:
        return self._here(self._set_if_absent(key, value, ttl_s))

    async def aset_if_absent(self, key: str, value: str, ttl_s: float) -> bool:
        return await self._db.run(self._set_if_absent(key, value, ttl_s))

    def get(self, key: str) -> str | None:
        def body(c: sqlite3.Connection) -> str | None:
            row = c.execute(_GET, {"key": key, "now": self.clock.time()}).fetchone()
            if row is not None and row[1] == "blob":
                raise wrong_kind(key, "a set", "a text value", "read it with add_member's answers")
            return None if row is None else str(row[0])

        return self._here(lambda conn: read(conn, body, "read a coordination key"))

    def compare_and_delete(self, key: str, expected: str) -> bool:
        return self._here(self._compare_and_delete(key, expected))

    async def acompare_and_delete(self, key: str, expected: str) -> bool:
        return await self._db.run(self._compare_and_delete(key, expected))

    def compare_and_expire(self, key: str, expected: str, ttl_s: float) -> bool:
        return self._here(self._compare_and_expire(key, expected, ttl_s))

    async def acompare_and_expire(self, key: str, expected: str, ttl_s: float) -> bool:
        return await self._db.run(self._compare_and_expire(key, expected, ttl_s))

    # -- counters -----------------------------------------------------------------------------
    def incr(self, key: str, amount: int = 1, ttl_s: float | None = None) -> int:
        return self._here(self._incr(key, amount, ttl_s))

    async def aincr(self, key: str, amount: int = 1, ttl_s: float | None = None) -> int:
        return await self._db.run(self._incr(key, amount, ttl_s))

    # -- sets ---------------------------------------------------------------------------------
    def add_member(self, key: str, member: str, ttl_s: float) -> tuple[bool, int]:
        return self._here(self._add_member(key, member, ttl_s))

    async def aadd_member(self, key: str, member: str, ttl_s: float) -> tuple[bool, int]:
        return await self._db.run(self._add_member(key, member, ttl_s))

    def add_members(self, items: Sequence[tuple[str, str]], ttl_s: float) -> list[tuple[bool, int]]:
        """Every :meth:`add_member` of ``items`` in one transaction (so atomic together)."""
        if not items:
            check_ttl(ttl_s)
            return []
        return self._here(self._add_members(items, ttl_s))

    async def aadd_members(
        self, items: Sequence[tuple[str, str]], ttl_s: float
    ) -> list[tuple[bool, int]]:
        if not items:
            check_ttl(ttl_s)
            return []
        return await self._db.run(self._add_members(items, ttl_s))

    # -- any key ------------------------------------------------------------------------------
    def expire(self, key: str, ttl_s: float) -> bool:
        return self._here(self._expire(key, ttl_s))

    async def aexpire(self, key: str, ttl_s: float) -> bool:
        return await self._db.run(self._expire(key, ttl_s))

    def delete(self, key: str) -> bool:
        def body(c: sqlite3.Connection, now: float) -> bool:
            row = c.execute(_DELETE, {"key": key, "now": now}).fetchone()
            c.execute(_DELETE_MEMBERS, {"key": key})
            return row is not None and bool(row[0])

        return self._here(self._write("delete a coordination key", body))

    # -- fencing tokens -----------------------------------------------------------------------
    def next_token(self, name: str) -> int:
        def body(c: sqlite3.Connection, _now: float) -> int:
            return int(c.execute(_NEXT_TOKEN, {"name": name}).fetchone()[0])

        return self._here(self._write("take a fencing token", body))

    # -- sliding windows ----------------------------------------------------------------------
    def take_in_window(self, key: str, limit: int, window_s: float) -> float:
        return self._here(self._take_in_window(key, limit, window_s))

    async def atake_in_window(self, key: str, limit: int, window_s: float) -> float:
        return await self._db.run(self._take_in_window(key, limit, window_s))

    # -- lifetime -----------------------------------------------------------------------------
    async def cleanup(self) -> int:
        def body(c: sqlite3.Connection, now: float) -> int:
            c.execute(_CLEANUP_MEMBERS, {"now": now})
            keys = c.execute(_CLEANUP, {"now": now}).rowcount
            return keys + c.execute(_WINDOW_CLEANUP, {"now": now}).rowcount

        return await self._db.run(self._write("clean up coordination keys", body))

    def close(self) -> None:
        self._db.close()

"""The in-memory coordination store: keys, counters and tokens in dicts. ``memory://``."""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field

from faena.contracts.coordination import (
    CoordinationStore,
    check_amount,
    check_limit,
    check_ttl,
    not_a_counter,
    wrong_kind,
)
from faena.foundation.clock import SYSTEM_CLOCK, Clock

_TEXT = "a text value set by set_if_absent"


@dataclass(slots=True)
class _Key:
    value: str | int | set[str]  # text from set_if_absent, int for a counter, set of members
    expires_at: float | None


@dataclass(slots=True)
class _Window:
    window_s: float
    uses: deque[float] = field(default_factory=deque)  # times of use, oldest first

    def drop_old(self, now: float) -> None:
        while self.uses and self.uses[0] <= now - self.window_s:
            self.uses.popleft()


class MemoryCoordinationStore(CoordinationStore):
    """Keys, counters and fencing tokens in this process's memory. ``memory://``.

    Each store is its own keyspace: two instances share nothing, and nothing outlives the
    store, fencing tokens included.
    """

    def __init__(self, url: str = "memory://", clock: Clock = SYSTEM_CLOCK) -> None:
        super().__init__(url, clock)
        self._lock = threading.Lock()
        self._keys: dict[str, _Key] = {}
        self._tokens: dict[str, int] = {}
        self._windows: dict[str, _Window] = {}

    def _live(self, key: str, now: float) -> _Key | None:
        """The live entry of ``key``; an expired one is dropped. Call with the lock held."""
        entry = self._keys.get(key)
        if entry is not None and entry.expires_at is not None and entry.expires_at <= now:
            del self._keys[key]
            return None
        return entry

    def _owned(self, key: str, expected: str, now: float) -> _Key | None:
        entry = self._live(key, now)
        if entry is None or isinstance(entry.value, set):
            return None  # a set matches nothing
        return entry if str(entry.value) == expected else None

    def set_if_absent(self, key: str, value: str, ttl_s: float) -> bool:
        check_ttl(ttl_s)
        with self._lock:
            now = self.clock.time()
            if self._live(key, now) is not None:
                return False
            self._keys[key] = _Key(value, now + ttl_s)
            return True

    async def aset_if_absent(self, key: str, value: str, ttl_s: float) -> bool:
        return self.set_if_absent(key, value, ttl_s)

    def get(self, key: str) -> str | None:
        with self._lock:
            entry = self._live(key, self.clock.time())
            if entry is not None and isinstance(entry.value, set):
                raise wrong_kind(key, "a set", "a text value", "read it with add_member's answers")
            return None if entry is None else str(entry.value)

    def compare_and_delete(self, key: str, expected: str) -> bool:
        with self._lock:
            if self._owned(key, expected, self.clock.time()) is None:
                return False
            del self._keys[key]
            return True

    async def acompare_and_delete(self, key: str, expected: str) -> bool:
        return self.compare_and_delete(key, expected)

    def compare_and_expire(self, key: str, expected: str, ttl_s: float) -> bool:
        check_ttl(ttl_s)
        with self._lock:
            now = self.clock.time()
            entry = self._owned(key, expected, now)
            if entry is None:
                return False
            entry.expires_at = now + ttl_s
            return True

    async def acompare_and_expire(self, key: str, expected: str, ttl_s: float) -> bool:
        return self.compare_and_expire(key, expected, ttl_s)

    def incr(self, key: str, amount: int = 1, ttl_s: float | None = None) -> int:
        check_amount(amount)
        if ttl_s is not None:
            check_ttl(ttl_s)
        with self._lock:
            now = self.clock.time()
            entry = self._live(key, now)
            if entry is None:
                entry = self._keys[key] = _Key(0, None if ttl_s is None else now + ttl_s)
            if isinstance(entry.value, set):
                raise wrong_kind(key, "a set", "a counter", "use a separate key for counting")
            if not isinstance(entry.value, int):
                raise not_a_counter(key)
            entry.value += amount
            return entry.value

    async def aincr(self, key: str, amount: int = 1, ttl_s: float | None = None) -> int:
        return self.incr(key, amount, ttl_s)

    def add_member(self, key: str, member: str, ttl_s: float) -> tuple[bool, int]:
        check_ttl(ttl_s)
        with self._lock:
            now = self.clock.time()
            entry = self._live(key, now)
            if entry is None:
                entry = self._keys[key] = _Key(set(), now + ttl_s)
            if not isinstance(entry.value, set):
                holds = "a counter" if isinstance(entry.value, int) else _TEXT
                raise wrong_kind(key, holds, "a set", "use a separate key for the set")
            added = member not in entry.value
            entry.value.add(member)
            return added, len(entry.value)

    async def aadd_member(self, key: str, member: str, ttl_s: float) -> tuple[bool, int]:
        return self.add_member(key, member, ttl_s)

    def expire(self, key: str, ttl_s: float) -> bool:
        check_ttl(ttl_s)
        with self._lock:
            now = self.clock.time()
            entry = self._live(key, now)
            if entry is None:
                return False
            entry.expires_at = now + ttl_s
            return True

    async def aexpire(self, key: str, ttl_s: float) -> bool:
        return self.expire(key, ttl_s)

    def delete(self, key: str) -> bool:
        with self._lock:
            if self._live(key, self.clock.time()) is None:
                return False
            del self._keys[key]
            return True

    def next_token(self, name: str) -> int:
        with self._lock:
            token = self._tokens[name] = self._tokens.get(name, 0) + 1
            return token

    def take_in_window(self, key: str, limit: int, window_s: float) -> float:
        check_limit(limit)
        check_ttl(window_s)
        with self._lock:
            now = self.clock.time()
            window = self._windows.setdefault(key, _Window(window_s))
            window.window_s = window_s
            window.drop_old(now)
            if len(window.uses) < limit:
                window.uses.append(now)
                return 0.0
            return max(window.uses[-limit] + window_s - now, 1e-3)

    async def atake_in_window(self, key: str, limit: int, window_s: float) -> float:
        return self.take_in_window(key, limit, window_s)

    async def cleanup(self) -> int:
        with self._lock:
            now = self.clock.time()
            doomed = [k for k, e in self._keys.items() if e.expires_at is not None]
            removed = sum(self._live(k, now) is None for k in doomed)
            for name, window in list(self._windows.items()):
                before = len(window.uses)
                window.drop_old(now)
                removed += before - len(window.uses)
                if not window.uses:
                    del self._windows[name]
            return removed

    def close(self) -> None:
        pass

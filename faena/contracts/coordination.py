"""The coordination store seam: a few atomic operations on short keys, with TTLs.

Locks, global rate limits, concurrency limits, unique jobs, chord counters and scheduler
leadership are built on these operations (huey builds its locks and rate limits the same way on
``put_if_empty``/``incr``); the store knows nothing of those features.

The rules every backend keeps:

- **One keyspace.** A key (``str``) holds a text value, written by
  :meth:`~CoordinationStore.set_if_absent`, an integer counter, created by
  :meth:`~CoordinationStore.incr`, or a set of members, created by
  :meth:`~CoordinationStore.add_member` (or :meth:`~CoordinationStore.add_members`, many adds
  in one call). :meth:`~CoordinationStore.get` returns text or a
  counter as text (a counter as its decimal digits); ``compare_and_*`` compare ``expected``
  with that text. A set is read only through ``add_member``'s answers: ``get`` or ``incr`` of a
  set is a ``ValueError``, ``set_if_absent`` on a live set returns ``False``, ``compare_and_*``
  never match a set; ``expire``, ``delete`` and ``cleanup`` treat it like any key.
- **Expiry.** Every TTL is in seconds, a finite number above zero (anything else is a
  ``ValueError``), and sets the key to expire at ``clock.time() + ttl_s`` on the store's
  :class:`~faena.foundation.clock.Clock`. A key whose expiry time has come (``expires_at <=
  now``) is absent for every operation: it reads as ``None``, a ``set_if_absent`` or ``incr``
  creates it afresh, and nothing can compare, extend or delete it. :meth:`cleanup` only frees
  the space.
- **Atomicity.** Each call is one atomic step, for every client of the same store: threads,
  processes, machines (as far as the backend reaches). Between two calls anything may happen.
- **Sliding windows** live apart from keys too: :meth:`~CoordinationStore.take_in_window`
  records uses under a window name that no key operation sees; ``cleanup`` drops uses that
  have left their window.
- **Fencing tokens** live apart from keys: :meth:`~CoordinationStore.next_token` counts per
  name, never expires, and is never touched by ``delete`` or ``cleanup``.

Async twins exist only for what the worker's event loop will call while it runs jobs —
acquiring and renewing a lock or leadership, counting toward a rate or concurrency limit, and
releasing (``aset_if_absent``, ``acompare_and_expire``, ``aincr``, ``acompare_and_delete``,
``aexpire``, ``atake_in_window``), and counting chord members (``aadd_member``,
``aadd_members``) — plus :meth:`~CoordinationStore.cleanup`, which is async only, like the
result store's, because only the worker's housekeeping calls it. ``get``, ``delete`` and
``next_token`` serve producers, administration and task code, which are sync. An async twin
must never block the loop: a backend with blocking I/O runs the operation on its own I/O
thread (SQLite's executor), one in memory just calls the sync operation.

Example (a lock, as the lock feature will build it):
    >>> from faena.backends.memory import MemoryCoordinationStore
    >>> store = MemoryCoordinationStore()
    >>> token = str(store.next_token("lock:report"))
    >>> store.set_if_absent("lock:report", token, ttl_s=30)
    True
    >>> store.compare_and_expire("lock:report", token, ttl_s=30)  # renew while working
    True
    >>> store.compare_and_delete("lock:report", token)  # release only our own lock
    True
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence

from faena.foundation.clock import SYSTEM_CLOCK, Clock


def check_ttl(ttl_s: float) -> float:
    """``ttl_s`` if it is a valid TTL (finite, above zero); otherwise ``ValueError``."""
    if not (math.isfinite(ttl_s) and ttl_s > 0):
        raise ValueError(
            f"a TTL is a finite number of seconds above zero; got {ttl_s!r} (to remove a key "
            "now, delete it)"
        )
    return ttl_s


def check_amount(amount: int) -> int:
    """``amount`` if it is a valid increment (an ``int`` that fits 64 bits); else
    ``ValueError``, before anything is written."""
    if isinstance(amount, bool) or not isinstance(amount, int) or not -(2**63) <= amount < 2**63:
        raise ValueError(f"a counter's increment is a whole number (64 bits); got {amount!r}")
    return amount


def check_limit(limit: int) -> int:
    """``limit`` if it is a valid window limit (an ``int`` of at least 1); else ``ValueError``."""
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"a window limit is a whole number of uses of at least 1; got {limit!r}")
    return limit


def wrong_kind(key: str, holds: str, wanted: str, advice: str) -> ValueError:
    """The error for an operation on a key that holds another kind of value."""
    return ValueError(f"coordination key {key!r} holds {holds}, not {wanted}; {advice}")


def not_a_counter(key: str) -> ValueError:
    """The error ``incr`` raises for a key that holds text."""
    return ValueError(
        f"coordination key {key!r} holds a text value set by set_if_absent, not a counter; "
        "use a separate key for counting"
    )


class CoordinationStore(ABC):
    """Atomic primitives on keys with TTLs. See the module docstring for the shared rules."""

    def __init__(self, url: str, clock: Clock = SYSTEM_CLOCK) -> None:
        self.url = url
        self.clock = clock

    # -- text values --------------------------------------------------------------------------
    @abstractmethod
    def set_if_absent(self, key: str, value: str, ttl_s: float) -> bool:
        """Create ``key`` holding ``value``, expiring in ``ttl_s``, unless it exists.

        Returns ``True`` if this call created it; ``False`` (and nothing changes) if ``key``
        exists and has not expired, whatever it holds.
        """

    @abstractmethod
    async def aset_if_absent(self, key: str, value: str, ttl_s: float) -> bool:
        """``set_if_absent`` for async callers."""

    @abstractmethod
    def get(self, key: str) -> str | None:
        """The text ``key`` holds (a counter as decimal digits), or ``None`` if absent."""

    @abstractmethod
    def compare_and_delete(self, key: str, expected: str) -> bool:
        """Delete ``key`` if it holds ``expected``; ``True`` if deleted."""

    @abstractmethod
    async def acompare_and_delete(self, key: str, expected: str) -> bool:
        """``compare_and_delete`` for async callers."""

    @abstractmethod
    def compare_and_expire(self, key: str, expected: str, ttl_s: float) -> bool:
        """Make ``key`` expire ``ttl_s`` from now if it holds ``expected``; ``True`` if so.

        The new expiry replaces the old one, later or earlier. An expired key is not revived.
        """

    @abstractmethod
    async def acompare_and_expire(self, key: str, expected: str, ttl_s: float) -> bool:
        """``compare_and_expire`` for async callers."""

    # -- counters -----------------------------------------------------------------------------
    @abstractmethod
    def incr(self, key: str, amount: int = 1, ttl_s: float | None = None) -> int:
        """Add ``amount`` (may be zero or negative) to the counter ``key``; its new value.

        An absent key is created at 0 before adding, expiring in ``ttl_s`` (never if ``None``).
        An existing counter keeps its expiry, whatever ``ttl_s`` says: a window opened by the
        first ``incr`` is not stretched by later ones; use :meth:`expire` to change it.
        Counters have no floor: they go below zero if asked to.

        Raises:
            ValueError: ``key`` holds text (from ``set_if_absent``), ``amount`` is not a whole
                number, or ``ttl_s`` is invalid; nothing is written then.
        """

    @abstractmethod
    async def aincr(self, key: str, amount: int = 1, ttl_s: float | None = None) -> int:
        """``incr`` for async callers."""

    # -- sets ---------------------------------------------------------------------------------
    @abstractmethod
    def add_member(self, key: str, member: str, ttl_s: float) -> tuple[bool, int]:
        """Add ``member`` to the set ``key``; ``(added, size after)``, in one atomic step.

        An absent key is created as a set expiring in ``ttl_s``; an existing set keeps its
        expiry. ``added`` is ``False`` when ``member`` was already there, so a member counted
        twice (a redelivered chord member) is told apart from a new one.

        Raises:
            ValueError: ``key`` holds text or a counter, or ``ttl_s`` is invalid.

        Example:
            >>> store.add_member("chord:42:done", "0", ttl_s=3600)
            (True, 1)
        """

    @abstractmethod
    async def aadd_member(self, key: str, member: str, ttl_s: float) -> tuple[bool, int]:
        """``add_member`` for async callers."""

    def add_members(self, items: Sequence[tuple[str, str]], ttl_s: float) -> list[tuple[bool, int]]:
        """:meth:`add_member` of each ``(key, member)`` of ``items``, in order; the answers in
        the same order.

        Each add is one atomic step, and each answer is what that add alone would have
        answered after the ones before it in ``items``: two members of one set in one call
        get sizes one apart, and a member given twice is ``added`` only the first time. The
        adds of one call need not be atomic together (another client's add may fall between
        two of them). A backend does them in one round trip or transaction where it can; this
        default calls :meth:`add_member` for each.

        Raises:
            ValueError: a key holds text or a counter, or ``ttl_s`` is invalid (checked
                before any add). The other adds of the call may or may not have been made: a
                backend that makes them in one transaction makes none.

        Example:
            >>> store.add_members([("chord:42:done", "0"), ("chord:42:done", "1")], 3600)
            [(True, 1), (True, 2)]
        """
        check_ttl(ttl_s)
        return [self.add_member(key, member, ttl_s) for key, member in items]

    async def aadd_members(
        self, items: Sequence[tuple[str, str]], ttl_s: float
    ) -> list[tuple[bool, int]]:
        """``add_members`` for async callers; this default awaits :meth:`aadd_member` for each."""
        check_ttl(ttl_s)
        return [await self.aadd_member(key, member, ttl_s) for key, member in items]

    # -- any key ------------------------------------------------------------------------------
    @abstractmethod
    def expire(self, key: str, ttl_s: float) -> bool:
        """Make ``key`` (text, counter or set) expire ``ttl_s`` from now; ``False`` if absent."""

    @abstractmethod
    async def aexpire(self, key: str, ttl_s: float) -> bool:
        """``expire`` for async callers."""

    @abstractmethod
    def delete(self, key: str) -> bool:
        """Delete ``key``, text, counter or set; ``True`` if it existed (and had not expired)."""

    # -- fencing tokens -----------------------------------------------------------------------
    @abstractmethod
    def next_token(self, name: str) -> int:
        """The next fencing token for ``name``: 1 first, then always higher than any before.

        Every client of the store draws from the same sequence. Tokens never expire and are
        independent of keys (a key with the same name neither resets nor reads them).
        """

    # -- sliding windows ----------------------------------------------------------------------
    @abstractmethod
    def take_in_window(self, key: str, limit: int, window_s: float) -> float:
        """Take one use of the sliding window ``key`` if fewer than ``limit`` uses were taken in
        the last ``window_s`` seconds (by the store's clock).

        Returns ``0.0`` when the use was taken (recorded at the store's time now), otherwise
        the seconds until the oldest use in the window leaves it (above zero), when a retry
        may succeed. Window names are a keyspace of their own: ``get``, ``delete`` and the
        other key operations never see them.

        Raises:
            ValueError: ``limit`` is not an ``int`` of at least 1, or ``window_s`` is not a
                valid TTL.

        Example:
            >>> store.take_in_window("rate:send_email", limit=100, window_s=1.0)  # doctest: +SKIP
            0.0
        """

    @abstractmethod
    async def atake_in_window(self, key: str, limit: int, window_s: float) -> float:
        """``take_in_window`` for async callers."""

    # -- lifetime -----------------------------------------------------------------------------
    @abstractmethod
    async def cleanup(self) -> int:
        """Delete expired keys; returns how many it deleted.

        Never needed for correctness, only for space. A backend may also drop expired keys on
        its own (on access, or a server's expiry), so the count is for logs, not for logic.
        """

    @abstractmethod
    def close(self) -> None:
        """Release connections. Safe to call twice."""

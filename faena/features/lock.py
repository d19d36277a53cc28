"""Distributed locks on the coordination store, with fencing tokens.

A lock is one coordination key, ``faena:lock:<name>``, holding a random owner id, with a TTL.
Acquiring takes three steps: create the key (``set_if_absent``), draw the next fencing token for
the name, then confirm the key is still ours (``compare_and_expire``, which also restarts the
TTL). The confirmation is what makes tokens follow the order of holds: a previous holder drew
its token before its own confirmation, hence before its key went away, hence before we created
ours; a holder that stalled between the steps past its TTL fails the confirmation and tries
again instead of holding a token newer than the real holder's. Release and extend compare the
key with the owner id, so only the holder can do either.

A holder that dies (or stalls past the TTL, e.g. a long GC pause or a SIGSTOP) loses the lock
when the TTL runs out. The lock alone cannot stop the stalled holder from writing late: pass
``lock.token`` to the storage you protect, and have it refuse a token lower than the highest it
has seen (see ``docs/locks.md``).

Waiting for a held lock polls with a short, growing interval; the waiting time is real time,
while TTLs follow the store's clock.

Example:
    >>> with app.lock("reports:daily", ttl=30, blocking_timeout=5) as lock:  # doctest: +SKIP
    ...     write_report(fencing_token=lock.token)
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import math
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar, cast

from faena.contracts.coordination import CoordinationStore
from faena.foundation.clock import SYSTEM_CLOCK
from faena.foundation.exceptions import (
    ConfigurationError,
    LockError,
    LockLost,
    LockNotAcquired,
)

P = ParamSpec("P")
R = TypeVar("R")

log = logging.getLogger("faena.lock")

_FIRST_POLL_S = 0.005
MIN_TTL_S = 0.1
"""The shortest lock TTL: taking a lock is three calls to the store, and a TTL that can run out
between them would make every attempt fail."""
_LONGEST_POLL_S = 0.1


def lock_key(name: str) -> str:
    """The coordination key (and token sequence name) of the lock ``name``."""
    return f"faena:lock:{name}"


def _check_seconds(what: str, value: float | None, *, zero_ok: bool = False) -> None:
    if value is None:
        return
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or not (value >= 0 if zero_ok else value > 0):
        floor = "0 or more" if zero_ok else "above zero"
        raise ConfigurationError(f"lock {what} is a number of seconds {floor}, got {value!r}")


def _check_ttl(value: float | None) -> None:
    _check_seconds("ttl", value)
    if value is not None and value < MIN_TTL_S:
        raise ConfigurationError(
            f"lock ttl is at least {MIN_TTL_S:g} s, got {value!r}: a shorter one can run out "
            "while the lock is being taken"
        )


def _after_body(error: BaseException | None, lost: LockLost) -> None:
    """A lock found lost at the end of a ``with`` block: raise ``LockLost``, unless the block
    raised on its own; then its error goes on (what the caller's handlers expect) with the lost
    lock noted on it."""
    if error is None:
        raise lost
    log.warning("%s (the block raised %s)", lost, type(error).__name__)
    error.add_note(f"and then: {lost}")


class Lock:
    """A distributed lock: ``with``, ``async with``, or a decorator.

    Args:
        store: the coordination store every contender uses, or a function that returns it
            (called at each use).
        name: what is locked; one name, one lock, across every process using the store.
        ttl: seconds the lock stays held without an ``extend``; a dead holder loses it then.
        blocking: wait for a held lock (``True``) or fail at once (``False``).
        blocking_timeout: the longest wait in seconds (``None``: no limit).
        auto_renew: extend the lock every third of ``ttl`` while it is held, from a
            background thread (sync) or task (async), until it is released.

    Raises:
        ConfigurationError: an empty name, a timeout that is not a positive number, or a TTL
            below :data:`MIN_TTL_S` (0.1 s).
    """

    def __init__(
        self,
        store: CoordinationStore | Callable[[], CoordinationStore],
        name: str,
        *,
        ttl: float = 30.0,
        blocking: bool = True,
        blocking_timeout: float | None = None,
        auto_renew: bool = False,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ConfigurationError(f"a lock needs a non-empty name, got {name!r}")
        _check_ttl(ttl)
        _check_seconds("blocking_timeout", blocking_timeout, zero_ok=True)
        if hasattr(store, "set_if_absent"):  # a store (or one that stands in for it)
            given = cast(CoordinationStore, store)
            self._store_of: Callable[[], CoordinationStore] = lambda: given
        else:
            self._store_of = store
        self.name = name
        self.key = lock_key(name)
        self.ttl = float(ttl)
        self.blocking = blocking
        self.blocking_timeout = blocking_timeout
        self.auto_renew = auto_renew
        self.token: int | None = None
        """The fencing token of the current hold; ``None`` while not held."""
        self._owner = ""
        self._stop_renewing = threading.Event()
        self._renewer: threading.Thread | None = None
        self._arenewer: asyncio.Task[None] | None = None

    @property
    def store(self) -> CoordinationStore:
        """The store, looked up at each use when the lock was given a way to find it (an
        app's: a decorated function outlives ``app.close()``)."""
        return self._store_of()

    def __repr__(self) -> str:
        held = f"held, token {self.token}" if self.token is not None else "not held"
        return f"<Lock {self.name!r} {held}>"

    def _fresh(self) -> Lock:
        """An unheld lock with the same settings (each decorated call holds its own)."""
        return Lock(
            self._store_of,
            self.name,
            ttl=self.ttl,
            blocking=self.blocking,
            blocking_timeout=self.blocking_timeout,
            auto_renew=self.auto_renew,
        )

    # -- sync ---------------------------------------------------------------------------------
    def _try_once(self) -> bool:
        owner = uuid.uuid4().hex
        try:
            if not self.store.set_if_absent(self.key, owner, self.ttl):
                return False
            token = self.store.next_token(self.key)
            if not self.store.compare_and_expire(self.key, owner, self.ttl):
                return False  # stalled past the TTL between the steps: not ours any more
        except BaseException:
            # The key may be ours (even the creation's reply may have been lost) but the hold
            # is not: give it back (if the store answers; a no-op if it was never made), or
            # nobody could take the lock until its TTL ran out.
            with contextlib.suppress(Exception):
                self.store.compare_and_delete(self.key, owner)
            raise
        self._owner, self.token = owner, token
        return True

    def _wait_plan(self, blocking: bool | None, timeout: float | None) -> float | None:
        """The deadline (monotonic) of this acquisition; ``None`` waits forever."""
        blocking = self.blocking if blocking is None else blocking
        timeout = self.blocking_timeout if timeout is None else timeout
        _check_seconds("blocking_timeout", timeout, zero_ok=True)
        if not blocking:
            return SYSTEM_CLOCK.monotonic()
        return None if timeout is None else SYSTEM_CLOCK.monotonic() + timeout

    def acquire(self, blocking: bool | None = None, timeout: float | None = None) -> bool:
        """Take the lock; ``True`` once held, ``False`` if the wait ran out.

        ``blocking`` and ``timeout`` override the lock's own settings for this call.
        """
        if self.token is not None:
            raise LockError(
                f"lock {self.name!r} is already held by this Lock object; release it first, "
                "or make one Lock per hold"
            )
        deadline = self._wait_plan(blocking, timeout)
        pause = _FIRST_POLL_S
        while not self._try_once():
            left = None if deadline is None else deadline - SYSTEM_CLOCK.monotonic()
            if left is not None and left <= 0:
                return False
            time.sleep(pause if left is None else min(pause, left))
            pause = min(pause * 2, _LONGEST_POLL_S)
        if self.auto_renew:
            self._start_renewing()
        return True

    def _held_token(self, doing: str) -> str:
        """The owner id of the current hold (what the key holds)."""
        if self.token is None:
            raise LockLost(f"cannot {doing} lock {self.name!r}: it is not held")
        return self._owner

    def extend(self, ttl: float | None = None) -> None:
        """Make the lock expire ``ttl`` (default: the lock's TTL) seconds from now. On an
        ``auto_renew`` lock this lasts until the next renewal, which sets the expiry to the
        lock's own TTL from then.

        Raises:
            LockLost: the lock's TTL already ran out (another may hold it now).
        """
        _check_ttl(ttl)
        if not self.store.compare_and_expire(
            self.key, self._held_token("extend"), self.ttl if ttl is None else ttl
        ):
            raise LockLost(
                f"lock {self.name!r} (token {self.token}) expired before it was extended; "
                "extend more often or use a longer ttl"
            )

    def owned(self) -> bool:
        """Whether this object holds the lock now (by the store)."""
        return self.token is not None and self.store.get(self.key) == self._owner

    def release(self) -> None:
        """Release the lock; only the holder's token can.

        Raises:
            LockLost: the lock had expired (work done after that was not protected).
        """
        owner, token = self._held_token("release"), self.token
        renewing = self._renewer is not None
        self._stop_renewal_thread()
        self._stop_async_renewal()
        # The hold ends once the store answered: if it did not, release() may be called again,
        # and the lock is renewed meanwhile as it was.
        try:
            released = self.store.compare_and_delete(self.key, owner)
        except BaseException:
            if renewing:
                self._start_renewing()
            raise
        self.token = None
        if not released:
            raise LockLost(
                f"lock {self.name!r} (token {token}) had expired before release: the work "
                "done under it after its ttl was not protected; use a longer ttl, extend(), "
                "or auto_renew=True"
            )

    def _start_renewing(self) -> None:
        self._stop_renewing.clear()
        self._renewer = threading.Thread(
            target=self._renew_loop, name=f"faena-lock-{self.name}", daemon=True
        )
        self._renewer.start()

    def _renew_loop(self) -> None:
        owner, token = self._owner, self.token
        renewed_at = SYSTEM_CLOCK.monotonic()
        pause = self.ttl / 3
        while not self._stop_renewing.wait(pause):
            try:
                held = self.store.compare_and_expire(self.key, owner, self.ttl)
            except Exception as exc:
                retry_in = self._renewal_failed(exc, renewed_at, token)
                if retry_in is None:
                    return
                pause = retry_in
                continue
            if not held:
                self._renewal_lost(token)
                return
            renewed_at, pause = SYSTEM_CLOCK.monotonic(), self.ttl / 3

    def _renewal_failed(self, exc: Exception, renewed_at: float, token: int | None) -> float | None:
        """After a renewal the store did not answer: how long until the next try, or ``None``
        once the TTL has run out since the last renewal (the lock may be another's now)."""
        left = renewed_at + self.ttl - SYSTEM_CLOCK.monotonic()
        if left <= 0:
            log.error(
                "lock %r (token %s): could not renew it for its whole ttl (%s); it may be held "
                "by another owner now, and release() will raise LockLost",
                self.name,
                token,
                exc,
            )
            return None
        log.warning(
            "lock %r (token %s): renewal failed (%s); trying again, %.1fs of its ttl left",
            self.name,
            token,
            exc,
            left,
        )
        return min(self.ttl / 3, max(left / 4, 0.001))

    def _renewal_lost(self, token: int | None) -> None:
        log.error(
            "lock %r (token %s) expired before it was renewed: it may be held by another owner "
            "now, and release() will raise LockLost",
            self.name,
            token,
        )

    def _stop_async_renewal(self) -> None:
        """Stop the renewal task of a lock taken with ``aacquire`` (released from sync code,
        maybe from another thread than its loop's)."""
        renewer, self._arenewer = self._arenewer, None
        if renewer is not None and not renewer.done():
            with contextlib.suppress(RuntimeError):  # its loop is closed: it runs no more
                renewer.get_loop().call_soon_threadsafe(renewer.cancel)

    def _stop_renewal_thread(self) -> None:
        self._stop_renewing.set()
        renewer, self._renewer = self._renewer, None
        if renewer is not None and renewer is not threading.current_thread():
            renewer.join()

    def __enter__(self) -> Lock:
        if not self.acquire():
            raise LockNotAcquired(
                f"lock {self.name!r} is held by another owner and was not released within "
                f"{self.blocking_timeout if self.blocking else 0} s; try later or raise "
                "blocking_timeout"
            )
        return self

    def __exit__(self, kind: object, error: BaseException | None, trace: object) -> None:
        try:
            self.release()
        except LockLost as lost:
            _after_body(error, lost)

    # -- async --------------------------------------------------------------------------------
    async def _atry_once(self) -> bool:
        owner = uuid.uuid4().hex
        try:
            if not await self.store.aset_if_absent(self.key, owner, self.ttl):
                return False
            token = await asyncio.to_thread(self.store.next_token, self.key)
            if not await self.store.acompare_and_expire(self.key, owner, self.ttl):
                return False
        except BaseException:
            with contextlib.suppress(Exception):  # as in _try_once
                await self.store.acompare_and_delete(self.key, owner)
            raise
        self._owner, self.token = owner, token
        return True

    async def aacquire(self, blocking: bool | None = None, timeout: float | None = None) -> bool:
        """``acquire`` for async code: waits without blocking the event loop."""
        if self.token is not None:
            raise LockError(
                f"lock {self.name!r} is already held by this Lock object; release it first, "
                "or make one Lock per hold"
            )
        deadline = self._wait_plan(blocking, timeout)
        pause = _FIRST_POLL_S
        while not await self._atry_once():
            left = None if deadline is None else deadline - SYSTEM_CLOCK.monotonic()
            if left is not None and left <= 0:
                return False
            await asyncio.sleep(pause if left is None else min(pause, left))
            pause = min(pause * 2, _LONGEST_POLL_S)
        if self.auto_renew:
            self._arenewer = asyncio.create_task(self._arenew_loop(self._owner))
        return True

    async def _arenew_loop(self, owner: str) -> None:
        token = self.token
        renewed_at = SYSTEM_CLOCK.monotonic()
        pause: float | None = self.ttl / 3
        while pause is not None:
            await asyncio.sleep(pause)
            try:
                held = await self.store.acompare_and_expire(self.key, owner, self.ttl)
            except Exception as exc:
                pause = self._renewal_failed(exc, renewed_at, token)
                continue
            if not held:
                self._renewal_lost(token)
                return
            renewed_at, pause = SYSTEM_CLOCK.monotonic(), self.ttl / 3

    async def aextend(self, ttl: float | None = None) -> None:
        """``extend`` for async code."""
        _check_ttl(ttl)
        owner = self._held_token("extend")
        if not await self.store.acompare_and_expire(
            self.key, owner, self.ttl if ttl is None else ttl
        ):
            raise LockLost(
                f"lock {self.name!r} (token {self.token}) expired before it was extended"
            )

    async def arelease(self) -> None:
        """``release`` for async code."""
        owner, token = self._held_token("release"), self.token
        renewer, self._arenewer = self._arenewer, None
        if renewer is not None:
            renewer.cancel()
        released = await self.store.acompare_and_delete(self.key, owner)  # as in release()
        self.token = None
        if not released:
            raise LockLost(
                f"lock {self.name!r} (token {token}) had expired before release: the work "
                "done under it after its ttl was not protected"
            )

    async def __aenter__(self) -> Lock:
        if not await self.aacquire():
            raise LockNotAcquired(
                f"lock {self.name!r} is held by another owner and was not released within "
                f"{self.blocking_timeout if self.blocking else 0} s"
            )
        return self

    async def __aexit__(self, kind: object, error: BaseException | None, trace: object) -> None:
        try:
            await self.arelease()
        except LockLost as lost:
            _after_body(error, lost)

    # -- decorator ----------------------------------------------------------------------------
    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]:
        """Hold the lock around every call of ``fn`` (sync or ``async def``)."""
        if inspect.iscoroutinefunction(fn):
            afn = cast("Callable[P, Awaitable[Any]]", fn)

            @functools.wraps(fn)
            async def alocked(*args: P.args, **kwargs: P.kwargs) -> Any:
                async with self._fresh():
                    return await afn(*args, **kwargs)

            return cast("Callable[P, R]", alocked)

        @functools.wraps(fn)
        def locked(*args: P.args, **kwargs: P.kwargs) -> R:
            with self._fresh():
                return fn(*args, **kwargs)

        return locked

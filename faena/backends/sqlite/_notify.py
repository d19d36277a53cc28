"""In-process wake-ups between brokers and result stores that share one SQLite file.

SQLite cannot push a notification to another process, so waiters poll ``PRAGMA data_version``.
Inside one process we can do better: every writer pokes the :class:`Notifier` of its file, and a
consumer or result waiter on the same file wakes at once instead of at its next poll (a Django
view enqueuing for an in-process worker, a test, ``faena demo``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

_Waiter = tuple[asyncio.AbstractEventLoop, asyncio.Event]


class Notifier:
    """A generation counter plus the sync and async waiters to poke when it moves."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._generation = 0
        self._waiters: set[_Waiter] = set()

    @property
    def generation(self) -> int:
        with self._cond:
            return self._generation

    def notify(self) -> None:
        """Something was committed: wake every waiter in this process."""
        with self._cond:
            self._generation += 1
            self._cond.notify_all()
            waiters = tuple(self._waiters)
        for loop, event in waiters:
            try:
                running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is loop:
                event.set()
            elif not loop.is_closed():
                # The loop may close between the check and the call.
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(event.set)

    def wait(self, seen: int, timeout_s: float) -> int:
        """Block until the generation differs from ``seen`` or ``timeout_s`` passes."""
        with self._cond:
            self._cond.wait_for(lambda: self._generation != seen, max(0.0, timeout_s))
            return self._generation

    @contextmanager
    def subscribe(self) -> Iterator[asyncio.Event]:
        """An event of the running loop that :meth:`notify` sets, for the ``with`` block."""
        waiter = (asyncio.get_running_loop(), asyncio.Event())
        with self._cond:
            self._waiters.add(waiter)
        try:
            yield waiter[1]
        finally:
            with self._cond:
                self._waiters.discard(waiter)


_registry: weakref.WeakValueDictionary[str, Notifier] = weakref.WeakValueDictionary()
_registry_lock = threading.Lock()


def _fresh_locks_in_child() -> None:
    # A fork while another thread held one of these would leave the child a lock no thread of
    # its own can release; the parent's waiters are not the child's.
    global _registry_lock
    _registry_lock = threading.Lock()
    for notifier in list(_registry.values()):
        notifier._cond = threading.Condition()
        notifier._waiters = set()


os.register_at_fork(after_in_child=_fresh_locks_in_child)


def notifier_for(path: str) -> Notifier:
    """The notifier of the file at ``path`` (absolute); lives while someone holds it."""
    with _registry_lock:
        notifier = _registry.get(path)
        if notifier is None:
            notifier = Notifier()
            _registry[path] = notifier
        return notifier


class Backoff:
    """Poll pauses that start short and grow by a quarter up to a ceiling; reset when something
    moved. A look is one ``PRAGMA data_version`` (shared memory, no disk), so the early looks
    stay close together: a short job's result is seen within a few milliseconds."""

    def __init__(self, first_s: float, ceiling_s: float = 0.05, growth: float = 1.25) -> None:
        self._first = max(first_s, 0.0005)
        self._ceiling = max(ceiling_s, self._first)
        self._growth = growth
        self._next = self._first

    def pause(self) -> float:
        current = self._next
        self._next = min(self._next * self._growth, self._ceiling)
        return current

    def reset(self) -> None:
        self._next = self._first

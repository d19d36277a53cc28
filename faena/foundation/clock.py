"""The one place that reads the wall clock.

Everything that needs "now" takes a :class:`Clock`; tests pass a :class:`FakeClock` and move
time by hand instead of sleeping.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol


class Clock(Protocol):
    """A source of time: ``time()`` is Unix seconds, ``monotonic()`` only goes forward."""

    def time(self) -> float: ...

    def monotonic(self) -> float: ...


class SystemClock:
    """The real clock."""

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()


class FakeClock:
    """A clock that moves only when told to.

    Example:
        >>> clock = FakeClock(1_000.0)
        >>> clock.advance(30)
        >>> clock.time()
        1030.0
    """

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = start
        self._lock = threading.Lock()

    def time(self) -> float:
        with self._lock:
            return self._now

    def monotonic(self) -> float:
        return self.time()

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``."""
        if seconds < 0:
            raise ValueError(f"a clock only moves forward; got advance({seconds})")
        with self._lock:
            self._now += seconds

    def set(self, timestamp: float) -> None:
        """Jump to ``timestamp`` (not earlier than now)."""
        with self._lock:
            if timestamp < self._now:
                raise ValueError(f"a clock only moves forward; {timestamp} < {self._now}")
            self._now = timestamp


SYSTEM_CLOCK = SystemClock()

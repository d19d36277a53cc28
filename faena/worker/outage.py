"""Riding out a broker or store that stops answering.

Each background loop of the worker (fetching, writing results and settlements, the heartbeat)
keeps one :class:`Outage`. When a call fails because the server is unreachable, the loop logs
it once — not a traceback per retry — and tries again after a capped, jittered exponential
back-off; the first call that works again logs how long the outage lasted. Other errors are
logged with their traceback every time (they are faults to fix, not weather), with the same
back-off so a persistent fault does not spin.

Nothing is lost while the server is away: unsent results and settlements stay in the outbox,
leases that expire meanwhile are redelivered by the broker (and this worker's late settlement of
them is refused by their fence).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random

from faena.foundation.clock import SYSTEM_CLOCK, Clock
from faena.foundation.exceptions import BrokerUnavailable

log = logging.getLogger("faena.worker")

FIRST_DELAY_S = 0.1
MAX_DELAY_S = 5.0


class Outage:
    """Back-off and logging for one loop; see the module docstring."""

    def __init__(self, doing: str, clock: Clock = SYSTEM_CLOCK) -> None:
        self.doing = doing
        self._clock = clock
        self._failures = 0
        self._since: float | None = None

    @property
    def ongoing(self) -> bool:
        return self._since is not None

    def next_delay(self) -> float:
        """The pause before the next try: doubling from 0.1 s to 5 s, half of it jittered."""
        ceiling: float = min(MAX_DELAY_S, FIRST_DELAY_S * 2.0 ** min(self._failures - 1, 16))
        return ceiling / 2 + random.random() * ceiling / 2

    def failed(self, exc: Exception) -> float:
        """Log the failure (once per outage when unreachable); returns the pause to take."""
        self._failures += 1
        if isinstance(exc, BrokerUnavailable):
            if self._since is None:
                self._since = self._clock.monotonic()
                log.warning(
                    "%s failed: %s; retrying with back-off until it answers", self.doing, exc
                )
        else:
            log.error("%s failed; retrying with back-off", self.doing, exc_info=exc)
        return self.next_delay()

    def recovered(self) -> None:
        """The call worked: end the outage (logging its length) and reset the back-off."""
        if self._since is not None:
            lasted = self._clock.monotonic() - self._since
            log.warning("%s works again after %.1f s", self.doing, lasted)
        self._since = None
        self._failures = 0

    async def pause(self, exc: Exception, stop: asyncio.Event | None = None) -> None:
        """``failed`` then wait out the pause (returning early once ``stop`` is set)."""
        delay = self.failed(exc)
        if stop is None:
            await asyncio.sleep(delay)  # back-off, not synchronisation
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)

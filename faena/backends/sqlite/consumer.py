"""A worker's consumer of a SQLite broker: claim, wait efficiently, settle, extend.

When a claim finds nothing the consumer waits on the event loop, never in SQLite: it wakes at
once when a producer in this process commits to the same file (the notifier), polls
``PRAGMA data_version`` every ``poll_interval_s`` to notice commits from other processes, and
wakes by itself when the next scheduled message falls due or the next lease expires.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import sqlite3
from collections.abc import Callable, Sequence
from typing import TypeVar

from faena.backends.sqlite import _claims
from faena.backends.sqlite._connection import data_version, write
from faena.backends.sqlite._database import SharedDatabase
from faena.backends.sqlite._notify import Backoff
from faena.contracts.broker import BrokerConfig, Consumer, Delivery, Settlement
from faena.foundation.clock import SYSTEM_CLOCK
from faena.foundation.exceptions import BrokerError, ConfigurationError

T = TypeVar("T")

IDLE_CEILING_S = 0.05
"""The longest pause between two looks of an idle consumer: the most a message sent by
another process waits before an idle worker sees it."""


class SQLiteConsumer(Consumer):
    """Leases messages of ``queues`` to ``worker_id``; see the module docstring."""

    def __init__(
        self, db: SharedDatabase, config: BrokerConfig, queues: list[str], worker_id: str
    ) -> None:
        if not queues:
            raise ConfigurationError("a consumer needs at least one queue to read from")
        self._db = db
        self._config = config
        self._queues = queues
        self._worker_id = worker_id
        self._turn = 0
        self._closed = False
        # Idle looks: poll_interval_s apart at first, growing to IDLE_CEILING_S.
        self._idle = Backoff(config.poll_interval_s, IDLE_CEILING_S)

    def _stopped(self) -> bool:
        return self._closed or self._db.closed

    def _transaction(
        self, body: Callable[[sqlite3.Connection], T], what: str
    ) -> Callable[[sqlite3.Connection], T]:
        return lambda conn: write(conn, body, what)

    async def receive(self, max_messages: int, timeout_s: float) -> list[Delivery]:
        # A timeout is a real wait; the store's clock (maybe a FakeClock) decides what is due.
        deadline = SYSTEM_CLOCK.monotonic() + timeout_s
        try:
            with self._db.notifier.subscribe() as woken:
                while not self._stopped() and max_messages > 0:
                    woken.clear()  # before the claim: a commit during it must still wake us
                    found = await self._claim(max_messages)
                    if found is None:
                        return []
                    if found.deliveries:
                        self._idle.reset()
                        return found.deliveries
                    if not await self._wait(found, woken, deadline):
                        return []
        except BrokerError:
            if self._db.closed:  # the broker closed under a waiting receive: nothing came
                return []
            raise
        return []

    async def _claim(self, limit: int) -> _claims.Claim | None:
        """One claim round, starting at the next queue each time; ``None`` once closed."""
        order = self._queues[self._turn :] + self._queues[: self._turn]
        self._turn = (self._turn + 1) % len(self._queues)
        config = self._config
        asked = config.clock.time()

        def body(c: sqlite3.Connection) -> _claims.Claim:
            return _claims.claim(
                c,
                order,
                limit,
                self._worker_id,
                config.clock.time(),
                config.lease_s,
                config.max_deliveries,
                expired_by=asked,
            )

        if self._stopped():
            return None
        future = self._db.submit(self._transaction(body, "claim messages"))
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            # The claim may already be running in its thread and will lease messages nobody
            # will receive: hand them back, uncounted, rather than let their leases run out.
            future.add_done_callback(self._give_back)
            raise

    def _give_back(self, future: concurrent.futures.Future[_claims.Claim]) -> None:
        if future.cancelled() or future.exception() is not None or self._db.closed:
            return
        deliveries = future.result().deliveries
        if deliveries:
            now = self._config.clock.time()
            try:
                self._db.submit(
                    self._transaction(
                        lambda c: _claims.give_back(c, deliveries, now), "release messages"
                    )
                )
            except BrokerError:  # closed meanwhile: the leases will expire instead
                return
            self._db.notifier.notify()

    async def _wait(self, found: _claims.Claim, woken: asyncio.Event, deadline: float) -> bool:
        """Sleep until a claim may find something; ``False`` if the deadline came first."""
        clock = self._config.clock
        while not self._stopped():
            remaining = deadline - SYSTEM_CLOCK.monotonic()
            if remaining <= 0:
                return False
            # Looks grow apart while nothing changes (an idle worker costs little CPU) and
            # start close again once something did.
            pause = min(remaining, self._idle.pause())
            if found.next_due is not None:
                until_due = found.next_due - clock.time()
                if until_due <= 0:
                    return True
                pause = min(pause, until_due)
            try:
                await asyncio.wait_for(woken.wait(), pause)
            except TimeoutError:
                pass
            else:
                self._idle.reset()
                return True
            if self._stopped():
                return False
            self._db.check_same_file()  # one stat(): a deleted file would go unnoticed
            if await self._db.run(data_version) != found.data_version:
                self._idle.reset()
                return True
        return False

    async def settle(self, settlements: Sequence[Settlement]) -> list[bool]:
        if not settlements:
            return []
        clock = self._config.clock
        done = await self._db.run(
            self._transaction(
                lambda c: _claims.settle(c, settlements, clock.time()), "settle messages"
            )
        )
        if any(ok and s.action != "ack" for ok, s in zip(done, settlements, strict=True)):
            self._db.notifier.notify()  # a retry or release may be claimable right away
        return done

    async def extend(self, deliveries: Sequence[Delivery], lease_s: float) -> set[str]:
        if not deliveries:
            return set()
        clock = self._config.clock
        return await self._db.run(
            self._transaction(
                lambda c: _claims.extend(c, deliveries, clock.time() + lease_s), "extend leases"
            )
        )

    async def close(self) -> None:
        self._closed = True
        self._db.notifier.notify()  # end a receive that is waiting

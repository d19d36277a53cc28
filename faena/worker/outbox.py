"""The worker's outbox: records and settlements gathered while jobs run, written in batches.

Records are written before the settlements of the same batch (a result is stored before its
message is acknowledged: at-least-once), and a job's newer record replaces an older one
still waiting, so a job that starts and ends between two flushes costs one write.

Workflow follow-ups (:mod:`faena.worker.canvas`) run between the two: after the batch's
records are written (a chord member's result is stored before it is counted) and before its
settlements (what follows a job is sent before its message is acknowledged). A follow-up
that fails stays pending with its settlement and runs again, told that it is a second run.

A record the result store refuses for good (:class:`RecordRefused`: another program's value
under the job's key) is dropped with an error, so it cannot hold back every other job's result
and acknowledgement; any other failure leaves the whole batch for the next try. Settlements the
broker refuses while it applies the others (:class:`SettlementsRefused`: one queue under
another program's value) are set aside and sent again on their own back-off, from
:data:`PARK_FIRST_S` doubling to :data:`PARK_MAX_S`, so one such queue does not hold back the
settlements of the others.

A job's ``STARTED`` record waits up to :data:`LINGER_S` before it is written, unless
something else is written first: most jobs end within that time, and
their ``STARTED`` record is then replaced by the final one instead of written apart. That
halves the result writes of short jobs, and the final record of a job no longer waits behind
the write of its ``STARTED`` record (the outbox writes one batch at a time), which is most of
the time between the end of a short job and its caller's wake-up. A final record, a
settlement, a progress report or an explicit flush write everything pending at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Final

import msgspec

from faena.contracts.broker import Consumer, Settlement
from faena.contracts.results import ResultStore
from faena.foundation.exceptions import (
    BrokerError,
    BrokerUnavailable,
    RecordRefused,
    SettlementsRefused,
)
from faena.model.outcome import JobRecord
from faena.model.states import STARTED
from faena.worker.outage import Outage

log = logging.getLogger("faena.worker")

LINGER_S: Final = 0.005
"""How long a ``STARTED`` record may wait for its job's end, or for other writes to join."""

PARK_FIRST_S: Final = 0.5
PARK_MAX_S: Final = 10.0
"""Refused settlements are sent again after 0.5 s, then twice as long each time, up to 10 s."""


def log_refused(record: JobRecord, refusal: RecordRefused) -> None:
    """Say that ``record`` was dropped because the result store can never hold it."""
    log.error(
        "record of job %s (%s) refused by the result store and dropped, so other jobs' "
        "results and acknowledgements go on: %s",
        record.id,
        record.state,
        refusal,
    )


_UNENCODABLE = (UnicodeError, msgspec.EncodeError)
"""What a record that can never be encoded fails with (text with lone surrogates, a value of
a type the encoder refuses): retrying it would hold back every write behind it for ever."""


def log_unencodable(record: JobRecord, error: Exception) -> None:
    log.error(
        "record of job %s (%s) cannot be encoded and was dropped, so other jobs' results and "
        "acknowledgements go on: %s: %s",
        record.id,
        record.state,
        type(error).__name__,
        error,
    )


class Outbox:
    """Pending writes, flushed by :meth:`run` as soon as there is something to write."""

    def __init__(
        self,
        results: ResultStore,
        consumer: Consumer,
        on_settled: Callable[[Settlement, bool], None],
        linger_s: float = LINGER_S,
        on_set_aside: Callable[[], None] | None = None,
    ) -> None:
        self._results = results
        self._consumer = consumer
        self._on_settled = on_settled
        self._on_set_aside = on_set_aside
        self._records: dict[str, JobRecord] = {}
        self._settlements: list[Settlement] = []
        self._followups: list[Callable[[], Awaitable[None]]] = []
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        # One flush at a time: two interleaved flushes could land a job's STARTED record
        # after its SUCCESS record.
        self._flushing = asyncio.Lock()
        self._linger_s = linger_s
        self._linger: asyncio.TimerHandle | None = None
        self._parked: list[Settlement] = []  # refused by the broker, sent again later
        self._park_timer: asyncio.TimerHandle | None = None
        self._park_at = 0.0  # when the timer fires (the loop's time)
        self._park_pauses = 0  # pauses in a row: each twice the last
        self._unparked: set[int] = set()  # id() of set-aside settlements in line again

    def record(self, record: JobRecord) -> None:
        self._records[record.id] = record
        self._idle.clear()
        if record.state != STARTED or record.progress is not None or self._linger_s <= 0:
            self._wake.set()
        elif self._linger is None:
            self._linger = asyncio.get_running_loop().call_later(self._linger_s, self._lingered)

    def _lingered(self) -> None:
        self._linger = None
        self._wake.set()

    def settle(self, settlement: Settlement, record: JobRecord | None = None) -> None:
        if record is not None:
            self._records[record.id] = record
        self._settlements.append(settlement)
        self._idle.clear()
        self._wake.set()

    def follow(self, step: Callable[[], Awaitable[None]]) -> None:
        """Run ``step`` after the records queued so far, before the settlements queued after."""
        self._followups.append(step)
        self._idle.clear()
        self._wake.set()

    def set_aside(self) -> int:
        """How many settlements the broker refused are waiting to be sent again."""
        return len(self._parked)

    def pending(self) -> bool:
        return bool(self._records or self._settlements or self._followups or self._parked)

    async def flush(self, *, set_aside_too: bool = False) -> None:
        """Write everything pending now: records first, then settlements; with
        ``set_aside_too``, the settlements the broker refused as well, without waiting for
        their pause to end (a last try, at shutdown)."""
        async with self._flushing:
            if set_aside_too:
                self._unpark()
            await self._flush()

    async def _flush(self) -> None:
        while self._records or self._settlements or self._followups:
            records = list(self._records.values())
            settlements, followups = self._settlements, self._followups
            self._records, self._settlements, self._followups = {}, [], []
            if self._linger is not None:  # everything waiting goes now
                self._linger.cancel()
                self._linger = None
            try:
                written = await self._store(records) if records else []
            except BaseException:
                # Nothing was settled: put it all back, newer records winning.
                self._records = {**{r.id: r for r in records}, **self._records}
                self._settlements = settlements + self._settlements
                self._followups = followups + self._followups
                raise
            if records:
                for record, ok in zip(records, written, strict=True):
                    if ok is False:
                        log.warning(
                            "record of job %s (%s) not written: a newer delivery or a "
                            "revoke holds it",
                            record.id,
                            record.state,
                        )
            if followups:
                try:
                    await asyncio.gather(*(step() for step in followups))
                except BaseException:
                    self._settlements = settlements + self._settlements
                    self._followups = followups + self._followups
                    raise
            if settlements:
                await self._settle(settlements)
        if not self._parked:
            self._idle.set()

    async def _settle(self, settlements: list[Settlement]) -> None:
        """Send ``settlements``; those the broker refuses while it applies the others are set
        aside (see :meth:`_park`), and any other failure puts them all back."""
        retried = [s for s in settlements if id(s) in self._unparked]
        try:
            done: list[bool | None] = list(await self._consumer.settle(settlements))
        except SettlementsRefused as refusal:
            done = refusal.applied
            self._unparked.difference_update(id(s) for s in retried)
            at = {id(s): k for k, s in enumerate(settlements)}
            through = [s for s in retried if done[at[id(s)]] is not None]
            self._retried_through(through, start_over=len(through) == len(retried))
            pause = self._park([s for s, ok in zip(settlements, done, strict=True) if ok is None])
            log.error(
                "%d settlement(s) refused by the broker, sent again in %.1fs: %s",
                done.count(None),
                pause,
                refusal,
            )
        except BaseException:
            self._settlements = settlements + self._settlements
            raise
        else:
            self._unparked.difference_update(id(s) for s in retried)
            self._retried_through(retried)
        for settlement, ok in zip(settlements, done, strict=True):
            if ok is not None:
                self._on_settled(settlement, ok)

    def _retried_through(self, retried: list[Settlement], start_over: bool = True) -> None:
        """Set-aside settlements went through: say so, and, when none of them was refused
        again and no others wait, let the next refusal's pauses start over."""
        if not retried:
            return
        log.info("%d settlement(s) the broker had refused are written", len(retried))
        if start_over and not self._parked and not self._unparked:
            self._park_pauses = 0

    def _park(self, settlements: list[Settlement]) -> float:
        """Set refused settlements aside, to be sent again when the pause under way ends, or
        one twice as long as the last starts; returns the seconds until they go."""
        self._parked.extend(settlements)
        loop = asyncio.get_running_loop()
        if self._park_timer is None:
            pause = min(PARK_MAX_S, PARK_FIRST_S * 2.0 ** min(self._park_pauses, 16))
            self._park_pauses += 1
            self._park_at = loop.time() + pause
            self._park_timer = loop.call_later(pause, self._unpark_later)
        if self._on_set_aside is not None:
            self._on_set_aside()
        return max(0.0, self._park_at - loop.time())

    def _unpark_later(self) -> None:
        self._park_timer = None
        self._unpark()
        self._wake.set()

    def _unpark(self) -> None:
        """Put the set-aside settlements back in line, ahead of newer ones."""
        if self._parked:
            self._settlements = self._parked + self._settlements
            self._unparked.update(id(s) for s in self._parked)
            self._parked = []

    async def _store(self, records: list[JobRecord]) -> list[bool | None]:
        """Write ``records``; per record, whether it was written (``False``: a higher fence
        holds the job), or ``None`` if the store refused it for good (:class:`RecordRefused`:
        another program's value under the job's key).

        A refused record is dropped with an error, so it cannot hold back every other job's
        result and acknowledgement: when a batch fails with such a refusal, or with an error
        that may be one record's, each record is tried alone. Any other failure (the server
        out of memory, a read-only replica, a shard of a cluster refusing writes) leaves the
        whole batch for the next try.
        """
        try:
            return list(await self._results.store_many(records))
        except RecordRefused as refusal:
            if len(records) == 1:
                log_refused(records[0], refusal)
                return [None]
        except _UNENCODABLE as exc:
            if len(records) == 1:
                log_unencodable(records[0], exc)
                return [None]
        except BrokerUnavailable:
            raise
        except BrokerError:
            if len(records) == 1:
                raise
        outcomes: list[bool | None] = []
        for record in records:
            try:
                outcomes.extend(await self._results.store_many([record]))
            except RecordRefused as refusal:
                log_refused(record, refusal)
                outcomes.append(None)
            except _UNENCODABLE as exc:
                log_unencodable(record, exc)
                outcomes.append(None)
        return outcomes

    async def run(self) -> None:
        """Flush whenever woken; a failed write is logged and retried with back-off."""
        outage = Outage("writing results and acknowledgements")
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self.flush()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._wake.set()
                await outage.pause(exc)
            else:
                outage.recovered()

    async def drained(self) -> None:
        """Wait until nothing is pending."""
        await self._idle.wait()

"""The worker's outbox: records and settlements gathered while jobs run, written in batches.

Records are written before the settlements of the same batch (a result is stored before its
message is acknowledged: at-least-once), and a job's newer record replaces an older one
still waiting, so a job that starts and ends between two flushes costs one write.

Workflow follow-ups (:mod:`faena.worker.canvas`) run between the two: after the batch's
records are written (a chord member's result is stored before it is counted) and before its
settlements (what follows a job is sent before its message is acknowledged). A follow-up
that fails stays pending with its settlement and runs again, told that it is a second run.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from faena.contracts.broker import Consumer, Settlement
from faena.contracts.results import ResultStore
from faena.model.outcome import JobRecord
from faena.worker.outage import Outage

log = logging.getLogger("faena.worker")


class Outbox:
    """Pending writes, flushed by :meth:`run` as soon as there is something to write."""

    def __init__(
        self,
        results: ResultStore,
        consumer: Consumer,
        on_settled: Callable[[Settlement, bool], None],
    ) -> None:
        self._results = results
        self._consumer = consumer
        self._on_settled = on_settled
        self._records: dict[str, JobRecord] = {}
        self._settlements: list[Settlement] = []
        self._followups: list[Callable[[], Awaitable[None]]] = []
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        # One flush at a time: two interleaved flushes could land a job's STARTED record
        # after its SUCCESS record.
        self._flushing = asyncio.Lock()

    def record(self, record: JobRecord) -> None:
        self._records[record.id] = record
        self._idle.clear()
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

    def pending(self) -> bool:
        return bool(self._records or self._settlements or self._followups)

    async def flush(self) -> None:
        """Write everything pending now: records first, then settlements."""
        async with self._flushing:
            await self._flush()

    async def _flush(self) -> None:
        while self._records or self._settlements or self._followups:
            records = list(self._records.values())
            settlements, followups = self._settlements, self._followups
            self._records, self._settlements, self._followups = {}, [], []
            try:
                written = await self._results.store_many(records) if records else []
            except BaseException:
                # Nothing was settled: put it all back, newer records winning.
                self._records = {**{r.id: r for r in records}, **self._records}
                self._settlements = settlements + self._settlements
                self._followups = followups + self._followups
                raise
            if records:
                for record, ok in zip(records, written, strict=True):
                    if not ok:
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
                try:
                    done = await self._consumer.settle(settlements)
                except BaseException:
                    self._settlements = settlements + self._settlements
                    raise
                for settlement, ok in zip(settlements, done, strict=True):
                    self._on_settled(settlement, ok)
        self._idle.set()

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

"""How a worker honours revokes: a revoke lives in the result store (a ``REVOKED`` record), so
the worker looks there.

- Every fetched batch is looked up before any of it starts: a message revoked while it was
  leased elsewhere, or sent again with a revoked id, is skipped.
- Every ``revoke_check_s`` the messages the worker holds are looked up again: one revoked
  while it waited in the prefetch is acknowledged and never started, and a running job revoked
  with ``terminate`` is stopped by its pool.

A job that a runner took before the worker saw its revoke counts as started: it runs to its
end unless revoked with ``terminate``, and its outcome cannot overwrite the ``REVOKED``
record.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection, Sequence

from msgspec import UNSET

from faena.contracts.broker import Delivery, Settlement
from faena.contracts.pool import Pool
from faena.contracts.results import ResultStore
from faena.foundation.exceptions import SerializationError
from faena.model import states
from faena.model.message import decode_message
from faena.model.outcome import FINAL_FENCE, JobRecord
from faena.worker.endings import Endings, Key, key_of
from faena.worker.outage import Outage

log = logging.getLogger("faena.worker")


class Revokes:
    """The revoke checks of one worker; see the module docstring.

    ``running`` gives the keys of the jobs a runner has taken; ``stopping`` whether the worker
    is shutting down (then waiting messages are handed back, not skipped).
    """

    def __init__(
        self,
        results: Callable[[], ResultStore],
        ends: Endings,
        running: Callable[[], Collection[Key]],
        stopping: Callable[[], bool],
    ) -> None:
        self._results = results
        self._ends = ends
        self._running = running
        self._stopping = stopping
        self._terminated: set[str] = set()

    async def in_batch(self, batch: Sequence[Delivery]) -> set[str]:
        """Which of a fetched batch's messages are revoked: by the records their claim read
        (:attr:`Delivery.record`), the others looked up in one call."""
        revoked = {d.id for d in batch if isinstance(d.record, JobRecord) and _revoked(d.record)}
        ids = [d.id for d in batch if d.record is UNSET]
        if not ids:
            return revoked
        try:
            records = await self._results().fetch_many(ids)
        except Exception:
            # Cannot tell now: run them; a revoke still wins over their records (its fence).
            log.exception("could not check %d message(s) for revokes", len(ids))
            return revoked
        for d in batch:
            if d.record is UNSET:
                d.record = records.get(d.id)  # as a claim that reads them would have it
        return revoked | {i for i, r in records.items() if _revoked(r)}

    def was_terminated(self, job_id: str) -> bool:
        """Whether the pool stopped job ``job_id`` because of a revoke (asked once, at its end)."""
        if job_id in self._terminated:
            self._terminated.discard(job_id)
            return True
        return False

    async def watch(self, period_s: float, pool: Pool) -> None:
        """Check every ``period_s`` seconds, for ever."""
        outage = Outage("checking for revokes")
        while True:
            await asyncio.sleep(period_s)  # a period
            try:
                asked = await self.check(pool)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                outage.failed(exc)
            else:
                if asked:  # (a check that had nothing to ask the store proves nothing)
                    outage.recovered()

    def _waiting(self) -> list[Delivery]:
        """Held messages no runner has taken yet and no settlement is under way for."""
        running = set(self._running())
        return [
            d
            for d in self._ends.held.values()
            if key_of(d) not in running and self._ends.waiting(d)
        ]

    async def check(self, pool: Pool) -> bool:
        """Skip the waiting messages and stop the running jobs that are revoked now; whether
        the result store was asked (``False``: nothing to ask about)."""
        waiting = self._waiting()
        running = list(self._running())
        if not running and not waiting:
            return False
        ids = {mid for _, mid, _ in running} | {d.id for d in waiting}
        records = await self._results().fetch_many(sorted(ids))
        revoked = {mid for mid, r in records.items() if _revoked(r)}
        if not revoked:
            return True
        # Looked at again after the fetch: a runner may have taken a message meanwhile.
        if not self._stopping():
            for delivery in self._waiting():
                if delivery.id in revoked:
                    self._skip(delivery)
        for _, mid, _ in list(self._running()):
            record = records.get(mid)
            # Only once the pool stopped it: a job still waiting for a child is tried again
            # at the next beat.
            if (
                record is not None
                and _revoked(record)
                and record.terminate
                and mid not in self._terminated
                and pool.terminate(mid)
            ):
                self._terminated.add(mid)
                log.warning("job %s revoked with terminate: stopping it", mid)
        return True

    def _skip(self, delivery: Delivery) -> None:
        """Acknowledge a message revoked after it was fetched, before any runner took it."""
        log.info("job %s was revoked while it waited in this worker; skipped", delivery.id)
        self._ends.settle(Settlement(delivery=delivery, action="ack"))
        try:
            message = decode_message(delivery.body)
        except SerializationError:
            return  # no event without a readable message; the record says REVOKED
        self._ends.emit(states.REVOKED, message)


def _revoked(record: JobRecord) -> bool:
    """Whether ``record`` is a revoke. A message that expired also reads ``REVOKED``, but with
    its delivery's fence: a later send of the same id outranks it and runs."""
    return record.state == states.REVOKED and record.fence == FINAL_FENCE

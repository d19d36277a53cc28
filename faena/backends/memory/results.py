"""The in-memory result store: job records in a dict, waiters woken at once. ``memory://``."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Sequence

from faena.backends.memory._waiters import Waiters
from faena.contracts.results import ResultStore
from faena.foundation.clock import SYSTEM_CLOCK, Clock
from faena.model.outcome import JobRecord
from faena.model.states import READY_STATES


class MemoryResultStore(ResultStore):
    """Job records in this process's memory. ``memory://``."""

    def __init__(
        self, url: str = "memory://", clock: Clock = SYSTEM_CLOCK, poll_interval_s: float = 0.002
    ) -> None:
        super().__init__(url, clock, poll_interval_s)
        self._records: dict[str, JobRecord] = {}
        self._cond = threading.Condition()
        self._waiters = Waiters()

    def _put(self, record: JobRecord, unless_ready: bool = False) -> bool:
        old = self._records.get(record.id)
        live = old is not None and not self._expired(old)
        if (
            live
            and old is not None
            and (old.fence > record.fence or (unless_ready and old.state in READY_STATES))
        ):
            return False
        self._records[record.id] = record
        return True

    def _expired(self, record: JobRecord) -> bool:
        return record.expires_at is not None and record.expires_at <= self.clock.time()

    def store(self, record: JobRecord, *, unless_ready: bool = False) -> bool:
        with self._cond:
            written = self._put(record, unless_ready)
            self._cond.notify_all()
        self._waiters.wake()
        return written

    async def store_many(self, records: Sequence[JobRecord]) -> list[bool]:
        with self._cond:
            written = [self._put(r) for r in records]
            self._cond.notify_all()
        self._waiters.wake()
        return written

    def fetch(self, job_id: str) -> JobRecord | None:
        with self._cond:
            record = self._records.get(job_id)
            return None if record is None or self._expired(record) else record

    async def afetch(self, job_id: str) -> JobRecord | None:
        return self.fetch(job_id)

    async def fetch_many(self, job_ids: Sequence[str]) -> dict[str, JobRecord]:
        found = {i: self.fetch(i) for i in job_ids}
        return {i: r for i, r in found.items() if r is not None}

    def _look(self, job_id: str, deadline: float | None) -> tuple[bool, JobRecord | None, float]:
        """(done, record, pause): done once ready or out of time, else how long to wait."""
        record = self.fetch(job_id)
        if record is not None and record.state in READY_STATES:
            return True, record, 0.0
        remaining = None if deadline is None else deadline - SYSTEM_CLOCK.monotonic()
        if remaining is not None and remaining <= 0:
            return True, record, 0.0
        # A fake clock never moves by itself: wake up now and then to look at it.
        return False, record, 0.05 if remaining is None else min(remaining, 0.05)

    def wait(self, job_id: str, timeout_s: float | None) -> JobRecord | None:
        deadline = None if timeout_s is None else SYSTEM_CLOCK.monotonic() + timeout_s
        with self._cond:
            while True:
                done, record, pause = self._look(job_id, deadline)
                if done:
                    return record
                self._cond.wait(pause)

    async def await_ready(self, job_id: str, timeout_s: float | None) -> JobRecord | None:
        deadline = None if timeout_s is None else SYSTEM_CLOCK.monotonic() + timeout_s
        waiter = self._waiters.add()
        try:
            while True:
                waiter[1].clear()
                done, record, pause = self._look(job_id, deadline)
                if done:
                    return record
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(waiter[1].wait(), pause)
        finally:
            self._waiters.discard(waiter)

    def forget(self, job_id: str) -> None:
        with self._cond:
            self._records.pop(job_id, None)

    async def cleanup(self) -> int:
        with self._cond:
            doomed = [i for i, r in self._records.items() if self._expired(r)]
            for i in doomed:
                del self._records[i]
            return len(doomed)

    def close(self) -> None:
        self._waiters.wake()

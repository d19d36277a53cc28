"""The result store seam: job records (state, value or error, progress), with TTLs.

Writes are fenced: a record whose ``fence`` is lower than the stored one is not written. Reads
of an expired record return ``None``. ``wait`` returns when the job reaches a ready state
(SUCCESS, FAILURE, REVOKED) or the timeout passes; stores that can be notified wake the waiter
at once, others poll with back-off.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

from faena.foundation.clock import SYSTEM_CLOCK, Clock
from faena.model.outcome import JobRecord


class ResultStore(ABC):
    """Keeps job records. See the module docstring."""

    def __init__(
        self, url: str, clock: Clock = SYSTEM_CLOCK, poll_interval_s: float = 0.002
    ) -> None:
        self.url = url
        self.clock = clock
        self.poll_interval_s = poll_interval_s

    @abstractmethod
    def store(self, record: JobRecord, *, unless_ready: bool = False) -> bool:
        """Write one record, fenced. ``True`` if written.

        With ``unless_ready``, not over a live record in a ready state either, checked in the
        same step as the write: a revoke of a job that may be finishing right now must not
        replace the outcome a caller may already have read.
        """

    @abstractmethod
    async def store_many(self, records: Sequence[JobRecord]) -> list[bool]:
        """Write records in one step, each fenced."""

    @abstractmethod
    def fetch(self, job_id: str) -> JobRecord | None:
        """The record, or ``None`` if unknown or expired."""

    @abstractmethod
    async def afetch(self, job_id: str) -> JobRecord | None:
        """``fetch`` for async callers."""

    @abstractmethod
    async def fetch_many(self, job_ids: Sequence[str]) -> dict[str, JobRecord]:
        """Records of the ids that have one."""

    @abstractmethod
    def wait(self, job_id: str, timeout_s: float | None) -> JobRecord | None:
        """Block until the job is ready or ``timeout_s`` passes; the last record seen."""

    @abstractmethod
    async def await_ready(self, job_id: str, timeout_s: float | None) -> JobRecord | None:
        """``wait`` for async callers."""

    @abstractmethod
    def forget(self, job_id: str) -> None:
        """Delete the record."""

    @abstractmethod
    async def cleanup(self) -> int:
        """Delete expired records; returns how many."""

    @abstractmethod
    def close(self) -> None:
        """Release connections. Safe to call twice."""

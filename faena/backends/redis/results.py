"""The Redis result store: fenced job records with TTLs, and waits the store itself wakes.

Key layout (``prefix`` from the URL, the job id as hash tag so both keys of a job share a
cluster slot; an empty id, or one starting with ``}``, is escaped: see ``Target.key``):

- ``prefix:{<job id>}:r`` — a string: ``<fence>,<expiry ms>|`` then the record encoded by
  :func:`~faena.model.outcome.encode_record`. The header lets the store script fence and expire
  without reading the record itself (``GETRANGE``), and a read is one ``GET``. Only a revoke
  (``unless_ready``) reads the stored record's state, in the script.
- ``prefix:{<job id>}:r:wake`` — a list holding one element, the stored value again, while the
  record is in a ready state (for 10 s at most: it only bridges the moment between a waiter's
  read and its block). A waiter reads the record, then blocks on ``BLMOVE wake wake LEFT
  RIGHT``: the element rotates in place, so every blocked waiter wakes with the record in
  hand, and it stays for later ones.

Writes go through ``lua/results_store.lua`` (one script: fence check, write, expiry, wake);
``store_many`` pipelines those calls, and ``fetch_many`` is one ``MGET``. Expiry: see
:mod:`faena.backends.redis._stores`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import cast

import msgspec

from faena.backends.redis._client import Target
from faena.backends.redis._stores import TEST_CLOCK_EXPIRY_MS, Call, Connections, Script
from faena.contracts.results import ResultStore
from faena.foundation.clock import SYSTEM_CLOCK, Clock
from faena.foundation.exceptions import BrokerError, BrokerUnavailable, RecordRefused
from faena.model.outcome import JobRecord, decode_record, encode_record
from faena.model.states import READY_STATES

log = logging.getLogger("faena.results")

_STORE = Script("results_store")
_CLEANUP = Script("results_cleanup")


def _ready(record: JobRecord | None) -> bool:
    return record is not None and record.state in READY_STATES


def _expiry_ms(record: JobRecord) -> str:
    """The record's expiry time in whole milliseconds as text; empty for never."""
    if record.expires_at is None:
        return ""
    if math.isnan(record.expires_at):
        raise ValueError(f"job record {record.id!r} has expires_at NaN; expected a Unix time")
    # Before 1970 is simply past; past 2**53 ms (year 287,000) is never reached.
    return str(int(min(max(record.expires_at * 1000, 0), 2**53)))


@contextmanager
def _refusals() -> Iterator[None]:
    """A write refused because of what the record's key holds (another program's value, of
    another type or not a record) is :class:`RecordRefused`; a refusal of the server as a whole
    (out of memory, a read-only replica) stays a plain ``BrokerError``."""
    try:
        yield
    except BrokerUnavailable:
        raise
    except BrokerError as exc:
        cause = str(exc.__cause__ or "")
        if "does not hold a job record" in cause or "WRONGTYPE" in cause:
            raise RecordRefused(str(exc)) from exc.__cause__
        raise


def _stale(woken: bytes | None, record: JobRecord | None) -> bool:
    """Whether a wake list handed over a value that no longer counts: a record expired on a
    test clock (Redis keeps the list in real time). The waiter deletes the list, or every
    later block would return at once with it."""
    return woken is not None and record is None


def _blmove(wake: str, block_s: float) -> tuple[str, ...]:
    """Wait up to ``block_s`` for the wake element, rotating it in place for other waiters."""
    return ("BLMOVE", wake, wake, "LEFT", "RIGHT", f"{block_s:.3f}")


class _Deadline:
    """When a waiter gives up. A timeout is real waiting, whatever clock the store reads."""

    def __init__(self, timeout_s: float | None, slice_s: float) -> None:
        self._end = None if timeout_s is None else SYSTEM_CLOCK.monotonic() + timeout_s
        self._slice_s = slice_s

    def block_s(self) -> float | None:
        """How long to block next; ``None`` once the time is up."""
        if self._end is None:
            return self._slice_s
        remaining = self._end - SYSTEM_CLOCK.monotonic()
        # Redis counts blocking timeouts in milliseconds, and 0 would mean "for ever".
        return None if remaining < 0.001 else min(remaining, self._slice_s)


class RedisResultStore(ResultStore):
    """Job records in Redis; ``redis://``, ``rediss://``, ``redis+cluster://``,
    ``redis+socket://``.

    Example:
        >>> store = RedisResultStore("redis://localhost:6379/0?prefix=shop")  # doctest: +SKIP
        >>> store.wait(job_id, timeout_s=10)  # woken by the worker's write  # doctest: +SKIP
    """

    def __init__(
        self, url: str, clock: Clock = SYSTEM_CLOCK, poll_interval_s: float = 0.002
    ) -> None:
        super().__init__(url, clock, poll_interval_s)
        self._io = Connections(url, clock)

    # -- keys and values ---------------------------------------------------------------------
    def _keys(self, job_id: str) -> tuple[str, str]:
        record = self._io.target.key(job_id, "r")
        return record, record + ":wake"

    def _store_call(self, record: JobRecord, unless_ready: bool = False) -> Call:
        expires = _expiry_ms(record)
        value = b"%d,%s|%s" % (record.fence, expires.encode(), encode_record(record))
        args = (
            self._io.now(),
            TEST_CLOCK_EXPIRY_MS,
            str(record.fence),
            expires,
            "1" if record.state in READY_STATES else "0",
            value,
            "1" if unless_ready else "0",
        )
        return Call(self._keys(record.id), args)

    @property
    def target(self) -> Target:
        """Where the records live (for a broker on the same server: see its consumer)."""
        return self._io.target

    def decode_stored(self, value: bytes) -> JobRecord | None:
        """The record in a value read from a record's key by someone else (a claim that
        reads records), or ``None`` if expired; a value that is no record is a BrokerError."""
        return self._decode(value)

    def _decode(self, value: bytes | None) -> JobRecord | None:
        """The record in a stored value, or ``None`` if absent or expired."""
        if value is None:
            return None
        try:
            end = value.index(b"|")
            now_ms = self._io.now_ms()
            if now_ms is not None:  # a test clock: Redis's own expiry does not follow it
                expires = value[:end].partition(b",")[2]
                if expires and int(expires) <= now_ms:
                    return None
            return decode_record(value[end + 1 :])
        except (ValueError, msgspec.DecodeError) as exc:
            raise BrokerError(
                f"Redis at {self._io.target.display} holds a value under the prefix "
                f"{self._io.target.prefix!r} that is not a faena job record ({exc}); another "
                "program may be writing under the same prefix: give faena a prefix of its own"
            ) from exc

    # -- writes ------------------------------------------------------------------------------
    def store(self, record: JobRecord, *, unless_ready: bool = False) -> bool:
        with _refusals(), self._io.translated("storing a result"):
            return bool(_STORE.run(self._io.sender, self._store_call(record, unless_ready)))

    async def store_many(self, records: Sequence[JobRecord]) -> list[bool]:
        if not records:
            return []
        calls = [self._store_call(r) for r in records]
        with _refusals():
            async with self._io.using("storing results") as sender:
                return [bool(r) for r in await _STORE.arun_many(sender, calls)]

    def forget(self, job_id: str) -> None:
        with self._io.translated("forgetting a result"):
            self._io.sync.delete(*self._keys(job_id))

    async def cleanup(self) -> int:
        """Delete expired records; returns how many.

        On the system clock Redis deletes each record at its expiry time by itself, so there
        is nothing left to do; on a test clock the store scans its prefix for records whose
        expiry has come on that clock.
        """
        if not self._io.test_clock:
            return 0
        return await self._io.sweep("r", ":wake", _CLEANUP, self._io.now())

    # -- reads -------------------------------------------------------------------------------
    def fetch(self, job_id: str) -> JobRecord | None:
        with self._io.translated("fetching a result"):
            value = self._io.sender.execute("GET", self._keys(job_id)[0])
        return self._decode(cast("bytes | None", value))

    async def afetch(self, job_id: str) -> JobRecord | None:
        async with self._io.using("fetching a result") as sender:
            value = await sender.execute("GET", self._keys(job_id)[0])
        return self._decode(cast("bytes | None", value))

    async def fetch_many(self, job_ids: Sequence[str]) -> dict[str, JobRecord]:
        if not job_ids:
            return {}
        keys = [self._keys(i)[0] for i in job_ids]
        async with self._io.using("fetching results") as sender:
            if self._io.target.cluster:
                values = await sender.client.mget_nonatomic(keys)  # type: ignore[union-attr]
            else:
                values = await sender.execute("MGET", *keys)
        found: dict[str, JobRecord] = {}
        for job_id, value in zip(job_ids, values, strict=True):
            try:
                record = self._decode(value)
            except BrokerError as exc:
                # One foreign value must not fail a worker's look-up of a whole batch (its
                # revoke check, a chord's member results): it reads as no record.
                log.error("result of job %s left out: %s", job_id, exc)
                continue
            if record is not None:
                found[job_id] = record
        return found

    # -- waiting -----------------------------------------------------------------------------
    def wait(self, job_id: str, timeout_s: float | None) -> JobRecord | None:
        deadline = _Deadline(timeout_s, self._io.slice_s)
        wake = self._keys(job_id)[1]
        record = self.fetch(job_id)
        while True:
            block_s = deadline.block_s()
            if _ready(record) or block_s is None:
                return record
            with self._io.translated("waiting for a result"):
                woken = self._io.sender.execute(*_blmove(wake, block_s))
                if _stale(woken, record := self._woken(woken)):
                    self._io.sender.execute("DEL", wake)
            record = record or self.fetch(job_id)

    async def await_ready(self, job_id: str, timeout_s: float | None) -> JobRecord | None:
        deadline = _Deadline(timeout_s, self._io.slice_s)
        wake = self._keys(job_id)[1]
        record = await self.afetch(job_id)
        while True:
            block_s = deadline.block_s()
            if _ready(record) or block_s is None:
                return record
            async with self._io.using("waiting for a result") as sender:
                woken = await sender.execute(*_blmove(wake, block_s))
                if _stale(woken, record := self._woken(woken)):
                    await sender.execute("DEL", wake)
            record = record or await self.afetch(job_id)

    def _woken(self, value: bytes | None) -> JobRecord | None:
        """The ready record a wake list handed over; ``None`` if the wait timed out (or the
        record expired on a test clock), and the record is to be read again."""
        record = self._decode(value)
        return record if _ready(record) else None

    def close(self) -> None:
        self._io.close()

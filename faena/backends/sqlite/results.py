"""The SQLite result store: fenced job records with TTLs in ``faena_results``.

A record is stored whole as ``encode_record(record)``; its ``fence`` and ``expires_at`` are
copied into columns so fencing, expiry and cleanup are plain SQL. SQLite cannot notify another
process, so a waiter polls with back-off, and each poll is one ``PRAGMA data_version`` unless
something was committed; writers in this process wake waiters at once through the notifier.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Sequence

from faena.backends.sqlite._connection import data_version, read, write
from faena.backends.sqlite._database import SharedDatabase
from faena.backends.sqlite._notify import Backoff
from faena.contracts.results import ResultStore
from faena.foundation.clock import SYSTEM_CLOCK, Clock
from faena.model.outcome import JobRecord, decode_record, encode_record
from faena.model.states import READY_STATES

# Lower fences never overwrite, but an expired record is gone as far as readers know, so it
# never blocks a new write whatever its fence.
_UPSERT = """
INSERT INTO faena_results (id, fence, expires_at, data)
VALUES (:id, :fence, :expires_at, :data)
ON CONFLICT (id) DO UPDATE SET
    fence = excluded.fence, expires_at = excluded.expires_at, data = excluded.data
WHERE excluded.fence >= faena_results.fence OR faena_results.expires_at <= :now
"""
_LIVE = "(expires_at IS NULL OR expires_at > :now)"
_FETCH = f"SELECT data FROM faena_results WHERE id = :id AND {_LIVE}"
_FETCH_MANY = (
    f"SELECT id, data FROM faena_results WHERE {_LIVE} "
    "AND id IN (SELECT value FROM json_each(:ids))"
)

_Probe = tuple[int, JobRecord | None]


class _Deadline:
    """When a waiter gives up, and how long it sleeps between looks (growing back-off)."""

    def __init__(self, timeout_s: float | None, first_pause_s: float) -> None:
        # A timeout is a real wait, whatever clock the store reads for expiry.
        self._end = None if timeout_s is None else SYSTEM_CLOCK.monotonic() + timeout_s
        self.backoff = Backoff(first_pause_s)

    def pause(self) -> float | None:
        """Seconds to sleep before the next look; ``None`` once the time is up."""
        pause = self.backoff.pause()
        if self._end is None:
            return pause
        remaining = self._end - SYSTEM_CLOCK.monotonic()
        return None if remaining <= 0 else min(pause, remaining)


def _ready(record: JobRecord | None) -> bool:
    return record is not None and record.state in READY_STATES


class SQLiteResultStore(ResultStore):
    """Job records in a SQLite file; may share the broker's file.

    Example:
        >>> store = SQLiteResultStore("sqlite:///faena.sqlite3")  # doctest: +SKIP
    """

    def __init__(
        self, url: str, clock: Clock = SYSTEM_CLOCK, poll_interval_s: float = 0.002
    ) -> None:
        super().__init__(url, clock, poll_interval_s)
        self._db = SharedDatabase(url)

    # -- statements (run inside a transaction or a read) -------------------------------------
    def _put(self, c: sqlite3.Connection, records: Sequence[JobRecord]) -> list[bool]:
        now = self.clock.time()
        return [
            c.execute(
                _UPSERT,
                {
                    "id": r.id,
                    "fence": r.fence,
                    "expires_at": r.expires_at,
                    "data": encode_record(r),
                    "now": now,
                },
            ).rowcount
            == 1
            for r in records
        ]

    def _fetch(self, c: sqlite3.Connection, job_id: str) -> JobRecord | None:
        row = c.execute(_FETCH, {"id": job_id, "now": self.clock.time()}).fetchone()
        return None if row is None else decode_record(row[0])

    def _probe(self, c: sqlite3.Connection, job_id: str) -> _Probe:
        # Version first: a commit between the two reads makes the next poll look again.
        return data_version(c), read(c, lambda c: self._fetch(c, job_id), "fetch a result")

    # -- writes ------------------------------------------------------------------------------
    def store(self, record: JobRecord, *, unless_ready: bool = False) -> bool:
        def put(c: sqlite3.Connection) -> bool:
            if unless_ready:
                current = self._fetch(c, record.id)
                if current is not None and current.state in READY_STATES:
                    return False
            return self._put(c, [record])[0]

        with self._db.connection() as conn:
            written = write(conn, put, "store a result")
        if written:
            self._db.notifier.notify()
        return written

    async def store_many(self, records: Sequence[JobRecord]) -> list[bool]:
        if not records:
            return []
        written = await self._db.run(
            lambda conn: write(conn, lambda c: self._put(c, records), "store results")
        )
        if any(written):
            self._db.notifier.notify()
        return written

    def forget(self, job_id: str) -> None:
        sql = "DELETE FROM faena_results WHERE id = ?"
        with self._db.connection() as conn:
            write(conn, lambda c: c.execute(sql, (job_id,)), "forget a result")

    async def cleanup(self) -> int:
        sql = "DELETE FROM faena_results WHERE expires_at <= ?"
        now = self.clock.time()
        return await self._db.run(
            lambda conn: write(conn, lambda c: c.execute(sql, (now,)).rowcount, "clean up")
        )

    # -- reads -------------------------------------------------------------------------------
    def fetch(self, job_id: str) -> JobRecord | None:
        with self._db.connection() as conn:
            return read(conn, lambda c: self._fetch(c, job_id), "fetch a result")

    async def afetch(self, job_id: str) -> JobRecord | None:
        return await self._db.run(
            lambda conn: read(conn, lambda c: self._fetch(c, job_id), "fetch a result")
        )

    async def fetch_many(self, job_ids: Sequence[str]) -> dict[str, JobRecord]:
        if not job_ids:
            return {}
        params = {"ids": json.dumps(list(job_ids)), "now": self.clock.time()}
        rows = await self._db.run(
            lambda conn: read(
                conn, lambda c: c.execute(_FETCH_MANY, params).fetchall(), "fetch results"
            )
        )
        return {job_id: decode_record(data) for job_id, data in rows}

    # -- waiting -----------------------------------------------------------------------------
    def wait(self, job_id: str, timeout_s: float | None) -> JobRecord | None:
        deadline = _Deadline(timeout_s, self.poll_interval_s)
        notifier = self._db.notifier
        with self._db.connection() as conn:
            seen = notifier.generation
            version, record = self._probe(conn, job_id)
            while not _ready(record):
                pause = deadline.pause()
                if pause is None:  # time is up: one last look, which also applies expiry
                    return read(conn, lambda c: self._fetch(c, job_id), "fetch a result")
                generation = notifier.wait(seen, pause)
                changed = generation != seen or data_version(conn) != version
                seen = generation
                if changed:
                    version, record = self._probe(conn, job_id)
                    deadline.backoff.reset()
            return record

    async def await_ready(self, job_id: str, timeout_s: float | None) -> JobRecord | None:
        deadline = _Deadline(timeout_s, self.poll_interval_s)
        with self._db.notifier.subscribe() as woken:
            version, record = await self._db.run(lambda c: self._probe(c, job_id))
            while not _ready(record):
                pause = deadline.pause()
                if pause is None:
                    return await self.afetch(job_id)
                try:
                    await asyncio.wait_for(woken.wait(), pause)
                    changed = True
                except TimeoutError:
                    changed = await self._db.run(data_version) != version
                if changed:
                    woken.clear()
                    version, record = await self._db.run(lambda c: self._probe(c, job_id))
                    deadline.backoff.reset()
            return record

    def close(self) -> None:
        self._db.close()

"""The SQLite broker: producers, administration and worker registration on one file.

The lease lifecycle (claim, settle, extend) lives in ``_claims``; the waiting consumer in
``consumer``. Every time, "now" included, comes from ``config.clock`` so tests drive due times,
leases and heartbeats with a fake clock.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from collections.abc import Sequence

from faena.backends.sqlite import _claims
from faena.backends.sqlite._claims import LEASED, READY, SCHEDULED
from faena.backends.sqlite._connection import read, write
from faena.backends.sqlite._database import SharedDatabase
from faena.backends.sqlite.consumer import SQLiteConsumer
from faena.contracts.broker import (
    SEND_FENCE_STEP,
    Broker,
    BrokerConfig,
    Capabilities,
    Consumer,
    DeadLetter,
    Location,
    Outgoing,
    QueueStats,
    WorkerInfo,
)
from faena.contracts.results import ResultStore

# Re-sending an id that is waiting replaces it (new body, new place in line); one that is
# leased is running now, so the duplicate is dropped rather than run twice. A send's fences
# start at its seq times SEND_FENCE_STEP, and never go back: a stale holder of an older lease,
# of this send or of an earlier one, can never match it again.
_ENQUEUE = """
INSERT INTO faena_messages
    (id, queue, priority, seq, state, due, deliveries, fence, enqueued_at, body)
VALUES (?, ?, ?, ?, ?, ?, 0, ?, ?, ?)
ON CONFLICT (id) DO UPDATE SET
    queue = excluded.queue, priority = excluded.priority, seq = excluded.seq,
    state = excluded.state, due = excluded.due, lease_until = NULL, worker = NULL,
    deliveries = 0, fence = max(faena_messages.fence, excluded.fence), last_reason = NULL,
    enqueued_at = excluded.enqueued_at, body = excluded.body
WHERE faena_messages.state != 1
"""
_REQUEUE_DEAD = """
INSERT INTO faena_messages
    (id, queue, priority, seq, state, due, deliveries, fence, enqueued_at, body)
SELECT id, queue, priority, :base + row_number() OVER (ORDER BY dead_at, id), 0, :now, 0,
       fence, enqueued_at, body
FROM faena_dead WHERE {chosen}
ON CONFLICT (id) DO UPDATE SET
    queue = excluded.queue, priority = excluded.priority, seq = excluded.seq, state = 0,
    due = excluded.due, lease_until = NULL, worker = NULL, deliveries = 0, last_reason = NULL,
    body = excluded.body
WHERE faena_messages.state != 1
"""
# Read-only: a due scheduled row counts as ready and an expired lease as ready, as a claim
# would make them, without taking the write lock for a dashboard refresh.
_STATS = """
SELECT queue,
       sum(state = 0 OR (state = 2 AND due <= :now) OR (state = 1 AND lease_until <= :now)),
       sum(state = 2 AND due > :now),
       sum(state = 1 AND lease_until > :now)
FROM faena_messages GROUP BY queue
"""
_IDS = "id IN (SELECT value FROM json_each(:ids))"
_LOCATIONS: dict[int, Location] = {READY: "queued", LEASED: "leased", SCHEDULED: "scheduled"}


def _chosen(ids: Sequence[str] | None) -> tuple[str, dict[str, object]]:
    if ids is None:
        return "true", {}
    return _IDS, {"ids": json.dumps(list(ids))}


_LOCATE = """
SELECT (SELECT state FROM faena_messages WHERE id = ?),
       EXISTS (SELECT 1 FROM faena_dead WHERE id = ?)
"""


class SQLiteBroker(Broker):
    """A broker in one SQLite file, shared by every process on the machine.

    Example:
        >>> broker = SQLiteBroker("sqlite:///faena.sqlite3", BrokerConfig())  # doctest: +SKIP
    """

    capabilities = Capabilities()

    def __init__(self, url: str, config: BrokerConfig | None = None) -> None:
        super().__init__(url, config or BrokerConfig())
        self._db = SharedDatabase(url)

    # -- producers --------------------------------------------------------------------------
    def _enqueue(self, conn: sqlite3.Connection, messages: Sequence[Outgoing]) -> None:
        now = self.config.clock.time()
        base = _claims.take_seq(conn, len(messages))
        rows = []
        for i, m in enumerate(messages, start=base + 1):
            due = m.due if m.due is not None else now
            state = SCHEDULED if due > now else READY
            rows.append(
                (m.id, m.queue, m.priority, i, state, due, i * SEND_FENCE_STEP, now, m.body)
            )
        conn.executemany(_ENQUEUE, rows)

    def enqueue(self, messages: Sequence[Outgoing]) -> None:
        if not messages:
            return
        with self._db.connection() as conn:
            write(conn, lambda c: self._enqueue(c, messages), "enqueue")
        self._db.notifier.notify()

    async def aenqueue(self, messages: Sequence[Outgoing]) -> None:
        if not messages:
            return
        await self._db.run(
            lambda conn: write(conn, lambda c: self._enqueue(c, messages), "enqueue")
        )
        self._db.notifier.notify()

    def locate(self, message_id: str, *, live_first: bool = False) -> Location | None:
        def find(c: sqlite3.Connection) -> Location | None:
            # One statement, one snapshot: a letter requeued between two reads would be seen
            # in neither table.
            state, dead = c.execute(_LOCATE, (message_id, message_id)).fetchone()
            if state is not None and (live_first or not dead):
                return _LOCATIONS[state]
            return "dead" if dead else None

        with self._db.connection() as conn:
            return read(conn, find, "locate a message")

    def remove(self, message_id: str) -> bool:
        return self.take(message_id) is not None

    def take(self, message_id: str) -> bytes | None:
        sql = "DELETE FROM faena_messages WHERE id = ? AND state != 1 RETURNING body"

        def delete(c: sqlite3.Connection) -> bytes | None:
            row = c.execute(sql, (message_id,)).fetchone()
            return None if row is None else bytes(row[0])

        with self._db.connection() as conn:
            return write(conn, delete, "remove")

    # -- workers ----------------------------------------------------------------------------
    async def open_consumer(
        self, queues: Sequence[str], worker_id: str, *, records: ResultStore | None = None
    ) -> Consumer:
        return SQLiteConsumer(self._db, self.config, list(queues), worker_id)

    async def register_worker(self, info: WorkerInfo) -> None:
        now = self.config.clock.time()
        data = json.dumps(dataclasses.asdict(dataclasses.replace(info, heartbeat_at=now)))
        sql = "INSERT OR REPLACE INTO faena_workers (id, heartbeat_at, data) VALUES (?, ?, ?)"
        await self._db.run(
            lambda conn: write(
                conn, lambda c: c.execute(sql, (info.id, now, data)), "register a worker"
            )
        )

    async def unregister_worker(self, worker_id: str) -> None:
        sql = "DELETE FROM faena_workers WHERE id = ?"
        await self._db.run(
            lambda conn: write(conn, lambda c: c.execute(sql, (worker_id,)), "unregister a worker")
        )

    # -- administration ---------------------------------------------------------------------
    async def stats(self) -> list[QueueStats]:
        now = self.config.clock.time()

        def count(c: sqlite3.Connection) -> list[QueueStats]:
            rows: dict[str, dict[str, int]] = {}
            for queue, ready, scheduled, leased in c.execute(_STATS, {"now": now}):
                rows[queue] = {"ready": ready, "scheduled": scheduled, "leased": leased}
            for queue, dead in c.execute("SELECT queue, count(*) FROM faena_dead GROUP BY queue"):
                rows.setdefault(queue, {})["dead"] = dead
            return [QueueStats(queue=q, **counts) for q, counts in sorted(rows.items())]

        return await self._db.run(lambda conn: read(conn, count, "count messages"))

    async def workers(self) -> list[WorkerInfo]:
        now = self.config.clock.time()
        sql = "SELECT data FROM faena_workers ORDER BY id"  # one row per worker: a short table
        rows = await self._db.run(
            lambda conn: read(conn, lambda c: c.execute(sql).fetchall(), "list workers")
        )
        found = []
        for (data,) in rows:
            fields = json.loads(data)
            fields["queues"] = tuple(fields["queues"])
            info = WorkerInfo(**fields)
            if info.alive_at(now, self.config.lease_s):  # each by its own app's lease
                found.append(info)
        return found

    async def purge(self, queues: Sequence[str]) -> int:
        # Expired leases too: their worker is gone, and stats counts them as ready.
        sql = (
            "DELETE FROM faena_messages WHERE (state IN (0, 2) OR (state = 1 AND lease_until <= ?))"
            " AND queue IN (SELECT value FROM json_each(?))"
        )
        names = json.dumps(list(queues))
        now = self.config.clock.time()
        return await self._db.run(
            lambda conn: write(conn, lambda c: c.execute(sql, (now, names)).rowcount, "purge")
        )

    async def dead_letters(self, limit: int = 100, queue: str | None = None) -> list[DeadLetter]:
        sql = (
            "SELECT id, queue, reason, detail, dead_at, deliveries, body FROM faena_dead "
            "WHERE :queue IS NULL OR queue = :queue ORDER BY dead_at DESC LIMIT :limit"
        )
        params = {"queue": queue, "limit": limit}
        rows = await self._db.run(
            lambda conn: read(conn, lambda c: c.execute(sql, params).fetchall(), "list dead")
        )
        return [
            DeadLetter(
                id=r[0],
                queue=r[1],
                reason=r[2],
                detail=r[3],
                dead_at=r[4],
                deliveries=r[5],
                body=r[6],
            )
            for r in rows
        ]

    async def requeue_dead(self, ids: Sequence[str] | None = None) -> int:
        asked, asked_params = _chosen(ids)

        def requeue(c: sqlite3.Connection) -> int:
            # A dead letter whose id is in use again (sent anew, maybe running) stays where it
            # is: putting it back would overwrite the newer message.
            free = c.execute(
                f"SELECT id FROM faena_dead WHERE ({asked}) "
                "AND id NOT IN (SELECT id FROM faena_messages)",
                asked_params,
            ).fetchall()
            if not free:
                return 0
            chosen, params = _chosen([row[0] for row in free])
            base = _claims.take_seq(c, len(free))
            now = self.config.clock.time()
            c.execute(_REQUEUE_DEAD.format(chosen=chosen), {**params, "base": base, "now": now})
            c.execute(f"DELETE FROM faena_dead WHERE {chosen}", params)
            return len(free)

        total = await self._db.run(lambda conn: write(conn, requeue, "requeue dead letters"))
        self._db.notifier.notify()
        return total

    async def purge_dead(self, ids: Sequence[str] | None = None) -> int:
        chosen, params = _chosen(ids)
        sql = f"DELETE FROM faena_dead WHERE {chosen}"
        return await self._db.run(
            lambda conn: write(conn, lambda c: c.execute(sql, params).rowcount, "purge dead")
        )

    def close(self) -> None:
        self._db.close()

"""The lease lifecycle in SQL: claim, settle and extend, each one transaction on a connection.

A claim transaction runs, in order: promote due scheduled rows, recover expired leases (new seq,
``last_reason = 'lease_expired'``), move rows that used up ``max_deliveries`` to the dead table,
then lease a batch with one ``UPDATE ... WHERE id IN (...) RETURNING``. Each step is a single
statement on a partial index, so an idle claim touches almost nothing. Rows are never deleted
on hand-out; only acks, dead-lettering, removal and purges delete.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from faena.contracts.broker import Delivery, Settlement

READY, LEASED, SCHEDULED = 0, 1, 2

_PROMOTE = "UPDATE faena_messages SET state = 0 WHERE state = 2 AND due <= :now"
_RECOVER = """
UPDATE faena_messages
SET state = 0, due = :now, lease_until = NULL, worker = NULL,
    last_reason = 'lease_expired', seq = :base + r.n
FROM (SELECT id AS rid, row_number() OVER (ORDER BY lease_until, seq) AS n
      FROM faena_messages WHERE state = 1 AND lease_until <= :expired_by) AS r
WHERE faena_messages.id = r.rid
"""
# "deliveries > 0" repeats the partial index's condition so SQLite uses that index. Only the
# claimed queues: another app sharing the file may allow more deliveries on its own queues.
_EXHAUSTED = (
    "state = 0 AND deliveries > 0 AND deliveries >= :max "
    "AND queue IN (SELECT value FROM json_each(:queues))"
)
_BURY_EXHAUSTED = f"""
INSERT OR REPLACE INTO faena_dead
    (id, queue, priority, reason, detail, dead_at, deliveries, fence, enqueued_at, body)
SELECT id, queue, priority, COALESCE(NULLIF(last_reason, ''), 'max_deliveries'),
       'handed out ' || deliveries || ' times without being settled',
       :now, deliveries, fence, enqueued_at, body
FROM faena_messages WHERE {_EXHAUSTED}
"""
_DELETE_EXHAUSTED = f"DELETE FROM faena_messages WHERE {_EXHAUSTED}"
_NEXT_DUE = """
SELECT (SELECT min(due) FROM faena_messages WHERE state = 2),
       (SELECT min(lease_until) FROM faena_messages WHERE state = 1)
"""
_CLAIM_HEAD = """
UPDATE faena_messages
SET state = 1, lease_until = :until, worker = :worker,
    deliveries = deliveries + 1, fence = fence + 1
WHERE id IN (SELECT id FROM ({candidates} ORDER BY k, priority DESC, seq LIMIT :n))
RETURNING id, queue, body, priority, deliveries, fence, enqueued_at, last_reason, seq
"""
# One LIMITed index walk per queue, so the statement never sorts a whole backlog.
_CANDIDATES = (
    "SELECT * FROM (SELECT id, {k} AS k, priority, seq FROM faena_messages "
    "WHERE state = 0 AND queue = :q{k} ORDER BY priority DESC, seq LIMIT :n)"
)
_claim_sql_cache: dict[int, str] = {}
_QUEUES_PER_STATEMENT = 400
"""SQLite refuses a compound SELECT of more than 500 parts: a claim of more queues runs one
statement per group of this many, in queue order, within its transaction."""

_PAIRS = "(SELECT value ->> 0, value ->> 1 FROM json_each(:pairs))"
_ACK = f"DELETE FROM faena_messages WHERE state = 1 AND (id, fence) IN {_PAIRS} RETURNING id, fence"
_EXTEND = (
    "UPDATE faena_messages SET lease_until = :until "
    f"WHERE state = 1 AND (id, fence) IN {_PAIRS} RETURNING id, fence"
)
_FENCED = "WHERE id = :id AND fence = :fence AND state = 1"
_RETRY = f"""
UPDATE faena_messages
SET body = COALESCE(:body, body), deliveries = 0, last_reason = NULL, seq = :seq,
    due = :due, state = :state, lease_until = NULL, worker = NULL
{_FENCED}
"""
_RELEASE = f"""
UPDATE faena_messages
SET state = :state, due = :due, seq = COALESCE(:seq, seq), lease_until = NULL, worker = NULL,
    deliveries = deliveries - (:reason IS NULL),
    last_reason = COALESCE(NULLIF(:reason, ''), last_reason)
{_FENCED}
"""
_BURY = f"""
INSERT OR REPLACE INTO faena_dead
    (id, queue, priority, reason, detail, dead_at, deliveries, fence, enqueued_at, body)
SELECT id, queue, priority, :reason, :detail, :now, deliveries, fence, enqueued_at, body
FROM faena_messages {_FENCED}
"""
_DELETE_ONE = "DELETE FROM faena_messages WHERE id = :id"
_ACK_ONE = f"DELETE FROM faena_messages {_FENCED}"


@dataclass(frozen=True, slots=True)
class Claim:
    """What one claim transaction found: deliveries, or when to look again."""

    deliveries: list[Delivery]
    next_due: float | None
    data_version: int


def take_seq(conn: sqlite3.Connection, count: int) -> int:
    """Reserve ``count`` seq numbers; the caller uses ``base + 1 .. base + count``."""
    row = conn.execute(
        "UPDATE faena_meta SET value = value + ? WHERE key = 'seq' RETURNING value", (count,)
    ).fetchone()
    return int(row[0]) - count


def _claim_sql(queue_count: int) -> str:
    sql = _claim_sql_cache.get(queue_count)
    if sql is None:
        parts = " UNION ALL ".join(_CANDIDATES.format(k=k) for k in range(queue_count))
        sql = _claim_sql_cache.setdefault(queue_count, _CLAIM_HEAD.format(candidates=parts))
    return sql


def claim(
    conn: sqlite3.Connection,
    queues: Sequence[str],
    limit: int,
    worker: str,
    now: float,
    lease_s: float,
    max_deliveries: int,
    expired_by: float | None = None,
) -> Claim:
    """Lease up to ``limit`` messages from ``queues`` (in this order); the body of a transaction.

    Leases that ran out by ``expired_by`` (default ``now``) are recovered. A caller passes the
    time it asked for the claim: a lease that ran out while the claim waited for the file's
    write lock (held by another program) is its live holder's to renew, queued behind it.
    """
    # Read inside the write transaction: no one else can commit until we do, so any later
    # change to data_version means news for us.
    version = int(conn.execute("PRAGMA data_version").fetchone()[0])
    conn.execute(_PROMOTE, {"now": now})
    base = int(conn.execute("SELECT value FROM faena_meta WHERE key = 'seq'").fetchone()[0])
    expired = now if expired_by is None else min(now, expired_by)
    recovered = conn.execute(_RECOVER, {"now": now, "base": base, "expired_by": expired}).rowcount
    if recovered > 0:
        take_seq(conn, recovered)
    claimed = json.dumps(list(queues))
    conn.execute(_BURY_EXHAUSTED, {"now": now, "max": max_deliveries, "queues": claimed})
    conn.execute(_DELETE_EXHAUSTED, {"max": max_deliveries, "queues": claimed})
    rows: list[tuple[Any, ...]] = []
    for first in range(0, len(queues), _QUEUES_PER_STATEMENT):
        if len(rows) >= limit:
            break
        part = queues[first : first + _QUEUES_PER_STATEMENT]
        params: dict[str, object] = {"until": now + lease_s, "worker": worker}
        params["n"] = limit - len(rows)
        params.update({f"q{k}": q for k, q in enumerate(part)})
        rows += conn.execute(_claim_sql(len(part)), params).fetchall()
    # RETURNING comes in storage order; hand out in claim order.
    rank = {q: k for k, q in enumerate(queues)}
    rows.sort(key=lambda r: (rank[r[1]], -r[3], r[8]))
    deliveries = [
        Delivery(
            id=r[0],
            queue=r[1],
            body=r[2],
            priority=r[3],
            deliveries=r[4],
            fence=r[5],
            enqueued_at=r[6],
            last_reason=r[7],
        )
        for r in rows
    ]
    next_due = None
    if not deliveries:
        due, lease = conn.execute(_NEXT_DUE).fetchone()
        known = [t for t in (due, lease) if t is not None]
        next_due = min(known) if known else None
    return Claim(deliveries, next_due, version)


def _pairs(deliveries: Sequence[Delivery]) -> str:
    return json.dumps([[d.id, d.fence] for d in deliveries])


def _settle_one(conn: sqlite3.Connection, s: Settlement, now: float, seq: int) -> bool:
    fenced = {"id": s.delivery.id, "fence": s.delivery.fence}
    if s.action == "ack":
        return conn.execute(_ACK_ONE, fenced).rowcount == 1
    if s.action == "retry":
        due = s.due if s.due is not None else now
        state = SCHEDULED if due > now else READY
        params = {**fenced, "body": s.body, "seq": seq, "due": due, "state": state}
        return conn.execute(_RETRY, params).rowcount == 1
    if s.action == "dead":
        params = {**fenced, "reason": s.reason or "rejected", "detail": s.detail, "now": now}
        if conn.execute(_BURY, params).rowcount != 1:
            return False
        conn.execute(_DELETE_ONE, {"id": s.delivery.id})
        return True
    # Postponed (due later): it had its turn, so the back of the line when due.
    due, later_seq = (now, None) if s.due is None else (s.due, seq)
    state = SCHEDULED if due > now else READY
    params = {**fenced, "due": due, "state": state, "reason": s.reason, "seq": later_seq}
    return conn.execute(_RELEASE, params).rowcount == 1


def _new_place(s: Settlement) -> bool:
    return s.action == "retry" or (s.action == "release" and s.due is not None)


def settle(conn: sqlite3.Connection, settlements: Sequence[Settlement], now: float) -> list[bool]:
    """Apply settlements, each fenced on ``id AND fence AND state = leased``; a txn body."""
    mids = [s.delivery.id for s in settlements]
    # Acks, the bulk of the traffic, go in one statement, unless an id appears twice in the
    # batch: then the settlements must apply in order, one by one.
    in_bulk = len(set(mids)) == len(mids)
    acks = [s.delivery for s in settlements if s.action == "ack"] if in_bulk else []
    acked = {(r[0], r[1]) for r in conn.execute(_ACK, {"pairs": _pairs(acks)})} if acks else set()
    # Retries and postponed releases go to the back of the line: a new seq each.
    later = sum(1 for s in settlements if _new_place(s))
    seq = take_seq(conn, later) if later else 0
    done: list[bool] = []
    for s in settlements:
        if s.action == "ack" and in_bulk:
            done.append((s.delivery.id, s.delivery.fence) in acked)
            continue
        if _new_place(s):
            seq += 1
        done.append(_settle_one(conn, s, now, seq))
    return done


def extend(conn: sqlite3.Connection, deliveries: Sequence[Delivery], until: float) -> set[str]:
    """Renew the leases still ours until ``until``; the ids that were not."""
    kept = {
        (r[0], r[1]) for r in conn.execute(_EXTEND, {"until": until, "pairs": _pairs(deliveries)})
    }
    return {d.id for d in deliveries if (d.id, d.fence) not in kept}


def give_back(conn: sqlite3.Connection, deliveries: Sequence[Delivery], now: float) -> None:
    """Release unstarted deliveries (a receive cancelled mid-claim); not counted."""
    for d in deliveries:
        params = {"id": d.id, "fence": d.fence, "due": now, "state": READY}
        conn.execute(_RELEASE, {**params, "reason": None, "seq": None})

"""The in-memory broker: queues as heaps under one lock, for one process. ``memory://``."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace

from faena.backends.memory._waiters import Waiters
from faena.contracts.broker import (
    SEND_FENCE_STEP,
    Broker,
    BrokerConfig,
    Capabilities,
    Consumer,
    DeadLetter,
    Delivery,
    Location,
    Outgoing,
    QueueStats,
    Settlement,
    WorkerInfo,
)
from faena.contracts.results import ResultStore
from faena.foundation.clock import SYSTEM_CLOCK, Clock
from faena.foundation.exceptions import ConfigurationError


@dataclass(slots=True)
class _Entry:
    id: str
    queue: str
    body: bytes
    priority: int
    seq: int
    enqueued_at: float
    due: float
    deliveries: int = 0
    fence: int = 0
    lease_until: float | None = None
    worker: str | None = None
    last_reason: str | None = None
    location: Location = "queued"


class MemoryBroker(Broker):
    """A broker in this process's memory. ``memory://``."""

    capabilities = Capabilities(shared_between_processes=False)

    def __init__(self, url: str = "memory://", config: BrokerConfig | None = None) -> None:
        super().__init__(url, config or BrokerConfig())
        self._lock = threading.RLock()
        self._entries: dict[str, _Entry] = {}
        # ready[queue] is a heap of (-priority, seq, id); stale ids are skipped on pop.
        self._ready: dict[str, list[tuple[int, int, str]]] = {}
        self._scheduled: list[tuple[float, int, str]] = []
        self._leases: list[tuple[float, int, str]] = []  # (lease_until, fence, id); stale kept
        self._dead: dict[str, tuple[_Entry, str, str, float]] = {}
        self._workers: dict[str, WorkerInfo] = {}
        self._seq = itertools.count()
        self._waiters = Waiters()

    @property
    def clock(self) -> Clock:
        return self.config.clock

    # -- producers --------------------------------------------------------------------------
    def enqueue(self, messages: Sequence[Outgoing]) -> None:
        now = self.clock.time()
        with self._lock:
            for m in messages:
                old = self._entries.get(m.id)
                if old is not None and old.location == "leased":
                    continue  # the same id is running; a duplicate send is dropped, not doubled
                entry = _Entry(
                    m.id,
                    m.queue,
                    m.body,
                    m.priority,
                    next(self._seq),
                    now,
                    m.due if m.due is not None else now,
                )
                # Fences never go back, and a new send starts above every earlier one's: a
                # stale holder of an older lease never matches again.
                entry.fence = max(old.fence if old is not None else 0, entry.seq * SEND_FENCE_STEP)
                self._entries[m.id] = entry
                self._place(entry, now)
        self._waiters.wake()

    async def aenqueue(self, messages: Sequence[Outgoing]) -> None:
        self.enqueue(messages)

    def _place(self, entry: _Entry, now: float) -> None:
        entry.lease_until = None
        entry.worker = None
        if entry.due > now:
            entry.location = "scheduled"
            heapq.heappush(self._scheduled, (entry.due, entry.seq, entry.id))
        else:
            entry.location = "queued"
            heapq.heappush(
                self._ready.setdefault(entry.queue, []), (-entry.priority, entry.seq, entry.id)
            )

    def locate(self, message_id: str, *, live_first: bool = False) -> Location | None:
        with self._lock:
            entry = self._entries.get(message_id)
            if message_id in self._dead and not (live_first and entry is not None):
                return "dead"
            return entry.location if entry else None

    def remove(self, message_id: str) -> bool:
        return self.take(message_id) is not None

    def take(self, message_id: str) -> bytes | None:
        with self._lock:
            entry = self._entries.get(message_id)
            if entry is None or entry.location == "leased":
                return None
            del self._entries[message_id]
            return entry.body

    # -- claims -----------------------------------------------------------------------------
    def _promote_and_recover(self, now: float) -> None:
        while self._scheduled and self._scheduled[0][0] <= now:
            due, seq, mid = heapq.heappop(self._scheduled)
            entry = self._entries.get(mid)
            if (
                entry is not None
                and entry.location == "scheduled"
                and entry.seq == seq
                and entry.due == due
            ):
                self._place(entry, now)
        while self._leases and self._leases[0][0] <= now:
            _, fence, mid = heapq.heappop(self._leases)
            entry = self._entries.get(mid)
            if (
                entry is not None
                and entry.location == "leased"
                and entry.fence == fence
                and entry.lease_until is not None
                and entry.lease_until <= now
            ):
                entry.last_reason = "lease_expired"
                entry.seq = next(self._seq)
                entry.due = now
                self._place(entry, now)

    def _claim(
        self, queues: Sequence[str], start: int, limit: int, worker_id: str
    ) -> list[Delivery]:
        now = self.clock.time()
        out: list[Delivery] = []
        with self._lock:
            self._promote_and_recover(now)
            for i in range(len(queues)):
                heap = self._ready.get(queues[(start + i) % len(queues)])
                while heap and len(out) < limit:
                    _, seq, mid = heapq.heappop(heap)
                    entry = self._entries.get(mid)
                    if entry is None or entry.location != "queued" or entry.seq != seq:
                        continue
                    if entry.deliveries >= self.config.max_deliveries:
                        self._kill(
                            entry,
                            entry.last_reason or "max_deliveries",
                            f"handed out {entry.deliveries} times without being settled",
                            now,
                        )
                        continue
                    entry.deliveries += 1
                    entry.fence += 1
                    entry.location = "leased"
                    entry.lease_until = now + self.config.lease_s
                    entry.worker = worker_id
                    heapq.heappush(self._leases, (entry.lease_until, entry.fence, entry.id))
                    out.append(
                        Delivery(
                            id=entry.id,
                            queue=entry.queue,
                            body=entry.body,
                            priority=entry.priority,
                            deliveries=entry.deliveries,
                            fence=entry.fence,
                            enqueued_at=entry.enqueued_at,
                            last_reason=entry.last_reason,
                        )
                    )
        return out

    def _next_due(self) -> float | None:
        with self._lock:
            heads = [h[0][0] for h in (self._leases, self._scheduled) if h]
            return min(heads) if heads else None

    def _kill(self, entry: _Entry, reason: str, detail: str, now: float) -> None:
        self._entries.pop(entry.id, None)
        entry.location = "dead"
        self._dead[entry.id] = (entry, reason, detail, now)

    def _settle_one(self, s: Settlement, now: float) -> bool:
        d = s.delivery
        entry = self._entries.get(d.id)
        if entry is None or entry.location != "leased" or entry.fence != d.fence:
            return False
        if s.action == "ack":
            del self._entries[d.id]
        elif s.action == "retry":
            entry.body = s.body if s.body is not None else entry.body
            entry.deliveries = 0
            entry.last_reason = None
            entry.seq = next(self._seq)
            entry.due = s.due if s.due is not None else now
            self._place(entry, now)
        elif s.action == "dead":
            self._kill(entry, s.reason or "rejected", s.detail, now)
        else:  # release
            if s.reason is None:
                entry.deliveries -= 1
            entry.last_reason = s.reason or entry.last_reason
            entry.due = now
            if s.due is not None:  # postponed: it had its turn, so the back of the line
                entry.due = s.due
                entry.seq = next(self._seq)
            self._place(entry, now)
        return True

    # -- workers ----------------------------------------------------------------------------
    async def open_consumer(
        self, queues: Sequence[str], worker_id: str, *, records: ResultStore | None = None
    ) -> Consumer:
        if not queues:
            raise ConfigurationError("a consumer needs at least one queue to read from")
        return _MemoryConsumer(self, list(queues), worker_id)

    async def register_worker(self, info: WorkerInfo) -> None:
        with self._lock:
            self._workers[info.id] = replace(info, heartbeat_at=self.clock.time())

    async def unregister_worker(self, worker_id: str) -> None:
        with self._lock:
            self._workers.pop(worker_id, None)

    # -- administration ---------------------------------------------------------------------
    async def stats(self) -> list[QueueStats]:
        counts: dict[str, dict[str, int]] = {}
        with self._lock:
            self._promote_and_recover(self.clock.time())
            for e in self._entries.values():
                key = {"queued": "ready", "scheduled": "scheduled", "leased": "leased"}[e.location]
                row = counts.setdefault(e.queue, {})
                row[key] = row.get(key, 0) + 1
            for entry, *_ in self._dead.values():
                row = counts.setdefault(entry.queue, {})
                row["dead"] = row.get("dead", 0) + 1
        return [QueueStats(queue=q, **c) for q, c in sorted(counts.items())]

    async def workers(self) -> list[WorkerInfo]:
        now = self.clock.time()
        with self._lock:
            return sorted(
                (w for w in self._workers.values() if w.alive_at(now, self.config.lease_s)),
                key=lambda w: w.id,
            )

    async def purge(self, queues: Sequence[str]) -> int:
        wanted = set(queues)
        with self._lock:
            self._promote_and_recover(self.clock.time())  # expired leases: ready, as stats says
            doomed = [
                e.id
                for e in self._entries.values()
                if e.queue in wanted and e.location in ("queued", "scheduled")
            ]
            for mid in doomed:
                del self._entries[mid]
            return len(doomed)

    async def dead_letters(self, limit: int = 100, queue: str | None = None) -> list[DeadLetter]:
        with self._lock:
            rows = [
                DeadLetter(
                    id=e.id,
                    queue=e.queue,
                    reason=r,
                    detail=d,
                    dead_at=t,
                    deliveries=e.deliveries,
                    body=e.body,
                )
                for e, r, d, t in self._dead.values()
                if queue is None or e.queue == queue
            ]
        rows.sort(key=lambda r: r.dead_at, reverse=True)
        return rows[:limit]

    def _named_dead(self, ids: Sequence[str] | None) -> list[str]:
        """The dead letters ``ids`` names (each once), or all of them."""
        named = self._dead if ids is None else dict.fromkeys(ids)
        return [i for i in named if i in self._dead]

    async def requeue_dead(self, ids: Sequence[str] | None = None) -> int:
        now = self.clock.time()
        with self._lock:
            chosen = self._named_dead(ids)
            # A dead letter whose id is in use again stays: it would overwrite the newer message.
            chosen = [mid for mid in chosen if mid not in self._entries]
            for mid in chosen:
                entry, *_ = self._dead.pop(mid)
                entry.deliveries = 0
                entry.last_reason = None
                entry.seq = next(self._seq)
                entry.due = now
                self._entries[mid] = entry
                self._place(entry, now)
        self._waiters.wake()
        return len(chosen)

    async def purge_dead(self, ids: Sequence[str] | None = None) -> int:
        with self._lock:
            chosen = self._named_dead(ids)
            for mid in chosen:
                del self._dead[mid]
            return len(chosen)

    def close(self) -> None:
        self._waiters.wake()


class _MemoryConsumer(Consumer):
    def __init__(self, broker: MemoryBroker, queues: list[str], worker_id: str) -> None:
        self._broker = broker
        self._queues = queues
        self._worker_id = worker_id
        self._turn = 0
        self._closed = False

    async def receive(self, max_messages: int, timeout_s: float) -> list[Delivery]:
        broker = self._broker
        # Timeouts are real waits; the store's clock (maybe a FakeClock) decides what is due.
        deadline = SYSTEM_CLOCK.monotonic() + timeout_s
        waiter = broker._waiters.add()
        try:
            while not self._closed:
                waiter[1].clear()
                got = broker._claim(self._queues, self._turn, max_messages, self._worker_id)
                self._turn = (self._turn + 1) % len(self._queues)
                if got:
                    return got
                remaining = deadline - SYSTEM_CLOCK.monotonic()
                if remaining <= 0:
                    return []
                next_due = broker._next_due()
                if next_due is not None:
                    remaining = min(remaining, max(0.0, next_due - broker.clock.time()) + 0.001)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(waiter[1].wait(), remaining)
            return []
        finally:
            broker._waiters.discard(waiter)

    async def settle(self, settlements: Sequence[Settlement]) -> list[bool]:
        broker = self._broker
        now = broker.clock.time()
        with broker._lock:
            done = [broker._settle_one(s, now) for s in settlements]
        broker._waiters.wake()
        return done

    async def extend(self, deliveries: Sequence[Delivery], lease_s: float) -> set[str]:
        broker = self._broker
        lost: set[str] = set()
        until = broker.clock.time() + lease_s
        with broker._lock:
            for d in deliveries:
                entry = broker._entries.get(d.id)
                if entry is None or entry.location != "leased" or entry.fence != d.fence:
                    lost.add(d.id)
                else:
                    entry.lease_until = until
                    heapq.heappush(broker._leases, (until, entry.fence, entry.id))
        return lost

    async def close(self) -> None:
        self._closed = True
        self._broker._waiters.wake()

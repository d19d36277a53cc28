"""The broker seam: what moves messages between producers and workers.

A broker keeps each message in one of four places: ready (in a queue, due now), scheduled
(due later), leased (handed to one worker until its lease expires) and dead (the dead-letter
queue, with a reason). Every move between them is one atomic step in the backend.

Delivery counting: each hand-out of a message increments its ``deliveries`` (reset when the
job is retried on purpose) and its ``fence`` (never reset). A hand-out that would exceed
``max_deliveries`` dead-letters the message instead, with the reason of its last loss.

Fences across sends: a send of an id that is not in the broker (never sent, or acknowledged,
dead-lettered, purged or removed since) starts its fences at its send number (an order counter
of the backend that only grows) times :data:`SEND_FENCE_STEP`, so a holder of an earlier send's
lease can never match a later send of the same id. The low 16 bits of a fence count the
hand-outs within one send.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

import msgspec

from faena.contracts.results import ResultStore
from faena.foundation.clock import SYSTEM_CLOCK, Clock
from faena.model.outcome import JobRecord

Location = Literal["queued", "scheduled", "leased", "dead"]

SEND_FENCE_STEP: Final = 1 << 16
"""How far apart the fences of two sends of one id start (see the module docstring)."""
MAX_DELIVERIES: Final = SEND_FENCE_STEP - 1
"""The highest ``max_deliveries``: a run's record fence keeps the hand-outs of one send in
the low 16 bits of its delivery fence (``faena.features.lifecycle.record_fence``)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class BrokerConfig:
    """Timings and limits every broker honours; all are app settings."""

    lease_s: float = 30.0
    max_deliveries: int = 5
    poll_interval_s: float = 0.002
    clock: Clock = SYSTEM_CLOCK


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a backend does natively."""

    native_delay: bool = True
    priority: bool = True
    dead_letter: bool = True
    shared_between_processes: bool = True


class Outgoing(msgspec.Struct, frozen=True, kw_only=True):
    """An encoded message ready to enqueue. ``due`` is Unix seconds, ``None`` for now."""

    id: str
    queue: str
    body: bytes
    priority: int = 0
    due: float | None = None


class Delivery(msgspec.Struct, kw_only=True):
    """A message leased to this consumer."""

    id: str
    queue: str
    body: bytes
    priority: int
    deliveries: int
    fence: int
    enqueued_at: float
    last_reason: str | None = None
    record: JobRecord | msgspec.UnsetType | None = msgspec.UNSET
    """The job's result record as the claim found it (``None``: none), when the consumer was
    opened with a result store it can read in the same call (see :meth:`Broker.open_consumer`);
    ``UNSET`` otherwise: the worker looks it up itself."""


SettleAction = Literal["ack", "retry", "dead", "release"]


class Settlement(msgspec.Struct, frozen=True, kw_only=True):
    """The end of one lease.

    - ``ack``: done, delete the message.
    - ``retry``: replace the body with ``body`` (the next attempt) and make it due at ``due``;
      the delivery count starts again.
    - ``dead``: move to the dead-letter queue with ``reason`` and ``detail``.
    - ``release``: give the message back, due now, or at ``due`` if given (a job postponed by
      its rate or concurrency limit). With ``reason`` (e.g. ``worker_lost``) the delivery
      counts towards ``max_deliveries``; without, it is an unstarted message handed back and
      the delivery is not counted. Either way the deliveries counted before, and the reason of
      the last loss, are kept: unlike a retry, a release is the same attempt. Due now, it keeps
      its place in line; due later, it had its turn: it goes behind every message sent before
      it was handed back, as a retry does.
    """

    delivery: Delivery
    action: SettleAction
    body: bytes | None = None
    due: float | None = None
    reason: str | None = None
    detail: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueStats:
    queue: str
    ready: int = 0
    scheduled: int = 0
    leased: int = 0
    dead: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class DeadLetter:
    id: str
    queue: str
    reason: str
    detail: str
    dead_at: float
    deliveries: int
    body: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerInfo:
    id: str
    hostname: str
    pid: int
    queues: tuple[str, ...]
    concurrency: int
    pool: str
    started_at: float
    heartbeat_at: float = 0.0
    processed: int = 0
    running: int = 0
    extra: dict[str, str] = field(default_factory=dict)
    alive_s: float = 0.0
    """How long after its last heartbeat the worker counts as alive (its app's ``lease_s``, as
    it beats a few times per lease); 0 leaves it to the reader's own ``lease_s``. Workers of
    apps with different leases may share a broker, and ``faena status`` may run with none."""

    def alive_at(self, now: float, default_s: float) -> bool:
        """Whether a heartbeat at ``heartbeat_at`` still vouches for the worker at ``now``."""
        return self.heartbeat_at + (self.alive_s or default_s) >= now


class Consumer(ABC):
    """One worker's view of the broker: receive, settle and keep leases alive."""

    @abstractmethod
    async def receive(self, max_messages: int, timeout_s: float) -> list[Delivery]:
        """Lease up to ``max_messages`` ready messages, waiting up to ``timeout_s`` for the first.

        Queues are served round-robin, one claim round starting at the next queue each time;
        within a queue, higher priority first, then oldest first.
        """

    @abstractmethod
    async def settle(self, settlements: Sequence[Settlement]) -> list[bool]:
        """Apply the settlements in one step. ``False`` where the lease was no longer ours.

        A broker that can refuse some settlements for good while applying the others (Redis,
        one queue under another program's value) raises
        :class:`~faena.foundation.exceptions.SettlementsRefused` saying
        which were applied; the refused ones changed nothing and may be sent again."""

    @abstractmethod
    async def extend(self, deliveries: Sequence[Delivery], lease_s: float) -> set[str]:
        """Renew the leases; returns the ids whose lease was lost (someone else holds them)."""

    @abstractmethod
    async def close(self) -> None:
        """Stop receiving. Leases still held stay until settled or expired."""


class Broker(ABC):
    """Moves messages: enqueue, lease, settle, dead-letter. See the module docstring."""

    capabilities: Capabilities = Capabilities()

    def __init__(self, url: str, config: BrokerConfig) -> None:
        self.url = url
        self.config = config

    # -- producers (thin I/O in two flavours) ------------------------------------------------
    @abstractmethod
    def enqueue(self, messages: Sequence[Outgoing]) -> None:
        """Add messages, all in one step."""

    @abstractmethod
    async def aenqueue(self, messages: Sequence[Outgoing]) -> None:
        """``enqueue`` for async callers."""

    @abstractmethod
    def locate(self, message_id: str, *, live_first: bool = False) -> Location | None:
        """Where the message is now, or ``None`` if the broker does not hold it.

        A dead letter and a newer message with the same id (sent again) can both be held: the
        dead letter answers first, unless ``live_first`` (then ``dead`` only when no live
        message has the id)."""

    async def alocate(self, message_id: str, *, live_first: bool = False) -> Location | None:
        """``locate`` for async callers, in a thread unless a broker has a better way: the
        event loop goes on meanwhile."""
        return await asyncio.to_thread(self.locate, message_id, live_first=live_first)

    @abstractmethod
    def remove(self, message_id: str) -> bool:
        """Delete a message that is ready or scheduled (not leased). ``True`` if removed."""

    def take(self, message_id: str) -> bytes | None:
        """:meth:`remove`, returning the removed message's body (``None``: nothing removed).
        A backend that cannot return the body returns ``b""`` for a removed message."""
        return b"" if self.remove(message_id) else None

    # -- workers ----------------------------------------------------------------------------
    @abstractmethod
    async def open_consumer(
        self, queues: Sequence[str], worker_id: str, *, records: ResultStore | None = None
    ) -> Consumer:
        """A consumer of ``queues`` for ``worker_id``.

        ``records``: the worker's result store. A broker that can read its records in the
        same call as a claim (Redis, when the store lives on the same server) hands each
        delivery out with its record (:attr:`Delivery.record`), which saves the worker a round
        trip before it starts the batch; any other broker ignores it.
        """

    @abstractmethod
    async def register_worker(self, info: WorkerInfo) -> None:
        """Record (or refresh) a live worker; alive while its heartbeat is within ``lease_s``."""

    @abstractmethod
    async def unregister_worker(self, worker_id: str) -> None:
        """Forget a worker that stopped cleanly."""

    async def warnings(self) -> list[str]:
        """What the operator should know about the server's set-up, in plain words: settings
        under which messages can be lost (e.g. an evicting memory policy, no persistence). The
        worker logs them at start. Backends without such settings have none."""
        return []

    # -- administration ---------------------------------------------------------------------
    @abstractmethod
    async def stats(self) -> list[QueueStats]:
        """Counts per queue, for every queue that holds anything."""

    @abstractmethod
    async def workers(self) -> list[WorkerInfo]:
        """Workers whose heartbeat is recent (within ``lease_s``)."""

    @abstractmethod
    async def purge(self, queues: Sequence[str]) -> int:
        """Delete ready and scheduled messages of ``queues``; returns how many."""

    @abstractmethod
    async def dead_letters(self, limit: int = 100, queue: str | None = None) -> list[DeadLetter]:
        """The newest dead letters first."""

    @abstractmethod
    async def requeue_dead(self, ids: Sequence[str] | None = None) -> int:
        """Put dead letters back in their queues (all of them when ``ids`` is ``None``)."""

    @abstractmethod
    async def purge_dead(self, ids: Sequence[str] | None = None) -> int:
        """Delete dead letters (all of them when ``ids`` is ``None``)."""

    @abstractmethod
    def close(self) -> None:
        """Release connections. Safe to call twice."""

"""The worker's gate for rate and concurrency limits, on the coordination store.

Before a job starts, :meth:`FlowGate.enter` asks the store whether it may:

- **Concurrency** (``concurrency_limit=N``): the limit is ``N`` slot keys,
  ``faena:slot:<task[|key]>:<i>``. A job takes a free one with ``set_if_absent`` (its value
  names the run: ``<job id>@<queue>#<fence>``, as one id may run twice at once; its TTL the
  broker lease); the worker renews the slots of its running jobs with every
  heartbeat (:meth:`FlowGate.renew`) and deletes them when the job ends. A worker that dies stops
  renewing, so its slots expire with its leases and others may take them.
- **Rate** (``rate_limit="N/s"``): a sliding window of ``N`` uses per window
  (``take_in_window``), with a second window of about ``N/20`` uses per twentieth of it, so a
  backlog of queued jobs is spread over the window instead of all starting in its first
  instant. Checked
  after the slot, which is given back when the rate refuses.

A job that may not start yet is not failed: the worker hands its message back to the broker,
due when the store says a use frees up (or after ``concurrency_retry_s``), without counting an
attempt, and goes on with other messages. Every check is against the store, so the limits hold
for the whole fleet, whatever the number of workers.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from faena.contracts.coordination import CoordinationStore
from faena.features import unique
from faena.model.limits import limit_key, parse_rate_limit
from faena.model.message import Message
from faena.model.options import TaskOptions

log = logging.getLogger("faena.worker")


@dataclass(slots=True)
class FlowGate:
    """Admits jobs under their task's limits; one per worker."""

    store_of: Callable[[], CoordinationStore]
    """The store, made on first use: a worker of tasks without limits never needs one."""
    lease_s: float
    concurrency_retry_s: float
    slots: dict[str, str] = field(default_factory=dict)
    """Slot key held by each run (see the module docstring)."""
    used: bool = False
    """Whether any job went through the gate (so the store has limit data to clean up)."""

    @property
    def store(self) -> CoordinationStore:
        return self.store_of()

    async def enter(
        self,
        run: str,
        task: str,
        options: TaskOptions,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> float:
        """``0.0`` if the job may start now (its slot, if any, is held by ``run``); else the
        seconds to wait before trying again."""
        self.used = True
        # The keys first: a key function that raises (KeyFunctionFailed) takes nothing.
        base = limit_key(options.concurrency_key, task, args, kwargs, "concurrency_key")
        rate_key = limit_key(options.rate_limit_key, task, args, kwargs, "rate_limit_key")
        if options.concurrency_limit is not None:
            slot = await self._take_slot(base, options.concurrency_limit, run)
            if slot is None:
                return self.concurrency_retry_s
            self.slots[run] = slot
        if options.rate_limit is not None:
            try:
                wait = await self._take_rate(options, rate_key)
            except BaseException:  # the job will not start: its slot must not stay renewed
                await self.leave(run)
                raise
            if wait > 0:
                await self.leave(run)
                return wait
        return 0.0

    async def _take_slot(self, base: str, limit: int, run: str) -> str | None:
        first = random.randrange(limit)  # spread contenders over the slots
        for n in range(limit):
            slot = f"faena:slot:{base}:{(first + n) % limit}"
            if await self.store.aset_if_absent(slot, run, self.lease_s):
                return slot
        return None

    async def _take_rate(self, options: TaskOptions, rate_key: str) -> float:
        assert options.rate_limit is not None
        rate = parse_rate_limit(options.rate_limit)
        key = "faena:rate:" + rate_key
        if rate.step < rate.limit:
            wait = await self.store.atake_in_window(key + "|step", rate.step, rate.step_s)
            if wait > 0:
                return wait
        return await self.store.atake_in_window(key, rate.limit, rate.enforced_window_s)

    async def leave(self, run: str) -> None:
        """Give back the job's slot, if it holds one."""
        slot = self.slots.pop(run, None)
        if slot is not None:
            try:
                await self.store.acompare_and_delete(slot, run)
            except Exception:  # it expires with the lease anyway
                log.exception("could not free the concurrency slot of run %s", run)

    async def finished(
        self,
        message: Message,
        options: TaskOptions,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        """A job ended for good (no retry follows): free its unique key, if it holds it, so
        the next send makes a new job even when no outcome is recorded (``ignore_result``)."""
        if not unique.is_unique(options):
            return
        key = unique.unique_key(options, message, args, kwargs)
        try:
            await self.store.acompare_and_delete(key, message.id)
        except Exception:  # the sender also frees a key whose job has finished
            log.exception("could not free the unique key of job %s", message.id)

    async def cleanup(self) -> int:
        """Drop expired slots and window uses from the store, once the gate has been used."""
        return await self.store.cleanup() if self.used else 0

    async def renew(self) -> None:
        """Keep the slots of running jobs alive for another lease (with the heartbeat)."""
        for job_id, slot in list(self.slots.items()):
            if not await self.store.acompare_and_expire(slot, job_id, self.lease_s):
                log.warning("the concurrency slot of job %s had expired before renewal", job_id)

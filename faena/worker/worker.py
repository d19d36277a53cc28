"""The worker: lease messages, run them in a pool, record outcomes, keep leases alive.

One asyncio loop does all the I/O: a fetcher leases batches (as many as free slots plus
prefetch), each message becomes a job that waits for a pool slot, an outbox writes results
and settlements in batches, and a heartbeat renews every held lease, refreshes the worker's
registration and stops jobs revoked with ``terminate``.

Shutdown: the first SIGTERM/SIGINT stops fetching, hands unstarted messages back at once and
waits up to the grace period for running jobs; a second signal (or the grace period running
out) stops running jobs and hands their messages back. A clean stop exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from faena.app.core import Faena
from faena.contracts.broker import Consumer, Delivery, Outgoing, Settlement, WorkerInfo
from faena.contracts.events import JobEvent
from faena.contracts.pool import Job, Pool
from faena.features.intake import Admitted, Refused, admit
from faena.features.lifecycle import (
    Decision,
    RunInfo,
    base_record,
    decide,
    expired,
    failed,
    record_fence,
)
from faena.foundation.exceptions import ConfigurationError
from faena.foundation.util import worker_identity
from faena.model import states
from faena.model.message import Message, encode_message
from faena.model.outcome import ErrorInfo, JobRecord, Outcome
from faena.worker.logs import current_job
from faena.worker.outbox import Outbox
from faena.worker.pools import POOL_NAMES, make_pool

log = logging.getLogger("faena.worker")

EXIT_OK = 0
EXIT_CONFIG = 2
EXIT_COLD = 3


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerOptions:
    """How a worker runs; every field has a CLI flag and a ``FAENA_*`` variable."""

    queues: tuple[str, ...] = ()
    concurrency: int | None = None
    pool: str = "async"
    prefetch: int | None = None
    max_tasks_per_child: int | None = None
    max_memory_per_child: int | None = None
    app_spec: str | None = None
    worker_id: str | None = None
    burst: bool = False
    grace_s: float | None = None

    def resolved_concurrency(self) -> int:
        if self.concurrency is not None:
            return self.concurrency
        if self.pool == "processes":
            return os.cpu_count() or 2
        return 1 if self.pool == "solo" else 10


def default_queues(app: Faena) -> tuple[str, ...]:
    """The queues a worker consumes when none are named: the app's default queue, then every
    queue a task of the app is declared with."""
    declared = {t.defaults.queue for t in map(app.registry.get, app.registry)}
    named = sorted(q for q in declared if q and q != app.settings.default_queue)
    return (app.settings.default_queue, *named)


_Key = tuple[str, int]
"""A delivery: message id and fence."""


class Worker:
    """Consumes the given queues of ``app`` until stopped.

    Example:
        >>> worker = Worker(app, WorkerOptions(queues=("default",), burst=True))
        >>> asyncio.run(worker.run())   # burst: returns once the queues are empty
        0
    """

    def __init__(self, app: Faena, options: WorkerOptions | None = None) -> None:
        options = options or WorkerOptions()
        if options.pool not in POOL_NAMES:
            raise ConfigurationError(
                f"unknown pool {options.pool!r}; choose one of {', '.join(POOL_NAMES)}"
            )
        self.app = app
        self.options = options
        self.queues = options.queues or default_queues(app)
        self.concurrency = 1 if options.pool == "solo" else options.resolved_concurrency()
        if self.concurrency < 1:
            raise ConfigurationError(f"concurrency must be >= 1, got {self.concurrency}")
        # Celery's habit: hold up to four times the slots, so claims come in useful batches.
        self.prefetch = 4 * self.concurrency if options.prefetch is None else options.prefetch
        if self.prefetch < 0:
            raise ConfigurationError(f"prefetch must be >= 0, got {self.prefetch}")
        self.id = options.worker_id or worker_identity()
        self.processed = 0
        self.leftover = 0
        """After ``run``: job threads that never returned (see ``faena.cli`` for the exit)."""
        self.grace_s = (
            options.grace_s if options.grace_s is not None else app.settings.shutdown_grace_s
        )
        self._held: dict[str, Delivery] = {}
        # Keyed by delivery (id, fence): after a lost lease the same id may be held twice.
        self._settling: set[_Key] = set()
        self._early_acked: set[_Key] = set()  # acks_late=False jobs: their message is gone
        self._running: dict[_Key, asyncio.Task[None]] = {}
        self._runners: list[asyncio.Task[None]] = []
        self._queue: asyncio.Queue[tuple[Delivery, bool]] | None = None
        self._idle: asyncio.Event | None = None
        self._started_records: dict[_Key, JobRecord] = {}
        self._terminated: set[str] = set()
        self._stopping = False
        self._cold = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._room: asyncio.Event | None = None
        self._consumer: Consumer | None = None
        self._outbox: Outbox | None = None
        self._pool: Pool | None = None
        self._started_at = app.settings.clock.time()
        self._function_modules = app.function_modules

    # -- control ------------------------------------------------------------------------------
    def stopping(self) -> bool:
        """Whether a stop was requested (a method: it changes while a caller awaits)."""
        return self._stopping

    def request_stop(self, cold: bool = False) -> None:
        """Ask the worker to stop (thread-safe). A second request, or ``cold``, stops at once."""
        loop = self._loop
        if loop is None:
            self._stopping = True
            return
        loop.call_soon_threadsafe(self._begin_stop, cold)

    def _begin_stop(self, cold: bool) -> None:
        if self._stopping or cold:
            if not self._cold:
                log.warning("cold shutdown: stopping running jobs and handing their messages back")
            self._cold = True
        else:
            log.info(
                "graceful shutdown: no new jobs; waiting up to %gs for %d running",
                self.grace_s,
                len(self._running),
            )
        self._stopping = True
        assert self._stop_event is not None
        assert self._room is not None
        self._stop_event.set()
        self._room.set()

    def _install_signals(self) -> None:
        assert self._loop is not None
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._loop.add_signal_handler(sig, self._begin_stop, False)
            except (NotImplementedError, RuntimeError, ValueError):
                return  # not the main thread (tests run workers in threads)

    # -- main ---------------------------------------------------------------------------------
    async def run(self) -> int:
        """Run until stopped; returns the exit code (0 for a clean stop)."""
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        self._room = asyncio.Event()
        self._queue = asyncio.Queue()
        self._idle = asyncio.Event()
        self._idle.set()
        self._install_signals()
        app = self.app
        options: dict[str, Any] = {}
        if self.options.pool == "processes":
            options = {
                "app_spec": self.options.app_spec,
                "max_tasks_per_child": self.options.max_tasks_per_child,
                "max_memory_per_child": self.options.max_memory_per_child,
            }
        self._pool = make_pool(self.options.pool, self.concurrency, app.registry, **options)
        await self._pool.start()
        self._consumer = await app.broker.open_consumer(self.queues, self.id)
        self._outbox = Outbox(app.results, self._consumer, self._on_settled)
        await app.broker.register_worker(self._info())
        log.info(
            "worker %s ready: app %s, queues %s, pool %s x%d, prefetch %d, broker %s",
            self.id,
            app.name,
            ",".join(self.queues),
            self.options.pool,
            self.concurrency,
            self.prefetch,
            app.broker_url,
        )
        if self._stopping:
            self._begin_stop(False)
        background = [
            asyncio.create_task(c)
            for c in (self._outbox.run(), self._heartbeat(), self._maintenance())
        ]
        # One long-lived runner per slot: a job costs a queue hand-off, not a new task.
        self._runners = [asyncio.create_task(self._runner()) for _ in range(self.concurrency)]
        fetcher = asyncio.create_task(self._fetch())
        try:
            await self._stop_event.wait()
        finally:
            code = await self._shutdown(fetcher)
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            await self._consumer.close()
            await app.broker.unregister_worker(self.id)
        log.info("worker %s stopped after %d jobs", self.id, self.processed)
        return code

    async def _fetch(self) -> None:
        assert self._consumer
        assert self._room
        assert self._queue
        while not self.stopping():
            try:
                await self._fetch_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("fetching messages failed; trying again in 1 s")
                await asyncio.sleep(1.0)  # a back-off before the next try

    async def _fetch_once(self) -> None:
        assert self._consumer
        assert self._room
        assert self._queue
        room = self.concurrency + self.prefetch - len(self._held) - len(self._early_acked)
        if room <= 0:
            self._room.clear()
            await self._room.wait()
            return
        # Never cancelled mid-claim (a cancelled claim could lease messages nobody holds):
        # shutdown waits for this call, which returns within its timeout.
        batch = await self._consumer.receive(room, 0.2 if self.options.burst else 0.5)
        for delivery in batch:
            self._held[delivery.id] = delivery  # held (renewed, settled) from now on
        if not batch:
            if self.options.burst and not self._held and not self._running:
                log.info("queues are empty: burst worker stopping")
                self._begin_stop(False)
            return
        revoked = await self._revoked([d.id for d in batch]) if not self.stopping() else set()
        for delivery in batch:
            if self.stopping():
                self._release(delivery)
            else:
                self._queue.put_nowait((delivery, delivery.id in revoked))

    async def _revoked(self, ids: Sequence[str]) -> set[str]:
        try:
            records = await self.app.results.fetch_many(ids)
        except Exception:
            # Cannot tell now: run them; a revoke still wins over their records (its fence).
            log.exception("could not check %d message(s) for revokes", len(ids))
            return set()
        return {i for i, r in records.items() if r.state == states.REVOKED}

    # -- one job ------------------------------------------------------------------------------
    async def _runner(self) -> None:
        assert self._queue
        assert self._idle
        me = asyncio.current_task()
        assert me is not None
        while True:
            delivery, revoked = await self._queue.get()
            if self._held.get(delivery.id) is not delivery:
                continue  # its lease was lost while it waited: someone else has it now
            if self._stopping:  # shutdown hands queued messages back; this one slipped through
                self._release(delivery)
                continue
            key = (delivery.id, delivery.fence)
            self._running[key] = me
            self._idle.clear()
            try:
                await self._handle(delivery, revoked)
            except asyncio.CancelledError:
                self._release(delivery, self._started_records.get(key))
                raise
            except Exception:  # a fault of ours or of a backend: the runner must live on
                log.exception("job %s could not be carried through; handing it back", delivery.id)
                # Counted, so a message that always breaks the worker ends in the DLQ.
                self._release(delivery, self._started_records.get(key), reason="worker_error")
            finally:
                self._early_acked.discard(key)
                self._running.pop(key, None)
                self._started_records.pop(key, None)
                if not self._running:
                    self._idle.set()
                assert self._room is not None
                self._room.set()

    async def _handle(self, delivery: Delivery, revoked: bool) -> None:
        current_job.set(delivery.id)
        assert self._outbox
        settings = self.app.settings
        admitted = admit(
            delivery.body,
            max_size=settings.max_message_size,
            accept=settings.accept,
            registry=self.app.registry,
            function_modules=self._function_modules,
        )
        if isinstance(admitted, Refused):
            self._refuse(delivery, admitted)
            return
        message = admitted.message
        if revoked:
            log.info("job %s was revoked before it started; skipped", delivery.id)
            self._settle(Settlement(delivery=delivery, action="ack"))
            self._emit(states.REVOKED, admitted)
            return
        if message.expires is not None and settings.clock.time() >= message.expires:
            log.info("job %s expired before it could run; recorded REVOKED", delivery.id)
            self._apply(
                delivery, expired(message, self._run_info(delivery, None, message)), admitted
            )
            return
        await self._execute(delivery, admitted)

    async def _execute(self, delivery: Delivery, job: Admitted) -> None:
        assert self._pool
        assert self._outbox
        task, message = job.task, job.message
        started = self.app.settings.clock.time()
        info = self._run_info(delivery, started, message)
        if not task.defaults.ignore_result:
            record = base_record(message, info, states.STARTED, task.defaults)
            self._started_records[(delivery.id, delivery.fence)] = record
            self._outbox.record(record)
        self._emit(states.STARTED, job)
        if not task.defaults.acks_late and not await self._ack_first(delivery):
            return
        request = job.request(delivery.deliveries, self.id)
        try:
            outcome = await self._pool.run(
                Job(
                    request=request,
                    body=delivery.body,
                    args=job.args,
                    kwargs=job.kwargs,
                    serializer=message.serializer,
                    time_limit=task.defaults.time_limit,
                    soft_time_limit=task.defaults.soft_time_limit,
                    progress=self._progress_sink((delivery.id, delivery.fence)),
                )
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a pool fault must not strand the message
            log.exception("the pool could not run job %s", message.id)
            outcome = Outcome(status="failure", error=ErrorInfo.from_exception(exc))
        self.processed += 1
        info = self._run_info(delivery, started, message)
        if message.id in self._terminated:
            self._terminated.discard(message.id)
            log.info("job %s was terminated by a revoke", message.id)
            self._settle(Settlement(delivery=delivery, action="ack"))
            self._emit(states.REVOKED, job)
            return
        if not task.defaults.acks_late:
            await self._after_early_ack(
                delivery, decide(task.defaults, message, outcome, info), job
            )
            return
        decision = decide(task.defaults, message, outcome, info)
        if outcome.status == "success":
            if log.isEnabledFor(logging.INFO):
                log.info("job %s (%s) succeeded in %.3fs", message.id, task.name, outcome.runtime_s)
        elif outcome.status == "failure" and outcome.error is not None:
            log.error(
                "job %s (%s) failed: %s: %s",
                message.id,
                task.name,
                outcome.error.type,
                outcome.error.message,
            )
        elif decision.action == "retry":
            delay = max(0.0, (decision.due or info.now) - info.now)
            log.info(
                "job %s (%s) will retry in %.1fs (attempt %d)",
                message.id,
                task.name,
                delay,
                message.retries + 2,
            )
        elif decision.action == "release":
            log.error(
                "job %s (%s): the process running it died: %s",
                message.id,
                task.name,
                decision.detail,
            )
        self._apply(delivery, decision, job)

    async def _ack_first(self, delivery: Delivery) -> bool:
        """acks_late=False: delete the message before the job runs (at most once). ``False``
        if the lease was already lost: someone else may run it, so this worker must not."""
        assert self._consumer
        settlement = Settlement(delivery=delivery, action="ack")
        ok = (await self._consumer.settle([settlement]))[0]
        self._on_settled(settlement, ok)
        if ok:
            self._early_acked.add((delivery.id, delivery.fence))
        else:
            log.warning("job %s: lease lost before it started; not running it here", delivery.id)
        return ok

    async def _after_early_ack(self, delivery: Delivery, decision: Decision, job: Admitted) -> None:
        """Carry out a decision for a message acknowledged before its job ran (acks_late=False):
        the record is written; a retry is sent as a new message; a failure or a loss is final
        and leaves nothing in the dead-letter queue."""
        assert self._outbox
        record = decision.record
        if decision.action == "release":  # lost: nothing will run it again
            error = ErrorInfo(type="faena.WorkerLost", message=decision.detail or "process died")
            info = self._run_info(delivery, None, job.message)
            record = failed(
                job.task.defaults, job.message, info, error, reason="worker_lost"
            ).record
        if record is not None:
            self._outbox.record(record)
        if decision.action == "retry" and decision.next_message is not None:
            # A new send: a fresh send time ranks its records above this one's, and the RETRY
            # record is written before the next attempt can start.
            await self._outbox.flush()
            nxt = msgspec.structs.replace(
                decision.next_message, sent_at=self.app.settings.clock.time()
            )
            await self.app.broker.aenqueue(
                [
                    Outgoing(
                        id=nxt.id,
                        queue=nxt.queue,
                        body=encode_message(nxt),
                        priority=nxt.priority,
                        due=decision.due,
                    )
                ]
            )
        elif decision.action in ("dead", "release"):
            log.warning(
                "job %s (acks_late=False) ended %s; its message is not kept",
                delivery.id,
                decision.reason,
            )
        self._emit(record.state if record else states.SUCCESS, job)

    def _apply(self, delivery: Delivery, decision: Decision, job: Admitted | None) -> None:
        body = encode_message(decision.next_message) if decision.next_message else None
        self._settle(
            Settlement(
                delivery=delivery,
                action=decision.action,
                body=body,
                due=decision.due,
                reason=decision.reason,
                detail=decision.detail,
            ),
            decision.record,
        )
        if job is not None:
            state = (
                decision.record.state
                if decision.record
                else {"ack": states.SUCCESS, "release": "LOST"}.get(
                    decision.action, decision.action
                )
            )
            self._emit(state, job)

    def _refuse(self, delivery: Delivery, refused: Refused) -> None:
        log.error("message %s dead-lettered: %s: %s", delivery.id, refused.reason, refused.detail)
        error = ErrorInfo(type=f"faena.{refused.reason}", message=refused.detail)
        if refused.message is None:
            # Unreadable: no task, no lineage; still a FAILURE record, so get() ends.
            now = self.app.settings.clock.time()
            record = JobRecord(
                id=delivery.id,
                state=states.FAILURE,
                queue=delivery.queue,
                worker=self.id,
                error=error,
                reason=refused.reason,
                deliveries=delivery.deliveries,
                finished_at=now,
                updated_at=now,
                fence=delivery.fence,
                expires_at=now + self.app.settings.result_ttl,
            )
            self._settle(
                Settlement(
                    delivery=delivery, action="dead", reason=refused.reason, detail=refused.detail
                ),
                record,
            )
            return
        decision = failed(
            None,
            refused.message,
            self._run_info(delivery, None, refused.message),
            error,
            reason=refused.reason,
        )
        self._emit(states.FAILURE, refused.message)
        self._apply(delivery, decision, None)

    def _settle(self, settlement: Settlement, record: JobRecord | None = None) -> None:
        """Queue the end of a lease; a message is settled once, whatever happens after."""
        assert self._outbox
        key = (settlement.delivery.id, settlement.delivery.fence)
        if key in self._settling or key in self._early_acked:
            return
        self._settling.add(key)
        self._outbox.settle(settlement, record)

    def _release(
        self, delivery: Delivery, started: JobRecord | None = None, reason: str | None = None
    ) -> None:
        """Hand an unfinished message back, due now, without counting the delivery. A job
        that had started reads ``QUEUED`` again, not ``STARTED`` on a worker that let go."""
        record = None
        now = self.app.settings.clock.time()
        if (delivery.id, delivery.fence) in self._early_acked:
            # acks_late=False: the message is gone, so the job ends here, for good.
            if started is not None and self._outbox is not None:
                error = ErrorInfo(
                    type="faena.WorkerLost",
                    message="the worker stopped while it ran; acks_late=False jobs run at "
                    "most once",
                )
                self._outbox.record(
                    msgspec.structs.replace(
                        started,
                        state=states.FAILURE,
                        finished_at=now,
                        updated_at=now,
                        reason="interrupted",
                        error=error,
                    )
                )
            return
        if started is not None:
            record = msgspec.structs.replace(
                started,
                state=states.QUEUED,
                worker=None,
                updated_at=now,
                reason="handed back at shutdown",
            )
        self._settle(Settlement(delivery=delivery, action="release", reason=reason), record)

    def _on_settled(self, settlement: Settlement, ok: bool) -> None:
        mid = settlement.delivery.id
        self._settling.discard((mid, settlement.delivery.fence))
        if self._held.get(mid) is settlement.delivery:
            del self._held[mid]
        if not ok:
            log.warning(
                "message %s: lease lost before %s; another worker holds it now",
                mid,
                settlement.action,
            )
        assert self._room is not None
        self._room.set()

    def _run_info(
        self, delivery: Delivery, started: float | None, message: Message | None
    ) -> RunInfo:
        now = self.app.settings.clock.time()
        return RunInfo(
            worker=self.id,
            fence=record_fence(message.sent_at if message else None, delivery.fence),
            deliveries=delivery.deliveries,
            started_at=started if started is not None else now,
            now=now,
            result_ttl=self.app.settings.result_ttl,
            max_deliveries=self.app.settings.max_deliveries,
        )

    def _progress_sink(self, job_id: _Key) -> Any:
        loop = self._loop
        assert loop is not None

        def on_loop(fraction: float, message: str | None) -> None:
            record = self._started_records.get(job_id)
            if record is None or self._outbox is None:
                return
            updated = msgspec.structs.replace(
                record,
                progress=fraction,
                progress_message=message,
                updated_at=self.app.settings.clock.time(),
            )
            self._started_records[job_id] = updated
            self._outbox.record(updated)

        def sink(fraction: float, message: str | None) -> None:
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is loop:
                on_loop(fraction, message)
            else:
                loop.call_soon_threadsafe(on_loop, fraction, message)

        return sink

    def _emit(self, kind: str, job: Admitted | Message) -> None:
        if not self.app.events:
            return
        m = job.message if isinstance(job, Admitted) else job
        self.app.events.emit(
            JobEvent(
                kind=kind,
                job_id=m.id,
                task=m.task,
                at=self.app.settings.clock.time(),
                worker=self.id,
                parent_id=m.parent_id,
                root_id=m.root_id,
            )
        )

    # -- background ---------------------------------------------------------------------------
    def _info(self) -> WorkerInfo:
        extra: dict[str, str] = {"app": self.app.name}
        if self._pool is not None:
            health = self._pool.health()
            extra.update(
                pool_size=str(health.size),
                pool_busy=str(health.busy),
                pool_restarts=str(health.restarts),
                pool_abandoned=str(health.abandoned),
            )
        return WorkerInfo(
            id=self.id,
            hostname=socket.gethostname(),
            pid=os.getpid(),
            queues=tuple(self.queues),
            concurrency=self.concurrency,
            pool=self.options.pool,
            started_at=self._started_at,
            processed=self.processed,
            running=len(self._running),
            extra=extra,
        )

    async def _heartbeat(self) -> None:
        assert self._consumer
        assert self._pool
        interval = self.app.settings.heartbeat_interval_s
        while True:
            await asyncio.sleep(interval)  # a period, not a synchronisation
            try:
                held = list(self._held.values())
                if held:
                    lost = await self._consumer.extend(held, self.app.settings.lease_s)
                    for mid in lost:
                        log.warning("lease on %s was lost; its outcome will not be recorded", mid)
                        self._held.pop(mid, None)
                await self.app.broker.register_worker(self._info())
                await self._terminate_revoked()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("heartbeat failed; retrying at the next beat")

    async def _terminate_revoked(self) -> None:
        if not self._running:
            return
        assert self._pool
        records = await self.app.results.fetch_many([mid for mid, _ in self._running])
        for mid, record in records.items():
            # Only once the pool stopped it: a job still waiting for a child is tried again
            # at the next beat.
            if (
                record.state == states.REVOKED
                and record.terminate
                and mid not in self._terminated
                and self._pool.terminate(mid)
            ):
                self._terminated.add(mid)
                log.warning("job %s revoked with terminate: stopping it", mid)

    async def _maintenance(self) -> None:
        interval = self.app.settings.result_cleanup_interval_s
        while True:
            await asyncio.sleep(interval)  # a period, not a synchronisation
            try:
                removed = await self.app.results.cleanup()
                if removed:
                    log.info("removed %d expired results", removed)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("result cleanup failed")

    async def _shutdown(self, fetcher: asyncio.Task[None]) -> int:
        assert self._outbox
        assert self._pool
        assert self._queue
        assert self._idle
        # Unstarted messages go back at once, before waiting for the running ones.
        self._hand_back_queued()
        await self._flush_logged()
        await asyncio.gather(fetcher, return_exceptions=True)
        self._hand_back_queued()
        await self._flush_logged()
        if self._running and not self._cold:
            idle = asyncio.ensure_future(self._idle.wait())
            cold = asyncio.ensure_future(self._wait_cold())
            await asyncio.wait(
                {idle, cold}, timeout=self.grace_s, return_when=asyncio.FIRST_COMPLETED
            )
            idle.cancel()
            cold.cancel()
            if self._running:
                log.warning(
                    "%d job(s) still running: handing their messages back", len(self._running)
                )
                self._cold = True
        code = EXIT_COLD if self._running else EXIT_OK
        for runner in self._runners:
            runner.cancel()
        await asyncio.gather(*self._runners, return_exceptions=True)
        await self._pool.stop(graceful=not self._cold, timeout_s=1.0)
        await self._flush_logged()
        self.leftover = self._pool.leftover()
        if self.leftover:
            log.warning(
                "%d job thread(s) never returned (abandoned at a hard time limit, or stopped at "
                "shutdown); their messages are settled or handed back",
                self.leftover,
            )
        return code

    def _hand_back_queued(self) -> None:
        assert self._queue
        while not self._queue.empty():
            delivery, _ = self._queue.get_nowait()
            if self._held.get(delivery.id) is delivery:
                self._release(delivery)

    async def _flush_logged(self) -> None:
        """Flush at shutdown; a failure is logged (leases then expire and redeliver)."""
        assert self._outbox
        try:
            await self._outbox.flush()
        except Exception:
            log.exception("could not write the last results and settlements")

    async def _wait_cold(self) -> None:
        while not self._cold:
            assert self._stop_event is not None
            self._stop_event.clear()
            await self._stop_event.wait()

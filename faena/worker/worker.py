"""The worker: lease messages, run them in a pool, record outcomes, keep leases alive.

One asyncio loop does all the I/O: a fetcher leases batches (as many as free slots plus
prefetch), each message becomes a job that waits for a pool slot, an outbox writes results
and settlements in batches, a heartbeat renews every held lease (and the concurrency slots of
running jobs) and refreshes the worker's registration, and revokes are honoured as
``faena.worker.revokes`` describes. Before a job starts, its task's rate and concurrency limits
are checked (``faena.features.flow``): a job over them goes back to the broker, due later, and
the worker goes on with other messages.

Shutdown: the first SIGTERM/SIGINT stops fetching, hands unstarted messages back at once and
waits up to the grace period for running jobs; a second signal (or the grace period running
out) stops running jobs and hands their messages back. A clean stop exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import os
import signal
import socket
from typing import Any

import msgspec

from faena.app.core import Faena
from faena.contracts.broker import Consumer, Delivery, Settlement, WorkerInfo
from faena.contracts.pool import Job, Pool
from faena.features.flow import FlowGate
from faena.features.intake import Admitted, Refused, admit
from faena.features.lifecycle import Decision, base_record, decide, expired, failed
from faena.foundation.exceptions import BrokerGone, ConfigurationError, RecordRefused
from faena.foundation.util import redacted, worker_identity
from faena.model import states
from faena.model.limits import KeyFunctionFailed
from faena.model.message import Message
from faena.model.outcome import FINAL_FENCE, ErrorInfo, JobRecord, Outcome
from faena.model.task import WORKER_LOOPS
from faena.worker.canvas import after_ending, after_job
from faena.worker.endings import Endings, Key, key_of
from faena.worker.logs import current_job
from faena.worker.options import WorkerOptions, default_queues
from faena.worker.outage import Outage
from faena.worker.outbox import Outbox, log_refused
from faena.worker.pools import POOL_NAMES, make_pool
from faena.worker.revokes import Revokes

log = logging.getLogger("faena.worker")

__all__ = ["EXIT_COLD", "EXIT_CONFIG", "EXIT_OK", "Worker", "WorkerOptions", "default_queues"]

EXIT_OK = 0
EXIT_GONE = 1
"""The broker went away for good (see :class:`~faena.foundation.exceptions.BrokerGone`)."""
EXIT_CONFIG = 2
EXIT_COLD = 3


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
        if (
            isinstance(self.grace_s, bool)
            or not isinstance(self.grace_s, int | float)
            or not 0 <= self.grace_s < math.inf  # (False for nan too)
        ):
            raise ConfigurationError(
                f"the shutdown grace period is a number of seconds >= 0, got {self.grace_s!r}"
            )
        self._running: dict[Key, asyncio.Task[None]] = {}
        # The running jobs' deliveries and (once decoded) messages, by key.
        self._deliveries: dict[Key, Delivery] = {}
        self._messages: dict[Key, Message] = {}
        self._runners: list[asyncio.Task[None]] = []
        self._queue: asyncio.Queue[tuple[Delivery, bool]] | None = None
        self._idle: asyncio.Event | None = None
        self._started_records: dict[Key, JobRecord] = {}
        # Running jobs whose end is handed over (to the outbox): a stop that cancels their runner
        # while it still waits (to free a concurrency or unique slot) must not hand them back.
        self._decided: set[Key] = set()
        self._stopping = False
        self._cold = False
        self._gone = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._consumer: Consumer | None = None
        self._outbox: Outbox | None = None
        self._ends = Endings(self.id, app)
        self._revokes = Revokes(lambda: app.results, self._ends, self._running.keys, self.stopping)
        self._pool: Pool | None = None
        self._started_at = app.settings.clock.time()
        self._function_modules = app.function_modules
        self._flow = FlowGate(
            lambda: app.coordination, app.settings.lease_s, app.settings.concurrency_retry_s
        )

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
        self._stop_event.set()
        self._ends.room.set()

    async def _warn_if_taken(self) -> None:
        """Warn when a live worker already has this id: both would run jobs, but `faena
        status` would show one of them, and none once either stops."""
        me = self._info()
        for other in await self.app.broker.workers():
            if other.id == self.id and (other.hostname, other.pid) != (me.hostname, me.pid):
                log.warning(
                    "worker id %s is already taken by a live worker (%s, pid %d): give each "
                    "worker an id of its own (--worker-id), or `faena status` shows them as one",
                    self.id,
                    other.hostname,
                    other.pid,
                )

    def _install_signals(self) -> None:
        assert self._loop is not None
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._loop.add_signal_handler(sig, self._begin_stop, False)
            except (NotImplementedError, RuntimeError, ValueError):
                return  # not the main thread (tests run workers in threads)
        _forget_signals_in_forked_children()

    # -- main ---------------------------------------------------------------------------------
    async def run(self) -> int:
        """Run until stopped; returns the exit code (0 for a clean stop)."""
        self._loop = asyncio.get_running_loop()
        WORKER_LOOPS.add(self._loop)
        self._stop_event = asyncio.Event()
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
        try:
            self._consumer = await app.broker.open_consumer(
                self.queues, self.id, records=app.results
            )
            self._outbox = self._ends.attach(self._consumer)
            await self._warn_if_taken()
            await app.broker.register_worker(self._info())
            for warning in await app.broker.warnings():
                log.warning("%s", warning)
        except BaseException:
            # A worker that cannot start leaves nothing running (an embedded worker's process
            # goes on): the pool's threads or children stop, the consumer closes.
            await self._pool.stop(graceful=False, timeout_s=1.0)
            if self._consumer is not None:
                await self._consumer.close()
            raise
        log.info(
            "worker %s ready: app %s, queues %s, pool %s x%d, prefetch %d, broker %s",
            self.id,
            app.name,
            ",".join(self.queues),
            self.options.pool,
            self.concurrency,
            self.prefetch,
            redacted(app.broker_url),
        )
        if self._stopping:
            # A signal came during start-up (it logged the graceful shutdown then): stop now,
            # without counting it as a second signal.
            assert self._stop_event is not None
            self._stop_event.set()
            self._ends.room.set()
        background = [
            asyncio.create_task(c)
            for c in (
                self._outbox.run(),
                self._heartbeat(),
                self._maintenance(),
                self._revokes.watch(app.settings.revoke_check_s, self._pool),
            )
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
        assert self._queue
        outage = Outage("fetching messages")
        while not self.stopping():
            try:
                await self._fetch_once()
            except asyncio.CancelledError:
                raise
            except BrokerGone as exc:
                # Only a restart helps: stop (running jobs finish), so a supervisor restarts it.
                log.error("%s; the worker stops, exiting %d", exc, EXIT_GONE)
                self._gone = True
                self._begin_stop(False)
                return
            except Exception as exc:
                await outage.pause(exc, self._stop_event)
            else:
                outage.recovered()

    async def _fetch_once(self) -> None:
        assert self._consumer
        assert self._queue
        # (a message whose settlement the broker refused waits apart, taking no room: its
        # queue is set aside for claims meanwhile, so their number cannot grow)
        set_aside = self._outbox.set_aside() if self._outbox is not None else 0
        waiting = len(self._ends.held) + len(self._ends.early_acked) - set_aside
        room = self.concurrency + self.prefetch - waiting
        if room <= 0:
            self._ends.room.clear()
            await self._ends.room.wait()
            return
        # Never cancelled mid-claim (a cancelled claim could lease messages nobody holds):
        # shutdown waits for this call, which returns within its timeout.
        batch = await self._consumer.receive(room, 0.2 if self.options.burst else 0.5)
        for delivery in batch:
            self._ends.hold(delivery)
        if not batch:
            if self.options.burst and not self._ends.held and not self._running:
                log.info("queues are empty: burst worker stopping")
                self._begin_stop(False)
            return
        revoked = await self._revokes.in_batch(batch) if not self.stopping() else set()
        for delivery in batch:
            if not self._ends.waiting(delivery):
                continue  # revoked while the batch was looked up: settled already
            if self.stopping():
                self._ends.release(delivery)
            else:
                self._queue.put_nowait((delivery, delivery.id in revoked))

    # -- one job ------------------------------------------------------------------------------
    async def _runner(self) -> None:
        assert self._queue
        assert self._idle
        me = asyncio.current_task()
        assert me is not None
        while True:
            delivery, revoked = await self._queue.get()
            if not self._ends.waiting(delivery):
                # Settled while it waited (revoked: see faena.worker.revokes), or its lease
                # was lost and someone else has it now.
                continue
            if self._stopping:  # shutdown hands queued messages back; this one slipped through
                self._ends.release(delivery)
                continue
            key = key_of(delivery)
            self._running[key] = me
            self._deliveries[key] = delivery
            self._idle.clear()
            try:
                await self._handle(delivery, revoked)
            except asyncio.CancelledError:
                if key not in self._decided:
                    self._ends.release(
                        delivery, self._started_records.get(key), message=self._messages.get(key)
                    )
                raise
            except Exception:  # a fault of ours or of a backend: the runner must live on
                if key in self._decided:
                    log.exception("job %s ended, but freeing its slots failed", delivery.id)
                else:
                    log.exception(
                        "job %s could not be carried through; handing it back", delivery.id
                    )
                    # Counted, so a message that always breaks the worker ends in the DLQ.
                    self._ends.release(
                        delivery, self._started_records.get(key), reason="worker_error"
                    )
            finally:
                self._decided.discard(key)
                self._ends.early_acked.discard(key)
                self._running.pop(key, None)
                self._deliveries.pop(key, None)
                self._messages.pop(key, None)
                self._started_records.pop(key, None)
                if not self._running:
                    self._idle.set()
                self._ends.room.set()

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
            self._ends.refuse(delivery, admitted)
            return
        message = admitted.message
        self._messages[key_of(delivery)] = message
        if revoked:
            log.info("job %s was revoked before it started; skipped", delivery.id)
            self._ends.settle(Settlement(delivery=delivery, action="ack"))
            self._ends.emit(states.REVOKED, admitted)
            return
        if admitted.task.defaults.acks_late and _succeeded_before(delivery, message):
            # (before its expiry and its limits: it ran, only its acknowledgement was lost)
            await self._succeeded_again(delivery, admitted)
            return
        if message.expires is not None and settings.clock.time() >= message.expires:
            log.info("job %s expired before it could run; recorded REVOKED", delivery.id)
            info = self._ends.run_info(delivery, None, message)
            error = ErrorInfo(type="faena.TaskRevoked", message="expired before it could run")
            decision = expired(message, info, admitted.task.defaults)
            self._end_unrun(delivery, admitted, decision, error)
            return
        if not await self._admitted_by_limits(delivery, admitted):
            return
        try:
            await self._execute(delivery, admitted)
        finally:
            await self._flow.leave(_run_of(delivery))

    async def _admitted_by_limits(self, delivery: Delivery, job: Admitted) -> bool:
        """Whether the task's rate and concurrency limits let the job start now; if not, its
        message goes back to the broker, due when a place should free up (not an attempt)."""
        options = job.task.defaults
        if options.rate_limit is None and options.concurrency_limit is None:
            return True
        try:
            wait = await self._flow.enter(
                _run_of(delivery), job.task.name, options, job.args, job.kwargs
            )
        except KeyFunctionFailed as exc:
            # The task's own key function raised for these arguments: it always will.
            await self._fail_unplaced(delivery, job, exc)
            return False
        except Exception:  # the store did not answer: try later, never run over the limit
            wait = self.app.settings.concurrency_retry_s
            log.exception("could not check the limits of job %s; back in %gs", delivery.id, wait)
        if wait <= 0:
            return True
        log.debug("job %s (%s) is over its limits: back in %.3fs", delivery.id, job.task.name, wait)
        due = self.app.settings.clock.time() + wait
        # The same attempt, later: the deliveries counted so far stay counted.
        self._ends.settle(Settlement(delivery=delivery, action="release", due=due))
        return False

    def _end_unrun(
        self, delivery: Delivery, job: Admitted, decision: Decision, error: ErrorInfo
    ) -> None:
        """Carry out the end of a job that never ran (expired, unplaceable under its limits):
        a workflow it belongs to fails by the usual rules."""
        if job.message.flow is not None:
            assert self._outbox
            decision = after_ending(self.app, self._outbox, delivery, job.message, error, decision)
        self._ends.apply(delivery, decision, job)

    async def _fail_unplaced(
        self, delivery: Delivery, job: Admitted, exc: KeyFunctionFailed
    ) -> None:
        """Fail a job whose limit key cannot be computed: recorded ``FAILURE`` with what the
        key function raised, dead-lettered with reason ``limit_key_failed``; never run."""
        message = job.message
        log.error("job %s (%s) cannot run: %s", message.id, job.task.name, exc)
        error = ErrorInfo.from_exception(exc.error)
        info = self._ends.run_info(delivery, None, message)
        decision = failed(job.task.defaults, message, info, error, reason="limit_key_failed")
        self._end_unrun(delivery, job, decision, error)
        self._decided.add(key_of(delivery))
        await self._flow.finished(message, job.task.defaults, job.args, job.kwargs)

    async def _execute(self, delivery: Delivery, job: Admitted) -> None:
        assert self._pool
        assert self._outbox
        task, message = job.task, job.message
        started = self.app.settings.clock.time()
        info = self._ends.run_info(delivery, started, message)
        record: JobRecord | None = None
        if not task.defaults.ignore_result:
            record = base_record(message, info, states.STARTED, task.defaults)
            self._started_records[key_of(delivery)] = record
            if task.defaults.acks_late:
                self._outbox.record(record)
        self._ends.emit(states.STARTED, job)
        if not task.defaults.acks_late and not await self._early_ack(delivery, record):
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
                    progress=self._progress_sink(key_of(delivery)),
                )
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a pool fault must not strand the message
            log.exception("the pool could not run job %s", message.id)
            outcome = Outcome(status="failure", error=ErrorInfo.from_exception(exc))
        self.processed += 1
        info = self._ends.run_info(delivery, started, message)
        if self._revokes.was_terminated(message.id):
            log.info("job %s was terminated by a revoke", message.id)
            self._ends.settle(Settlement(delivery=delivery, action="ack"))
            self._decided.add(key_of(delivery))
            self._ends.emit(states.REVOKED, job)
            return
        try:
            decision = decide(task.defaults, message, outcome, info)
        except Exception as exc:  # a fault of the decision: end the job, never run it again
            log.exception("job %s ran, but deciding what follows failed", message.id)
            decision = failed(task.defaults, message, info, ErrorInfo.from_exception(exc))
        if message.flow is not None:
            decision = after_job(self.app, self._outbox, delivery, message, outcome, decision)
        if not task.defaults.acks_late:
            await self._ends.after_early_ack(delivery, decision, job)
            self._decided.add(key_of(delivery))
            if decision.action != "retry":  # ended for good: nothing holds its message
                await self._flow.finished(message, task.defaults, job.args, job.kwargs)
            return
        _log_outcome(message, task.name, outcome, decision, info.now)
        self._ends.apply(delivery, decision, job)
        self._decided.add(key_of(delivery))
        if decision.action in ("ack", "dead"):
            await self._flow.finished(message, task.defaults, job.args, job.kwargs)

    async def _succeeded_again(self, delivery: Delivery, job: Admitted) -> None:
        """A delivery of a job whose earlier run of the same send succeeded: that worker died
        after the result and before the acknowledgement. It is not run again; what follows it
        is carried through (a second run sends only what was not sent) and it is acknowledged,
        its record left as that run wrote it."""
        assert self._outbox
        task, message = job.task, job.message
        prior = delivery.record
        assert isinstance(prior, JobRecord)
        log.info(
            "job %s (%s) already succeeded (delivery %d; its acknowledgement was lost): "
            "not run again",
            message.id,
            task.name,
            delivery.deliveries,
        )
        outcome = Outcome(status="success", value=prior.value)
        info = self._ends.run_info(delivery, self.app.settings.clock.time(), message)
        decision = dataclasses.replace(decide(task.defaults, message, outcome, info), record=None)
        if message.flow is not None:
            decision = after_job(self.app, self._outbox, delivery, message, outcome, decision)
        self._ends.apply(delivery, decision, job)
        self._decided.add(key_of(delivery))
        await self._flow.finished(message, task.defaults, job.args, job.kwargs)

    async def _early_ack(self, delivery: Delivery, record: JobRecord | None) -> bool:
        """acks_late=False: the STARTED record, then the acknowledgement, before the run.
        ``False`` if the job is not to run here; its end is then handed over."""
        if record is not None and not await self._started_first(delivery, record):
            return False
        try:
            acked = await self._ends.ack_first(delivery, record)
        except asyncio.CancelledError:
            self._decided.add(key_of(delivery))  # ack_first handed it back itself
            raise
        if not acked:
            self._decided.add(key_of(delivery))
        return acked

    async def _started_first(self, delivery: Delivery, record: JobRecord) -> bool:
        """acks_late=False: write the job's STARTED record before its message is gone, so a
        worker that dies afterwards leaves it reading STARTED, not unknown. A store that
        refuses this record for good (another program's value under its key) costs the record
        only; one that fails otherwise costs the start: the message goes back, uncounted, to
        run later."""
        try:
            await self.app.results.store_many([record])
        except RecordRefused as refusal:
            log_refused(record, refusal)
        except Exception as exc:
            log.warning(
                "job %s: its STARTED record could not be written (%s); not running it now, "
                "handing it back",
                delivery.id,
                exc,
            )
            self._ends.release(delivery)
            self._decided.add(key_of(delivery))
            return False
        return True

    def _progress_sink(self, job_id: Key) -> Any:
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
            alive_s=self.app.settings.lease_s,
        )

    async def _heartbeat(self) -> None:
        assert self._consumer
        assert self._pool
        interval = self.app.settings.heartbeat_interval_s
        outage = Outage("the heartbeat")
        while True:
            await asyncio.sleep(interval)  # a period, not a synchronisation
            # Each part on its own: one that fails (a broker refusing one queue's renewal)
            # must not keep the others (concurrency slots, the registration) from going on.
            failed: Exception | None = None
            for part in (self._renew_leases, self._flow.renew, self._register):
                try:
                    await part()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    failed = failed or exc
            if failed is not None:
                outage.failed(failed)  # the next beat is the retry
            else:
                outage.recovered()

    async def _renew_leases(self) -> None:
        assert self._consumer
        failed: Exception | None = None
        for held in _renewal_groups(list(self._ends.held.values())):
            try:  # a group the broker refuses must not keep the next ones from renewing
                lost = await self._consumer.extend(held, self.app.settings.lease_s)
            except Exception as exc:
                failed = failed or exc
                continue
            for delivery in self._ends.lost(held, lost):
                log.warning("lease on %s was lost; its outcome will not be recorded", delivery.id)
        if failed is not None:
            raise failed

    async def _register(self) -> None:
        await self.app.broker.register_worker(self._info())

    async def _maintenance(self) -> None:
        interval = self.app.settings.result_cleanup_interval_s
        while True:
            await asyncio.sleep(interval)  # a period, not a synchronisation
            try:
                removed = await self.app.results.cleanup()
                if removed:
                    log.info("removed %d expired results", removed)
                await self._flow.cleanup()
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
            if unfinished := self._running.keys() - self._decided:
                log.warning("%d job(s) still running: handing their messages back", len(unfinished))
                self._cold = True
        # (a job whose end is handed over may still wait to free its slots: it is not stopped)
        code = EXIT_COLD if self._running.keys() - self._decided else EXIT_OK
        if self._gone and code == EXIT_OK:
            code = EXIT_GONE
        for runner in self._runners:
            runner.cancel()
        stuck: set[asyncio.Task[None]] = set()
        if self._runners:
            _, stuck = await asyncio.wait(self._runners, timeout=_RUNNERS_STOP_S)
        self._hand_back_stuck(stuck)
        await self._pool.stop(graceful=not self._cold, timeout_s=1.0)
        await self._flush_logged()
        self.leftover = self._pool.leftover() + len(stuck)
        if self.leftover:
            log.warning(
                "%d job(s) never returned (a thread abandoned at a hard time limit or stopped "
                "at shutdown, or an async def task that ignores cancellation); their messages "
                "are settled or handed back",
                self.leftover,
            )
        return code

    def _hand_back_stuck(self, stuck: set[asyncio.Task[None]]) -> None:
        """Hand back the messages of jobs whose runner did not end when cancelled (an
        ``async def`` task that swallows the cancellation): the job may go on, but the worker
        is stopping, and ``faena worker`` then leaves without waiting for it."""
        for key, runner in list(self._running.items()):
            if runner in stuck and key not in self._decided:
                delivery = self._deliveries.get(key)
                if delivery is not None:
                    log.warning("job %s ignores cancellation: handing its message back", key[1])
                    self._ends.release(
                        delivery, self._started_records.get(key), message=self._messages.get(key)
                    )
                    self._decided.add(key)

    def _hand_back_queued(self) -> None:
        assert self._queue
        while not self._queue.empty():
            delivery, _ = self._queue.get_nowait()
            if self._ends.waiting(delivery):
                self._ends.release(delivery)

    async def _flush_logged(self) -> None:
        """Flush at shutdown; a failure is logged (leases then expire and redeliver)."""
        assert self._outbox
        try:
            await self._outbox.flush(set_aside_too=True)
        except Exception:
            log.exception("could not write the last results and settlements")
        else:
            if refused := self._outbox.set_aside():
                log.warning(
                    "%d settlement(s) still refused by the broker are not written; their "
                    "messages are delivered again when their leases run out",
                    refused,
                )

    async def _wait_cold(self) -> None:
        while not self._cold:
            assert self._stop_event is not None
            self._stop_event.clear()
            await self._stop_event.wait()


def _renewal_groups(held: list[Delivery]) -> list[list[Delivery]]:
    """The held deliveries in as few lease renewals as tell every lost one apart: a renewal
    answers with message ids, so an id held from two queues is renewed once per queue."""
    if not held:
        return []
    if len({d.id for d in held}) == len(held):
        return [held]
    by_queue: dict[str, list[Delivery]] = {}
    for d in held:
        by_queue.setdefault(d.queue, []).append(d)
    return list(by_queue.values())


def _run_of(delivery: Delivery) -> str:
    """Names one run in the limits' slots: the same job id may run twice at once (a lost
    lease, or the id sent to two queues), and each run holds and frees its own slot."""
    return f"{delivery.id}@{delivery.queue}#{delivery.fence}"


_RUNNERS_STOP_S = 2.0
"""How long a stopping worker waits for its cancelled runners: a job's ``async def`` code may
clean up on ``CancelledError``, but one that swallows it is not waited for."""

_FORK_HOOK: list[bool] = []
_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def _forget_signals_in_forked_children() -> None:
    """Have a child a task forks (``multiprocessing`` with ``fork``, ``os.fork``) drop the
    worker's signal set-up: the event loop's handlers write the signal's number to the loop's
    wake-up pipe, which the child shares, so a ``terminate()`` of the child would reach the
    worker as a SIGTERM of its own and stop it, while the child ignored it. The forking thread
    holds SIGTERM and SIGINT back across the fork, so one sent to the child before its reset
    waits for it. Once per process."""
    if not _FORK_HOOK:
        _FORK_HOOK.append(True)
        os.register_at_fork(
            before=_hold_stop_signals,
            after_in_parent=_release_stop_signals,
            after_in_child=_default_signals,
        )


def _hold_stop_signals() -> None:
    signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)


def _release_stop_signals() -> None:
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)


def _default_signals() -> None:
    with contextlib.suppress(ValueError):  # (only the main thread may; the forking one is)
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    _release_stop_signals()


def _succeeded_before(delivery: Delivery, message: Message) -> bool:
    """Whether the record the worker read for ``delivery`` (with its claim, or in its revoke
    check) is a success of an earlier run of this very send: same send time in its fence
    (see :func:`~faena.features.lifecycle.record_fence`), not a revoke's."""
    prior = delivery.record
    return (
        isinstance(prior, JobRecord)
        and prior.state == states.SUCCESS
        and message.sent_at is not None
        and delivery.deliveries > 1
        and 0 < prior.fence < FINAL_FENCE
        and prior.fence >> 16 == round(message.sent_at * 1000)
        and prior.serializer == message.serializer
    )


def _log_outcome(
    message: Message, name: str, outcome: Outcome, decision: Decision, now: float
) -> None:
    """One log line for how a job ended."""
    if outcome.status == "success":
        if log.isEnabledFor(logging.INFO):
            log.info("job %s (%s) succeeded in %.3fs", message.id, name, outcome.runtime_s)
    elif outcome.status == "failure" and outcome.error is not None:
        log.error(
            "job %s (%s) failed: %s: %s",
            message.id,
            name,
            outcome.error.type,
            outcome.error.message,
        )
    elif decision.action == "retry":
        delay = max(0.0, (decision.due or now) - now)
        log.info(
            "job %s (%s) will retry in %.1fs (attempt %d)",
            message.id,
            name,
            delay,
            message.retries + 2,
        )
    elif decision.action == "release":
        log.error(
            "job %s (%s): the process running it died: %s",
            message.id,
            name,
            decision.detail,
        )

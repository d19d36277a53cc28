"""How a worker ends its leases: each job's record and its message's settlement.

The worker hands every ending here — done, retried, dead-lettered, handed back, acknowledged
before running (``acks_late=False``) — and this writes it through the outbox exactly once per
delivery, keeps the set of held deliveries, and wakes the fetcher when room frees up.
"""

from __future__ import annotations

import asyncio
import logging

import msgspec

from faena.app.core import Faena
from faena.contracts.broker import Consumer, Delivery, Outgoing, Settlement
from faena.contracts.events import JobEvent
from faena.features.intake import Admitted, Refused
from faena.features.lifecycle import Decision, RunInfo, failed, record_fence
from faena.foundation.exceptions import BrokerError
from faena.model import states
from faena.model.message import Message, encode_message
from faena.model.outcome import ErrorInfo, JobRecord
from faena.worker.canvas import after_ending
from faena.worker.outbox import Outbox

log = logging.getLogger("faena.worker")

Key = tuple[str, str, int]
"""A delivery: queue, message id and fence. A message is one id in one queue: the same id sent
to two queues is two messages, and after a lost lease the same message may be held twice."""


def key_of(delivery: Delivery) -> Key:
    return (delivery.queue, delivery.id, delivery.fence)


_RETRY_SEND_FIRST_S = 0.1
_RETRY_SEND_LONGEST_S = 5.0
"""Back-off of an early-acked job's retry that the broker did not take."""


class Endings:
    """The endings of one worker's deliveries. ``attach`` it to a consumer before use."""

    def __init__(self, worker_id: str, app: Faena) -> None:
        self.worker_id = worker_id
        self.app = app
        self.held: dict[tuple[str, str], Delivery] = {}
        """Deliveries leased and not yet settled, by queue and id: renewed by the heartbeat."""
        # Keyed by delivery (see Key): after a lost lease the same message may be held twice.
        self.settling: set[Key] = set()
        self.early_acked: set[Key] = set()  # acks_late=False jobs: their message is gone
        self.room = asyncio.Event()
        """Set whenever a held delivery is settled: the fetcher may lease more."""
        self.consumer: Consumer | None = None
        self.outbox: Outbox | None = None

    def attach(self, consumer: Consumer) -> Outbox:
        """Settle through ``consumer``; returns the outbox the worker runs."""
        self.consumer = consumer
        self.outbox = Outbox(
            self.app.results, consumer, self.on_settled, on_set_aside=self.on_set_aside
        )
        return self.outbox

    async def ack_first(self, delivery: Delivery, started: JobRecord | None) -> bool:
        """acks_late=False: delete the message before the job runs (at most once). ``False``
        if the lease was already lost (someone else may run it), or if the broker did not
        answer: this worker must not run the job then, as the message may be gone."""
        assert self.consumer
        settlement = Settlement(delivery=delivery, action="ack")
        try:
            ok = (await self.consumer.settle([settlement]))[0]
        except asyncio.CancelledError as exc:
            self._ack_unknown(delivery, started, exc)
            raise
        except Exception as exc:
            self._ack_unknown(delivery, started, exc)
            return False
        self.on_settled(settlement, ok)
        if ok:
            self.early_acked.add(key_of(delivery))
        else:
            log.warning("job %s: lease lost before it started; not running it here", delivery.id)
        return ok

    def _ack_unknown(
        self, delivery: Delivery, started: JobRecord | None, exc: BaseException
    ) -> None:
        """The acknowledgement before the run got no answer: it may have deleted the message
        or not. The job is not run here (at most once); its record says why, and the message
        is handed back, uncounted: if the acknowledgement did not apply, it runs again and its
        newer records replace this one; if it did, the hand-back is refused and this stands."""
        cause = "the worker was stopped" if isinstance(exc, asyncio.CancelledError) else str(exc)
        log.warning(
            "job %s: its acknowledgement before the run got no answer (%s); not running it "
            "here (acks_late=False runs at most once), and handing it back in case the "
            "acknowledgement did not apply",
            delivery.id,
            cause,
        )
        error = ErrorInfo(
            type="faena.AcknowledgementUnknown",
            message=f"the acknowledgement before the run got no answer ({cause}); "
            "acks_late=False jobs run at most once, so it was not run; if the "
            "acknowledgement did not apply, the message runs again",
        )
        record = None if started is None else self._failed(started, "ack_unknown", error)
        self.settle(Settlement(delivery=delivery, action="release"), record)

    def _failed(self, started: JobRecord, reason: str, error: ErrorInfo) -> JobRecord:
        """The ``STARTED`` record of an early-acked job that ends here, for good."""
        now = self.app.settings.clock.time()
        return msgspec.structs.replace(
            started,
            state=states.FAILURE,
            finished_at=now,
            updated_at=now,
            reason=reason,
            error=error,
        )

    async def after_early_ack(self, delivery: Delivery, decision: Decision, job: Admitted) -> None:
        """Carry out a decision for a message acknowledged before its job ran (acks_late=False):
        the record is written; a retry is sent as a new message; a failure or a loss is final
        and leaves nothing in the dead-letter queue."""
        assert self.outbox
        record = decision.record
        if decision.action == "release":  # lost: nothing will run it again
            error = ErrorInfo(type="faena.WorkerLost", message=decision.detail or "process died")
            info = self.run_info(delivery, None, job.message)
            lost = failed(job.task.defaults, job.message, info, error, reason="worker_lost")
            lost = after_ending(self.app, self.outbox, delivery, job.message, error, lost)
            record = lost.record
        if record is not None:
            self.outbox.record(record)
        if decision.action == "retry" and decision.next_message is not None:
            # A new send (its send time, set by the decision, ranks its records above this
            # one's); the RETRY record is written before the next attempt can start.
            await self.outbox.flush()
            nxt = decision.next_message
            await self._send_retry(
                Outgoing(
                    id=nxt.id,
                    queue=nxt.queue,
                    body=encode_message(nxt),
                    priority=nxt.priority,
                    due=decision.due,
                )
            )
        elif decision.action in ("dead", "release"):
            log.warning(
                "job %s (acks_late=False) ended %s; its message is not kept",
                delivery.id,
                decision.reason,
            )
        self.emit(record.state if record else states.SUCCESS, job)

    async def _send_retry(self, outgoing: Outgoing) -> None:
        """Send the next attempt of an early-acked job: its message exists nowhere else, so a
        broker error is tried again with back-off (the same id replaces a copy that did
        arrive), until it is sent or the worker is stopped."""
        pause = _RETRY_SEND_FIRST_S
        while True:
            try:
                await self.app.broker.aenqueue([outgoing])
                return
            except BrokerError as exc:
                log.warning(
                    "job %s: could not send its retry (%s); trying again in %.1fs",
                    outgoing.id,
                    exc,
                    pause,
                )
            await asyncio.sleep(pause)  # a back-off, not a synchronisation
            pause = min(pause * 2, _RETRY_SEND_LONGEST_S)

    def apply(self, delivery: Delivery, decision: Decision, job: Admitted | None) -> None:
        body = encode_message(decision.next_message) if decision.next_message else None
        self.settle(
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
            self.emit(state, job)

    def refuse(self, delivery: Delivery, refused: Refused) -> None:
        log.error("message %s dead-lettered: %s: %s", delivery.id, refused.reason, refused.detail)
        error = ErrorInfo(type=f"faena.{refused.reason}", message=refused.detail)
        if refused.message is None:
            # Unreadable: no task, no lineage; still a FAILURE record, so get() ends.
            now = self.app.settings.clock.time()
            record = JobRecord(
                id=delivery.id,
                state=states.FAILURE,
                queue=delivery.queue,
                worker=self.worker_id,
                error=error,
                reason=refused.reason,
                deliveries=delivery.deliveries,
                finished_at=now,
                updated_at=now,
                fence=delivery.fence,
                expires_at=now + self.app.settings.result_ttl,
            )
            self.settle(
                Settlement(
                    delivery=delivery, action="dead", reason=refused.reason, detail=refused.detail
                ),
                record,
            )
            return
        decision = failed(
            None,
            refused.message,
            self.run_info(delivery, None, refused.message),
            error,
            reason=refused.reason,
        )
        message = refused.message
        if message.flow is not None and self.outbox is not None:
            decision = after_ending(self.app, self.outbox, delivery, message, error, decision)
        self.emit(states.FAILURE, refused.message)
        self.apply(delivery, decision, None)

    def waiting(self, delivery: Delivery) -> bool:
        """Whether ``delivery`` is still held and nothing has settled it: a runner may take it."""
        return self.held.get((delivery.queue, delivery.id)) is delivery and (
            key_of(delivery) not in self.settling
        )

    def hold(self, delivery: Delivery) -> None:
        """Hold a fresh delivery (renewed, settled from now on); a newer lease of the same
        message replaces an older one, whose lease was lost."""
        self.held[(delivery.queue, delivery.id)] = delivery

    def lost(self, renewed: list[Delivery], lost_ids: set[str]) -> list[Delivery]:
        """Stop holding the deliveries of ``renewed`` whose lease renewal came back lost, and
        return them. A delivery the fetcher leased again meanwhile (same id, a newer fence)
        stays held: only the one that was sent for renewal is let go. So does one whose
        settlement is on its way: the renewal may have reached the broker after it, and its
        own reply says whether it applied."""
        dropped = []
        for delivery in renewed:
            if (
                delivery.id in lost_ids
                and self.held.get((delivery.queue, delivery.id)) is delivery
                and key_of(delivery) not in self.settling
            ):
                del self.held[(delivery.queue, delivery.id)]
                dropped.append(delivery)
        return dropped

    def settle(self, settlement: Settlement, record: JobRecord | None = None) -> None:
        """Queue the end of a lease; a message is settled once, whatever happens after."""
        assert self.outbox
        key = key_of(settlement.delivery)
        if key in self.settling or key in self.early_acked:
            return
        self.settling.add(key)
        self.outbox.settle(settlement, record)

    def release(
        self,
        delivery: Delivery,
        started: JobRecord | None = None,
        reason: str | None = None,
        message: Message | None = None,
    ) -> None:
        """Hand an unfinished message back, due now, without counting the delivery. A job
        that had started reads ``QUEUED`` again, not ``STARTED`` on a worker that let go.
        (``message``: the job's, when known, for the workflow it may end.)"""
        record = None
        now = self.app.settings.clock.time()
        if key_of(delivery) in self.early_acked:
            # acks_late=False: the message is gone, so the job ends here, for good.
            if started is not None and self.outbox is not None:
                error = ErrorInfo(
                    type="faena.WorkerLost",
                    message="the worker stopped before the job's end was carried out; "
                    "acks_late=False jobs run at most once",
                )
                ended = Decision(action="dead", record=self._failed(started, "interrupted", error))
                if message is not None and message.flow is not None:
                    ended = after_ending(self.app, self.outbox, delivery, message, error, ended)
                assert ended.record is not None
                self.outbox.record(ended.record)
            return
        if started is not None:
            record = msgspec.structs.replace(
                started,
                state=states.QUEUED,
                worker=None,
                updated_at=now,
                reason="handed back at shutdown",
            )
        self.settle(Settlement(delivery=delivery, action="release", reason=reason), record)

    def on_settled(self, settlement: Settlement, ok: bool) -> None:
        d = settlement.delivery
        mid = d.id
        self.settling.discard(key_of(d))
        if self.held.get((d.queue, mid)) is d:
            del self.held[(d.queue, mid)]
        if not ok:
            log.warning(
                "message %s: lease lost before %s; another worker holds it now",
                mid,
                settlement.action,
            )
        assert self.room is not None
        self.room.set()

    def on_set_aside(self) -> None:
        """Settlements the broker refused wait apart: their messages no longer take room."""
        assert self.room is not None
        self.room.set()

    def run_info(
        self, delivery: Delivery, started: float | None, message: Message | None
    ) -> RunInfo:
        now = self.app.settings.clock.time()
        return RunInfo(
            worker=self.worker_id,
            fence=record_fence(message.sent_at if message else None, delivery.fence),
            deliveries=delivery.deliveries,
            started_at=started if started is not None else now,
            now=now,
            result_ttl=self.app.settings.result_ttl,
            max_deliveries=self.app.settings.max_deliveries,
        )

    def emit(self, kind: str, job: Admitted | Message) -> None:
        if not self.app.events:
            return
        m = job.message if isinstance(job, Admitted) else job
        self.app.events.emit(
            JobEvent(
                kind=kind,
                job_id=m.id,
                task=m.task,
                at=self.app.settings.clock.time(),
                worker=self.worker_id,
                parent_id=m.parent_id,
                root_id=m.root_id,
            )
        )

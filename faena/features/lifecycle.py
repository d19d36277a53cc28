"""What happens to a job after each run: the record to store and how to settle its message.

Pure decisions: the worker and eager mode call :func:`decide` with the task, the message,
the outcome and the time, and carry out what it returns. Nothing here does I/O.

Rules:
- success: record ``SUCCESS`` (with ``ignore_result``: none, or one without the value when
  an earlier run of the job left a ``RETRY`` record), ack.
- retry (``self.retry()``, ``raise Retry``, or an exception in ``retry_for``): while retries
  are left, record ``RETRY`` and send the next attempt due after the back-off; with none left
  it is a failure.
- failure: record ``FAILURE`` and dead-letter the message with reason ``failed`` (so it can
  be inspected and re-run with ``faena dlq retry``).
- reject: record ``FAILURE`` and dead-letter with the task's reason.
- lost (the process running it died): record ``RETRY`` with a ``WorkerLost`` error and give
  the message back, counted as a delivery with reason ``worker_lost``; on the last delivery
  allowed (``max_deliveries``), record ``FAILURE`` and dead-letter it with that reason.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from faena.contracts.broker import SEND_FENCE_STEP, SettleAction
from faena.model import states
from faena.model.message import Message
from faena.model.options import TaskOptions
from faena.model.outcome import ErrorInfo, JobRecord, Outcome
from faena.model.retry import may_retry, retry_delay


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    """What to do after a run."""

    action: SettleAction
    record: JobRecord | None
    next_message: Message | None = None
    due: float | None = None
    reason: str | None = None
    detail: str = ""


class RunInfo(msgspec.Struct, frozen=True, kw_only=True):
    """Who ran the job and when, for its record."""

    worker: str | None
    fence: int
    deliveries: int
    started_at: float
    now: float
    result_ttl: float
    max_deliveries: int = 5


def record_fence(sent_at: float | None, delivery_fence: int) -> int:
    """The fence a run writes its record with: the send time (ms) above the broker's delivery
    token, so a later send of the same job id outranks every run of an earlier one, and within
    one send a later delivery outranks an earlier one. Stays below ``FINAL_FENCE``.
    """
    if sent_at is None:
        return delivery_fence
    # The low bits of a delivery fence count the hand-outs of one send (SEND_FENCE_STEP).
    return (round(sent_at * 1000) << 16) | (delivery_fence & (SEND_FENCE_STEP - 1))


def base_record(
    message: Message, info: RunInfo, state: str, options: TaskOptions | None
) -> JobRecord:
    ttl = options.result_ttl if options and options.result_ttl else info.result_ttl
    if message.flow is not None and message.flow.chord is not None:
        # The chord's body reads its members' results when the last one ends: a member's
        # record lives at least as long as the chord's own state (the app's result_ttl).
        ttl = max(ttl, info.result_ttl)
    return JobRecord(
        id=message.id,
        state=state,
        task=message.task,
        queue=message.queue,
        worker=info.worker,
        retries=message.retries,
        deliveries=info.deliveries,
        started_at=info.started_at,
        updated_at=info.now,
        parent_id=message.parent_id,
        root_id=message.root_id,
        fence=info.fence,
        expires_at=info.now + ttl,
        serializer=message.serializer,
    )


def decide(options: TaskOptions, message: Message, outcome: Outcome, info: RunInfo) -> Decision:
    """The decision for one run's outcome. See the module docstring for the rules."""
    if outcome.status == "success":
        record = base_record(message, info, states.SUCCESS, options)
        if options.ignore_result:
            if message.retries == 0 and info.deliveries <= 1:
                return Decision(action="ack", record=None)
            # An earlier run recorded RETRY (a retry, a lost worker): replace it, value-less.
            return Decision(
                action="ack",
                record=msgspec.structs.replace(record, finished_at=info.now, progress=1.0),
            )
        return Decision(
            action="ack",
            record=msgspec.structs.replace(
                record, value=outcome.value, finished_at=info.now, progress=1.0
            ),
        )
    if outcome.status == "lost":
        error = outcome.error or ErrorInfo(type="faena.WorkerLost", message="the process died")
        if info.deliveries >= info.max_deliveries:
            return failed(options, message, info, error, reason="worker_lost")
        record = msgspec.structs.replace(
            base_record(message, info, states.RETRY, options), error=error, next_run_at=info.now
        )
        return Decision(action="release", record=record, reason="worker_lost", detail=error.message)
    if outcome.status == "retry" and may_retry(options, message.retries, outcome.max_retries):
        due = (
            outcome.eta
            if outcome.eta is not None
            else (info.now + retry_delay(options, message.retries, countdown=outcome.countdown))
        )
        # A new attempt is a new send: its send time ranks its records above every record of
        # this one, however often the message has been handed out (record_fence). It never
        # goes back, and moves one millisecond at least, whatever the clocks of the producer
        # and of the workers say; retries less than a millisecond apart carry it ahead of the
        # clock by what they save.
        sent_at = max(info.now, (round(message.sent_at * 1000) + 1) / 1000)
        nxt = msgspec.structs.replace(
            message, retries=message.retries + 1, eta=due, sent_at=sent_at
        )
        record = msgspec.structs.replace(
            base_record(message, info, states.RETRY, options), error=outcome.error, next_run_at=due
        )
        return Decision(action="retry", record=record, next_message=nxt, due=due)
    return failed(options, message, info, outcome.error or _no_retries_left(message), outcome)


def failed(
    options: TaskOptions | None,
    message: Message,
    info: RunInfo,
    error: ErrorInfo,
    outcome: Outcome | None = None,
    reason: str | None = None,
) -> Decision:
    """Record ``FAILURE`` and dead-letter the message."""
    if reason is None:
        reason = (
            outcome.reason
            if outcome and outcome.status == "reject" and outcome.reason
            else "failed"
        )
    record = msgspec.structs.replace(
        base_record(message, info, states.FAILURE, options),
        error=error,
        finished_at=info.now,
        reason=reason,
    )
    return Decision(
        action="dead", record=record, reason=reason, detail=f"{error.type}: {error.message}"
    )


def expired(message: Message, info: RunInfo, options: TaskOptions | None = None) -> Decision:
    """The message's ``expires`` passed before it could run: record ``REVOKED`` (kept for the
    task's ``result_ttl`` when ``options`` are known), ack."""
    record = msgspec.structs.replace(
        base_record(message, info, states.REVOKED, options), reason="expired", finished_at=info.now
    )
    return Decision(action="ack", record=record, reason="expired")


def _no_retries_left(message: Message) -> ErrorInfo:
    return ErrorInfo(
        type="faena.MaxRetriesExceeded",
        message=f"{message.task} was retried {message.retries} time(s) and has no retries left",
    )

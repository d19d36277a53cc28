"""The worker's side of workflows: after a workflow job ends, write its record, then send what
follows it (:mod:`faena.features.followups`), then let the message be acknowledged.

The order is the guarantee. The record is written first, so the member that completes a chord
finds every other member's result; the follow-ups are sent before the acknowledgement, so a
worker that dies in between leaves the message to be delivered again, and the next run sends
whatever is still missing (fixed ids make it recognisable).

The follow-ups of one flush run together, and the chord members among them are counted first,
in one ``aadd_members`` call; each member's rule then reads the answer its own ``add_member``
would have had, and a member with nothing more to do (it did not complete its chord, and has
no callbacks or next jobs) is done without running its rule. A call that fails fails every
follow-up it counted: each runs again as a second run, so a member whose add was made but
whose answer was lost still sends the body.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from faena.app.core import Faena
from faena.app.eager_flow import AppFlowIO
from faena.app.producer import to_outgoing
from faena.contracts.broker import Delivery
from faena.features.followups import after_failure, after_success, counted_only, decode_value
from faena.features.lifecycle import Decision
from faena.foundation.exceptions import RecordRefused
from faena.model import states
from faena.model.flow import chord_key
from faena.model.message import Message
from faena.model.outcome import ErrorInfo, JobRecord, Outcome
from faena.worker.outbox import Outbox, log_refused


class WorkerFlowIO(AppFlowIO):
    """:class:`~faena.features.followups.FlowIO` on the app's stores, run off the event loop
    (sync calls), with reads of many records handed to the loop in one call.

    ``counted`` holds answers of chord adds already made for this follow-up (the batch's one
    :meth:`~faena.contracts.coordination.CoordinationStore.aadd_members`); each is given once,
    to the :meth:`add_member` it stands for.
    """

    def __init__(self, app: Faena, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(app)
        self.loop = loop
        self.counted: dict[tuple[str, str], tuple[bool, int]] = {}

    def add_member(self, key: str, member: str) -> tuple[bool, int]:
        answer = self.counted.pop((key, member), None)
        return answer if answer is not None else super().add_member(key, member)

    def _fetch(self, job_ids: list[str]) -> dict[str, JobRecord]:
        future = asyncio.run_coroutine_threadsafe(self.app.results.fetch_many(job_ids), self.loop)
        return future.result()

    def values(self, job_ids: list[str]) -> dict[str, Any]:
        accept = self.app.settings.accept
        return {
            i: decode_value(r.value, r.serializer, accept)
            for i, r in self._fetch(job_ids).items()
            if r.state == states.SUCCESS
        }

    def recorded(self, job_ids: list[str]) -> set[str]:
        return set(self._fetch(job_ids))

    def publish(self, messages: list[Message]) -> None:
        self.app.broker.enqueue([to_outgoing(self.app.settings, m) for m in messages])

    def store(self, records: list[JobRecord]) -> None:
        for record in records:
            try:
                self.app.results.store(record)
            except RecordRefused as refusal:
                # Another program's value holds this job's key: retrying the follow-up would
                # hold back every settlement behind it for ever (as in the outbox).
                log_refused(record, refusal)


@dataclass(frozen=True, slots=True)
class _Followup:
    """One job's follow-up: its rule, and the chord add it starts with, if any."""

    io: WorkerFlowIO
    rule: Callable[[WorkerFlowIO], None]
    message: Message
    again: bool
    count: tuple[str, str] | None
    """``(chord set, member)`` that the rule's first ``add_member`` adds (a success only)."""

    def counted_only(self) -> bool:
        """Whether the count, made, was all there was to do (see ``counted_only``)."""
        if self.count is None:
            return False
        return counted_only(self.message, self.io.counted[self.count], self.again)


class _Batcher:
    """Runs the follow-ups a flush starts together: their chord adds first, on the event loop
    in one :meth:`~faena.contracts.coordination.CoordinationStore.aadd_members` call, then, in
    one worker thread one after another, the rules of those that have more to do than be
    counted (callbacks, next jobs, the chord body: sync calls to the stores). So a flush of
    chord members that do not complete their chord costs one round trip and no thread hop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.pending: list[tuple[_Followup, asyncio.Future[None]]] = []

    def run(self, followup: _Followup) -> asyncio.Future[None]:
        future: asyncio.Future[None] = self.loop.create_future()
        if not self.pending:
            self.loop.call_soon(self._start)
        self.pending.append((followup, future))
        return future

    def _start(self) -> None:
        batch, self.pending = self.pending, []
        task = self.loop.create_task(self._run(batch))
        _running.add(task)
        task.add_done_callback(_running.discard)

    async def _run(self, batch: list[tuple[_Followup, asyncio.Future[None]]]) -> None:
        followups = [followup for followup, _ in batch]
        try:
            errors: dict[int, Exception | None] = dict(await _count(followups))
            rest = [n for n, f in enumerate(followups) if n not in errors and not f.counted_only()]
            if rest:
                done = await asyncio.to_thread(_call_each, [followups[n] for n in rest])
                errors.update(zip(rest, done, strict=True))
        except BaseException as exc:  # cancelled, or a fault of ours: all failed
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            raise
        for n, (_, future) in enumerate(batch):
            if future.done():
                continue
            error = errors.get(n)
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(error)


async def _count(batch: list[_Followup]) -> dict[int, Exception]:
    """Make the chord adds of ``batch`` in one ``aadd_members`` call per app, in batch order,
    and hand each answer to its follow-up's io; the follow-ups whose add failed, by index.

    A failed call may have made some of its adds, unseen: every follow-up of that call fails
    and runs again as a second run, and on a second run a member that finds its chord's set
    full sends the body even though its add is not the one that filled it (see
    :func:`~faena.features.followups.after_success`).
    """
    by_app: dict[int, list[int]] = {}
    for n, followup in enumerate(batch):
        if followup.count is not None:
            by_app.setdefault(id(followup.io.app), []).append(n)
    failed: dict[int, Exception] = {}
    for indexes in by_app.values():
        io = batch[indexes[0]].io
        items = [c for c in (batch[n].count for n in indexes) if c is not None]
        try:
            answers = await io.app.coordination.aadd_members(items, io.ttl())
        except Exception as exc:
            failed.update((n, exc) for n in indexes)
            continue
        for n, item, answer in zip(indexes, items, answers, strict=True):
            batch[n].io.counted[item] = answer
    return failed


def _call_each(batch: list[_Followup]) -> list[Exception | None]:
    errors: list[Exception | None] = []
    for followup in batch:
        try:
            followup.rule(followup.io)
        except Exception as exc:  # handed back to that follow-up's own step
            errors.append(exc)
        else:
            errors.append(None)
    return errors


_batchers: dict[asyncio.AbstractEventLoop, _Batcher] = {}
_running: set[asyncio.Task[None]] = set()


_batchers_lock = threading.Lock()  # workers of one process may run in threads of their own


def _batcher(loop: asyncio.AbstractEventLoop) -> _Batcher:
    with _batchers_lock:
        batcher = _batchers.get(loop)
        if batcher is None:
            for old in [other for other in _batchers if other.is_closed()]:
                del _batchers[old]
            batcher = _batchers[loop] = _Batcher(loop)
        return batcher


def after_job(
    app: Faena,
    outbox: Outbox,
    delivery: Delivery,
    message: Message,
    outcome: Outcome,
    decision: Decision,
) -> Decision:
    """Queue the workflow of ``message`` after its run; the decision to settle it with.

    Only a success or a final failure has follow-ups (a retry or a lost run waits for the next
    attempt). They run in the outbox's next flush, after the record and before the
    settlement, which the caller queues next (see :mod:`faena.worker.outbox`).
    """
    flow = message.flow
    success = outcome.status == "success" and decision.action == "ack"
    if flow is None or not (success or decision.action == "dead"):
        return decision
    children = flow.children() if success else [j.id for j in flow.link_error]
    decision = _recorded_with(outbox, decision, children)
    record = decision.record
    if success:
        value = decode_value(outcome.value, message.serializer, app.settings.accept)
        rule: Callable[..., None] = after_success
        detail: Any = value
    else:
        error = (record.error if record else None) or outcome.error
        detail = error or ErrorInfo(type="faena.Failed", message=decision.detail or "failed")
        rule = after_failure
    chord = flow.chord if success else None
    count = None if chord is None else (chord_key(chord.group), str(chord.index))
    _follow(app, outbox, delivery, message, rule, detail, count)
    return decision


def after_ending(
    app: Faena,
    outbox: Outbox,
    delivery: Delivery,
    message: Message,
    error: ErrorInfo,
    decision: Decision,
) -> Decision:
    """Queue the failure rules of workflow job ``message``, which ended for good without a run
    that failed: refused (an unknown task, arguments that do not fit), expired before it ran, or
    lost after an acknowledgement before its run. Its chain stops, its chord fails and the error
    callbacks run, as for a failed run. The decision to settle it with."""
    flow = message.flow
    if flow is None:
        return decision
    decision = _recorded_with(outbox, decision, [j.id for j in flow.link_error])
    _follow(app, outbox, delivery, message, after_failure, error, None)
    return decision


def _recorded_with(outbox: Outbox, decision: Decision, children: list[str]) -> Decision:
    """``decision`` with its record naming ``children``, that record queued before the
    follow-ups (which may read it)."""
    if decision.record is None:
        return decision
    record = msgspec.structs.replace(decision.record, children=children)
    outbox.record(record)
    return dataclasses.replace(decision, record=record)


def _follow(
    app: Faena,
    outbox: Outbox,
    delivery: Delivery,
    message: Message,
    rule: Callable[..., None],
    detail: Any,
    count: tuple[str, str] | None,
) -> None:
    """Queue ``rule`` for the outbox's next flush, after the records, before the settlements."""
    runs = [delivery.deliveries > 1]

    async def step() -> None:
        again = runs[-1]
        runs.append(True)  # a follow-up that failed part-way runs again as a second run
        loop = asyncio.get_running_loop()
        followup = _Followup(
            WorkerFlowIO(app, loop),
            lambda io: rule(io, message, detail, again),
            message,
            again,
            count,
        )
        await _batcher(loop).run(followup)

    outbox.follow(step)

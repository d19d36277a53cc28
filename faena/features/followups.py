"""What a workflow job sends when it ends: the rules of chains, chords and callbacks.

Written once against :class:`FlowIO` — the worker runs it on a thread next to its event loop
(:mod:`faena.worker.canvas`), eager mode inline (:mod:`faena.app.eager`) — so both keep the
same rules:

- **Success.** ``link`` callbacks and the next jobs of the chain are sent with the result first
  in their arguments. A chord member adds its index to the chord's set in the coordination
  store; the call that adds the last one (the set's size reaches the header's) sends the body,
  with the member results in member order. Adding is idempotent, so a member run twice (a
  redelivery) cannot fire the body early or twice.
- **Final failure** (after its retries). ``link_error`` callbacks get ``(failed job id,
  {"type", "message"})``. The end of the chain the job was part of, which will never run, is
  recorded ``FAILURE`` with the same error. If the job belongs to a chord, the first failed
  member (a ``set_if_absent``, so once) fails the chord: its body never runs, the body's jobs
  and the chord's result are recorded ``FAILURE`` with a ``faena.ChordError`` naming the
  member, the body's error callbacks run with the member's error, and the failure goes on to
  whatever the body was part of.
- **Again.** A job delivered more than once sends only the follow-ups that have no record yet,
  so a worker that died between its result and its acknowledgement is made good without
  sending twice what already ran.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from faena.foundation.exceptions import MessageTooLarge, SerializationError
from faena.model import states
from faena.model.flow import (
    ChordRef,
    Flow,
    chord_failed_key,
    chord_key,
    job_message,
    member_id,
)
from faena.model.message import Message
from faena.model.outcome import ErrorInfo, JobRecord
from faena.model.serialization import loads_json, loads_pickle

log = logging.getLogger("faena.worker")

_UNSENDABLE = (MessageTooLarge, SerializationError)
"""What a follow-up's send fails with for good (over max_message_size, a value its serializer
cannot carry): trying it again could never succeed."""


class FlowIO(Protocol):
    """The few operations the rules need, on the app's stores and broker (sync: one thread)."""

    def now(self) -> float: ...

    def ttl(self) -> float:
        """How long chord state and the records written here are kept, in seconds."""
        ...

    def add_member(self, key: str, member: str) -> tuple[bool, int]: ...

    def take_once(self, key: str, value: str) -> bool: ...

    def holder(self, key: str) -> str | None:
        """What ``take_once`` stored at ``key``, if it is still there."""
        ...

    def values(self, job_ids: list[str]) -> dict[str, Any]:
        """The decoded results of the ids that have a ``SUCCESS`` record."""
        ...

    def recorded(self, job_ids: list[str]) -> set[str]:
        """Which of ``job_ids`` have a record (in any state)."""
        ...

    def publish(self, messages: list[Message]) -> None: ...

    def store(self, records: list[JobRecord]) -> None: ...


def _send(io: FlowIO, messages: list[Message], again: bool) -> None:
    if again and messages:
        done = io.recorded([m.id for m in messages])
        messages = [m for m in messages if m.id not in done]
    if messages:
        io.publish(messages)


def after_success(io: FlowIO, message: Message, value: Any, again: bool) -> None:
    """Send what follows the successful job ``message``, whose result is ``value``.

    A follow-up that can never be sent — its message over ``max_message_size`` (a chain's next
    step carries the result, a chord's body every member's), or a result its serializer cannot
    carry — ends the workflow there: the failure rules run for ``message`` with that error, so
    the jobs that will never run are recorded ``FAILURE`` and the error callbacks run, instead
    of the send failing again on every try.
    """
    if message.flow is None:
        return
    try:
        _after_success(io, message, value, again)
    except _UNSENDABLE as exc:
        error = ErrorInfo.from_exception(exc)
        after_failure(io, message, error, again)


def _after_success(io: FlowIO, message: Message, value: Any, again: bool) -> None:
    flow = message.flow
    assert flow is not None
    now, root = io.now(), message.root_id
    out = [job_message(j, now, message.id, root, [value]) for j in flow.link + flow.next]
    chord = flow.chord
    if chord is not None:
        added, size = io.add_member(chord_key(chord.group), str(chord.index))
        # A chord that failed (a member failed for good, its failure rules ran) never runs
        # its body, even when that member is run again later and succeeds (`faena dlq retry`).
        if (
            _completes(chord, added, size, again)
            and io.holder(chord_failed_key(chord.group)) is None
        ):
            results = _results(io, chord, value)
            out += [job_message(j, now, message.id, root, [results]) for j in chord.body]
            again = again or not added
    _send(io, out, again)


def _completes(chord: ChordRef, added: bool, size: int, again: bool) -> bool:
    """Whether the member whose add answered ``(added, size)`` sends the body: its add filled
    the set, or, on a second run, the set is full (its first run may have added it and died)."""
    return size >= chord.size and (added or again)


def counted_only(message: Message, counted: tuple[bool, int], again: bool) -> bool:
    """Whether :func:`after_success` of chord member ``message``, once its add has answered
    ``counted``, has nothing more to do: no callbacks or next jobs, and not the body to send.

    A caller that has made the add itself (the worker counts a batch of members at once) can
    then skip the rule.
    """
    flow = message.flow
    if flow is None or flow.chord is None or flow.link or flow.next:
        return False
    return not _completes(flow.chord, *counted, again)


def _results(io: FlowIO, chord: ChordRef, value: Any) -> list[Any]:
    ids = [member_id(chord.group, i) for i in range(chord.size)]
    found = io.values([i for n, i in enumerate(ids) if n != chord.index])
    return [value if n == chord.index else found.get(i) for n, i in enumerate(ids)]


def after_failure(io: FlowIO, message: Message, error: ErrorInfo, again: bool) -> None:
    """Carry out the failure rules for ``message``, which failed for good with ``error``."""
    if message.flow is None:
        return
    records: dict[str, JobRecord] = {}
    out: list[Message] = []
    _fail(io, message.flow, message.id, message.root_id, error, error, records, out, again)
    if records:
        io.store(list(records.values()))
    try:
        _send(io, out, again)
    except _UNSENDABLE as exc:
        # The error callbacks cannot be sent (an error message too long for a message, say):
        # the failure is recorded above; trying again could never succeed, and would hold
        # back everything queued behind it.
        log.error(
            "the error callbacks of job %s (%s) could not be sent and are dropped: %s",
            message.id,
            message.task,
            exc,
        )


def _fail(
    io: FlowIO,
    flow: Flow,
    failed_id: str,
    root: str | None,
    cause: ErrorInfo,
    error: ErrorInfo,
    records: dict[str, JobRecord],
    out: list[Message],
    again: bool,
) -> None:
    """``cause`` is the failed job's own error (for callbacks), ``error`` what to record.

    A second run of the member that failed the chord first carries the chord's failure
    through again (its worker may have died part-way); anything already sent is not resent.
    """
    now = io.now()
    summary = {"type": cause.type, "message": cause.message}
    out += [job_message(j, now, failed_id, root, [failed_id, summary]) for j in flow.link_error]
    if flow.final is not None:
        records[flow.final] = _failure(io, flow.final, error, failed_id, root, "chain stopped")
    chord = flow.chord or flow.member_of
    if chord is None:
        return
    key = chord_failed_key(chord.group)
    if not (io.take_once(key, failed_id) or (again and io.holder(key) == failed_id)):
        return
    chord_error = ErrorInfo(
        type="faena.ChordError",
        message=f"chord member {failed_id} failed: {cause.type}: {cause.message}",
        traceback=cause.traceback,
    )
    for job in chord.body:
        records[job.id] = _failure(io, job.id, chord_error, failed_id, root, "chord failed")
        _fail(io, job.flow or Flow(), failed_id, root, cause, chord_error, records, out, again)
    records[chord.id] = _failure(io, chord.id, chord_error, failed_id, root, "chord failed")


def _failure(
    io: FlowIO, job_id: str, error: ErrorInfo, cause: str, root: str | None, reason: str
) -> JobRecord:
    """The record of a job that will never run because ``cause`` failed."""
    now = io.now()
    return JobRecord(
        id=job_id,
        state=states.FAILURE,
        error=error,
        reason=reason,
        parent_id=cause,
        root_id=root,
        finished_at=now,
        updated_at=now,
        expires_at=now + io.ttl(),
    )


def decode_value(value: bytes | None, serializer: str, accept: tuple[str, ...] | list[str]) -> Any:
    """A stored result as the value the task returned (what the next job is given).

    Raises:
        SerializationError: a pickled result where pickle is not accepted.
    """
    if value is None:
        return None
    if serializer == "pickle":
        if "pickle" not in accept:
            raise SerializationError(
                "a workflow job returned a pickled value, and this app does not accept pickle; "
                "add accept=['json', 'pickle'] if you trust the workers"
            )
        return loads_pickle(value)
    return loads_json(value)

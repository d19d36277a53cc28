"""The workflow a message carries: what to send after its job, decided when the canvas was sent.

A canvas (chain, group, chord, links) is turned into jobs once, by the producer, with every id
fixed up front (:mod:`faena.app.freezing`). Each job's :class:`Flow` then says, with no further
look-up, what its worker sends when the job ends:

- on success: ``link`` callbacks and the ``next`` jobs (the rest of a chain), each given the
  result as its first argument unless it is immutable; and, for the last job of a chord member,
  the chord to count into (:class:`ChordRef`), whose body is sent by whoever counts last.
  ``member_of`` names the chord of an earlier step of a chain that is a chord member: it does
  not count, but its failure fails the chord.
- on a final failure: ``link_error`` callbacks (given the failed job's id and error summary),
  a ``FAILURE`` record for ``final`` (the job that stands for the chain's result, which will
  now never run), and the chord's failure if the job belongs to one.

Ids are fixed, so a follow-up sent twice (a worker died between its result and its
acknowledgement, and the message was delivered again) carries the same id as the first one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

if TYPE_CHECKING:
    from faena.model.message import Message


class Job(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A job of a workflow, ready to send but for its timing and the previous result.

    ``countdown`` and ``expires_in`` are relative to the moment it is sent.
    """

    id: str
    task: str
    queue: str
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    body: bytes | None = None
    serializer: str = "json"
    priority: int = 0
    countdown: float | None = None
    expires_in: float | None = None
    eta_at: float | None = None
    """An absolute due time (an ``eta``), kept as it is whenever the job is sent."""
    expires_at: float | None = None
    """An absolute expiry (a datetime ``expires``), kept as it is whenever the job is sent."""
    headers: dict[str, Any] = {}
    immutable: bool = False
    flow: Flow | None = None


class ChordRef(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Membership of a chord: member ``index`` of ``size`` in the header group ``group``.

    Member ``i``'s result is the record of job :func:`member_id` ``(group, i)``; the body jobs
    are sent, with the list of member results first in their arguments, by the worker whose
    count completes the set. ``id`` is the chord's result: the job that ends the body.
    """

    id: str
    group: str
    size: int
    index: int
    body: list[Job]


class Flow(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What follows one job. See the module docstring."""

    next: list[Job] = []
    chord: ChordRef | None = None
    member_of: ChordRef | None = None
    final: str | None = None
    link: list[Job] = []
    link_error: list[Job] = []

    def children(self) -> list[str]:
        """Ids this job may send on success: the graph's edges out of it."""
        ids = [j.id for j in self.next] + [j.id for j in self.link]
        if self.chord is not None:
            ids += [j.id for j in self.chord.body]
        return ids


def member_id(group: str, index: int) -> str:
    """The id of the job whose result is member ``index`` of group ``group``."""
    return f"{group}-{index}"


def chord_key(group: str) -> str:
    """The coordination set counting the members of the chord over ``group``."""
    return f"faena:chord:{group}"


def chord_failed_key(group: str) -> str:
    """The coordination key taken once by the first failed member of a chord."""
    return f"faena:chord:{group}:failed"


def job_message(
    job: Job, now: float, parent_id: str | None, root_id: str | None, previous: list[Any] | None
) -> Message:
    """The message that sends ``job`` now, from ``parent_id``.

    ``previous`` are the arguments put first (the previous result in a chain, the list of
    member results for a chord body, the failed job's id and error for an error callback),
    unless the job is immutable.
    """
    from faena.model.message import ENVELOPE_VERSION, FLOW_ENVELOPE_VERSION, Message
    from faena.model.serialization import dumps_pickle, loads_pickle, pack

    args, body = job.args, job.body
    if previous is not None and not job.immutable:
        if job.serializer == "pickle" and body is not None:
            given, kwargs = loads_pickle(body)
            body = dumps_pickle(((*previous, *given), kwargs), "the arguments")
        else:
            args = [pack(p, "the previous result") for p in previous] + args
    return Message(
        id=job.id,
        task=job.task,
        queue=job.queue,
        v=ENVELOPE_VERSION if job.flow is None else FLOW_ENVELOPE_VERSION,
        args=args,
        kwargs=job.kwargs,
        body=body,
        serializer=job.serializer,
        priority=job.priority,
        eta=job.eta_at if job.countdown is None else now + job.countdown,
        expires=job.expires_at if job.expires_in is None else now + job.expires_in,
        parent_id=parent_id,
        root_id=root_id or job.id,
        headers=job.headers,
        sent_at=now,
        flow=job.flow,
    )

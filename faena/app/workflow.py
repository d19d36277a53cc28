"""Sending a canvas, and reading a workflow back: group results, revoking, the graph.

:func:`send_canvas` freezes the canvas (:mod:`faena.app.freezing`) and sends its first jobs in
one bulk enqueue (a group of 10,000 is one broker call). What it returns stands for the whole
canvas: a :class:`GroupResult` for a group, else a :class:`WorkflowResult` — the
``AsyncResult`` of the job that ends the canvas, which also knows every job id of it, so
``revoke()`` revokes the parts that have not started.
"""

from __future__ import annotations

import contextlib
from collections.abc import Generator, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import msgspec

from faena.app.freezing import After, Freezer, with_link
from faena.app.producer import eta_of, to_outgoing
from faena.app.result import AsyncResult, wait_deadline
from faena.foundation.clock import SYSTEM_CLOCK
from faena.foundation.exceptions import ConfigurationError, ResultError, TimeoutError
from faena.model import states
from faena.model.flow import Job, job_message
from faena.model.message import Message
from faena.model.signature import Canvas, Group, Signature
from faena.model.task import CallOptions, current_context

if TYPE_CHECKING:
    from faena.app.core import Faena


class WorkflowResult(AsyncResult[Any]):
    """The result of a chain or chord: its last job's, plus every job id of the workflow."""

    def __init__(self, job_id: str, app: Faena, ids: list[str]) -> None:
        super().__init__(job_id, app)
        self.ids = ids

    def revoke(
        self, terminate: bool = False, reason: str = "revoked", by: str | None = None
    ) -> bool:
        """Revoke every part of the workflow that has not finished; ``True`` if any was still
        waiting in the broker. Parts that ended keep their outcome."""
        removed = False
        for job_id in self.ids:
            part: AsyncResult[Any] = AsyncResult(job_id, self.app)
            removed = part._revoke(terminate, reason, by, end_workflow=False) or removed
        return removed


class GroupResult:
    """The results of a group's members, in member order.

    Example:
        >>> res = group(add.s(i, i) for i in range(10)).delay()
        >>> res.get(timeout=10)
        [0, 2, 4, 6, 8, 10, 12, 14, 16, 18]
    """

    def __init__(
        self,
        group_id: str,
        results: list[AsyncResult[Any]],
        app: Faena,
        ids: list[str] | None = None,
    ) -> None:
        self.id = group_id
        self.results = results
        self.app = app
        self.ids = ids if ids is not None else [r.id for r in results]
        """Every job id of the group's members (a member chain's steps, a member chord's
        members and body), for :meth:`revoke`."""

    def __repr__(self) -> str:
        return f"<GroupResult {self.id} of {len(self.results)}>"

    def __len__(self) -> int:
        return len(self.results)

    def __iter__(self) -> Iterator[AsyncResult[Any]]:
        return iter(self.results)

    def __getitem__(self, index: int) -> AsyncResult[Any]:
        return self.results[index]

    def _records(self) -> list[str]:
        return [r.state for r in self.results]

    def completed_count(self) -> int:
        """How many members succeeded."""
        return sum(s == states.SUCCESS for s in self._records())

    def ready(self) -> bool:
        """Every member has finished (succeeded, failed or was revoked)."""
        return all(s in states.READY_STATES for s in self._records())

    def successful(self) -> bool:
        """Every member succeeded."""
        return all(s == states.SUCCESS for s in self._records())

    def failed(self) -> bool:
        """At least one member failed."""
        return any(s == states.FAILURE for s in self._records())

    def get(self, timeout: float | None = None, propagate: bool = True) -> list[Any]:
        """The members' results in member order, waiting up to ``timeout`` seconds in all.

        Raises:
            TaskFailed: (``propagate``) the first member, in order, that failed.
            TimeoutError: a member did not finish in time.
        """
        deadline = wait_deadline(timeout)
        values: list[Any] = []
        for result in self.results:
            with self._in_time(result, timeout):
                values.append(
                    _given(result.get(timeout=_left(deadline), propagate=False), propagate)
                )
        return values

    join = get

    async def aget(self, timeout: float | None = None, propagate: bool = True) -> list[Any]:
        """``get`` for async callers (also ``await group_result``)."""
        deadline = wait_deadline(timeout)
        values: list[Any] = []
        for result in self.results:
            with self._in_time(result, timeout):
                value = await result.aget(timeout=_left(deadline), propagate=False)
                values.append(_given(value, propagate))
        return values

    def __await__(self) -> Generator[Any, None, list[Any]]:
        return self.aget().__await__()

    @contextlib.contextmanager
    def _in_time(self, member: AsyncResult[Any], timeout: float | None) -> Iterator[None]:
        """A member's timeout as the group's: naming the caller's wait and the member."""
        try:
            yield
        except TimeoutError as exc:
            raise self._late(member, timeout, exc) from None

    def _late(self, member: AsyncResult[Any], timeout: float | None, exc: Exception) -> Exception:
        """The group's timeout, naming the caller's wait and the first member not done."""
        state = str(exc).partition("(state ")[2].partition(")")[0] or "not finished"
        return TimeoutError(
            f"group {self.id} did not finish within {timeout} s (member {member.id}: state "
            f"{state}); is a worker consuming its queue? `faena status` shows queues and workers"
        )

    def revoke(
        self, terminate: bool = False, reason: str = "revoked", by: str | None = None
    ) -> int:
        """Revoke every part of every member that has not finished (a member chain's later
        steps, a member chord's members and body too); how many were still waiting in the
        broker. Parts that ended keep their outcome."""
        return sum(
            AsyncResult(i, self.app)._revoke(terminate, reason, by, end_workflow=False)
            for i in self.ids
        )


def _given(value: Any, propagate: bool) -> Any:
    """A member's value, or its error: raised with ``propagate``, else in the value's place."""
    if propagate and isinstance(value, ResultError):
        raise value
    return value


def _left(deadline: float | None) -> float | None:
    """Seconds left until ``deadline`` (monotonic), ``None`` for no limit."""
    return None if deadline is None else max(0.0, deadline - SYSTEM_CLOCK.monotonic())


def send_canvas(
    app: Faena,
    canvas: Canvas,
    options: Mapping[str, Any],
    link: list[Signature],
    link_error: list[Signature],
) -> AsyncResult[Any] | GroupResult:
    """Freeze ``canvas`` and send its first jobs; what stands for its result."""
    messages, result = _prepare(app, canvas, options, link, link_error)
    if app.settings.eager:
        from faena.app.eager_flow import run_messages

        run_messages(app, messages)
    else:
        app.broker.enqueue([to_outgoing(app.settings, m) for m in messages])
    return result


async def asend_canvas(
    app: Faena,
    canvas: Canvas,
    options: Mapping[str, Any],
    link: list[Signature],
    link_error: list[Signature],
) -> AsyncResult[Any] | GroupResult:
    """``send_canvas`` for async producers."""
    messages, result = _prepare(app, canvas, options, link, link_error)
    if app.settings.eager:
        from faena.app.eager_flow import run_messages

        run_messages(app, messages)
    else:
        await app.broker.aenqueue([to_outgoing(app.settings, m) for m in messages])
    return result


def _prepare(
    app: Faena,
    canvas: Canvas,
    options: Mapping[str, Any],
    link: list[Signature],
    link_error: list[Signature],
) -> tuple[list[Message], AsyncResult[Any] | GroupResult]:
    """The first messages of ``canvas``, and what stands for its result."""
    freezer = Freezer(app, options)
    canvas = with_link(canvas, link)
    errbacks = freezer.callbacks(link_error, 2)
    if isinstance(canvas, Group):
        if not canvas.members:
            raise ConfigurationError("an empty group has nothing to send; give it members")
        entries, finals = [], []
        for n, member in enumerate(canvas.members):
            # Each member's error callbacks are jobs of their own: with one set shared, the
            # broker would take the second failure's callback for the first's, sent again.
            own = errbacks if n == 0 else freezer.callbacks(link_error, 2)
            jobs, final = freezer.freeze(member, After(), None, None, own, 0)
            entries += jobs
            finals.append(final)
        group_id = freezer.task_id or finals[0]
        members: list[AsyncResult[Any]] = [AsyncResult(f, app) for f in finals]
        result = GroupResult(group_id, members, app, freezer.ids)
        return _messages(app, entries, options), result
    entries, final = freezer.freeze(canvas, After(), freezer.task_id, None, errbacks, 0)
    return _messages(app, entries, options), WorkflowResult(final, app, freezer.ids)


MAX_NESTING = 100
"""The deepest a workflow's jobs may nest: each message carries what follows it, so step
*n* of a chain holds steps *n+1* onwards (and chords their bodies); deeper, decoding it would
pass Python's recursion limit."""


def _check_nesting(entries: list[Job]) -> None:
    """Refuse a workflow nested deeper than :data:`MAX_NESTING` (without recursing itself)."""
    stack = [(job, 1) for job in entries]
    while stack:
        job, depth = stack.pop()
        if depth > MAX_NESTING:
            raise ConfigurationError(
                f"this workflow nests more than {MAX_NESTING} jobs deep (a chain of more than "
                f"{MAX_NESTING} steps, or chains and chords nested that far): every message "
                "carries what follows it. Split it into workflows of their own, or use map or "
                "chunks for many calls of one task"
            )
        flow = job.flow
        if flow is None:
            continue
        inner = [*flow.next, *flow.link, *flow.link_error]
        for ref in (flow.chord, flow.member_of):
            if ref is not None:
                inner += ref.body
        stack += [(j, depth + 1) for j in inner]


def _messages(app: Faena, entries: list[Job], options: Mapping[str, Any]) -> list[Message]:
    _check_nesting(entries)
    now = app.settings.clock.time()
    countdown, eta = options.get("countdown"), options.get("eta")
    if countdown is not None or eta is not None:
        call = CallOptions(countdown=countdown, eta=eta)  # checks them as apply_async does
        due = eta_of(call, now)
        wait = max(0.0, due - now)
        # (a first job that sets its own countdown or eta keeps it, as with every option)
        entries = [
            msgspec.structs.replace(j, countdown=wait)
            if j.countdown is None and j.eta_at is None
            else j
            for j in entries
        ]
    running = current_context()
    parent = running.request.id if running else None
    # Sent by a producer, each first job is a root of its own (a group has several); sent
    # from a job, they all share that job's root.
    root = (running.request.root_id or running.request.id) if running else None
    return [job_message(j, now, parent, root, None) for j in entries]


def workflow_graph(app: Faena, root_id: str) -> dict[str, Any]:
    """Every job reachable from ``root_id`` through the recorded children, as a graph.

    Returns ``{"root": id, "nodes": {id: {"task", "state", "parent_id"}}, "edges": [[from,
    to], ...]}``; a job sent but not yet recorded appears with state ``PENDING`` and no task.
    """
    nodes: dict[str, dict[str, Any]] = {}
    edges: list[list[str]] = []
    todo = [root_id]
    while todo:
        job_id = todo.pop()
        if job_id in nodes:
            continue
        record = app.results.fetch(job_id)
        nodes[job_id] = {
            "task": record.task if record else None,
            "state": record.state if record else states.PENDING,
            "parent_id": record.parent_id if record else None,
        }
        for child in record.children if record else []:
            edges.append([job_id, child])
            todo.append(child)
    return {"root": root_id, "nodes": nodes, "edges": edges}

"""Turning a canvas into jobs: every id fixed, every option resolved, the workflow attached.

Each signature becomes a :class:`~faena.model.flow.Job` through :func:`build_message` — the
same option precedence and queue resolution as ``apply_async`` — and the structure of the
canvas becomes the :class:`~faena.model.flow.Flow` of each job (continuation passing: a step
is frozen knowing what follows it). Normal forms, decided here once:

- in a chain, a group followed by a step is a chord of the two; a group that ends a chain,
  is a chord member, or is a chord body becomes a chord whose body is ``faena.collect``
  (it returns the list of results), so every part of a workflow has one result;
- a chord member ``i`` ends in the job :func:`~faena.model.flow.member_id` ``(group, i)``;
- error callbacks of a chain go to each of its jobs and to the bodies of its chords (never to
  chord members: a chord's failure reaches them through its body, once).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from faena.app.producer import build_message
from faena.foundation.exceptions import ConfigurationError
from faena.foundation.util import new_id
from faena.model.flow import ChordRef, Flow, Job, member_id
from faena.model.routing import Route, resolve_destination
from faena.model.signature import Canvas, Chain, Chord, Group, Signature
from faena.model.task import CallOptions

if TYPE_CHECKING:
    from faena.app.core import Faena

COLLECT_TASK = "faena.collect"
_MAPPING_TASKS = ("faena.map", "faena.starmap")
"""The built-in task that returns the list of results it is given (the body of a bare group)."""


@dataclass(frozen=True, slots=True)
class After:
    """What follows a part being frozen: the next jobs, or the chord its result counts into;
    ``member_of`` is the chord a failure of the part fails (a step of a chain that is a chord
    member: only the chain's last job counts, but any of its jobs can fail the chord)."""

    next: list[Job] = field(default_factory=list)
    chord: ChordRef | None = None
    member_of: ChordRef | None = None


class Freezer:
    """Freezes one canvas for ``app``; ``options`` apply to every job that sets none itself."""

    def __init__(self, app: Faena, options: Mapping[str, Any]) -> None:
        self.app = app
        # The timing of a send applies to the jobs sent first (see send_canvas), not to every
        # step: a chain sent with countdown=10 starts in 10 s, then runs at its own pace.
        self.options = {
            k: v for k, v in options.items() if k not in ("task_id", "countdown", "eta")
        }
        self.task_id: str | None = options.get("task_id")
        self.ids: list[str] = []
        """Every job id of the canvas, in freezing order (for revoking it whole)."""

    # -- one signature -----------------------------------------------------------------------
    def job(self, sig: Signature, job_id: str, flow: Flow | None, given: int) -> Job:
        """``sig`` as a job; ``given`` arguments will be put first when it is sent."""
        task = self.app.registry.find(sig.name) or sig.task
        if task is not None:
            extra = () if sig.immutable else (None,) * given
            task.check_arguments_or_raise((*extra, *sig.args), sig.kwargs)
        opts = {**self.options, **sig.options, "task_id": job_id}
        if sig.name in _MAPPING_TASKS and sig.args:
            # A map or starmap job goes where the task it calls goes (a worker of that queue
            # only would otherwise never run it), and carries its results with that task's
            # serializer; its own options still win.
            called = str(sig.args[0])
            if opts.get("queue") is None:
                route = self.destination(called)
                opts["queue"] = route.queue
                opts.setdefault("priority", route.priority)
            if opts.get("serializer") is None:
                opts["serializer"] = self.serializer(called)
        call = CallOptions(**opts)
        m = build_message(
            self.app.settings, sig.name, task.defaults if task else None, sig.args, sig.kwargs, call
        )
        self.ids.append(job_id)
        eta_given = opts.get("eta") is not None
        expiry_given = isinstance(opts.get("expires"), datetime)
        return Job(
            id=job_id,
            task=sig.name,
            queue=m.queue,
            args=m.args,
            kwargs=m.kwargs,
            body=m.body,
            serializer=m.serializer,
            priority=m.priority,
            # An eta or a datetime expiry stays absolute; a countdown or an expiry in seconds
            # counts from when the job is sent (a later step: when the one before it ends).
            countdown=None if m.eta is None or eta_given else max(0.0, m.eta - m.sent_at),
            eta_at=m.eta if eta_given else None,
            expires_in=None if m.expires is None or expiry_given else m.expires - m.sent_at,
            expires_at=m.expires if expiry_given else None,
            headers=m.headers,
            immutable=sig.immutable,
            flow=flow,
        )

    def destination(self, task_name: str, options: Mapping[str, Any] | None = None) -> Route:
        """Where a job of ``task_name`` sent with ``options`` (and the canvas's) goes, by the
        same precedence as a send: call options, the task's, routes, the app's default."""
        settings = self.app.settings
        task = self.app.registry.find(task_name)
        opts = {**self.options, **(options or {})}
        queue, priority = resolve_destination(
            settings.routes,
            task_name,
            (),
            {},
            call=Route(opts.get("queue"), opts.get("priority")),
            task=Route(task.defaults.queue, task.defaults.priority) if task else Route(),
            default=Route(settings.default_queue, settings.default_priority),
        )
        return Route(queue, priority)

    def serializer(self, task_name: str, options: Mapping[str, Any] | None = None) -> str | None:
        """The serializer a job of ``task_name`` sent with ``options`` (and the canvas's) is
        sent with, when the call or the task names one (``None``: the app's)."""
        task = self.app.registry.find(task_name)
        chosen = {**self.options, **(options or {})}.get("serializer")
        return chosen or (task.defaults.serializer if task else None)

    def callbacks(self, sigs: list[Signature], given: int) -> list[Job]:
        return [self.signature(s, After(), None, None, [], given)[0][0] for s in sigs]

    # -- any part ----------------------------------------------------------------------------
    def freeze(
        self,
        node: Canvas,
        after: After,
        final: str | None,
        chain_final: str | None,
        errbacks: list[Job],
        given: int,
    ) -> tuple[list[Job], str]:
        """The jobs to send first for ``node``, and the id of the job that ends it.

        ``final`` fixes that id; ``chain_final`` is the end of the chain ``node`` is part of
        (marked failed if ``node`` fails); ``given`` counts the arguments ``node``'s first jobs
        will be given when sent.
        """
        if isinstance(node, Signature):
            return self.signature(node, after, final, chain_final, errbacks, given)
        if isinstance(node, Chain):
            return self.chain(node, after, final, chain_final, errbacks, given)
        if isinstance(node, Chord):
            return self.chord(node, after, final, chain_final, errbacks, given)
        if isinstance(node, Group):
            return self.chord(
                Chord(node, collect(node)), after, final, chain_final, errbacks, given
            )
        raise ConfigurationError(f"not a canvas: {node!r}")

    def signature(
        self,
        sig: Signature,
        after: After,
        final: str | None,
        chain_final: str | None,
        errbacks: list[Job],
        given: int,
    ) -> tuple[list[Job], str]:
        own = sig.options.get("task_id")
        if final is not None and own is not None and own != final:
            raise ConfigurationError(
                f"task_id {own!r} of {sig!r} cannot be kept: this job's id is fixed by the "
                "workflow (a chord member's, or the last job's when the whole canvas is sent "
                "with a task_id); set task_id on the canvas, or on a job that is not a chord "
                "member"
            )
        job_id = final or own or new_id()
        flow = Flow(
            next=after.next,
            chord=after.chord,
            member_of=after.member_of,
            final=chain_final if chain_final != job_id else None,
            link=self.callbacks(sig.link, 1),
            link_error=errbacks + self.callbacks(sig.link_error, 2),
        )
        empty = flow == Flow()
        return [self.job(sig, job_id, None if empty else flow, given)], job_id

    def chain(
        self,
        chain: Chain,
        after: After,
        final: str | None,
        chain_final: str | None,
        errbacks: list[Job],
        given: int,
    ) -> tuple[list[Job], str]:
        steps = normal_steps(chain.steps)
        member_of = after.chord or after.member_of
        entries: list[Job] = []
        result = ""
        for n in range(len(steps) - 1, -1, -1):
            last = n == len(steps) - 1
            entries, rid = self.freeze(
                steps[n],
                after,
                final if last else None,
                chain_final if last else (chain_final or result),
                errbacks,
                given if n == 0 else 1,
            )
            if last:
                result = rid
                chain_final = chain_final or rid
            after = After(next=entries, member_of=member_of)
        return entries, result

    def chord(
        self,
        chord: Chord,
        after: After,
        final: str | None,
        chain_final: str | None,
        errbacks: list[Job],
        given: int,
    ) -> tuple[list[Job], str]:
        members = chord.header.members
        if not members:
            raise ConfigurationError(
                f"a chord needs at least one member; call the body directly: {chord.body!r}"
            )
        group = new_id()
        collector = chord.body
        if isinstance(collector, Signature) and collector.name == COLLECT_TASK:
            collector = self.collector(collector, members)
        body, result = self.freeze(collector, after, final, chain_final, errbacks, 1)
        entries: list[Job] = []
        for i, member in enumerate(members):
            ref = ChordRef(id=result, group=group, size=len(members), index=i, body=body)
            jobs, _ = self.freeze(member, After(chord=ref), member_id(group, i), None, [], given)
            entries += jobs
        return entries, result

    def collector(self, collector: Signature, members: list[Canvas]) -> Signature:
        """The job that gathers a bare group's results: it goes where the group's first job
        goes (for a map or starmap, where the task it calls goes), and takes the members'
        results with pickle when one of them is sent with it."""
        options = dict(collector.options)
        first = _first_signature(members[0])
        if first is not None and options.get("queue") is None:
            mapping = first.name in _MAPPING_TASKS and first.options.get("queue") is None
            route = self.destination(_called(first) if mapping else first.name, first.options)
            options["queue"] = route.queue
            options.setdefault("priority", route.priority)
        if options.get("serializer") is None and any(
            self.serializer(_called(s), s.options) == "pickle"
            for member in members
            for s in _signatures(member)
        ):
            options["serializer"] = "pickle"
        gathered = collector.with_args((), {})
        gathered.options = options
        return gathered


def _called(sig: Signature) -> str:
    """The task a signature runs: for a map or starmap, the task it calls."""
    return str(sig.args[0]) if sig.name in _MAPPING_TASKS and sig.args else sig.name


def _signatures(node: Canvas) -> Iterator[Signature]:
    """Every signature of a canvas."""
    if isinstance(node, Signature):
        yield node
    elif isinstance(node, Chain):
        for step in node.steps:
            yield from _signatures(step)
    elif isinstance(node, Chord):
        yield from _signatures(node.header)
        yield from _signatures(node.body)
    elif isinstance(node, Group):
        for member in node.members:
            yield from _signatures(member)


def _first_signature(node: Canvas) -> Signature | None:
    """The signature a canvas starts with (its first job's), if any."""
    while not isinstance(node, Signature):
        if isinstance(node, Chain):
            node = node.steps[0]
        elif isinstance(node, Chord):
            node = node.header
        elif isinstance(node, Group) and node.members:
            node = node.members[0]
        else:
            return None
    return node


def collect(group: Group) -> Signature:
    """The body of a bare group: ``faena.collect``, sent through the group's app."""
    return Signature(COLLECT_TASK, app=group.sender())


def normal_steps(steps: list[Canvas]) -> list[Canvas]:
    """A chain's steps with every group followed by a step folded into a chord with it."""
    out: list[Canvas] = []
    n = 0
    while n < len(steps):
        step = steps[n]
        if isinstance(step, Group) and n + 1 < len(steps):
            out.append(Chord(step, steps[n + 1]))
            n += 2
        else:
            out.append(step)
            n += 1
    return out


def with_link(node: Canvas, link: list[Signature]) -> Canvas:
    """``node`` with success callbacks added to the job that ends it (each member of a group)."""
    if not link:
        return node
    if isinstance(node, Signature):
        twin = node.with_args((), {})
        twin.link = twin.link + link
        return twin
    if isinstance(node, Chain):
        return Chain(*node.steps[:-1], with_link(node.steps[-1], link))
    if isinstance(node, Chord):
        return Chord(node.header, with_link(node.body, link))
    if isinstance(node, Group):
        return Group(with_link(m, link) for m in node.members)
    raise ConfigurationError(f"not a canvas: {node!r}")

"""Signatures and the canvas built from them: a task, arguments and options, not yet sent.

Pure data: nothing here talks to a broker. ``apply_async`` hands the canvas to the app that
owns its first task (the :class:`CanvasSender`), which fixes ids and sends the first jobs
(:mod:`faena.app.freezing`). Every node round-trips through JSON (:meth:`Canvas.to_dict`,
:func:`from_dict`), so a signature can travel inside a message as an argument.

Composition (``|``) follows Celery's rules: ``a | b`` is a chain; ``group | sig`` is a chord;
chains flatten, so ``(a | b) | c`` is ``chain(a, b, c)``.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from faena.foundation.exceptions import ConfigurationError
from faena.model.serialization import pack, unpack

if TYPE_CHECKING:
    from faena.model.task import Task

CALL_OPTION_NAMES = frozenset(
    ("countdown", "eta", "expires", "queue", "priority", "task_id", "headers", "serializer")
)
"""Options a signature may carry (``parent_id``/``root_id`` are set by the workflow)."""


class CanvasSender(Protocol):
    """What sends a canvas: the app."""

    def send_canvas(
        self,
        canvas: Canvas,
        options: Mapping[str, Any],
        link: list[Signature],
        link_error: list[Signature],
    ) -> Any: ...

    async def asend_canvas(
        self,
        canvas: Canvas,
        options: Mapping[str, Any],
        link: list[Signature],
        link_error: list[Signature],
    ) -> Any: ...


def check_options(where: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` if every name is a call option; else a ConfigurationError naming them."""
    unknown = sorted(set(options) - CALL_OPTION_NAMES - {"link", "link_error"})
    if unknown:
        raise ConfigurationError(
            f"unknown option(s) for {where}: {', '.join(unknown)}; valid options are: "
            f"{', '.join(sorted(CALL_OPTION_NAMES | {'link', 'link_error'}))}. Task "
            "arguments go in args=/kwargs=, not among the options"
        )
    return dict(options)


def _links(value: Any, where: str) -> list[Signature]:
    if value is None:
        return []
    if isinstance(value, Signature):
        items = [value]
    elif isinstance(value, list | tuple):
        items = list(value)
    else:
        raise ConfigurationError(
            f"{where} takes a signature or a list of signatures (task.s(...)), got {value!r}; "
            "to run a chain or a group after a job, make it a step: job | chain_or_group"
        )
    for item in items:
        if not isinstance(item, Signature):
            raise ConfigurationError(
                f"{where} takes a signature or a list of signatures (task.s(...)), got {item!r}"
            )
    return items


class Canvas(ABC):
    """A signature, chain, group or chord: something ``apply_async`` can send."""

    @abstractmethod
    def sender(self) -> CanvasSender:
        """The app that sends this canvas: the one its first task belongs to."""

    @abstractmethod
    def with_args(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Canvas:
        """A copy with ``args`` put first and ``kwargs`` added where the canvas starts."""

    @abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """The JSON form (arguments in faena's tagged JSON, so dates, bytes... round-trip)."""

    def clone(self) -> Canvas:
        """An independent copy (options and links are not shared)."""
        return copy.deepcopy(self)

    def __or__(self, other: Canvas) -> Canvas:
        if not isinstance(other, Canvas):
            return NotImplemented
        return Chain(self, other)

    def delay(self, *args: Any, **kwargs: Any) -> Any:
        """Send with these arguments put first where the canvas starts; see apply_async."""
        return self.apply_async(args, kwargs)

    def apply_async(
        self,
        args: tuple[Any, ...] | list[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Any:
        """Send the canvas. Options (queue, priority, countdown, ...) apply to every job of
        it that does not set its own; ``link``/``link_error`` attach to its end.

        Returns:
            An ``AsyncResult`` of the job whose result stands for the canvas (the chain's last
            job, the chord's body), or a ``GroupResult`` for a group.
        """
        canvas, link, link_error = self._sending(args, kwargs, options)
        return self.sender().send_canvas(canvas, options, link, link_error)

    async def adelay(self, *args: Any, **kwargs: Any) -> Any:
        """``delay`` for async producers."""
        return await self.aapply_async(args, kwargs)

    async def aapply_async(
        self,
        args: tuple[Any, ...] | list[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Any:
        """``apply_async`` for async producers (the broker is awaited, not blocked on)."""
        canvas, link, link_error = self._sending(args, kwargs, options)
        return await self.sender().asend_canvas(canvas, options, link, link_error)

    def _sending(
        self,
        args: tuple[Any, ...] | list[Any],
        kwargs: Mapping[str, Any] | None,
        options: dict[str, Any],
    ) -> tuple[Canvas, list[Signature], list[Signature]]:
        """The canvas to send with ``args`` put in, and the callbacks taken out of ``options``."""
        check_options(type(self).__name__.lower(), options)
        link = _links(options.pop("link", None), "link")
        link_error = _links(options.pop("link_error", None), "link_error")
        args, kwargs = call_arguments(args, kwargs)
        canvas = self.with_args(args, kwargs) if args or kwargs else self
        return canvas, link, link_error


def call_arguments(args: Any, kwargs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """``apply_async``'s ``args`` (a tuple or list) and ``kwargs`` (a mapping or ``None``).

    Raises:
        TypeError: another kind: a string would be sent as its characters, a dict as its keys.
    """
    if not isinstance(args, tuple | list):
        raise TypeError(
            f"args is a tuple or list of the positional arguments, e.g. (1, 2); got {args!r}"
        )
    if kwargs is not None and not isinstance(kwargs, Mapping):
        raise TypeError(f"kwargs is a mapping of the keyword arguments; got {kwargs!r}")
    return tuple(args), dict(kwargs or {})


class Signature(Canvas):
    """One task call: ``add.s(2, 2)``, ``add.si(2, 2)``, ``signature("add", (2, 2))``.

    In a chain a signature gets the previous job's result as its first argument, unless it is
    immutable (``si``).
    """

    def __init__(
        self,
        task: str | Task[..., Any],
        args: Iterable[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        options: Mapping[str, Any] | None = None,
        *,
        immutable: bool = False,
        app: CanvasSender | None = None,
    ) -> None:
        from faena.model.task import Task

        if isinstance(task, Task):
            self.name: str = task.name
            self._task: Task[..., Any] | None = task
        elif isinstance(task, str) and task:
            self.name, self._task = task, None
        else:
            raise ConfigurationError(f"a signature needs a task or a task name, got {task!r}")
        self.args = tuple(args)
        self.kwargs = dict(kwargs or {})
        self.options = check_options(f"signature {self.name}", options or {})
        self.link = _links(self.options.pop("link", None), "link")
        self.link_error = _links(self.options.pop("link_error", None), "link_error")
        self.immutable = immutable
        self._app = app

    def __repr__(self) -> str:
        parts = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs.items()]
        return f"{self.name}.{'si' if self.immutable else 's'}({', '.join(parts)})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Signature):
            return False
        return (self.name, self.args, self.kwargs, self.options, self.immutable) == (
            other.name,
            other.args,
            other.kwargs,
            other.options,
            other.immutable,
        )

    __hash__ = None  # type: ignore[assignment]

    @property
    def task(self) -> Task[..., Any] | None:
        """The task object, when the signature was made from one."""
        return self._task

    def sender(self) -> CanvasSender:
        if self._app is not None:
            return self._app
        if self._task is not None:
            return self._task.dispatcher  # type: ignore[return-value]
        raise ConfigurationError(
            f"signature {self.name} was made by name and knows no app: pass app= to "
            "signature(), or build it from the task (task.s(...))"
        )

    def set(self, **options: Any) -> Signature:
        """Set call options on this signature (in place) and return it.

        Example:
            >>> add.s(2, 2).set(queue="high", countdown=10)
        """
        options = check_options(f"signature {self.name}", options)
        self.link += _links(options.pop("link", None), "link")
        self.link_error += _links(options.pop("link_error", None), "link_error")
        self.options.update(options)
        return self

    def on_success(self, callback: Signature) -> Signature:
        """Add a callback sent with this job's result when it succeeds; returns ``self``."""
        self.link += _links(callback, "link")
        return self

    def on_error(self, errback: Signature) -> Signature:
        """Add an error callback, sent with ``(failed job id, error summary)`` if it fails."""
        self.link_error += _links(errback, "link_error")
        return self

    def with_args(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Signature:
        twin = copy.copy(self)
        twin.args = tuple(args) + self.args
        twin.kwargs = {**self.kwargs, **kwargs}
        twin.options = dict(self.options)
        twin.link, twin.link_error = list(self.link), list(self.link_error)
        return twin

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "signature",
            "task": self.name,
            "args": [pack(a, f"args[{i}]") for i, a in enumerate(self.args)],
            "kwargs": {k: pack(v, f"kwargs[{k!r}]") for k, v in self.kwargs.items()},
            "options": pack(self.options, "options"),
            "immutable": self.immutable,
            "link": [s.to_dict() for s in self.link],
            "link_error": [s.to_dict() for s in self.link_error],
        }


def _parts(kind: str, given: Any) -> list[Any]:
    """The parts in ``given``, an iterable of canvases (text is not one: ``chain(sig, "x")``
    would otherwise take each letter for a step)."""
    if isinstance(given, str | bytes | Mapping) or not isinstance(given, Iterable):
        raise ConfigurationError(
            f"{kind} takes signatures (task.s(...)) or other canvases, or an iterable of them; "
            f"got {given!r}"
        )
    return list(given)


class Chain(Canvas):
    """Run steps one after the other, each given the previous result: ``a | b | c``."""

    def __init__(self, *steps: Canvas | Iterable[Canvas]) -> None:
        flat: list[Canvas] = []
        for step in steps:
            if isinstance(step, Chain):
                flat += step.steps
            elif isinstance(step, Canvas):
                flat.append(step)
            else:
                flat += Chain(*_parts("a chain", step)).steps
        if not flat:
            raise ConfigurationError("a chain needs at least one step")
        self.steps: list[Canvas] = flat

    def __repr__(self) -> str:
        return " | ".join(repr(s) for s in self.steps)

    def sender(self) -> CanvasSender:
        return self.steps[0].sender()

    def with_args(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Chain:
        return Chain(self.steps[0].with_args(args, kwargs), *self.steps[1:])

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "chain", "steps": [s.to_dict() for s in self.steps]}


class Group(Canvas):
    """Run members in parallel: ``group(add.s(i, i) for i in range(10))``."""

    def __init__(self, *members: Canvas | Iterable[Canvas]) -> None:
        flat: list[Canvas] = []
        for member in members:
            flat += [member] if isinstance(member, Canvas) else _parts("a group", member)
        for item in flat:
            if not isinstance(item, Canvas):
                raise ConfigurationError(
                    f"a group takes signatures (task.s(...)) or other canvases, got {item!r}"
                )
        self.members: list[Canvas] = flat

    def __repr__(self) -> str:
        return f"group({', '.join(repr(m) for m in self.members)})"

    def __or__(self, other: Canvas) -> Canvas:
        if isinstance(other, Signature | Chain | Chord):
            return Chord(self, other)
        return super().__or__(other)

    def sender(self) -> CanvasSender:
        if not self.members:
            raise ConfigurationError("an empty group knows no app: give it members to send")
        return self.members[0].sender()

    def with_args(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Group:
        return Group(m.with_args(args, kwargs) for m in self.members)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "group", "members": [m.to_dict() for m in self.members]}


class Chunks(Group):
    """``task.chunks(items, n)``: a group with one ``faena.starmap`` job per chunk."""

    def group(self) -> Group:
        """The chunks as a plain group (to nest it, or to add members)."""
        return Group(self.members)


class Chord(Canvas):
    """A group whose results, in member order, go to ``body`` once every member succeeded."""

    def __init__(self, header: Group | Iterable[Canvas], body: Canvas) -> None:
        self.header = header if isinstance(header, Group) else Group(header)
        if not isinstance(body, Canvas):
            raise ConfigurationError(f"a chord's body is a signature (task.s(...)), got {body!r}")
        self.body = body

    def __repr__(self) -> str:
        return f"chord({self.header!r}, {self.body!r})"

    def sender(self) -> CanvasSender:
        return self.header.sender() if self.header.members else self.body.sender()

    def with_args(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Chord:
        return Chord(self.header.with_args(args, kwargs), self.body)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "chord", "header": self.header.to_dict(), "body": self.body.to_dict()}


def from_dict(data: Mapping[str, Any], app: CanvasSender | None = None) -> Canvas:
    """The canvas :meth:`Canvas.to_dict` produced; by-name signatures send through ``app``.

    Raises:
        ConfigurationError: ``data`` is not a canvas in JSON form.
    """
    kind = data.get("kind") if isinstance(data, Mapping) else None
    try:
        return _from_dict(kind, data, app)
    except KeyError as missing:
        raise ConfigurationError(
            f"not a canvas in JSON form: a {kind} needs {missing.args[0]!r}: {data!r}"
        ) from None


def _from_dict(kind: Any, data: Mapping[str, Any], app: CanvasSender | None) -> Canvas:
    if kind == "signature":
        sig = Signature(
            data["task"],
            [unpack(a) for a in data.get("args", [])],
            {k: unpack(v) for k, v in data.get("kwargs", {}).items()},
            unpack(data.get("options", {})),
            immutable=bool(data.get("immutable", False)),
            app=app,
        )
        sig.link = [_signature(d, app) for d in data.get("link", [])]
        sig.link_error = [_signature(d, app) for d in data.get("link_error", [])]
        return sig
    if kind == "chain":
        return Chain(*(from_dict(d, app) for d in data["steps"]))
    if kind == "group":
        return Group(from_dict(d, app) for d in data["members"])
    if kind == "chord":
        header = from_dict(data["header"], app)
        if not isinstance(header, Group):
            raise ConfigurationError(f"a chord's header is a group, got {header!r}")
        return Chord(header, from_dict(data["body"], app))
    raise ConfigurationError(
        f"not a canvas in JSON form (expected a 'kind' of signature, chain, group or chord): "
        f"{data!r}"
    )


def _signature(data: Mapping[str, Any], app: CanvasSender | None) -> Signature:
    sig = from_dict(data, app)
    if not isinstance(sig, Signature):
        raise ConfigurationError(f"a link is a signature, got {sig!r}")
    return sig

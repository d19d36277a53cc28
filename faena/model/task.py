"""Tasks: a callable, a stable name and default options, and the job context a bound task sees.

A task never talks to a broker itself: sending goes through the :class:`Dispatcher` it belongs
to (the app), so a task object is plain data plus a function.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import weakref
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, Protocol, TypeVar, cast

import msgspec

from faena.foundation.exceptions import (
    ConfigurationError,
    MaxRetriesExceeded,
    Retry,
    finite_seconds,
)
from faena.foundation.util import new_id, utf8_safe
from faena.model.options import (
    TaskOptions,
    check_max_retries,
    validate_priority,
    validate_queue,
)
from faena.model.retry import may_retry
from faena.model.signature import Chunks, Signature, call_arguments

if TYPE_CHECKING:
    from faena.app.result import AsyncResult

P = ParamSpec("P")
R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)


@dataclass(frozen=True, slots=True, kw_only=True)
class CallOptions:
    """Options for one call (``apply_async``), on top of the task's own."""

    countdown: float | None = None
    eta: datetime | float | None = None
    expires: datetime | timedelta | float | None = None
    queue: str | None = None
    priority: int | None = None
    task_id: str | None = None
    headers: Mapping[str, Any] | None = None
    serializer: str | None = None
    parent_id: str | None = None
    root_id: str | None = None

    def __post_init__(self) -> None:
        if self.countdown is not None and self.eta is not None:
            raise ConfigurationError("give countdown or eta, not both")
        finite_seconds("countdown", self.countdown)
        if not isinstance(self.eta, datetime):
            finite_seconds("eta", self.eta, "a datetime or ")
        if not isinstance(self.expires, datetime | timedelta):
            finite_seconds("expires", self.expires, "a datetime, a timedelta or ")
        if self.queue is not None:
            validate_queue(self.queue)
        if self.priority is not None:
            validate_priority(self.priority)
        if self.task_id is not None and (
            not isinstance(self.task_id, str) or not self.task_id or "\x00" in self.task_id
        ):
            # NUL: SQLite's JSON functions, through which its batches pass ids, end a string there
            raise ConfigurationError(
                f"task_id must be a non-empty str without NUL characters, got {self.task_id!r}"
            )
        if self.headers is not None and (
            not isinstance(self.headers, Mapping)
            or not all(isinstance(k, str) for k in self.headers)
        ):
            raise ConfigurationError(f"headers must be a dict with str keys, got {self.headers!r}")
        if self.serializer not in (None, "json", "pickle"):
            raise ConfigurationError(
                f"serializer must be 'json' or 'pickle', got {self.serializer!r}"
            )


class Dispatcher(Protocol):
    """What a task needs from its app to send itself."""

    def send(
        self, task: Task[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], call: CallOptions
    ) -> AsyncResult[Any]: ...

    async def asend(
        self, task: Task[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], call: CallOptions
    ) -> AsyncResult[Any]: ...


class Request(msgspec.Struct, frozen=True, kw_only=True):
    """What a bound task knows about the job it is running."""

    id: str
    task: str
    queue: str = "default"
    retries: int = 0
    deliveries: int = 1
    eta: float | None = None
    expires: float | None = None
    headers: dict[str, Any] = {}
    parent_id: str | None = None
    root_id: str | None = None
    worker: str | None = None

    @property
    def attempt(self) -> int:
        """1 on the first run, 2 on the first retry, and so on."""
        return self.retries + 1


ProgressSink = Callable[[float, str | None], None]


def _discard_progress(fraction: float, message: str | None) -> None:
    """Progress of a job run outside a worker goes nowhere."""


class JobContext:
    """The ``self`` of a task declared with ``bind=True``.

    Example:
        >>> @app.task(bind=True, max_retries=5)
        ... def import_feed(self, url):
        ...     self.update_progress(0.5, message="parsed")
        ...     raise self.retry(countdown=30)
    """

    def __init__(
        self, task: Task[..., Any], request: Request, progress: ProgressSink = _discard_progress
    ) -> None:
        self.task = task
        self.request = request
        self._progress = progress

    @property
    def name(self) -> str:
        return self.task.name

    def retry(
        self,
        exc: BaseException | None = None,
        countdown: float | None = None,
        eta: datetime | float | None = None,
        max_retries: int | None = None,
    ) -> Retry:
        """Ask for this job to run again later; raises (``raise self.retry()`` reads well).

        Raises:
            Retry: always, while retries are left.
            MaxRetriesExceeded: no retries left and no ``exc`` given; with ``exc``, ``exc`` itself.
        """
        check_max_retries(max_retries)
        if not may_retry(self.task.defaults, self.request.retries, max_retries):
            if exc is not None:
                raise exc
            raise MaxRetriesExceeded(
                f"task {self.name} job {self.request.id} has been retried {self.request.retries} "
                "time(s) and has no retries left"
            )
        raise Retry(countdown=countdown, eta=eta, exc=exc, max_retries=max_retries)

    def update_progress(self, fraction: float, message: str | None = None) -> None:
        """Report how far the job is (0.0 to 1.0), with an optional short message."""
        if not 0.0 <= float(fraction) <= 1.0:
            raise ValueError(f"progress is a fraction from 0.0 to 1.0, got {fraction!r}")
        if message is not None and not isinstance(message, str):
            raise TypeError(f"a progress message is text (str), got {type(message).__name__}")
        self._progress(float(fraction), None if message is None else utf8_safe(message))


_current: contextvars.ContextVar[JobContext | None] = contextvars.ContextVar(
    "faena_job_context", default=None
)


def current_context() -> JobContext | None:
    """The context of the job running in this thread or asyncio task, if any."""
    return _current.get()


WORKER_LOOPS: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()
"""The event loops workers run their own I/O on (and the ``async`` pool its ``async def``
jobs): a job there must never block. A job on a loop of its own (the ``threads``, ``solo`` and
``processes`` pools) may."""


class Task(Generic[P, R]):
    """A declared unit of work. Create with ``@app.task`` or ``@shared_task``."""

    def __init__(
        self, fn: Callable[..., Any], options: TaskOptions, dispatcher: Dispatcher | None = None
    ) -> None:
        if not callable(fn):
            raise ConfigurationError(f"a task needs a callable, got {fn!r}")
        self.fn = fn
        self.defaults = options
        self.name: str = options.name or _default_name(fn)
        self.is_async = inspect.iscoroutinefunction(fn)
        self._dispatcher = dispatcher
        self.signature = inspect.signature(fn)
        if options.bind:
            params = list(self.signature.parameters.values())
            if not params:
                raise ConfigurationError(
                    f"task {self.name} has bind=True but takes no 'self' argument"
                )
            self.call_signature = self.signature.replace(parameters=params[1:])
        else:
            self.call_signature = self.signature
        self._positional = _positional_range(self.call_signature)
        self.__doc__ = fn.__doc__
        self.__name__ = getattr(fn, "__name__", self.name)
        self.__wrapped__ = fn

    def __repr__(self) -> str:
        return f"<Task {self.name}>"

    @property
    def dispatcher(self) -> Dispatcher:
        if self._dispatcher is None:
            raise ConfigurationError(
                f"task {self.name} belongs to no app yet: create a Faena app (shared tasks join "
                "the app created last) before sending it"
            )
        return self._dispatcher

    def bind_dispatcher(self, dispatcher: Dispatcher) -> None:
        self._dispatcher = dispatcher

    def check_arguments(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
        """Raise TypeError if the task cannot be called with these arguments."""
        # Most calls are positional only: a range check then stands for a full bind.
        if not kwargs and self._positional is not None:
            low, high = self._positional
            if low <= len(args) <= high:
                return
        self.call_signature.bind(*args, **kwargs)

    def check_arguments_or_raise(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
        """Like :meth:`check_arguments`, as a TypeError that names the task's signature."""
        try:
            self.check_arguments(args, kwargs)
        except TypeError as exc:
            raise TypeError(f"{self.name}{self.call_signature}: {exc}") from None

    def run(self, context: JobContext | None, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Call the function (a coroutine if async), with ``context`` as ``self`` if bound."""
        if self.defaults.bind:
            if context is None:
                context = JobContext(self, Request(id=new_id(), task=self.name))
            return self.fn(context, *args, **kwargs)
        return self.fn(*args, **kwargs)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Any:
        """Run the task here and now, as a plain function call (a coroutine for async tasks)."""
        return self.run(None, args, kwargs)

    def delay(self, *args: P.args, **kwargs: P.kwargs) -> AsyncResult[R]:
        """Send the task with these arguments; options come from the task and app.

        Example:
            >>> add.delay(2, 3).get(timeout=5)
            5
        """
        return self.dispatcher.send(self, args, kwargs, CallOptions())

    async def adelay(self, *args: P.args, **kwargs: P.kwargs) -> AsyncResult[R]:
        """``delay`` for async producers."""
        return await self.dispatcher.asend(self, args, kwargs, CallOptions())

    def apply_async(
        self,
        args: tuple[Any, ...] | list[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult[R]:
        """Send with call options: countdown, eta, expires, queue, priority, task_id, headers.

        ``link``/``link_error`` (a signature or a list of them) send the job as a one-step
        workflow with those callbacks, as ``self.s(*args, **kwargs).apply_async(...)`` does.

        Example:
            >>> fetch_price.apply_async(("A1",), countdown=10, queue="high", priority=9)
        """
        if "link" in options or "link_error" in options:
            given, named = call_arguments(args, kwargs)
            return cast("AsyncResult[R]", self.s(*given, **named).apply_async(**options))
        return self.dispatcher.send(
            self, *call_arguments(args, kwargs), _call_options(self, options)
        )

    async def aapply_async(
        self,
        args: tuple[Any, ...] | list[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult[R]:
        """``apply_async`` for async producers."""
        if "link" in options or "link_error" in options:
            given, named = call_arguments(args, kwargs)
            sent = await self.s(*given, **named).aapply_async(**options)
            return cast("AsyncResult[R]", sent)
        return await self.dispatcher.asend(
            self, *call_arguments(args, kwargs), _call_options(self, options)
        )

    # -- workflows (see faena.model.signature) -------------------------------------------------
    def s(self, *args: Any, **kwargs: Any) -> Signature:
        """A signature of this task; in a chain, the previous result goes before ``args``."""
        return Signature(self, args, kwargs)

    def si(self, *args: Any, **kwargs: Any) -> Signature:
        """An immutable signature: in a chain it ignores the previous result."""
        return Signature(self, args, kwargs, immutable=True)

    def map(self, items: Iterable[Any]) -> Signature:
        """One job calling this task on each item in turn; its result is the list of results.

        Raises:
            TypeError: an item is not an argument this task takes (as ``delay`` would).
        """
        values = list(items)
        for item in values:
            self.check_arguments_or_raise((item,), {})
        return Signature("faena.map", (self.name, values), app=self.dispatcher)  # type: ignore[arg-type]

    def starmap(self, items: Iterable[Iterable[Any]]) -> Signature:
        """Like :meth:`map`, each item being the argument tuple: ``add.starmap([(1, 2)])``.

        Raises:
            TypeError: an item is not a sequence of arguments this task takes.
        """
        rows = [_row(i) for i in items]
        for row in rows:
            self.check_arguments_or_raise(tuple(row), {})
        return Signature("faena.starmap", (self.name, rows), app=self.dispatcher)  # type: ignore[arg-type]

    def chunks(self, items: Iterable[Iterable[Any]], n: int) -> Chunks:
        """Argument tuples split into jobs of ``n`` calls each (a group of starmaps)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigurationError(f"chunks takes a chunk size of at least 1, got {n!r}")
        rows = [_row(i) for i in items]
        return Chunks(self.starmap(rows[i : i + n]) for i in range(0, len(rows), n))

    def options(self, **options: Any) -> BoundCall[P, R]:
        """Fix call options, then ``delay``: ``task.options(queue="high").delay(1, 2)``."""
        return BoundCall(self, _call_options(self, options))


def _default_name(fn: Callable[..., Any]) -> str:
    """``module.qualname`` of a function: the name its messages carry unless ``name=``.

    Raises:
        ConfigurationError: ``fn`` has no such name (a ``functools.partial``, a callable
            object).
    """
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str):
        raise ConfigurationError(
            f"{fn!r} has no module and qualified name to name its task by; give it name=..."
        )
    return f"{module}.{qualname}"


def _row(item: Any, what: str = "starmap and chunks take") -> list[Any]:
    """One call's arguments in ``starmap``, ``chunks`` or ``enqueue_many``: a tuple or list
    of them (any iterable but a string, bytes or a mapping, which are one argument)."""
    if isinstance(item, str | bytes | Mapping) or not isinstance(item, Iterable):
        raise TypeError(f"{what} one sequence of arguments per call, e.g. (1, 2); got {item!r}")
    return list(item)


def enqueue_row(item: Any) -> tuple[Any, ...]:
    """One call's arguments in ``enqueue_many`` (see :func:`_row`)."""
    return tuple(_row(item, "enqueue_many takes"))


def _positional_range(signature: inspect.Signature) -> tuple[int, float] | None:
    """(fewest, most) positional arguments a call without keywords may pass, or ``None`` if a
    keyword-only parameter is required (then every call needs a full bind)."""
    low, high = 0, 0.0
    for param in signature.parameters.values():
        if param.kind in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD):
            high += 1
            if param.default is param.empty:
                low += 1
        elif param.kind is param.VAR_POSITIONAL:
            high = float("inf")
        elif param.kind is param.KEYWORD_ONLY and param.default is param.empty:
            return None
    return low, high


_CALL_OPTION_NAMES = tuple(sorted(CallOptions.__dataclass_fields__))
_NO_CALL_OPTIONS = CallOptions()


def _call_options(task: Task[..., Any] | str, options: Mapping[str, Any]) -> CallOptions:
    if not options:
        return _NO_CALL_OPTIONS
    unknown = sorted(set(options) - set(_CALL_OPTION_NAMES))
    if unknown:
        name = task if isinstance(task, str) else task.name
        raise ConfigurationError(
            f"unknown call option(s) for {name}: {', '.join(unknown)}; valid call options "
            f"are: {', '.join(_CALL_OPTION_NAMES)}. Task arguments are not options: pass them "
            "to delay(), positionally to app.enqueue (keywords in kwargs=), or in "
            "args=/kwargs= of apply_async"
        )
    return CallOptions(**options)


class BoundCall(Generic[P, R]):
    """A task with call options fixed; ``delay`` sends it."""

    def __init__(self, task: Task[P, R], call: CallOptions) -> None:
        self.task = task
        self.call = call

    def delay(self, *args: P.args, **kwargs: P.kwargs) -> AsyncResult[R]:
        return self.task.dispatcher.send(self.task, args, kwargs, self.call)

    async def adelay(self, *args: P.args, **kwargs: P.kwargs) -> AsyncResult[R]:
        return await self.task.dispatcher.asend(self.task, args, kwargs, self.call)


def set_current_context(context: JobContext | None) -> contextvars.Token[JobContext | None]:
    """Mark the job running in this thread or task; pass the token to reset it after."""
    return _current.set(context)


def reset_current_context(token: contextvars.Token[JobContext | None]) -> None:
    _current.reset(token)


AnyTask = Task[..., Any]
TaskFunction = Callable[P, R] | Callable[P, Awaitable[R]]

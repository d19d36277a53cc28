"""The ``Faena`` app: settings, backends, the task registry, and sending.

Example:
    >>> from faena import Faena
    >>> app = Faena("shop")                    # SQLite file ./faena.sqlite3, no server
    >>> @app.task
    ... def add(x: int, y: int) -> int:
    ...     return x + y
    >>> add.delay(2, 3).get(timeout=5)        # with `faena worker -A shop` running
    5
"""

from __future__ import annotations

import asyncio
import inspect
import os
import threading
import weakref
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from typing import Any, Concatenate, Literal, ParamSpec, Protocol, TypeVar, overload

from faena.app.builtins import register_builtins
from faena.app.lookup import (
    check_url,
    make_broker,
    make_coordination_store,
    make_result_store,
)
from faena.app.producer import build_message, function_task_name, to_outgoing
from faena.app.result import AsyncResult
from faena.app.settings import Settings, build_settings, resolve_urls
from faena.app.workflow import asend_canvas, send_canvas, workflow_graph
from faena.contracts.broker import Broker, BrokerConfig, Location, Outgoing
from faena.contracts.coordination import CoordinationStore
from faena.contracts.events import EventBus
from faena.contracts.results import ResultStore
from faena.features import unique
from faena.features.lock import Lock
from faena.foundation.exceptions import ConfigurationError
from faena.foundation.util import redacted
from faena.model.message import Message
from faena.model.options import TaskOptions, build_options, validate_queue
from faena.model.registry import Registry
from faena.model.signature import Canvas, Signature
from faena.model.task import CallOptions, Task, _call_options, current_context, enqueue_row

P = ParamSpec("P")
R = TypeVar("R")


class TaskDecorator(Protocol):
    @overload
    def __call__(self, fn: Callable[P, Coroutine[Any, Any, R]], /) -> Task[P, R]: ...
    @overload
    def __call__(self, fn: Callable[P, R], /) -> Task[P, R]: ...


class BoundTaskDecorator(Protocol):
    @overload
    def __call__(
        self, fn: Callable[Concatenate[Any, P], Coroutine[Any, Any, R]], /
    ) -> Task[P, R]: ...
    @overload
    def __call__(self, fn: Callable[Concatenate[Any, P], R], /) -> Task[P, R]: ...


_shared_tasks: list[Task[..., Any]] = []
_apps: weakref.WeakSet[Faena] = weakref.WeakSet()
_latest: list[weakref.ref[Faena]] = []


def _fresh_locks_in_child() -> None:
    # A fork while another thread makes a backend would leave the child a lock no thread of
    # its own can release.
    for app in list(_apps):
        app._connecting = threading.RLock()


os.register_at_fork(after_in_child=_fresh_locks_in_child)


class Faena:
    """A faena app: where tasks are declared and sent from, and what a worker runs.

    Args:
        name: the app's name, shown by workers and monitoring.
        broker: broker URL; else ``FAENA_BROKER_URL``; else ``sqlite:///faena.sqlite3``.
        results: result store URL; else ``FAENA_RESULTS_URL``; else the broker's URL.
        **settings: see :class:`faena.app.settings.Settings`; unknown names are an error.
    """

    def __init__(
        self, name: str, broker: str | None = None, results: str | None = None, **settings: Any
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ConfigurationError(f"an app needs a non-empty name, got {name!r}")
        self.name = name
        self.settings: Settings = build_settings(settings)
        self.broker_url, self.results_url = resolve_urls(broker, results)
        check_url(self.broker_url)
        check_url(self.results_url)
        self.registry = Registry()
        self.events = EventBus()
        self.main_module: str = _caller_module()
        self._broker: Broker | None = None
        self._results: ResultStore | None = None
        self._coordination: CoordinationStore | None = None
        # Backends are made on first use, perhaps by several threads at once (a worker's and a
        # producer's): one makes each, the others wait and share it. Two made at once would
        # leak one's connections, and a memory:// one would hold messages nobody reads.
        self._connecting = threading.RLock()
        for task in _shared_tasks:
            self.registry.register(task)
            task.bind_dispatcher(self)
        register_builtins(self)
        _apps.add(self)
        _latest[:] = [weakref.ref(self)]

    def __repr__(self) -> str:
        return f"<Faena {self.name} broker={redacted(self.broker_url)}>"

    def __copy__(self) -> Faena:
        return self  # an app is one service, shared: a copied canvas keeps its app

    def __deepcopy__(self, memo: dict[int, Any]) -> Faena:
        return self

    # -- backends -----------------------------------------------------------------------------
    @property
    def broker(self) -> Broker:
        """The broker, connected on first use."""
        broker = self._broker
        if broker is None:
            with self._connecting:
                if self._broker is None:
                    s = self.settings
                    self._broker = make_broker(
                        self.broker_url,
                        BrokerConfig(
                            lease_s=s.lease_s,
                            max_deliveries=s.max_deliveries,
                            poll_interval_s=s.poll_interval_s,
                            clock=s.clock,
                        ),
                    )
                broker = self._broker
        return broker

    @property
    def results(self) -> ResultStore:
        """The result store, connected on first use."""
        results = self._results
        if results is None:
            with self._connecting:
                if self._results is None:
                    self._results = make_result_store(
                        self.results_url, self.settings.clock, self.settings.poll_interval_s
                    )
                results = self._results
        return results

    @property
    def coordination(self) -> CoordinationStore:
        """The coordination store (atomic keys, counters, tokens), on the broker's URL."""
        coordination = self._coordination
        if coordination is None:
            with self._connecting:
                if self._coordination is None:
                    self._coordination = make_coordination_store(
                        self.broker_url, self.settings.clock
                    )
                coordination = self._coordination
        return coordination

    def lock(
        self,
        name: str,
        *,
        ttl: float = 30.0,
        blocking: bool = True,
        blocking_timeout: float | None = None,
        auto_renew: bool = False,
    ) -> Lock:
        """A distributed lock on the coordination store; see :class:`faena.features.lock.Lock`.

        Example:
            >>> with app.lock("reports:daily", ttl=30, blocking_timeout=5) as lock:
            ...     write_report(fencing_token=lock.token)
        """
        return Lock(
            lambda: self.coordination,  # found at each use: the app may be closed and reopened
            name,
            ttl=ttl,
            blocking=blocking,
            blocking_timeout=blocking_timeout,
            auto_renew=auto_renew,
        )

    def close(self) -> None:
        """Close the backends' connections. The app can be used again afterwards.

        In-memory backends hold the data itself, so they are kept (closing them only wakes
        their waiters): a ``memory://`` app keeps its messages and results across ``close``.
        """
        with self._connecting:
            if self._broker is not None:
                self._broker.close()
                if self._broker.capabilities.shared_between_processes:
                    self._broker = None
            if self._results is not None:
                self._results.close()
                if not self.results_url.startswith("memory:"):
                    self._results = None
            if self._coordination is not None:
                self._coordination.close()
                if not self.broker_url.startswith("memory:"):
                    self._coordination = None

    def __enter__(self) -> Faena:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def function_modules(self) -> tuple[str, ...]:
        """Modules whose functions RQ-style jobs may name: the setting, or the app's package."""
        if self.settings.function_modules is not None:
            return self.settings.function_modules
        top = self.main_module.partition(".")[0]
        # faena's own modules are never callable by reference, whoever declares the app.
        return () if top in ("__main__", "", "faena") else (top,)

    # -- declaring ----------------------------------------------------------------------------
    @overload
    def task(self, fn: Callable[P, Coroutine[Any, Any, R]], /) -> Task[P, R]: ...
    @overload
    def task(self, fn: Callable[P, R], /) -> Task[P, R]: ...
    @overload
    def task(self, *, bind: Literal[True], **options: Any) -> BoundTaskDecorator: ...
    @overload
    def task(self, *, bind: Literal[False] = False, **options: Any) -> TaskDecorator: ...

    # mypy cannot see that a positional-only ``fn`` leaves ``**options`` free of it.
    def task(  # type: ignore[misc]
        self, fn: Callable[..., Any] | None = None, /, *, bind: bool = False, **options: Any
    ) -> Any:
        """Declare a task: ``@app.task`` or ``@app.task(max_retries=5, queue="emails")``.

        Raises:
            ConfigurationError: an unknown option (the valid ones are listed) or a bad value.
        """
        opts = build_options(bind=bind, **options)

        def declare(function: Callable[..., Any]) -> Task[..., Any]:
            task: Task[..., Any] = Task(function, opts, self)
            self.registry.register(task)
            return task

        return declare(fn) if fn is not None else declare

    # -- sending ------------------------------------------------------------------------------
    def send(
        self, task: Task[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], call: CallOptions
    ) -> AsyncResult[Any]:
        """Send one call of ``task`` (what ``delay`` and ``apply_async`` use)."""
        task.check_arguments_or_raise(args, kwargs)
        message = build_message(self.settings, task.name, task.defaults, args, kwargs, call)
        if self.settings.eager:
            from faena.app.eager import run_eagerly  # eager mode only

            return run_eagerly(self, task, message)
        outgoing = to_outgoing(self.settings, message)  # a message too large claims nothing
        if not unique.is_unique(task.defaults):
            self.broker.enqueue([outgoing])
            return AsyncResult(message.id, self)
        key = unique.unique_key(task.defaults, message, args, kwargs)
        existing = self._unique_holder(task.defaults, key, message)
        if existing is not None:
            return AsyncResult(existing, self)
        try:
            self.broker.enqueue([outgoing])
        except BaseException:
            unique.release(self.coordination, key, message.id)
            raise
        return AsyncResult(message.id, self)

    def _unique_holder(self, options: TaskOptions, key: str, message: Message) -> str | None:
        """For a unique task: the id of the unfinished job holding ``key``, if any (else the
        key is now claimed for ``message``)."""
        running = current_context()
        return unique.claim(
            self.coordination,
            self.results,
            key,
            message.id,
            options.unique_for,
            lambda holder: self._held_where(holder, options),
            self.settings.clock.time,
            sender=running.request.id if running is not None else None,
        )

    def _held_where(self, job_id: str, options: TaskOptions) -> Location | None:
        """Where the broker holds a unique key's holder; an at-most-once job's message is gone
        while it runs (acknowledged first), so it counts as held."""
        place = self.broker.locate(job_id, live_first=True)
        return place if place is not None or options.acks_late else "leased"

    async def asend(
        self, task: Task[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], call: CallOptions
    ) -> AsyncResult[Any]:
        """``send`` for async producers."""
        task.check_arguments_or_raise(args, kwargs)
        message = build_message(self.settings, task.name, task.defaults, args, kwargs, call)
        if self.settings.eager:
            from faena.app.eager import run_eagerly_async  # eager mode only

            return await run_eagerly_async(self, task, message)
        outgoing = to_outgoing(self.settings, message)
        if not unique.is_unique(task.defaults):
            await self.broker.aenqueue([outgoing])
            return AsyncResult(message.id, self)
        key = unique.unique_key(task.defaults, message, args, kwargs)
        existing = await asyncio.to_thread(self._unique_holder, task.defaults, key, message)
        if existing is not None:
            return AsyncResult(existing, self)
        try:
            await self.broker.aenqueue([outgoing])
        except BaseException:
            await asyncio.to_thread(unique.release, self.coordination, key, message.id)
            raise
        return AsyncResult(message.id, self)

    def enqueue(
        self, name: str, *args: Any, kwargs: Mapping[str, Any] | None = None, **options: Any
    ) -> AsyncResult[Any]:
        """Send a task by name, e.g. one declared in another service.

        Task arguments are positional, task keyword arguments go in ``kwargs=``, and the
        keywords are call options (queue, priority, countdown, eta, expires, task_id, headers).

        Example:
            >>> app.enqueue("billing.tasks.charge", 10, queue="high")
        """
        if not isinstance(name, str) or not name:
            raise ConfigurationError(f"enqueue takes a task name first, got {name!r}")
        task = self.registry.find(name)
        if task is not None:
            return self.send(task, args, dict(kwargs or {}), _call_options(task, options))
        return self._send_by_name(name, None, args, dict(kwargs or {}), options)

    def _send_by_name(
        self,
        name: str,
        defaults: TaskOptions | None,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        options: Mapping[str, Any],
    ) -> AsyncResult[Any]:
        call = _call_options(name, options)
        message = build_message(self.settings, name, defaults, args, kwargs, call)
        if self.settings.eager:
            raise ConfigurationError(
                f"eager mode runs tasks of this app only, and {name!r} is not registered here"
            )
        self.broker.enqueue([to_outgoing(self.settings, message)])
        return AsyncResult(message.id, self)

    def enqueue_many(
        self, task: Task[..., Any] | str, calls: Iterable[Sequence[Any]], **options: Any
    ) -> list[AsyncResult[Any]]:
        """Send one job per argument tuple in ``calls``, all in one step.

        Example:
            >>> results = app.enqueue_many(add, [(i, i) for i in range(1000)], queue="bulk")
        """
        named = self.registry.find(task) if isinstance(task, str) else task
        name = task if isinstance(task, str) else task.name
        call = _call_options(named or name, options)
        if call.task_id is not None:
            raise ConfigurationError("enqueue_many gives each job its own id; drop task_id")
        messages: list[Message] = []
        rows: list[tuple[Any, ...]] = []
        defaults = named.defaults if named is not None else None
        for given in calls:
            args = enqueue_row(given)
            if named is not None:
                named.check_arguments_or_raise(args, {})
            messages.append(build_message(self.settings, name, defaults, args, {}, call))
            rows.append(args)
        if self.settings.eager:
            if named is None:
                raise ConfigurationError(
                    f"eager mode runs tasks of this app only; {name!r} is not one"
                )
            from faena.app.eager import run_eagerly  # eager mode only

            return [run_eagerly(self, named, m) for m in messages]
        outgoing = [to_outgoing(self.settings, m) for m in messages]  # too large: none claimed
        if named is not None and unique.is_unique(named.defaults):
            return self._enqueue_unique(named.defaults, messages, rows, outgoing)
        self.broker.enqueue(outgoing)
        return [AsyncResult(m.id, self) for m in messages]

    def _enqueue_unique(
        self,
        options: TaskOptions,
        messages: list[Message],
        rows: list[tuple[Any, ...]],
        outgoing: list[Outgoing],
    ) -> list[AsyncResult[Any]]:
        """``enqueue_many`` of a unique task: each call claims its key as ``send`` does; the
        calls whose job exists (earlier, or earlier in the batch) get its handle."""
        results: list[AsyncResult[Any]] = []
        sending: list[Outgoing] = []
        claimed: list[tuple[str, str]] = []
        try:
            for message, args, out in zip(messages, rows, outgoing, strict=True):
                key = unique.unique_key(options, message, args, {})
                holder = self._unique_holder(options, key, message)
                if holder is not None:
                    results.append(AsyncResult(holder, self))
                    continue
                claimed.append((key, message.id))
                sending.append(out)
                results.append(AsyncResult(message.id, self))
            if sending:
                self.broker.enqueue(sending)
        except BaseException:
            for key, job_id in claimed:
                unique.release(self.coordination, key, job_id)
            raise
        return results

    def queue(self, name: str) -> QueueHandle:
        """An RQ-style handle: ``app.queue("high").enqueue(any_function, 1, 2)``."""
        return QueueHandle(self, validate_queue(name))

    def AsyncResult(self, job_id: str) -> AsyncResult[Any]:
        """The handle of any job id."""
        return AsyncResult(job_id, self)

    # -- workflows (see faena.app.workflow) -----------------------------------------------------
    def send_canvas(
        self,
        canvas: Canvas,
        options: Mapping[str, Any],
        link: list[Signature],
        link_error: list[Signature],
    ) -> Any:
        """Send a chain, group, chord or signature (what their ``apply_async`` uses)."""
        return send_canvas(self, canvas, options, link, link_error)

    async def asend_canvas(
        self,
        canvas: Canvas,
        options: Mapping[str, Any],
        link: list[Signature],
        link_error: list[Signature],
    ) -> Any:
        """``send_canvas`` for async producers."""
        return await asend_canvas(self, canvas, options, link, link_error)

    def workflow(self, root_id: str) -> dict[str, Any]:
        """The graph of jobs reachable from ``root_id``; see :func:`workflow_graph`."""
        return workflow_graph(self, root_id)


class QueueHandle:
    """A queue of an app, for sending functions that are not declared as tasks."""

    def __init__(self, app: Faena, name: str) -> None:
        self.app = app
        self.name = name

    def __repr__(self) -> str:
        return f"<Queue {self.name} of {self.app.name}>"

    def enqueue(
        self,
        fn: Callable[..., Any] | str,
        *args: Any,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult[Any]:
        """Send ``fn(*args, **kwargs)`` to this queue.

        ``fn`` is a task, a task name, or any module-level function; a worker runs a plain
        function if its module is within the app's ``function_modules`` (by default, the
        package the app is declared in).
        """
        options = {"queue": self.name, **options}
        if isinstance(fn, Task):
            return self.app.send(fn, args, dict(kwargs or {}), _call_options(fn, options))
        if isinstance(fn, str):
            return self.app.enqueue(fn, *args, kwargs=kwargs, **options)
        registered = self.app.registry.find(function_task_name(fn))
        if registered is not None:
            return self.app.send(
                registered, args, dict(kwargs or {}), _call_options(registered, options)
            )
        Task(fn, TaskOptions()).check_arguments_or_raise(args, dict(kwargs or {}))
        return self.app._send_by_name(
            function_task_name(fn), None, args, dict(kwargs or {}), options
        )


def _caller_module() -> str:
    frame = inspect.currentframe()
    try:
        caller = frame.f_back.f_back if frame and frame.f_back else None
        return str(caller.f_globals.get("__name__", "")) if caller else ""
    finally:
        del frame


@overload
def shared_task(fn: Callable[P, Coroutine[Any, Any, R]], /) -> Task[P, R]: ...
@overload
def shared_task(fn: Callable[P, R], /) -> Task[P, R]: ...
@overload
def shared_task(*, bind: Literal[True], **options: Any) -> BoundTaskDecorator: ...
@overload
def shared_task(*, bind: Literal[False] = False, **options: Any) -> TaskDecorator: ...


def shared_task(
    fn: Callable[..., Any] | None = None, /, *, bind: bool = False, **options: Any
) -> Any:
    """Declare a task in a reusable module without an app: ``@shared_task`` or
    ``@shared_task(queue="emails")``, typed as ``@app.task`` is.

    It joins every app, existing or created later, and sends through the app created last.
    """
    opts = build_options(bind=bind, **options)

    def declare(function: Callable[..., Any]) -> Task[..., Any]:
        latest = _latest[0]() if _latest else None
        task: Task[..., Any] = Task(function, opts, latest)
        _shared_tasks.append(task)
        for app in list(_apps):
            app.registry.register(task)
        return task

    return declare(fn) if fn is not None else declare

"""The ``async``, ``threads`` and ``solo`` pools.

- ``async``: ``async def`` tasks run on the worker's event loop; sync tasks run in threads.
- ``threads``: every task runs in a thread (an async task gets its own event loop there).
- ``solo``: ``threads`` with one slot: one job at a time, the event loop stays free to renew
  leases while it runs.

Time limits, honestly:

- async tasks: at the soft limit the task is cancelled (it sees ``CancelledError`` and may
  clean up until the hard limit); at the hard limit it is abandoned and reported as
  ``TimeLimitExceeded``.
- tasks in threads: a thread cannot be killed. At the soft limit ``SoftTimeLimitExceeded``
  is raised inside the thread, and at the hard limit ``TimeLimitExceeded``; both arrive when
  the thread next runs Python code, so a thread blocked in C (a socket read, ``time.sleep``)
  sees them only when that call returns. At the hard limit the job is reported failed at once
  and its thread is abandoned: it no longer counts against the pool's size (spare threads
  take its place) and ``health().abandoned`` counts it. Use the ``processes`` pool when a hard
  limit must stop the work itself.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import logging
import queue
import threading
from collections.abc import Callable, Coroutine, Generator
from typing import Any, Generic, TypeVar, cast

from faena.contracts.pool import Job, Pool, PoolHealth
from faena.features.execution import run_async, run_sync
from faena.foundation.exceptions import SoftTimeLimitExceeded, TaskRevoked, TimeLimitExceeded
from faena.model.outcome import ErrorInfo, Outcome
from faena.model.registry import Registry
from faena.worker.logs import current_job

T = TypeVar("T")

log = logging.getLogger("faena.pool")

SPARE_THREADS = 16
"""Threads beyond the pool size, to stand in for threads abandoned at a hard time limit."""


def _raise_in_thread(thread_id: int, exc_type: type[BaseException]) -> bool:
    """Ask CPython to raise ``exc_type`` in another thread at its next bytecode."""
    import ctypes  # here, not at the top: only a time limit needs it, and it is not small

    done = ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), ctypes.py_object(exc_type)
    )
    return bool(done == 1)


def _limit_failure(kind: type[BaseException], seconds: float, job: Job) -> Outcome:
    name = f"faena.{kind.__name__}"
    return Outcome(
        status="failure",
        error=ErrorInfo(
            type=name,
            message=f"{job.request.task} ran past its "
            f"{'soft ' if kind is SoftTimeLimitExceeded else ''}time limit of {seconds:g} s",
        ),
    )


def _terminated(job: Job) -> Outcome:
    return Outcome(
        status="failure", error=ErrorInfo.from_exception(TaskRevoked(job.request.id, "terminated"))
    )


class _Running:
    __slots__ = ("abandoned", "future", "job", "started", "terminated", "thread_id")

    def __init__(self, job: Job) -> None:
        self.job = job
        self.thread_id: int | None = None
        self.future: asyncio.Future[Any] | None = None
        self.started: asyncio.Future[None] | None = None
        """Done when a thread takes the job (for jobs with a time limit)."""
        self.abandoned = False
        self.terminated = False


class _InContext(Generic[T]):
    """Await ``coro`` with each of its steps run in ``context``, as a task of its own would
    run it, without the cost of a task: what the job sets in a context variable stays in the
    job, and the awaiting task's own context is left as it was."""

    __slots__ = ("_context", "_coro")

    def __init__(self, coro: Coroutine[Any, Any, T], context: contextvars.Context) -> None:
        self._coro = coro
        self._context = context

    def __await__(self) -> Generator[Any, Any, T]:
        coro, run = self._coro, self._context.run
        value: Any = None
        error: BaseException | None = None
        while True:
            try:
                step = run(coro.send, value) if error is None else run(coro.throw, error)
            except StopIteration as stop:
                return cast(T, stop.value)
            value, error = None, None
            try:
                value = yield step
            except GeneratorExit:
                run(coro.close)
                raise
            except BaseException as exc:  # thrown in by the awaiting task (a cancel)
                error = exc


def _set_once(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class _JobThreads:
    """The threads jobs run on, handing finished work back to the event loop in batches.

    Each thread takes work from one queue. A thread that finishes a job wakes the loop only if
    no wake-up is pending, and the loop then settles every job that ended since: under load,
    one wake-up (a write to the loop's self-pipe) serves many jobs. Threads are daemons, so a
    thread stuck in a job never holds the process at exit.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, limit: int, name: str) -> None:
        self._loop = loop
        self._limit = limit
        self._name = name
        self._work: queue.SimpleQueue[tuple[Callable[[], Any], asyncio.Future[Any]] | None] = (
            queue.SimpleQueue()
        )
        self._done: collections.deque[tuple[asyncio.Future[Any], bool, Any]] = collections.deque()
        self._lock = threading.Lock()
        self._wake_pending = False
        self._threads = 0
        self._idle = 0

    def submit(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        future: asyncio.Future[T] = self._loop.create_future()
        with self._lock:
            # _idle counts waiting threads minus queued work: below zero, work waits for a
            # thread to come free (every thread is busy or abandoned, and no more may start).
            spawn = self._idle <= 0 and self._threads < self._limit
            if spawn:
                self._threads += 1
            else:
                self._idle -= 1
        self._work.put((fn, future))
        if spawn:
            threading.Thread(target=self._serve, name=f"faena-{self._name}", daemon=True).start()
        return future

    def _serve(self) -> None:
        first = True
        while True:
            if not first:
                with self._lock:
                    self._idle += 1
            first = False
            item = self._work.get()
            if item is None:
                return
            fn, future = item
            try:
                result, ok = fn(), True
            except BaseException as exc:
                result, ok = exc, False
            self._done.append((future, ok, result))
            with self._lock:
                wake = not self._wake_pending
                self._wake_pending = True
            if wake:
                with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits
                    self._loop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:
        with self._lock:
            self._wake_pending = False
        while self._done:
            future, ok, result = self._done.popleft()
            if future.cancelled():
                continue
            if ok:
                future.set_result(result)
            else:
                future.set_exception(result)

    def stop(self) -> None:
        """Let idle threads end; busy ones end when their job returns."""
        for _ in range(self._threads):
            self._work.put(None)


class ThreadPool(Pool):
    """Runs every job in a thread. See the module docstring for time limits."""

    def __init__(self, size: int, registry: Registry, name: str = "threads") -> None:
        super().__init__(size)
        self.name = name
        self.registry = registry
        self._executor: _JobThreads | None = None
        self._running: dict[str, _Running] = {}
        self._abandoned = 0
        # Jobs whose thread is still running, kept by the threads themselves: a job whose
        # awaiting coroutine was cancelled (a cold shutdown) is still here until it returns.
        self._in_threads: set[_Running] = set()
        self._threads_lock = threading.Lock()
        self._base = contextvars.copy_context()
        """The context every job starts from (a copy of it): the worker's, as it was when the
        pool started, so that what one job sets in a context variable never reaches another."""

    async def start(self) -> None:
        self._base = contextvars.copy_context()
        self._executor = _JobThreads(
            asyncio.get_running_loop(), self.size + SPARE_THREADS, self.name
        )

    def health(self) -> PoolHealth:
        busy = sum(1 for r in self._running.values() if not r.abandoned)
        return PoolHealth(size=self.size, busy=busy, abandoned=self._abandoned)

    def _raise_in(self, running: _Running, exc_type: type[BaseException]) -> bool:
        """Raise ``exc_type`` in the job's thread if it is still running that job."""
        with self._threads_lock:
            if running.thread_id is None:
                return False
            return _raise_in_thread(running.thread_id, exc_type)

    def leftover(self) -> int:
        """Jobs whose thread has not returned: a thread cannot be killed, and Python waits for
        it at exit."""
        with self._threads_lock:
            return len(self._in_threads)

    def _context(self, job: Job) -> contextvars.Context:
        """A fresh context for ``job``: the pool's base, with the job's id for log lines."""
        context = self._base.copy()
        context.run(current_job.set, job.request.id)
        return context

    def _task(self, job: Job) -> Any:
        return self.registry.get(job.request.task)

    async def run(self, job: Job) -> Outcome:
        if self._executor is None:
            raise RuntimeError("pool not started")
        return await self._run_in_thread(job)

    async def _run_in_thread(self, job: Job) -> Outcome:
        assert self._executor is not None
        task = self._task(job)
        running = _Running(job)
        context = self._context(job)
        loop = asyncio.get_running_loop()
        if job.soft_time_limit is not None or job.time_limit is not None:
            # A job's time runs from when a thread takes it, not while it waits for one.
            running.started = loop.create_future()
        started = running.started

        def body() -> Outcome:
            if started is not None:
                with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits
                    loop.call_soon_threadsafe(_set_once, started)
            with self._threads_lock:
                running.thread_id = threading.get_ident()
                self._in_threads.add(running)
            try:
                return context.run(
                    run_sync,
                    task,
                    job.request,
                    job.args,
                    job.kwargs,
                    job.serializer,
                    job.progress,
                    in_worker=True,
                )
            except TimeLimitExceeded as exc:
                return Outcome(status="failure", error=ErrorInfo.from_exception(exc))
            finally:
                # Under the lock that every raise takes: once cleared, no limit exception can
                # be aimed at this thread (and so at its next job).
                with self._threads_lock:
                    self._in_threads.discard(running)
                    running.thread_id = None

        self._running[job.request.id] = running
        future = self._executor.submit(body)
        running.future = future
        try:
            return await self._watch(future, running, job)
        except (TimeLimitExceeded, SoftTimeLimitExceeded) as exc:
            # A limit that landed after the task returned, in the thread's own code.
            return Outcome(status="failure", error=ErrorInfo.from_exception(exc))
        finally:
            self._running.pop(job.request.id, None)

    async def _watch(self, future: asyncio.Future[Outcome], running: _Running, job: Job) -> Outcome:
        soft, hard = job.soft_time_limit, job.time_limit
        if soft is None and hard is None:
            outcome = await future
            return _terminated(job) if running.terminated else outcome
        if running.started is not None:
            either: set[asyncio.Future[Any]] = {future, running.started}
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        if soft is not None:
            done, _ = await asyncio.wait({future}, timeout=soft)
            if not done and running.thread_id is not None:
                self._raise_in(running, SoftTimeLimitExceeded)
        if hard is not None:
            remaining = hard - (soft or 0.0)
            done, _ = await asyncio.wait({future}, timeout=max(0.0, remaining))
            if not done:
                if running.thread_id is not None:
                    self._raise_in(running, TimeLimitExceeded)
                running.abandoned = True
                self._abandoned += 1
                log.warning(
                    "job %s passed its hard time limit (%gs); its thread is abandoned",
                    job.request.id,
                    hard,
                )
                return _limit_failure(TimeLimitExceeded, hard, job)
        outcome = await asyncio.shield(future)
        return _terminated(job) if running.terminated else outcome

    def terminate(self, job_id: str) -> bool:
        running = self._running.get(job_id)
        if running is None or running.thread_id is None:
            return False
        running.terminated = True
        return self._raise_in(running, TimeLimitExceeded)

    async def stop(self, graceful: bool, timeout_s: float) -> None:
        pending = [
            r.future for r in self._running.values() if r.future is not None and not r.abandoned
        ]
        if graceful and pending:
            await asyncio.wait(pending, timeout=timeout_s)
        if not graceful:
            with self._threads_lock:
                stuck = list(self._in_threads)
            for running in stuck:
                self._raise_in(running, TimeLimitExceeded)
        if self._executor is not None:
            # Abandoned threads cannot be joined; do not wait for them.
            self._executor.stop()
            self._executor = None


class AsyncPool(ThreadPool):
    """``async def`` tasks on the event loop, sync tasks in threads."""

    def __init__(self, size: int, registry: Registry) -> None:
        super().__init__(size, registry, name="async")
        self._tasks: dict[str, asyncio.Task[Outcome]] = {}
        self._terminating: set[str] = set()
        self._stuck: set[asyncio.Task[Outcome]] = set()
        """Coroutines left running past their hard time limit (they ignore cancellation)."""

    async def run(self, job: Job) -> Outcome:
        task = self._task(job)
        if not task.is_async:
            return await super().run(job)
        coro = run_async(
            task, job.request, job.args, job.kwargs, job.serializer, job.progress, in_worker=True
        )
        if job.soft_time_limit is None and job.time_limit is None:
            return await self._run_inline(coro, job)
        inner = asyncio.get_running_loop().create_task(coro, context=self._context(job))
        self._tasks[job.request.id] = inner
        try:
            return await self._watch_coroutine(inner, job)
        except asyncio.CancelledError:
            inner.cancel()  # the runner is stopped (a cold shutdown): so is its job
            raise
        finally:
            self._tasks.pop(job.request.id, None)
            if not inner.done():
                self._stuck.add(inner)
                inner.add_done_callback(self._stuck.discard)

    async def _watch_coroutine(self, inner: asyncio.Task[Outcome], job: Job) -> Outcome:
        soft, hard = job.soft_time_limit, job.time_limit
        first = soft if soft is not None else hard
        done, _ = await asyncio.wait({inner}, timeout=first)
        if done:
            return self._settled(inner, job, SoftTimeLimitExceeded, soft or 0.0)
        inner.cancel()
        if soft is not None and hard is not None:
            done, _ = await asyncio.wait({inner}, timeout=hard - soft)
            if done:
                return self._settled(inner, job, SoftTimeLimitExceeded, soft)
            log.warning(
                "job %s ignored cancellation past its hard time limit (%gs)", job.request.id, hard
            )
            return _limit_failure(TimeLimitExceeded, hard, job)
        if soft is not None:
            await asyncio.wait({inner})
            return self._settled(inner, job, SoftTimeLimitExceeded, soft)
        await asyncio.wait({inner}, timeout=1.0)
        return _limit_failure(TimeLimitExceeded, hard or 0.0, job)

    async def _run_inline(self, coro: Coroutine[Any, Any, Outcome], job: Job) -> Outcome:
        """No time limit: await the job in the caller's task (no extra task per job)."""
        me = asyncio.current_task()
        assert me is not None
        self._tasks[job.request.id] = me
        try:
            outcome = await _InContext(coro, self._context(job))
        except asyncio.CancelledError:
            if job.request.id not in self._terminating:
                raise
            self._terminating.discard(job.request.id)
            me.uncancel()
            return _terminated(job)
        finally:
            self._tasks.pop(job.request.id, None)
        if job.request.id in self._terminating:
            # The task swallowed the cancellation: take the request back, so this runner's
            # later awaits are not cancelled by it, and report the terminate.
            self._terminating.discard(job.request.id)
            me.uncancel()
            return _terminated(job)
        return outcome

    def _settled(
        self, inner: asyncio.Task[Outcome], job: Job, kind: type[BaseException], seconds: float
    ) -> Outcome:
        if inner.cancelled():
            if job.request.id in self._terminating:
                self._terminating.discard(job.request.id)
                return _terminated(job)
            return _limit_failure(kind, seconds, job)
        return inner.result()

    def terminate(self, job_id: str) -> bool:
        inner = self._tasks.get(job_id)
        if inner is None:
            return super().terminate(job_id)
        self._terminating.add(job_id)
        inner.cancel()
        return True

    def health(self) -> PoolHealth:
        base = super().health()
        return PoolHealth(
            size=self.size,
            busy=base.busy + len(self._tasks),
            abandoned=base.abandoned + len(self._stuck),
        )

    async def stop(self, graceful: bool, timeout_s: float) -> None:
        if graceful and self._tasks:
            await asyncio.wait(list(self._tasks.values()), timeout=timeout_s)
        for inner in [*self._tasks.values(), *self._stuck]:
            inner.cancel()
        await super().stop(graceful, timeout_s)

    def leftover(self) -> int:
        """Threads that have not returned, and coroutines that ignore cancellation: the
        process should not wait for either at exit."""
        return super().leftover() + len(self._stuck)

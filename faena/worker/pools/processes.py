"""The ``processes`` pool: each job runs in a child process started with ``spawn``.

What it owns: starting ``size`` children, handing each one job at a time, enforcing hard time
limits (the parent kills the child) and soft ones (the child raises in the task), replacing a
child that died, was killed or retired (``max_tasks_per_child``, ``max_memory_per_child``),
and stopping without leaving a process behind.

How it works. A child imports the app itself (``load_app(app_spec)``), so nothing but the app's
import spec crosses ``spawn``. Parent and child share one Unix socket pair; each frame is an
8-byte length and a msgpack body (msgspec). The parent sends the message body exactly as
received plus the job's ``Request``, serializer and soft limit; the child decodes, resolves
and runs the task with :func:`faena.features.execution.run_sync`, streams progress frames,
then sends the :class:`Outcome`. On the parent, one asyncio task per child reads its socket,
so progress reaches ``job.progress`` on the event loop thread, and the end of the stream is how
a death is noticed: a killed child's socket reads EOF at once.

Why streams rather than ``loop.add_reader`` on a ``Connection``: ``Connection.recv_bytes``
blocks until a whole message is in, so a large return value (or a child stopped half-way
through a write) would stall the event loop; asyncio streams read frames without blocking.
Why not a reader thread per child: every reap, kill and state change then happens on the loop
thread, so nothing races with ``waitpid``.

Honest limits:

- POSIX only (``signal.setitimer`` for the soft limit; Unix sockets).
- The soft limit is a ``SIGALRM`` in the child's main thread: it is raised between Python
  bytecodes, so a task blocked inside C code sees it only when control returns to Python.
  In an ``async def`` task it surfaces wherever the child's event loop is (often its
  ``select``), so the coroutine itself cannot catch it; the job fails with it.
- A hard time limit kills the whole child; cleanup in the task does not run.
- A task that calls ``os._exit`` ends its child: the job is reported lost. (``sys.exit`` is an
  exception like any other: the job fails with it, and the child goes on.)
- ``terminate`` is meant to be called on the event loop thread, like every other method.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import multiprocessing
import multiprocessing.util  # imported before our atexit hook is registered: see _kill_orphans
import os
import signal
import socket
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from typing import Any, Final

import msgspec

from faena.contracts.pool import Job, Pool, PoolHealth
from faena.foundation.exceptions import ConfigurationError
from faena.model.outcome import ErrorInfo, Outcome
from faena.model.registry import Registry
from faena.worker.pools.process_child import (
    FRAME_HEADER,
    Done,
    Failed,
    Progress,
    Ready,
    Stop,
    Work,
    child_main,
    frame,
    to_parent,
)

log = logging.getLogger("faena.pool")

READY_TIMEOUT_S: Final = 60.0
"""How long a child may take to import the app before it is killed as failed."""
EXIT_GRACE_S: Final = 2.0
"""How long an idle child told to stop gets to exit before it is killed."""
REAP_TIMEOUT_S: Final = 5.0
"""How long a child that closed its socket gets to exit before it is killed."""
_MAX_RESPAWN_DELAY_S: Final = 30.0

_SPAWN = multiprocessing.get_context("spawn")


@dataclass(eq=False)
class _Child:
    process: BaseProcess
    pid: int
    ready: asyncio.Future[None]
    writer: asyncio.StreamWriter | None = None
    lifecycle: asyncio.Task[None] | None = None
    job: Job | None = None
    outcome: asyncio.Future[Outcome] | None = None
    started_at: float = 0.0
    timer: asyncio.TimerHandle | None = None
    kill_reason: str | None = None
    failure: str | None = None
    retiring: bool = False
    gone: bool = False
    booted: bool = False


class ProcessPool(Pool):
    """Runs each job in one of ``size`` spawned child processes.

    Args:
        size: number of children.
        registry: the worker's registry (children use the registry of the app they import).
        app_spec: how a child finds the app, as ``faena worker -A`` takes it.
        max_tasks_per_child: a child exits cleanly after this many jobs and is replaced.
        max_memory_per_child: KiB; a child whose resident size exceeds it after a job exits
            cleanly once it has reported the outcome, and is replaced.

    ``health().restarts`` counts children replaced because they died or were killed (hard
    limit, ``terminate``); planned replacements are counted in ``recycled``.

    Example:
        >>> pool = ProcessPool(4, app.registry, app_spec="proj.tasks")
        >>> await pool.start()
        >>> outcome = await pool.run(job)
        >>> await pool.stop(graceful=True, timeout_s=30)
    """

    name = "processes"

    def __init__(
        self,
        size: int,
        registry: Registry,
        *,
        app_spec: str | None = None,
        max_tasks_per_child: int | None = None,
        max_memory_per_child: int | None = None,
    ) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ConfigurationError(f"the processes pool needs a size of at least 1, got {size!r}")
        if not app_spec or not isinstance(app_spec, str):
            raise ConfigurationError(
                "the processes pool needs app_spec ('module' or 'module:attribute', as given to "
                "`faena worker -A`): its children are started with spawn and share nothing with "
                "this process, so each one imports the app itself to find the tasks"
            )
        for option, value in (
            ("max_tasks_per_child", max_tasks_per_child),
            ("max_memory_per_child", max_memory_per_child),
        ):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise ConfigurationError(f"{option} must be a positive int or None, got {value!r}")
        super().__init__(size)
        self.registry = registry
        self.app_spec = app_spec
        self.max_tasks_per_child = max_tasks_per_child
        self.max_memory_per_child = max_memory_per_child
        self.recycled = 0
        self._restarts = 0
        self._boot_failures = 0
        self._state = "new"  # -> starting -> running -> stopping -> stopped
        self._loop: asyncio.AbstractEventLoop | None = None
        self._children: set[_Child] = set()
        self._idle: list[_Child] = []
        self._waiters: list[asyncio.Future[_Child | None]] = []
        self._respawns: set[asyncio.Task[None]] = set()

    # -- Pool ---------------------------------------------------------------------------------
    async def start(self) -> None:
        """Spawn the children and wait until each has imported the app.

        Raises:
            ConfigurationError: a child could not import the app (its error is included).
        """
        if self._state != "new":
            raise RuntimeError(f"this process pool was already started (it is {self._state})")
        self._loop = asyncio.get_running_loop()
        self._state = "starting"
        try:
            children = [self._spawn() for _ in range(self.size)]
            # Each child has a boot deadline (see _spawn), so this wait is bounded.
            await asyncio.gather(*(c.ready for c in children))
        except BaseException:
            await self.stop(graceful=False, timeout_s=0)
            raise
        if self._state != "starting":
            return  # stopped while starting: nothing more to do
        failures = [c.failure for c in children if c.failure is not None]
        if failures:
            await self.stop(graceful=False, timeout_s=0)
            raise ConfigurationError(f"the processes pool could not start: {failures[0]}")
        self._state = "running"
        log.info(
            "process pool started: %d children (pids %s)",
            self.size,
            ", ".join(str(c.pid) for c in children),
        )

    async def run(self, job: Job) -> Outcome:
        """Run ``job`` in a free child; waits for one if all are busy.

        If this coroutine is cancelled while the job runs, the child is killed (nobody is left
        to read its outcome) and replaced.
        """
        if self._state in ("new", "starting"):
            raise RuntimeError("start() the process pool before running jobs")
        child = await self._acquire()
        if child is None:
            return _lost("the pool stopped before the job started")
        loop = self._running_loop()
        outcome: asyncio.Future[Outcome] = loop.create_future()
        child.job, child.outcome, child.started_at = job, outcome, loop.time()
        if job.time_limit is not None:
            child.timer = loop.call_later(job.time_limit, self._kill, child, "time_limit")
        try:
            assert child.writer is not None  # a child is handed out only once it said ready
            child.writer.write(
                frame(
                    Work(
                        body=job.body,
                        request=job.request,
                        serializer=job.serializer,
                        soft_time_limit=job.soft_time_limit,
                    )
                )
            )
            with contextlib.suppress(ConnectionError):  # it died: its lifecycle reports the loss
                await child.writer.drain()
            return await outcome
        except asyncio.CancelledError:
            if child.job is job:
                self._kill(child, "cancelled")
            raise

    def terminate(self, job_id: str) -> bool:
        """Kill the child running ``job_id``; its ``run`` returns a ``TaskRevoked`` failure."""
        for child in self._children:
            if child.job is not None and child.job.request.id == job_id:
                self._kill(child, "terminated")
                return True
        return False

    async def stop(self, graceful: bool, timeout_s: float) -> None:
        """Stop every child; graceful lets running jobs finish for up to ``timeout_s``.

        Jobs still running after that (or at once, if not graceful) are killed with their child
        and their ``run`` returns a ``lost`` outcome, so the worker gives the message back.
        Idle children are asked to exit and get :data:`EXIT_GRACE_S` before being killed.
        """
        if self._state in ("new", "stopped"):
            self._state = "stopped"
            return
        loop = self._running_loop()
        deadline = loop.time() + max(timeout_s, 0.0)
        self._state = "stopping"
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()
        self._idle.clear()
        for respawn in self._respawns:
            respawn.cancel()
        running = [c.outcome for c in self._children if c.outcome and not c.outcome.done()]
        if graceful and running:
            await asyncio.wait(running, timeout=max(deadline - loop.time(), 0.0))
        for child in list(self._children):
            if graceful and child.job is None and child.booted and child.writer is not None:
                child.writer.write(frame(Stop()))
            else:
                self._kill(child, "stopping")
        lifecycles = [c.lifecycle for c in self._children if c.lifecycle is not None]
        if lifecycles:
            _, pending = await asyncio.wait(lifecycles, timeout=EXIT_GRACE_S)
            if pending:
                for child in list(self._children):
                    self._kill(child, "stopping")
                await asyncio.wait(pending)
        await asyncio.gather(*self._respawns, return_exceptions=True)
        self._state = "stopped"
        log.info("process pool stopped (%d restarts, %d recycled)", self._restarts, self.recycled)

    def health(self) -> PoolHealth:
        """``size`` counts live children, including ones still importing the app."""
        live = [c for c in self._children if not c.gone and not c.retiring]
        return PoolHealth(
            size=len(live), busy=sum(1 for c in live if c.job is not None), restarts=self._restarts
        )

    # -- children -----------------------------------------------------------------------------
    def _running_loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None, "start() the process pool first"
        return self._loop

    def _spawn(self) -> _Child:
        """Start one child; its lifecycle task connects, reads, reaps and buries it.

        Synchronous on purpose: a replacement exists before the ``run`` whose child died
        returns, so ``health().size`` is already back to full when the caller looks.
        """
        loop = self._running_loop()
        ours, theirs = socket.socketpair()
        process = _SPAWN.Process(
            target=child_main,
            name="faena-pool-child",
            args=(
                theirs,
                self.app_spec,
                self.max_tasks_per_child,
                self.max_memory_per_child,
                os.getpid(),
            ),
        )
        # Not daemonic: a daemonic child may not start processes, and tasks that use
        # multiprocessing themselves are common. _kill_orphans covers an exit without stop().
        try:
            process.start()
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()  # the child has its own copy; ours must go or EOF never comes
        assert process.pid is not None
        _unreaped.add(process)
        child = _Child(process=process, pid=process.pid, ready=loop.create_future())
        child.timer = loop.call_later(READY_TIMEOUT_S, self._kill, child, "boot_timeout")
        self._children.add(child)
        child.lifecycle = loop.create_task(
            self._lifecycle(child, ours), name=f"faena-pool-child-{process.pid}"
        )
        log.debug("spawned pool child %d", child.pid)
        return child

    async def _lifecycle(self, child: _Child, sock: socket.socket) -> None:
        """Connect to the child, dispatch its frames until it closes, then reap and bury it."""
        try:
            reader, writer = await asyncio.open_unix_connection(sock=sock)
        except OSError:
            log.exception("cannot read from pool child %d; killing it", child.pid)
            sock.close()
            self._kill(child, "protocol")
        else:
            child.writer = writer
            try:
                await self._listen(child, reader)
            except asyncio.CancelledError:
                # The loop is going away without stop(): do not leave the child behind.
                child.process.kill()
                child.process.join(1.0)
                _unreaped.discard(child.process)
                raise
            finally:
                # Its end of the socket closed: no job may be handed to it from now on, while
                # the socket closes and the process is reaped.
                child.gone = True
                writer.close()
                with contextlib.suppress(ConnectionError):
                    await writer.wait_closed()
        child.gone = True
        if child.timer is not None:
            child.timer.cancel()
        self._bury(child, await _reap(child.process))

    async def _listen(self, child: _Child, reader: asyncio.StreamReader) -> None:
        """Dispatch the child's frames until its end of the socket closes."""
        while True:
            try:
                (length,) = FRAME_HEADER.unpack(await reader.readexactly(FRAME_HEADER.size))
                data = await reader.readexactly(length)
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            try:
                message = to_parent.decode(data)
            except msgspec.DecodeError:
                log.error("pool child %d sent an unreadable frame; killing it", child.pid)
                self._kill(child, "protocol")
                continue
            try:
                self._dispatch(child, message)
            except Exception:  # a bug here must not strand the job: end the child instead
                log.exception("handling a frame from pool child %d failed; killing it", child.pid)
                self._kill(child, "protocol")

    def _dispatch(self, child: _Child, message: Any) -> None:
        if isinstance(message, Progress):
            if child.job is not None:
                try:
                    child.job.progress(message.fraction, message.message)
                except Exception:
                    log.exception("progress sink of job %s failed", child.job.request.id)
        elif isinstance(message, Done):
            self._finish(child, message)
        elif isinstance(message, Ready):
            child.booted = True
            if child.timer is not None:
                child.timer.cancel()  # the boot deadline
                child.timer = None
            self._boot_failures = 0
            if not child.ready.done():
                child.ready.set_result(None)
            self._release(child)
        elif isinstance(message, Failed):
            child.failure = message.error  # it exits now; _bury reports it

    def _finish(self, child: _Child, done: Done) -> None:
        outcome, job = child.outcome, child.job
        if child.timer is not None:
            child.timer.cancel()
            child.timer = None
        child.job, child.outcome = None, None
        if done.retiring:
            child.retiring = True
            self.recycled += 1
            log.info(
                "pool child %d retired (max tasks or memory per child); replacing it", child.pid
            )
            if self._state == "running":
                self._respawn(0.0)
        else:
            self._release(child)
        if outcome is not None and not outcome.done():
            outcome.set_result(done.outcome)
        elif job is not None:
            log.debug("outcome of job %s arrived after its run was cancelled", job.request.id)

    def _bury(self, child: _Child, exitcode: int) -> None:
        """The child has exited and been reaped: settle its job and replace it if needed."""
        self._children.discard(child)
        _unreaped.discard(child.process)
        child.process.close()
        how = _describe_exit(exitcode)
        job, outcome = child.job, child.outcome
        child.job, child.outcome = None, None
        if child.kill_reason == "boot_timeout":
            child.failure = (
                f"child process {child.pid} did not import app {self.app_spec!r} within "
                f"{READY_TIMEOUT_S:g} s"
            )
        elif not child.booted and child.failure is None:
            child.failure = f"child process {child.pid} {how} while importing app {self.app_spec!r}"
        if not child.ready.done():
            child.ready.set_result(None)
        planned = child.retiring or self._state != "running"
        if not planned:
            self._restarts += 1
            if child.booted:
                if child.kill_reason is None:
                    log.warning("pool child %d died (%s); replacing it", child.pid, how)
                self._respawn(0.0)
            else:
                # It could not import the app: back off, so a broken deploy does not spin.
                self._boot_failures += 1
                delay = min(0.5 * 2 ** (self._boot_failures - 1), _MAX_RESPAWN_DELAY_S)
                log.error(
                    "pool child %d failed to start: %s; trying again in %.1f s",
                    child.pid,
                    child.failure,
                    delay,
                )
                self._respawn(delay)
        if job is not None and outcome is not None and not outcome.done():
            runtime = self._running_loop().time() - child.started_at
            outcome.set_result(_ending(child, job, how, runtime))

    def _respawn(self, delay: float) -> None:
        if delay <= 0:
            try:
                self._spawn()
                return
            except OSError:
                log.exception("could not spawn a pool child; trying again in 1 s")
                delay = 1.0
        task = self._running_loop().create_task(self._respawn_later(delay))
        self._respawns.add(task)
        task.add_done_callback(self._respawns.discard)

    async def _respawn_later(self, delay: float) -> None:
        await asyncio.sleep(delay)  # a back-off, not a synchronisation
        if self._state == "running":
            self._respawn(0.0)

    def _kill(self, child: _Child, reason: str) -> None:
        """SIGKILL ``child``; the first reason given decides how its job is reported."""
        if child.kill_reason is None:
            child.kill_reason = reason
            if reason == "time_limit" and child.job is not None:
                log.warning(
                    "job %s passed its hard time limit (%g s): killing pool child %d",
                    child.job.request.id,
                    child.job.time_limit or 0.0,
                    child.pid,
                )
        # Safe against pid reuse: until we reap it, the pid stays ours (a zombie at worst),
        # and Process.kill does nothing once it has been reaped.
        child.process.kill()

    async def _acquire(self) -> _Child | None:
        """A free child, or ``None`` once the pool is stopping."""
        while self._state == "running":
            if self._idle:
                child: _Child | None = self._idle.pop()
            else:
                waiter: asyncio.Future[_Child | None] = self._running_loop().create_future()
                self._waiters.append(waiter)
                try:
                    child = await waiter
                except asyncio.CancelledError:
                    if waiter.done() and not waiter.cancelled() and (given := waiter.result()):
                        self._release(given)  # handed to us as we were cancelled: pass it on
                    raise
            # It may have died between being handed over and this task resuming.
            if child is not None and self._usable(child):
                return child
        return None

    def _release(self, child: _Child) -> None:
        if not self._usable(child) or self._state not in ("starting", "running"):
            return
        while self._waiters:
            waiter = self._waiters.pop(0)
            if not waiter.done():
                waiter.set_result(child)
                return
        self._idle.append(child)

    @staticmethod
    def _usable(child: _Child) -> bool:
        return child.booted and not (child.gone or child.retiring or child.kill_reason)


def _ending(child: _Child, job: Job, how: str, runtime_s: float) -> Outcome:
    """The outcome of a job whose child exited before reporting one."""
    pid, reason = child.pid, child.kill_reason
    if reason == "time_limit":
        limit = f"hard time limit ({job.time_limit:g} s) exceeded"
        text = f"{limit}: child process {pid} was killed"
        return _failure("faena.TimeLimitExceeded", text, runtime_s)
    if reason == "terminated":
        text = f"terminated: revoked with terminate=True, child process {pid} was killed"
        return _failure("faena.TaskRevoked", text, runtime_s)
    if reason == "stopping":
        text = f"child process {pid} was killed: the pool stopped before the job finished"
        return _lost(text, runtime_s)
    return _lost(f"child process {pid} died: {how}", runtime_s)


def _failure(kind: str, message: str, runtime_s: float) -> Outcome:
    error = ErrorInfo(type=kind, message=message)
    return Outcome(status="failure", error=error, runtime_s=runtime_s)


def _lost(message: str, runtime_s: float = 0.0) -> Outcome:
    error = ErrorInfo(type="faena.WorkerLost", message=message)
    return Outcome(status="lost", error=error, runtime_s=runtime_s)


def _describe_exit(exitcode: int) -> str:
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = "unknown signal"
        return f"killed by signal {-exitcode} ({name})"
    return f"exited with code {exitcode}"


async def _reap(process: BaseProcess) -> int:
    """Wait for ``process`` to exit, without blocking the loop, and return its exit code.

    Its socket has closed, so it is exiting; the gap to ``waitpid`` succeeding is tiny, so a
    short poll (``exitcode`` is a non-blocking ``waitpid``) is cheaper than a helper thread.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + REAP_TIMEOUT_S
    delay = 0.0005
    while (code := process.exitcode) is None:
        if loop.time() > deadline:
            process.kill()  # it closed its socket yet lives on: it can serve no job now
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.05)
    return code


_unreaped: set[BaseProcess] = set()


@atexit.register
def _kill_orphans() -> None:
    """Kill children of pools that were never stopped, so the interpreter can exit.

    multiprocessing joins non-daemonic children at exit; a child waiting for work would never
    end. atexit runs hooks last-registered first, and multiprocessing.util registered its own
    hook before this module did, so this one runs first.
    """
    for process in list(_unreaped):
        with contextlib.suppress(Exception):
            process.kill()
            process.join(1.0)

"""Eager mode: run a task inline at ``delay()``, through the same encoding, checks and
decisions a worker uses, so that a test in eager mode fails where production would.

Retries run again at once (the back-off is not waited for); the final record is stored in the
app's result store, so ``AsyncResult`` reads it as usual.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Generator
from typing import TYPE_CHECKING, Any

from faena.app.eager_flow import follow_eagerly
from faena.app.producer import to_outgoing
from faena.app.result import AsyncResult
from faena.features.execution import run_async, run_sync
from faena.features.intake import Admitted, admit
from faena.features.lifecycle import Decision, RunInfo, decide, expired, failed
from faena.model.message import Message, encode_message
from faena.model.options import TaskOptions
from faena.model.outcome import ErrorInfo, Outcome
from faena.model.task import Task

if TYPE_CHECKING:
    from faena.app.core import Faena


def _admit(app: Faena, task: Task[..., Any], message: Message) -> Admitted:
    to_outgoing(app.settings, message)  # the size limit applies as it would for real
    admitted = admit(
        encode_message(message),
        max_size=app.settings.max_message_size,
        accept=app.settings.accept,
        registry=app.registry,
        function_modules=app.function_modules,
    )
    if not isinstance(admitted, Admitted):
        from faena.foundation.exceptions import SerializationError

        raise SerializationError(
            f"eager run of {task.name} refused: {admitted.reason}: {admitted.detail}"
        )
    return admitted


def _info(app: Faena, attempt: int) -> RunInfo:
    now = app.settings.clock.time()
    return RunInfo(
        worker="eager",
        fence=attempt,
        deliveries=1,
        started_at=now,
        now=now,
        result_ttl=app.settings.result_ttl,
    )


def _next(
    app: Faena, task: Task[..., Any], job: Admitted, outcome: Outcome, attempt: int
) -> Decision:
    decision = decide(task.defaults, job.message, outcome, _info(app, attempt))
    if decision.action == "release":  # nothing dies in eager mode, but be complete
        return failed(
            task.defaults,
            job.message,
            _info(app, attempt),
            outcome.error or ErrorInfo(type="faena.WorkerLost", message="lost"),
        )
    return decision


def _expired(app: Faena, message: Message, options: TaskOptions) -> bool:
    """Record ``REVOKED`` (reason ``expired``) for a message already past ``expires``."""
    if message.expires is None or app.settings.clock.time() < message.expires:
        return False
    decision = expired(message, _info(app, 1), options)
    if decision.record is not None:
        app.results.store(decision.record)
    return True


def _runs(app: Faena, task: Task[..., Any], message: Message) -> Generator[Admitted, Outcome, None]:
    """The eager lifecycle, without the running: yields each job to run and takes its outcome.

    Both flavours below drive it, so they share every decision and differ only in how a job
    is run (called, or awaited).
    """
    job = _admit(app, task, message)
    if _expired(app, message, task.defaults):
        return
    attempt = 1
    while True:
        outcome = yield job
        decision = _next(app, task, job, outcome, attempt)
        if job.message.flow is not None:
            decision = follow_eagerly(app, job.message, outcome, decision)
        elif decision.record is not None:
            app.results.store(decision.record)
        if decision.action != "retry" or decision.next_message is None:
            return
        job = Admitted(decision.next_message, job.task, job.args, job.kwargs, job.headers)
        attempt += 1


def _no_progress(fraction: float, message: str | None) -> None:
    """Eager jobs report progress to nobody: the caller is waiting for the job itself."""


def _call(job: Admitted) -> tuple[Any, ...]:
    """The arguments both runners take, for one eager run of ``job``."""
    return (
        job.task,
        job.request(1, "eager"),
        job.args,
        job.kwargs,
        job.message.serializer,
        _no_progress,
    )


def run_eagerly(app: Faena, task: Task[..., Any], message: Message) -> AsyncResult[Any]:
    """Run ``message`` now, retries included, and store its record."""
    runs = _runs(app, task, message)
    with contextlib.suppress(StopIteration):
        job = next(runs)
        while True:
            job = runs.send(run_sync(*_call(job)))
    return AsyncResult(message.id, app)


async def run_eagerly_async(app: Faena, task: Task[..., Any], message: Message) -> AsyncResult[Any]:
    """``run_eagerly`` on the running event loop (async tasks are awaited, not nested)."""
    runs = _runs(app, task, message)
    with contextlib.suppress(StopIteration):
        job = next(runs)
        while True:
            run = run_async if job.task.is_async else _as_coroutine(run_sync)
            job = runs.send(await run(*_call(job)))
    return AsyncResult(message.id, app)


def _as_coroutine(fn: Callable[..., Outcome]) -> Callable[..., Awaitable[Outcome]]:
    async def call(*args: Any) -> Outcome:
        return fn(*args)

    return call

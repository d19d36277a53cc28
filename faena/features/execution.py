"""Running one job and turning what happened into an :class:`Outcome`.

Every pool calls these, in the worker process or in a child, so a job ends the same way
whatever runs it: a return value is encoded with the job's serializer (an unencodable value
is a failure, not a crash), ``Retry`` and ``Reject`` become their outcomes, an exception in
``retry_for`` asks for a retry, anything else is a failure with type, message and traceback —
``SystemExit`` included: a task's ``sys.exit()`` ends its job, not the process running it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import time
from typing import Any

from faena.foundation.exceptions import Reject, Retry
from faena.model.outcome import ErrorInfo, Outcome
from faena.model.serialization import dumps_json, dumps_pickle
from faena.model.task import (
    JobContext,
    ProgressSink,
    Request,
    Task,
    reset_current_context,
    set_current_context,
)


def encode_value(value: Any, serializer: str) -> bytes:
    """Encode a return value with the job's serializer."""
    if serializer == "pickle":
        return dumps_pickle(value, "the return value")
    return dumps_json(value, "the return value")


def success(value: Any, serializer: str, runtime_s: float) -> Outcome:
    try:
        return Outcome(status="success", value=encode_value(value, serializer), runtime_s=runtime_s)
    except Exception as exc:  # SerializationError, or an encoder's own (a lone surrogate...)
        return Outcome(status="failure", error=ErrorInfo.from_exception(exc), runtime_s=runtime_s)


def from_exception(task: Task[..., Any], exc: BaseException, runtime_s: float) -> Outcome:
    """The outcome of a run that raised ``exc``."""
    if isinstance(exc, Retry):
        cause = ErrorInfo.from_exception(exc.exc) if exc.exc is not None else None
        return Outcome(
            status="retry",
            error=cause,
            countdown=exc.countdown,
            eta=exc.eta,
            max_retries=exc.max_retries,
            runtime_s=runtime_s,
        )
    if isinstance(exc, Reject):
        return Outcome(
            status="reject",
            reason=exc.reason,
            error=ErrorInfo.from_exception(exc),
            runtime_s=runtime_s,
        )
    if isinstance(exc, SystemExit):
        # sys.exit() in a task (argparse or click on bad input, a script's main() called as a
        # task) ends that job, never the worker and the other jobs it runs.
        return Outcome(
            status="failure",
            error=ErrorInfo(
                type="SystemExit",
                message=f"the task called sys.exit({exc.code!r})",
                traceback=ErrorInfo.from_exception(exc).traceback,
            ),
            runtime_s=runtime_s,
        )
    error = ErrorInfo.from_exception(exc)
    if task.defaults.retry_for and isinstance(exc, task.defaults.retry_for):
        return Outcome(status="retry", error=error, runtime_s=runtime_s)
    return Outcome(status="failure", error=error, runtime_s=runtime_s)


def run_coroutine(coro: Any) -> Any:
    """Run a coroutine to completion from sync code, even under a running event loop (then on
    a short-lived thread of its own, as ``asyncio.run`` cannot nest)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="faena-eager") as pool:
        return pool.submit(contextvars.copy_context().run, asyncio.run, coro).result()


def run_sync(
    task: Task[..., Any],
    request: Request,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    serializer: str,
    progress: ProgressSink,
    *,
    in_worker: bool = False,
) -> Outcome:
    """Run a sync task here; for an async task, run its coroutine to completion here.

    ``in_worker``: a worker's pool runs the job, where a ``KeyboardInterrupt`` can only come
    from the task's own code (the worker handles Ctrl-C itself): it fails the job instead of
    ending the process. Elsewhere (eager mode) it goes on, to stop the caller's program."""
    context = JobContext(task, request, progress)
    token = set_current_context(context)
    started = time.perf_counter()
    try:
        value = task.run(context, args, kwargs)
        if task.is_async:
            value = run_coroutine(value)
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt) and not in_worker:
            raise
        return from_exception(task, exc, time.perf_counter() - started)
    finally:
        reset_current_context(token)
    return success(value, serializer, time.perf_counter() - started)


async def run_async(
    task: Task[..., Any],
    request: Request,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    serializer: str,
    progress: ProgressSink,
    *,
    in_worker: bool = False,
) -> Outcome:
    """Run an async task on the current event loop (``in_worker``: see :func:`run_sync`)."""
    context = JobContext(task, request, progress)
    token = set_current_context(context)
    started = time.perf_counter()
    running = asyncio.current_task()
    # Counted from here: a cancel request an earlier job left on the task that runs this one
    # (on Python 3.11, a TaskGroup whose child failed does not take its request back) is not
    # this job's.
    requests = running.cancelling() if running is not None else 0
    try:
        value = await task.run(context, args, kwargs)
    except BaseException as exc:
        if isinstance(exc, asyncio.CancelledError):
            # A cancel of the task running the job belongs to whoever cancelled (a time
            # limit, a terminate, a cold shutdown); a CancelledError the job's own code let
            # out (something it awaited was cancelled) is the job failing.
            if running is None or running.cancelling() > requests:
                raise
        elif isinstance(exc, KeyboardInterrupt) and not in_worker:
            raise
        return from_exception(task, exc, time.perf_counter() - started)
    finally:
        reset_current_context(token)
    return success(value, serializer, time.perf_counter() - started)

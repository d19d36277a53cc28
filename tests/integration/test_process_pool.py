"""The ``processes`` pool, driven directly (no worker): outcomes, deaths, limits, recycling.

The children import ``tests.integration.pool_tasks`` as their app. A test learns that a job is
running in a child from the job's own progress report, never from a sleep.
"""

from __future__ import annotations

import asyncio
import datetime
import decimal
import multiprocessing
import os
import signal
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

import pytest

from faena.contracts.pool import Job
from faena.foundation.exceptions import ConfigurationError
from faena.foundation.util import new_id
from faena.model.message import Message, encode_message, pack_arguments, pack_headers
from faena.model.outcome import Outcome
from faena.model.serialization import loads_json
from faena.model.task import ProgressSink, Request, Task
from faena.worker.pools import processes
from faena.worker.pools.processes import ProcessPool
from tests.integration import pool_tasks

pytestmark = pytest.mark.timeout(20)

APP_SPEC = "tests.integration.pool_tasks"


def _ignore(fraction: float, message: str | None) -> None:
    pass


def make_job(
    task: Task[..., Any],
    *args: Any,
    time_limit: float | None = None,
    soft_time_limit: float | None = None,
    progress: ProgressSink = _ignore,
) -> Job:
    job_id = new_id()
    body = encode_message(
        Message(id=job_id, task=task.name, queue="default", **pack_arguments(args, {}, "json"))
    )
    return Job(
        request=Request(id=job_id, task=task.name),
        body=body,
        args=args,
        kwargs={},
        serializer="json",
        time_limit=time_limit,
        soft_time_limit=soft_time_limit,
        progress=progress,
    )


def value(outcome: Outcome) -> Any:
    assert outcome.status == "success", outcome
    assert outcome.value is not None
    return loads_json(outcome.value)


@asynccontextmanager
async def running_pool(size: int = 1, **options: Any) -> AsyncIterator[ProcessPool]:
    pool = ProcessPool(size, pool_tasks.app.registry, app_spec=APP_SPEC, **options)
    await pool.start()
    try:
        yield pool
    finally:
        await pool.stop(graceful=False, timeout_s=5)
        assert multiprocessing.active_children() == []  # every child joined, none left behind


def scenario(body: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(body())


class Started:
    """A progress sink that notes when a ``started_then_sleep`` job is running, and where."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.pid = 0

    def __call__(self, fraction: float, message: str | None) -> None:
        if message and message.startswith("started "):
            self.pid = int(message.split()[1])
            self.event.set()

    async def wait(self) -> int:
        await self.event.wait()
        return self.pid


def started_job(seconds: float) -> tuple[Job, Started]:
    """A job that says when it is running in a child (and which), then sleeps ``seconds``."""
    started = Started()
    return make_job(pool_tasks.started_then_sleep, seconds, progress=started), started


def test_return_values_round_trip() -> None:
    async def body() -> None:
        async with running_pool(2) as pool:
            # When sync and async tasks run in children
            total, async_total = await asyncio.gather(
                pool.run(make_job(pool_tasks.add, 2, 3)),
                pool.run(make_job(pool_tasks.async_add, 3, 4)),
            )
            # Then their values come back encoded with the job's serializer
            assert value(total) == 5
            assert value(async_total) == 7
            assert pool.health().size == 2
            assert pool.health().busy == 0

    scenario(body)


def test_an_exception_is_a_failure_with_its_traceback() -> None:
    async def body() -> None:
        async with running_pool() as pool:
            outcome = await pool.run(make_job(pool_tasks.boom, "no cheese"))
            assert outcome.status == "failure"
            assert outcome.error is not None
            assert outcome.error.type == "ValueError"
            assert outcome.error.message == "no cheese"
            assert "Traceback" in outcome.error.traceback
            assert "in boom" in outcome.error.traceback
            assert pool.health().restarts == 0  # a failing task does not cost a child

    scenario(body)


def test_exit_and_odd_error_text_are_failures_that_keep_the_child() -> None:
    async def body() -> None:
        async with running_pool() as pool:
            # When tasks call sys.exit(), fail with text UTF-8 cannot encode, and fail with an
            # exception whose str() fails
            exited = await pool.run(make_job(pool_tasks.exits, 2))
            odd = await pool.run(make_job(pool_tasks.bad_text))
            broken = await pool.run(make_job(pool_tasks.unprintable))
            # Then each is a failure saying what happened, and the same child goes on
            assert exited.status == odd.status == broken.status == "failure"
            assert exited.error is not None
            assert odd.error is not None
            assert broken.error is not None
            assert (exited.error.type, exited.error.message) == (
                "SystemExit",
                "the task called sys.exit(2)",
            )
            assert odd.error.message == "cannot import caf\\udce9.csv"
            assert broken.error.type == "tests.integration.pool_tasks.Unprintable"
            assert "str() of this" in broken.error.message
            assert value(await pool.run(make_job(pool_tasks.add, 1, 1))) == 2
            assert pool.health().restarts == 0

    scenario(body)


def test_headers_reach_the_task_with_their_types() -> None:
    headers = {
        "amount": decimal.Decimal("1.50"),
        "pair": (1, 2),
        "when": datetime.datetime(2026, 1, 2, 3, 4, 5),
        "when_tz": datetime.datetime(
            2026, 1, 2, 3, 4, 5, tzinfo=datetime.timezone(datetime.timedelta(hours=2))
        ),
        "day": datetime.date(2026, 1, 2),
        "ref": uuid.UUID(int=1),
    }
    job_id = new_id()
    body = encode_message(
        Message(
            id=job_id,
            task=pool_tasks.header_types.name,
            queue="default",
            headers=pack_headers(headers),
            **pack_arguments((), {}, "json"),
        )
    )
    job = Job(
        request=Request(id=job_id, task=pool_tasks.header_types.name, headers=headers),
        body=body,
        args=(),
        kwargs={},
        serializer="json",
        time_limit=None,
        soft_time_limit=None,
        progress=_ignore,
    )

    async def body_() -> None:
        async with running_pool() as pool:
            # Then a task in a child sees the same values as in any other pool
            assert value(await pool.run(job)) == {k: repr(v) for k, v in headers.items()}

    scenario(body_)


def test_a_child_killed_mid_job_is_lost_and_replaced() -> None:
    async def body() -> None:
        async with running_pool(2) as pool:
            # When the child running a job is SIGKILLed
            outcome = await pool.run(make_job(pool_tasks.suicide))
            # Then the job is lost, saying why, and the pool is back to full size
            assert outcome.status == "lost"
            assert outcome.error is not None
            assert outcome.error.type == "faena.WorkerLost"
            assert "died: killed by signal 9 (SIGKILL)" in outcome.error.message
            health = pool.health()
            assert (health.size, health.busy, health.restarts) == (2, 0, 1)
            # And the replacement runs jobs
            results = await asyncio.gather(
                *(pool.run(make_job(pool_tasks.add, i, 1)) for i in range(4))
            )
            assert [value(r) for r in results] == [1, 2, 3, 4]

    scenario(body)


def test_a_child_that_exits_mid_job_is_lost() -> None:
    async def body() -> None:
        async with running_pool() as pool:
            outcome = await pool.run(make_job(pool_tasks.hard_exit, 3))
            assert outcome.status == "lost"
            assert outcome.error is not None
            assert outcome.error.message.endswith("died: exited with code 3")
            assert value(await pool.run(make_job(pool_tasks.add, 1, 1))) == 2
            assert pool.health().restarts == 1

    scenario(body)


def test_hard_time_limit_kills_the_child_within_a_second() -> None:
    async def body() -> None:
        async with running_pool(2) as pool:
            # When a job hangs past its hard limit
            started = time.monotonic()
            outcome = await pool.run(make_job(pool_tasks.hang, time_limit=0.5))
            elapsed = time.monotonic() - started
            # Then it fails with TimeLimitExceeded within limit + 1 s
            assert elapsed < 0.5 + 1.0, elapsed
            assert outcome.status == "failure"
            assert outcome.error is not None
            assert outcome.error.type == "faena.TimeLimitExceeded"
            assert "hard time limit (0.5 s) exceeded" in outcome.error.message
            # And the pool is back to full size, and works
            health = pool.health()
            assert (health.size, health.busy, health.restarts) == (2, 0, 1)
            assert value(await pool.run(make_job(pool_tasks.add, 2, 2))) == 4

    scenario(body)


def test_soft_time_limit_is_raised_inside_the_task() -> None:
    async def body() -> None:
        async with running_pool() as pool:
            # A task that catches it cleans up and returns
            caught = await pool.run(make_job(pool_tasks.soft_catcher, soft_time_limit=0.2))
            assert value(caught) == "cleaned up"
            # A task that does not fails with it
            uncaught = await pool.run(make_job(pool_tasks.sleeper, 30, soft_time_limit=0.2))
            assert uncaught.status == "failure"
            assert uncaught.error is not None
            assert uncaught.error.type.endswith("SoftTimeLimitExceeded")
            # The timer is cleared after each job: a limit that did not fire does not leak
            assert value(await pool.run(make_job(pool_tasks.sleeper, 0, soft_time_limit=0.2))) == 0
            assert value(await pool.run(make_job(pool_tasks.sleeper, 0.4))) == 0.4
            assert pool.health().restarts == 0  # the soft limit never costs a child

    scenario(body)


def test_a_task_with_its_own_alarm_handler_does_not_turn_soft_limits_off() -> None:
    async def body() -> None:
        async with running_pool() as pool:
            # Given a child where a task set a SIGALRM handler of its own
            assert value(await pool.run(make_job(pool_tasks.takes_alarm))) == "mine"
            # Then the next job's soft limit still fires in that child
            late = await pool.run(make_job(pool_tasks.sleeper, 30, soft_time_limit=0.2))
            assert late.status == "failure"
            assert late.error is not None
            assert late.error.type.endswith("SoftTimeLimitExceeded")
            assert pool.health().restarts == 0

    scenario(body)


def test_progress_is_delivered_on_the_event_loop_thread() -> None:
    async def body() -> None:
        seen: list[tuple[float, str | None, int]] = []

        def progress(fraction: float, message: str | None) -> None:
            seen.append((fraction, message, threading.get_ident()))

        async with running_pool() as pool:
            outcome = await pool.run(make_job(pool_tasks.reporter, progress=progress))
            assert value(outcome) == "reported"
        loop_thread = threading.get_ident()
        assert seen == [(0.25, "quarter", loop_thread), (1.0, "done", loop_thread)]

    scenario(body)


def test_max_tasks_per_child_replaces_the_child() -> None:
    async def body() -> None:
        async with running_pool(1, max_tasks_per_child=2) as pool:
            pids = [value(await pool.run(make_job(pool_tasks.pid))) for _ in range(3)]
            assert pids[0] == pids[1] != pids[2]
            health = pool.health()
            assert (health.size, health.restarts) == (1, 0)  # planned: not a loss
            assert pool.recycled == 1

    scenario(body)


def test_max_memory_per_child_replaces_a_child_that_grew() -> None:
    async def body() -> None:
        async with running_pool(1, max_memory_per_child=200 * 1024) as pool:
            first = value(await pool.run(make_job(pool_tasks.pid)))
            assert value(await pool.run(make_job(pool_tasks.pid))) == first  # small: kept
            # When a job leaves the child over the limit, it still reports its outcome
            assert value(await pool.run(make_job(pool_tasks.hog, 256))) == 1
            # Then the next job runs in a fresh child
            assert value(await pool.run(make_job(pool_tasks.pid))) != first
            assert pool.health().restarts == 0
            assert pool.recycled == 1

    scenario(body)


def test_terminate_kills_the_child_running_the_job() -> None:
    async def body() -> None:
        async with running_pool(1) as pool:
            job, started = started_job(30)
            running = asyncio.ensure_future(pool.run(job))
            await started.wait()
            assert pool.terminate("not-here") is False
            assert pool.terminate(job.request.id) is True
            outcome = await running
            assert outcome.status == "failure"
            assert outcome.error is not None
            assert outcome.error.type == "faena.TaskRevoked"
            assert outcome.error.message.startswith("terminated")
            assert pool.health().size == 1
            assert value(await pool.run(make_job(pool_tasks.add, 1, 2))) == 3

    scenario(body)


def test_a_sigterm_to_a_child_does_not_end_its_job() -> None:
    async def body() -> None:
        async with running_pool(1) as pool:
            # Given a job running in a child
            job, started = started_job(0.5)
            running = asyncio.ensure_future(pool.run(job))
            child = await started.wait()
            # When the child gets SIGTERM (systemd stops a whole control group that way)
            os.kill(child, signal.SIGTERM)
            # Then the job finishes in it: only the worker decides when children stop
            assert value(await running) == 0.5
            assert pool.health().restarts == 0

    scenario(body)


def test_jobs_wait_for_a_free_child() -> None:
    async def body() -> None:
        async with running_pool(1) as pool:
            results = await asyncio.gather(
                *(pool.run(make_job(pool_tasks.add, i, i)) for i in range(5))
            )
            assert [value(r) for r in results] == [0, 2, 4, 6, 8]

    scenario(body)


def test_cancelling_run_kills_and_replaces_the_child() -> None:
    async def body() -> None:
        async with running_pool(1) as pool:
            job, started = started_job(30)
            running = asyncio.ensure_future(pool.run(job))
            await started.wait()
            running.cancel()
            with pytest.raises(asyncio.CancelledError):
                await running
            # The replacement is up by the time a new job needs it
            assert value(await pool.run(make_job(pool_tasks.add, 5, 5))) == 10
            assert pool.health().restarts == 1

    scenario(body)


def test_graceful_stop_lets_the_running_job_finish() -> None:
    async def body() -> None:
        pool = ProcessPool(2, pool_tasks.app.registry, app_spec=APP_SPEC)
        await pool.start()
        job, started = started_job(0.3)
        running = asyncio.ensure_future(pool.run(job))
        await started.wait()
        await pool.stop(graceful=True, timeout_s=10)
        assert value(await running) == 0.3
        assert multiprocessing.active_children() == []
        assert pool.health().size == 0
        after = await pool.run(make_job(pool_tasks.add, 1, 1))
        assert after.status == "lost"  # nothing runs on a stopped pool; the message goes back

    scenario(body)


def test_stop_without_grace_reports_running_jobs_lost_at_once() -> None:
    async def body() -> None:
        pool = ProcessPool(1, pool_tasks.app.registry, app_spec=APP_SPEC)
        await pool.start()
        job, started = started_job(30)
        running = asyncio.ensure_future(pool.run(job))
        waiting = asyncio.ensure_future(pool.run(make_job(pool_tasks.add, 1, 1)))
        await started.wait()
        began = time.monotonic()
        await pool.stop(graceful=False, timeout_s=10)
        assert time.monotonic() - began < 2.0
        outcome, unstarted = await running, await waiting
        assert outcome.status == unstarted.status == "lost"
        assert outcome.error is not None
        assert "the pool stopped before the job finished" in outcome.error.message
        assert unstarted.error is not None
        assert "before the job started" in unstarted.error.message
        assert multiprocessing.active_children() == []

    scenario(body)


def test_app_spec_is_required() -> None:
    with pytest.raises(ConfigurationError, match="app_spec"):
        ProcessPool(1, pool_tasks.app.registry)


def test_an_app_the_children_cannot_import_fails_start() -> None:
    async def body() -> None:
        pool = ProcessPool(2, pool_tasks.app.registry, app_spec="tests.integration.no_such_app")
        with pytest.raises(ConfigurationError, match="cannot import app module"):
            await pool.start()
        assert multiprocessing.active_children() == []

    scenario(body)


def test_a_child_that_never_finishes_importing_fails_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(processes, "READY_TIMEOUT_S", 0.5)

    async def body() -> None:
        pool = ProcessPool(1, pool_tasks.app.registry, app_spec="tests.integration.pool_slow_app")
        began = time.monotonic()
        with pytest.raises(ConfigurationError, match=r"did not import app .* within 0\.5 s"):
            await pool.start()
        assert time.monotonic() - began < 5.0
        assert multiprocessing.active_children() == []

    scenario(body)


def test_a_worker_that_cannot_start_stops_its_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    from faena import BrokerUnavailable
    from faena.worker.worker import Worker, WorkerOptions

    # Given a broker that refuses the worker's registration once the pool has started
    async def refuse(info: Any) -> None:
        raise BrokerUnavailable("the broker did not answer (injected)")

    monkeypatch.setattr(pool_tasks.app.broker, "register_worker", refuse)
    options = WorkerOptions(pool="processes", concurrency=2, app_spec=APP_SPEC)

    async def embedded() -> list[Any]:
        # When a worker embedded in a running program fails to start
        with pytest.raises(BrokerUnavailable):
            await Worker(pool_tasks.app, options).run()
        # Then, while that program's event loop goes on, no pool child is left behind
        return multiprocessing.active_children()

    assert asyncio.run(embedded()) == []

"""Eager mode: ``delay()`` runs the task inline, through the same encoding and decisions a
worker uses, so a test in eager mode fails where production would."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pytest

from faena import (
    FAILURE,
    REVOKED,
    SUCCESS,
    ConfigurationError,
    Faena,
    FakeClock,
    JobContext,
    MessageTooLarge,
    Request,
    SerializationError,
    TaskFailed,
)

from .support import AppFactory, queue_stats


def test_delay_runs_inline_and_stores_the_result(eager_app: Faena) -> None:
    # Given an eager app
    ran: list[tuple[int, int]] = []

    @eager_app.task
    def add(x: int, y: int) -> int:
        ran.append((x, y))
        return x + y

    # When a task is sent
    r = add.delay(2, 3)
    # Then it already ran, nothing was queued, and its result reads as usual
    assert ran == [(2, 3)]
    assert queue_stats(eager_app) == []
    assert r.state == SUCCESS
    assert r.get(timeout=1) == 5


def test_arguments_make_the_serialization_round_trip(eager_app: Faena) -> None:
    # Given a task that mutates its argument and reports its types
    sent = {"when": dt.date(2024, 1, 2), "items": [1, 2]}
    seen: list[Any] = []

    @eager_app.task
    def touch(payload: dict[str, Any], pair: tuple[int, int]) -> None:
        seen.append((type(payload["when"]), type(pair)))
        payload["items"].append(3)

    touch.delay(sent, (1, 2))
    # Then it received decoded copies (the caller's object is untouched), types intact
    assert seen == [(dt.date, tuple)]
    assert sent["items"] == [1, 2]


def test_unserializable_argument_fails_at_delay(eager_app: Faena) -> None:
    ran: list[Any] = []

    # Given an eager task
    @eager_app.task
    def f(x: Any) -> None:
        ran.append(x)

    # When an argument has no JSON form, Then delay raises and the task never runs
    with pytest.raises(SerializationError, match=r"args\[0\]"):
        f.delay(object())
    assert ran == []


def test_unserializable_return_value_fails_the_job_as_on_a_worker(eager_app: Faena) -> None:
    # Given a task that returns something with no JSON form
    @eager_app.task
    def leak() -> object:
        return object()

    # When it runs eagerly
    r = leak.delay()
    # Then the job fails (as it would on a worker), rather than passing in tests only
    assert r.state == FAILURE
    with pytest.raises(TaskFailed, match="cannot serialize the return value") as caught:
        r.get(timeout=1)
    assert caught.value.type_name.endswith("SerializationError")


def test_unencodable_return_string_fails_the_job_not_delay(eager_app: Faena) -> None:
    # Given a task returning a str that is not valid UTF-8 (a lone surrogate)
    @eager_app.task
    def name() -> str:
        return "bad-\udc80"

    # When it runs eagerly, Then delay returns and the job failed, as on a worker
    r = name.delay()
    assert r.state == FAILURE
    failed = r.get(timeout=1, propagate=False)
    assert isinstance(failed, TaskFailed)
    assert failed.type_name == "faena.SerializationError"


def test_task_failure_is_recorded(eager_app: Faena) -> None:
    # Given an eager task that raises
    @eager_app.task
    def explode() -> None:
        raise ZeroDivisionError("boom")

    # When it is sent
    r = explode.delay()
    # Then the failure is recorded as on a worker
    with pytest.raises(TaskFailed, match="ZeroDivisionError: boom"):
        r.get(timeout=1)


def test_retries_run_again_at_once_until_success(eager_app: Faena) -> None:
    # Given a task that asks for two retries with a long countdown
    attempts: list[int] = []

    @eager_app.task(bind=True, max_retries=5)
    def flaky(self: JobContext) -> int:
        attempts.append(self.request.retries)
        if self.request.retries < 2:
            raise self.retry(countdown=3600)
        return self.request.attempt

    # When it is sent eagerly, Then the retries happen inline (the back-off is not waited for)
    r = flaky.delay()
    assert attempts == [0, 1, 2]
    assert r.get(timeout=1) == 3


def test_retries_stop_at_the_limit(eager_app: Faena) -> None:
    # Given a task that always fails with an exception it retries, at most twice
    attempts: list[int] = []

    @eager_app.task(retry_for=(ConnectionError,), max_retries=2)
    def down() -> None:
        attempts.append(1)
        raise ConnectionError("refused")

    # When it is sent eagerly
    r = down.delay()
    # Then it ran three times and failed for good
    assert len(attempts) == 3
    assert r.state == FAILURE


def test_bound_task_request_in_eager_mode(eager_app: Faena) -> None:
    # Given a bound eager task
    seen: list[Request] = []

    @eager_app.task(bind=True)
    def who(self: JobContext) -> None:
        seen.append(self.request)

    # When it is sent with call options
    r = who.apply_async(task_id="e-1", headers={"h": 1}, queue="q")
    # Then its request carries them, and says it ran eagerly
    (request,) = seen
    assert (request.id, request.queue, dict(request.headers)) == ("e-1", "q", {"h": 1})
    assert request.worker == "eager"
    assert r.id == "e-1"


def test_child_sent_from_an_eager_task_knows_its_parent(eager_app: Faena) -> None:
    # Given a parent that sends a child, both eager
    seen: list[Request] = []

    @eager_app.task(bind=True)
    def child(self: JobContext) -> None:
        seen.append(self.request)

    @eager_app.task
    def parent() -> None:
        child.delay()

    # When the parent is sent
    r = parent.delay()
    # Then the child ran inline, knowing its parent and root
    assert seen[0].parent_id == r.id
    assert seen[0].root_id == r.id


def test_async_task_via_adelay_runs_on_the_callers_loop(eager_app: Faena) -> None:
    # Given an async task
    loops: list[asyncio.AbstractEventLoop] = []

    @eager_app.task
    async def fetch(sku: str) -> str:
        loops.append(asyncio.get_running_loop())
        await asyncio.sleep(0)
        return sku.upper()

    # When an async producer sends it eagerly
    async def produce() -> tuple[str, asyncio.AbstractEventLoop]:
        r = await fetch.adelay("a1")
        return await r, asyncio.get_running_loop()

    value, loop = asyncio.run(produce())
    # Then it ran to completion on the producer's own loop
    assert value == "A1"
    assert loops == [loop]


def test_async_task_via_delay_from_sync_code(eager_app: Faena) -> None:
    # Given an async task in an eager app
    @eager_app.task
    async def fetch(sku: str) -> str:
        return sku.upper()

    # When sync code sends it, Then it runs to completion
    assert fetch.delay("b2").get(timeout=1) == "B2"


def test_async_task_via_delay_from_inside_a_running_loop(eager_app: Faena) -> None:
    # Given an async producer (an async view, say) that uses the sync delay()
    @eager_app.task
    async def fetch(sku: str) -> str:
        return sku.upper()

    async def view() -> str:
        return str(fetch.delay("c3").get(timeout=1))

    # When it sends an async task eagerly from inside its running loop
    # Then the job runs as it would on a worker
    assert asyncio.run(view()) == "C3"


def test_sync_task_via_aapply_async(eager_app: Faena) -> None:
    # Given a sync task in an eager app
    @eager_app.task
    def add(x: int, y: int) -> int:
        return x + y

    # When an async producer sends it and awaits the result
    async def produce() -> int:
        r = await add.aapply_async((1, 2))
        return await r.aget(timeout=1)

    # Then it ran inline
    assert asyncio.run(produce()) == 3


def test_wrong_arguments_fail_at_delay(eager_app: Faena) -> None:
    # Given an eager task
    @eager_app.task
    def add(x: int, y: int) -> int:
        return x + y

    # When it is sent with a missing argument, Then delay raises
    with pytest.raises(TypeError, match="missing a required argument"):
        add.delay(1)  # type: ignore[call-arg]


def test_size_limit_applies(make_app: AppFactory) -> None:
    # Given an eager app with a small message limit
    app = make_app(eager=True, max_message_size=512)

    @app.task
    def f(blob: str) -> None: ...

    # When a call's message is over it, Then delay raises as it would with a broker
    with pytest.raises(MessageTooLarge):
        f.delay("x" * 1000)


def test_pickle_task_in_a_json_only_eager_app_is_refused(eager_app: Faena) -> None:
    # The worker would refuse it (serializer_refused): eager mode refuses it at delay
    # Given a pickle task in a json-only eager app
    @eager_app.task(serializer="pickle")
    def f(x: int) -> None: ...

    # When it is sent, Then it is refused, as it is when sent to a worker
    with pytest.raises(ConfigurationError, match="which this app does not accept"):
        f.delay(1)


class Box:
    """No JSON form; picklable (module level)."""

    def __init__(self, v: int) -> None:
        self.v = v


def test_pickle_task_runs_when_accepted(make_app: AppFactory) -> None:
    # Given an eager app that accepts pickle, and a pickle task
    app = make_app(eager=True, accept=["json", "pickle"])

    @app.task(serializer="pickle")
    def unbox(b: Box) -> Box:
        return Box(b.v + 1)

    # When an object with no JSON form is sent, Then it arrives and comes back
    assert unbox.delay(Box(41)).get(timeout=1).v == 42


def test_unpicklable_argument_fails_at_delay(make_app: AppFactory) -> None:
    # Given an eager app that accepts pickle, and a pickle task
    app = make_app(eager=True, accept=["json", "pickle"])

    @app.task(serializer="pickle")
    def f(x: Any) -> None: ...

    # When an argument cannot be pickled, Then delay raises, naming the arguments
    with pytest.raises(SerializationError, match="cannot pickle the arguments"):
        f.delay(lambda: None)


def test_enqueue_of_an_unregistered_name_is_refused(eager_app: Faena) -> None:
    # Given an eager app, When a name it does not know is enqueued, Then it is refused
    with pytest.raises(ConfigurationError, match="eager mode runs tasks of this app only"):
        eager_app.enqueue("somewhere.else", 1)


def test_job_already_expired_when_sent_is_revoked_not_run(
    eager_app: Faena, clock: FakeClock
) -> None:
    # Given an eager task
    ran: list[int] = []

    @eager_app.task
    def f() -> None:
        ran.append(1)

    # When it is sent with an expiry that has already passed
    r = f.apply_async(expires=dt.datetime.fromtimestamp(clock.time() - 10, dt.UTC))
    # Then, as on a worker, it never runs and reads REVOKED
    assert ran == []
    assert r.state == REVOKED


def test_map_of_an_async_task_runs_inside_a_running_event_loop(eager_app: Faena) -> None:
    @eager_app.task(name="eager.double")
    async def double(x: int) -> int:
        await asyncio.sleep(0)
        return 2 * x

    async def caller() -> tuple[Any, Any, Any]:
        # An async web handler sending map, starmap and chunks of an async task, in eager mode
        mapped = await double.map([1, 2]).adelay()
        starred = await double.starmap([(3,), (4,)]).adelay()
        chunked = await double.chunks([(5,), (6,), (7,)], 2).adelay()
        return mapped.get(timeout=1), starred.get(timeout=1), chunked.get(timeout=1)

    assert asyncio.run(caller()) == ([2, 4], [6, 8], [[10, 12], [14]])

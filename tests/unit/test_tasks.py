"""Declaring tasks and sending them: decorator forms, options, call options, by-name and
RQ-style sends, shared tasks."""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from faena import (
    FAILURE,
    QUEUED,
    RETRY,
    REVOKED,
    SCHEDULED,
    SUCCESS,
    ConfigurationError,
    Faena,
    FakeClock,
    JobContext,
    MessageTooLarge,
    Reject,
    Request,
    SerializationError,
    Task,
    TaskRevoked,
    shared_task,
)
from faena.app import core
from faena.model.options import OPTION_NAMES

from .support import AppFactory, dead_letters, drain, queue_stats

multiplied: list[tuple[int, int]] = []


def multiply(x: int, y: int) -> int:
    """A plain module-level function, for RQ-style sends."""
    multiplied.append((x, y))
    return x * y


@pytest.fixture(autouse=True)
def _fresh_multiplied() -> None:
    multiplied.clear()


# -- declaring ------------------------------------------------------------------------------


def test_decorator_forms_declare_and_register_tasks(app: Faena) -> None:
    # Given the three decorator forms, sync and async
    @app.task
    def bare(x: int) -> int:
        return x

    @app.task()
    def called(x: int) -> int:
        return x

    @app.task(name="shop.fetch", queue="io")
    async def fetch(sku: str) -> str:
        return sku

    # Then each is a Task registered under its name, async detected
    for task in (bare, called, fetch):
        assert isinstance(task, Task)
        assert app.registry.find(task.name) is task
    assert fetch.name == "shop.fetch"
    assert fetch.is_async
    assert not bare.is_async
    assert fetch.defaults.queue == "io"


def test_default_name_is_module_and_qualified_name(app: Faena) -> None:
    # Given a task declared without a name
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    # Then its name is its module and qualified name
    assert add.name == f"{__name__}.{add.fn.__qualname__}"
    assert add.__name__ == "add"


def test_unknown_task_option_is_an_error_at_declaration_listing_valid_ones(app: Faena) -> None:
    # When a task is declared with a misspelt option
    with pytest.raises(ConfigurationError) as caught:
        app.task(retries=3)
    # Then the decorator call itself raises, naming it and listing the valid options
    text = str(caught.value)
    assert "retries" in text
    for name in OPTION_NAMES:
        assert name in text


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"priority": 10}, "priority must be an int from 0 to 9"),
        ({"priority": "high"}, "priority must be an int"),
        ({"queue": "no spaces"}, "invalid queue name"),
        ({"time_limit": 0}, "time_limit must be a positive number"),
        ({"soft_time_limit": 10, "time_limit": 5}, "soft_time_limit .* must be below"),
        ({"max_retries": -1}, "max_retries must be an int >= 0"),
        ({"retry_for": [int]}, "retry_for must be exception types"),
        ({"serializer": "yaml"}, "serializer must be"),
        (
            {"default_retry_delay": -1},
            "default_retry_delay must be a finite number of seconds >= 0",
        ),
        ({"default_retry_delay": float("inf")}, "default_retry_delay must be a finite number"),
        ({"retry_backoff_max": float("nan")}, "retry_backoff_max must be a finite number"),
        ({"time_limit": float("inf")}, r"time_limit must be a positive number .*not inf or nan"),
        ({"soft_time_limit": 2**63 - 1}, r"soft_time_limit must be at most 1e\+09 seconds.*None"),
        ({"result_ttl": 1e10}, r"result_ttl must be at most"),
        ({"result_ttl": float("nan")}, r"result_ttl must be a positive number .*not inf or nan"),
        ({"retry_backoff": "yes"}, "retry_backoff must be True, False or a positive finite"),
        ({"retry_backoff": -5}, "retry_backoff must be True, False or a positive finite"),
        ({"retry_backoff": float("nan")}, "retry_backoff must be True, False or a positive"),
        ({"max_retries": "5"}, "max_retries must be an int >= 0"),
        ({"ignore_result": "no"}, "ignore_result must be True or False"),
        ({"acks_late": "False"}, "acks_late must be True or False"),
        ({"bind": 1}, "bind must be True or False"),
        ({"retry_jitter": "no"}, "retry_jitter must be True or False"),
        ({"name": 123}, "name must be a non-empty string"),
        ({"name": ""}, "name must be a non-empty string"),
        ({"name": "  padded "}, "name must be a non-empty string without spaces"),
    ],
)
def test_bad_option_values_are_refused_at_declaration(
    app: Faena, options: dict[str, Any], message: str
) -> None:
    # When a task is declared with a bad option value, Then the declaration raises
    with pytest.raises(ConfigurationError, match=message):
        app.task(**options)


def test_two_tasks_of_one_factory_need_their_own_names(app: Faena) -> None:
    # Given a factory that declares one task per kind
    def make_handler(kind: str, **options: Any) -> Task[[str], str]:
        @app.task(**options)
        def handle(x: str) -> str:
            return f"{kind}:{x}"

        return handle

    make_handler("email")
    # When it declares a second one under the same default name, Then that is refused (the
    # second would silently run for sends of the first)
    with pytest.raises(ConfigurationError, match="is taken by"):
        make_handler("sms")
    # While with names of their own, both live side by side
    sms = make_handler("sms", name="handlers.sms")
    assert sms.delay("hi").id
    app.task(lambda: 1)
    with pytest.raises(ConfigurationError, match="is taken by"):
        app.task(lambda: 2)


def test_a_callable_without_a_qualified_name_needs_a_name(app: Faena) -> None:
    def greet(greeting: str, name: str) -> str:
        return f"{greeting} {name}"

    with pytest.raises(ConfigurationError, match="give it name="):
        app.task(functools.partial(greet, "hello"))
    task = app.task(name="greet.hello")(functools.partial(greet, "hello"))
    assert task.name == "greet.hello"


def test_bind_without_a_self_parameter_is_refused(app: Faena) -> None:
    # When a bound task takes no self, Then the declaration raises
    with pytest.raises(ConfigurationError, match="takes no 'self'"):

        @app.task(bind=True)
        def f() -> None: ...


def test_a_different_function_under_a_taken_name_is_refused(app: Faena) -> None:
    # Given a task named 'dup'
    @app.task(name="dup")
    def one() -> None: ...

    # When another function is declared under that name, Then it is refused
    with pytest.raises(ConfigurationError, match="'dup' is taken"):

        @app.task(name="dup")
        def two() -> None: ...


# -- calling locally ------------------------------------------------------------------------


def test_direct_call_runs_locally_without_sending(app: Faena) -> None:
    # Given a sync and an async task
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    @app.task
    async def fetch(sku: str) -> str:
        return sku.upper()

    # When they are called directly, Then they run here and nothing is sent
    assert add(2, 3) == 5
    assert asyncio.run(fetch("a1")) == "A1"
    assert queue_stats(app) == []


def test_direct_call_of_a_bound_task_gets_a_context(app: Faena) -> None:
    # Given a bound task
    @app.task(bind=True)
    def who(self: JobContext, x: int) -> tuple[str, str, int]:
        return self.name, self.request.task, x

    # When it is called directly, Then it gets a context naming the task
    assert who(7) == (who.name, who.name, 7)


# -- sending and running --------------------------------------------------------------------


def test_bound_task_sees_its_request(app: Faena) -> None:
    # Given a bound task that reports what it knows
    seen: list[Request] = []

    @app.task(bind=True)
    def report(self: JobContext, x: int) -> int:
        seen.append(self.request)
        return x

    # When it is sent with an id and headers and a worker runs it
    r = report.apply_async((1,), task_id="job-1", headers={"tenant": "acme"}, queue="q1")
    worker = drain(app, ["q1"])
    # Then the request carries the job's fields
    (request,) = seen
    assert r.id == "job-1"
    assert request.id == "job-1"
    assert request.task == report.name
    assert request.queue == "q1"
    assert dict(request.headers) == {"tenant": "acme"}
    assert (request.retries, request.attempt, request.deliveries) == (0, 1, 1)
    assert request.parent_id is None
    assert request.root_id == "job-1"
    assert request.worker == worker.id


def test_headers_travel_with_their_types(app: Faena) -> None:
    # Given a bound task that reads its headers
    seen: list[dict[str, Any]] = []

    @app.task(bind=True)
    def read(self: JobContext) -> None:
        seen.append(dict(self.request.headers))

    # When it is sent with headers JSON lacks a type for
    read.apply_async(headers={"day": dt.date(2024, 1, 1), "ids": (1, 2)})
    drain(app)
    # Then they arrive as sent
    assert seen == [{"day": dt.date(2024, 1, 1), "ids": (1, 2)}]


def test_unserializable_header_fails_at_send_naming_it(app: Faena) -> None:
    @app.task
    def noop() -> None: ...

    # When a header has no JSON form, Then the send fails naming it, and nothing is sent
    with pytest.raises(SerializationError, match=r"headers\['bad'\]"):
        noop.apply_async(headers={"bad": object()})
    assert queue_stats(app) == []


def test_sync_and_async_tasks_run_on_a_worker(app: Faena) -> None:
    # Given a sync and an async task
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    @app.task
    async def double(x: int) -> int:
        await asyncio.sleep(0)  # a yield to the loop, not a wait
        return 2 * x

    # When both are sent and a worker runs
    r1, r2 = add.delay(2, 3), double.delay(21)
    worker = drain(app)
    # Then both ran and returned their values
    assert (r1.get(timeout=5), r2.get(timeout=5)) == (5, 42)
    assert worker.processed == 2


def test_async_producers_use_adelay_and_aapply_async(app: Faena) -> None:
    # Given a task
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    # When an async producer sends it three ways
    async def produce() -> list[Any]:
        return [
            await add.adelay(1, 2),
            await add.aapply_async((3, 4), queue="other"),
            await add.options(priority=3).adelay(5, 6),
        ]

    # Then the jobs wait on the queues asked for, and run
    r1, r2, r3 = asyncio.run(produce())
    assert {(s.queue, s.ready) for s in queue_stats(app)} == {("default", 2), ("other", 1)}
    drain(app, ["default", "other"])
    assert [r.get(timeout=5) for r in (r1, r2, r3)] == [3, 7, 11]


def test_options_fixes_call_options_for_delay(app: Faena) -> None:
    # Given a task sent through .options(queue=...)
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    r = add.options(queue="high").delay(1, 1)
    # Then it waits on that queue, not the default one
    assert [(s.queue, s.ready) for s in queue_stats(app)] == [("high", 1)]
    assert drain(app, ["default"]).processed == 0
    drain(app, ["high"])
    assert r.get(timeout=5) == 2


def test_task_queue_option_is_the_default_for_its_calls(app: Faena) -> None:
    # Given a task declared on the 'emails' queue
    @app.task(queue="emails")
    def send() -> None: ...

    # When it is sent plainly and with a queue option
    send.delay()
    send.apply_async(queue="urgent")
    # Then the plain call uses the task's queue and the option wins for the other
    assert {s.queue for s in queue_stats(app)} == {"emails", "urgent"}


def test_countdown_schedules_the_job_until_it_is_due(app: Faena, clock: FakeClock) -> None:
    # Given a job sent with a countdown
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    r = add.apply_async((1, 2), countdown=30)
    # Then it is SCHEDULED and a worker does not run it early
    assert r.state == SCHEDULED
    assert drain(app).processed == 0
    # When its time comes
    clock.advance(30)
    # Then it runs
    assert drain(app).processed == 1
    assert r.get(timeout=5) == 3


def test_eta_schedules_the_job(app: Faena, clock: FakeClock) -> None:
    # Given a job sent with an eta a minute ahead
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    eta = dt.datetime.fromtimestamp(clock.time() + 60, dt.UTC)
    r = add.apply_async((1, 2), eta=eta)
    # Then it is SCHEDULED and does not run a second early
    assert r.state == SCHEDULED
    clock.advance(59)
    assert drain(app).processed == 0
    # When the eta comes, Then it runs
    clock.advance(1)
    drain(app)
    assert r.state == SUCCESS


def test_eta_in_the_past_is_queued_now(app: Faena, clock: FakeClock) -> None:
    # Given an eta already passed
    @app.task
    def noop() -> None: ...

    # When a job is sent with it, Then it is queued to run now
    r = noop.apply_async(eta=clock.time() - 10)
    assert r.state == QUEUED


def test_countdown_and_eta_together_are_refused(app: Faena) -> None:
    # Given a task
    @app.task
    def noop() -> None: ...

    # When both countdown and eta are given, Then the call is refused
    with pytest.raises(ConfigurationError, match="countdown or eta"):
        noop.apply_async(countdown=1, eta=1.0)


def test_unknown_call_option_is_refused_listing_valid_ones(app: Faena) -> None:
    # Given a task
    @app.task
    def noop() -> None: ...

    # When a call option is misspelt, Then the call raises listing the valid ones
    with pytest.raises(ConfigurationError, match=r"countdwn.*valid call options are:.*countdown"):
        noop.apply_async(countdwn=5)
    with pytest.raises(ConfigurationError, match="unknown call option"):
        noop.options(retries=2)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"priority": 11}, "priority must be an int from 0 to 9"),
        ({"queue": "bad queue"}, "invalid queue name"),
        ({"task_id": ""}, "task_id must be a non-empty str"),
        ({"task_id": "report\x00v2"}, "task_id must be a non-empty str without NUL"),
        ({"headers": "abc"}, "headers must be a dict with str keys"),
        ({"headers": {1: "x"}}, "headers must be a dict with str keys"),
        ({"countdown": "soon"}, "countdown must be a finite number of seconds"),
        ({"countdown": float("inf")}, "countdown must be a finite number of seconds"),
        ({"countdown": float("nan")}, "countdown must be a finite number of seconds"),
        ({"eta": float("inf")}, "eta must be a datetime or a finite number of seconds"),
        ({"eta": float("nan")}, "eta must be a datetime or a finite number of seconds"),
        ({"eta": "2030-01-01"}, "eta must be a datetime or a finite number of seconds"),
        ({"expires": "later"}, "expires must be a datetime, a timedelta or a finite number"),
        ({"expires": float("nan")}, "expires must be a datetime, a timedelta or a finite number"),
    ],
)
def test_bad_call_option_values_are_refused(
    app: Faena, options: dict[str, Any], message: str
) -> None:
    # Given a task
    @app.task
    def noop() -> None: ...

    # When a call option has a bad value, Then nothing is sent
    with pytest.raises(ConfigurationError, match=message):
        noop.apply_async(**options)
    assert queue_stats(app) == []


def test_higher_priority_runs_first_and_equal_priorities_in_order(app: Faena) -> None:
    # Given jobs of mixed priorities waiting on one queue
    order: list[str] = []

    @app.task
    def record(label: str) -> None:
        order.append(label)

    for label, priority in [("p1", 1), ("p9", 9), ("p5-a", 5), ("p0", 0), ("p5-b", 5)]:
        record.apply_async((label,), priority=priority)
    # When one worker runs them one at a time
    drain(app, pool="solo")
    # Then higher priority first, first-in-first-out within a priority
    assert order == ["p9", "p5-a", "p5-b", "p1", "p0"]


def test_app_default_priority_applies_to_calls_without_one(make_app: AppFactory) -> None:
    # Given an app whose default priority is 5
    app = make_app(default_priority=5)
    order: list[str] = []

    @app.task
    def record(label: str) -> None:
        order.append(label)

    # When a call with priority 4 and a call without one wait together
    record.apply_async(("low",), priority=4)
    record.delay("default")
    drain(app, pool="solo")
    # Then the call without one ran first, at 5
    assert order == ["default", "low"]


def test_expired_job_is_revoked_without_running(app: Faena, clock: FakeClock) -> None:
    # Given a job that must start within 10 s
    ran: list[int] = []

    @app.task
    def late(x: int) -> None:
        ran.append(x)

    r = late.apply_async((1,), expires=10)
    # When no worker picks it up in time
    clock.advance(11)
    drain(app)
    # Then it never runs and is REVOKED with reason "expired"
    assert ran == []
    assert r.state == REVOKED
    with pytest.raises(TaskRevoked) as caught:
        r.get(timeout=5)
    assert caught.value.reason == "expired"


def test_an_expired_jobs_record_lives_for_its_tasks_result_ttl(
    app: Faena, clock: FakeClock
) -> None:
    @app.task(result_ttl=60)
    def late(x: int) -> None: ...

    r = late.apply_async((1,), expires=10)
    clock.advance(11)
    drain(app)
    assert r.record is not None
    assert r.record.expires_at == clock.time() + 60


def test_an_id_whose_message_expired_can_be_sent_again(app: Faena, clock: FakeClock) -> None:
    # Given a job with a fixed id that expired before any worker took it
    ran: list[int] = []

    @app.task
    def nightly(x: int) -> int:
        ran.append(x)
        return x

    nightly.apply_async((1,), task_id="nightly-report", expires=10)
    clock.advance(11)
    drain(app)
    assert app.AsyncResult("nightly-report").state == REVOKED

    # When the same id is sent again, without an expiry (an expiry is not a revoke)
    clock.advance(1)
    r = nightly.apply_async((2,), task_id="nightly-report")
    drain(app)

    # Then the new message runs, and its result replaces the expired one
    assert ran == [2]
    assert r.get(timeout=5) == 2


@pytest.mark.parametrize("form", ["seconds", "timedelta", "datetime", "task option"])
def test_expires_forms(app: Faena, clock: FakeClock, form: str) -> None:
    ran: list[str] = []

    @app.task(expires=10 if form == "task option" else None)
    def late(label: str) -> None:
        ran.append(label)

    def send(label: str) -> Any:
        if form == "task option":
            return late.delay(label)
        expires: Any = {
            "seconds": 10,
            "timedelta": dt.timedelta(seconds=10),
            "datetime": dt.datetime.fromtimestamp(clock.time() + 10, dt.UTC),
        }[form]
        return late.apply_async((label,), expires=expires)

    # Given a job that must start within 10 s, sent 11 s before a worker runs,
    # and one sent 5 s before
    stale = send("stale")
    clock.advance(6)
    fresh = send("fresh")
    clock.advance(5)
    # When the worker runs
    drain(app)
    # Then only the fresh one runs
    assert ran == ["fresh"]
    assert fresh.state == SUCCESS
    assert stale.state == REVOKED


def test_wrong_arguments_fail_at_delay_with_the_signature(app: Faena) -> None:
    # Given a task of two arguments
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    # When it is sent with wrong arguments, Then delay raises naming the signature, sending nothing
    with pytest.raises(TypeError, match=r"add\(x: .*, y: .*\).*missing a required argument: 'y'"):
        add.delay(1)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="unexpected keyword"):
        add.delay(1, 2, z=3)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        add.apply_async((1, 2, 3))
    assert queue_stats(app) == []


def test_task_id_is_the_job_id(app: Faena) -> None:
    # Given a task
    @app.task
    def noop() -> None: ...

    # When it is sent with a task_id
    r = noop.apply_async(task_id="order-42")
    # Then that is the job's id
    assert r.id == "order-42"
    assert r.state == QUEUED
    assert app.AsyncResult("order-42") == r


def test_reject_dead_letters_with_the_reason(app: Faena) -> None:
    # Given a task that rejects its message
    @app.task
    def check(x: int) -> None:
        raise Reject("bad input")

    # When it runs
    r = check.delay(1)
    drain(app)
    # Then the message is dead-lettered with the task's reason
    assert dead_letters(app)[r.id].reason == "bad input"
    assert r.failed()


def test_ignore_result_stores_nothing(app: Faena) -> None:
    # Given a task whose result is ignored
    ran: list[int] = []

    @app.task(ignore_result=True)
    def fire(x: int) -> int:
        ran.append(x)
        return x

    # When it runs
    r = fire.delay(1)
    drain(app)
    # Then it ran, and no record was kept
    assert ran == [1]
    assert r.record is None
    assert r.state == "PENDING"


def test_ignore_result_after_a_retry_leaves_a_success_record_not_retry(
    app: Faena, clock: FakeClock
) -> None:
    # Given a task whose result is ignored, that fails once and is retried
    runs: list[int] = []

    @app.task(ignore_result=True, retry_for=(OSError,), default_retry_delay=1)
    def fire(x: int) -> int:
        runs.append(x)
        if len(runs) == 1:
            raise OSError("first try")
        return x

    r = fire.delay(1)
    drain(app)
    assert r.state == RETRY
    # When its retry succeeds
    clock.advance(1)
    drain(app)
    # Then its state is SUCCESS (not the first run's RETRY), without a value
    assert runs == [1, 1]
    assert r.state == SUCCESS
    assert r.ready()
    assert r.get(timeout=1) is None


def test_a_job_sent_from_a_job_records_its_lineage(app: Faena) -> None:
    # Given a parent task that sends a child task
    requests: dict[str, Request] = {}

    @app.task(bind=True)
    def child(self: JobContext) -> None:
        requests["child"] = self.request

    @app.task(bind=True)
    def parent(self: JobContext) -> str:
        requests["parent"] = self.request
        return child.delay().id

    r = parent.delay()
    drain(app)
    drain(app)
    # Then the child knows its parent and root
    assert requests["child"].id == r.get(timeout=5)
    assert requests["child"].parent_id == r.id
    assert requests["child"].root_id == r.id


def test_a_parent_given_without_its_root_stands_for_the_root(app: Faena) -> None:
    requests: list[Request] = []

    @app.task(bind=True)
    def child(self: JobContext) -> None:
        requests.append(self.request)

    child.apply_async(parent_id="p-1")
    child.apply_async(parent_id="p-1", root_id="r-1")
    drain(app)
    assert sorted((r.parent_id, r.root_id) for r in requests) == [
        ("p-1", "p-1"),
        ("p-1", "r-1"),
    ]


def test_acks_late_false_acknowledges_before_running(app: Faena) -> None:
    # Given an at-most-once task
    where: list[str | None] = []

    @app.task(bind=True, acks_late=False)
    def once(self: JobContext) -> None:
        where.append(app.broker.locate(self.request.id))

    # When it runs, Then its message is already gone from the broker (a crash now cannot
    # redeliver it)
    r = once.delay()
    drain(app)
    assert where == [None]
    assert r.state == SUCCESS


def test_acks_late_false_failure_is_final_and_leaves_no_dead_letter(app: Faena) -> None:
    # Given an at-most-once task that fails
    @app.task(acks_late=False)
    def explode() -> None:
        raise ValueError("once only")

    # When it runs
    r = explode.delay()
    drain(app)
    # Then it is FAILURE, and nothing waits in the dead-letter queue
    assert r.state == FAILURE
    assert dead_letters(app) == {}


def test_acks_late_false_retry_sends_the_next_attempt(app: Faena, clock: FakeClock) -> None:
    # Given an at-most-once task that asks for one retry
    attempts: list[int] = []

    @app.task(bind=True, acks_late=False)
    def flaky(self: JobContext) -> None:
        attempts.append(self.request.attempt)
        if self.request.attempt == 1:
            raise self.retry(countdown=10)

    # When it runs, Then the retry is scheduled as a new message
    r = flaky.delay()
    drain(app)
    assert r.state == RETRY
    # When it is due, Then the second attempt runs
    clock.advance(10)
    drain(app)
    assert attempts == [1, 2]
    assert r.state == SUCCESS


def test_worker_without_queues_consumes_the_queues_tasks_declare(app: Faena) -> None:
    # Given tasks declared on their own queues
    @app.task(queue="emails")
    def send() -> str:
        return "sent"

    @app.task
    def plain() -> str:
        return "plain"

    results = [send.delay(), plain.delay()]
    # When a worker starts without naming queues, Then it runs both
    drain(app)
    assert [r.get(timeout=5) for r in results] == ["sent", "plain"]


# -- by name and RQ-style -------------------------------------------------------------------


def test_enqueue_by_name_runs_a_registered_task(app: Faena) -> None:
    # Given a task registered as billing.charge
    @app.task(name="billing.charge")
    def charge(amount: int, currency: str = "EUR") -> str:
        return f"{amount} {currency}"

    # When it is sent by name with kwargs and a queue
    r = app.enqueue("billing.charge", 10, kwargs={"currency": "USD"}, queue="high")
    # Then it waits on that queue and runs with those arguments
    assert [s.queue for s in queue_stats(app)] == ["high"]
    drain(app, ["high"])
    assert r.get(timeout=5) == "10 USD"


def test_enqueue_by_name_checks_arguments_of_a_registered_task(app: Faena) -> None:
    # Given a registered task of one argument
    @app.task(name="billing.charge")
    def charge(amount: int) -> None: ...

    # When it is enqueued by name with two, Then enqueue raises
    with pytest.raises(TypeError):
        app.enqueue("billing.charge", 1, 2)


def test_enqueue_of_an_unknown_name_is_sent_and_dead_lettered_by_the_worker(app: Faena) -> None:
    # Given a name no task of this app has (it may live in another service)
    r = app.enqueue("elsewhere.task", 1)
    # Then it is sent, and a worker that does not know it dead-letters it
    assert r.state == QUEUED
    drain(app)
    assert dead_letters(app)[r.id].reason == "unknown_task"
    assert r.failed()


def test_queue_enqueue_runs_a_plain_function_from_an_allowed_module(
    make_app: AppFactory,
) -> None:
    # Given an app that allows functions of this package
    app = make_app(function_modules=["tests.unit"])
    # When a plain function is sent RQ-style and a worker runs the queue
    r = app.queue("rq").enqueue(multiply, 6, kwargs={"y": 7})
    drain(app, ["rq"])
    # Then the worker imported and ran it
    assert multiplied == [(6, 7)]
    assert r.get(timeout=5) == 42


def test_queue_enqueue_of_a_function_outside_function_modules_is_dead_lettered(
    make_app: AppFactory,
) -> None:
    # Given an app that allows only another package's functions
    app = make_app(function_modules=["billing"])
    # When a function of this module is sent
    r = app.queue("rq").enqueue(multiply, 6, 7)
    drain(app, ["rq"])
    # Then the worker does not import it: it never runs and is dead-lettered
    assert multiplied == []
    assert dead_letters(app)[r.id].reason == "unknown_task"


def test_a_function_whose_module_fails_to_import_is_dead_lettered_with_that_error(
    make_app: AppFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an allowed module that fails as the worker imports it (a setting missing there)
    (tmp_path / "needs_env.py").write_text(
        "raise RuntimeError('DATABASE_URL is not set')\n\ndef work():\n    return 1\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    app = make_app(function_modules=["needs_env"])
    # When a job names one of its functions
    r = app.queue("rq").enqueue("needs_env:work")
    drain(app, ["rq"])
    # Then its dead letter says why it could not run
    letter = dead_letters(app)[r.id]
    assert letter.reason == "unknown_task"
    assert "importing it failed: RuntimeError: DATABASE_URL is not set" in letter.detail
    assert "outside function_modules" not in letter.detail


def test_faena_own_functions_are_never_run_by_reference(make_app: AppFactory) -> None:
    # Given an app that (unwisely) allows faena's own modules
    app = make_app(function_modules=["faena", "faena.*"])
    # When a message names one of faena's functions
    r = app.queue("rq").enqueue("faena.foundation.util:new_id")
    drain(app, ["rq"])
    # Then the worker refuses to import it
    assert dead_letters(app)[r.id].reason == "unknown_task"


def test_queue_enqueue_checks_the_function_arguments(app: Faena) -> None:
    # When a plain function is enqueued with missing arguments, Then enqueue raises
    with pytest.raises(TypeError, match="missing a required argument"):
        app.queue("rq").enqueue(multiply, 1)
    # keywords of enqueue are call options, never the function's own arguments
    with pytest.raises(ConfigurationError, match=r"unknown call option.*kwargs="):
        app.queue("rq").enqueue(multiply, 1, 2, y=2)
    assert queue_stats(app) == []


def test_queue_enqueue_refuses_what_a_worker_could_not_import(app: Faena) -> None:
    # Given a nested function and a lambda
    def nested() -> None: ...

    # When either is enqueued, Then it is refused at once
    with pytest.raises(ConfigurationError, match="module-level functions"):
        app.queue("rq").enqueue(nested)
    with pytest.raises(ConfigurationError, match="module-level functions"):
        app.queue("rq").enqueue(lambda: None)


def test_queue_enqueue_of_a_task_uses_the_handle_queue(app: Faena) -> None:
    # Given a task declared on 'emails'
    @app.task(queue="emails")
    def send(to: str) -> None: ...

    # When it is enqueued on 'bulk' by object and by name
    app.queue("bulk").enqueue(send, "a@example.org")
    app.queue("bulk").enqueue(send.name, "b@example.org")
    # Then both wait on 'bulk'
    assert [(s.queue, s.ready) for s in queue_stats(app)] == [("bulk", 2)]


def test_queue_name_is_validated(app: Faena) -> None:
    # When a queue handle has a bad name, Then it is refused
    with pytest.raises(ConfigurationError, match="invalid queue name"):
        app.queue("no spaces")


# -- shared tasks ---------------------------------------------------------------------------


def test_shared_task_joins_existing_and_later_apps_and_sends_through_the_latest(
    make_app: AppFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(core, "_shared_tasks", [])  # keep this test's shared task to itself
    # Given an app that exists before a shared task is declared
    first = make_app("first")

    @shared_task(queue="shared")
    def ping(x: int) -> int:
        return x

    # When another app is created afterwards
    second = make_app("second")
    # Then both know the task
    assert ping.name in first.registry
    assert ping.name in second.registry
    # And a send goes through the app created last, whose worker runs it
    r = ping.delay(5)
    assert r.app is second
    drain(second, ["shared"])
    assert r.get(timeout=5) == 5
    assert queue_stats(first) == []


# -- bulk -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "calls", [["ab", "cd"], [{"x": 1, "y": 2}], [b"ab"], [7]], ids=["str", "dict", "bytes", "int"]
)
def test_enqueue_many_refuses_an_item_that_is_not_a_tuple_of_arguments(
    app: Faena, calls: list[Any]
) -> None:
    @app.task
    def pair(a: Any, b: Any) -> None: ...

    # When each item is one argument rather than a tuple of them, Then nothing is sent
    with pytest.raises(TypeError, match="enqueue_many takes one sequence of arguments per call"):
        app.enqueue_many(pair, [("a", "b"), *calls])
    assert queue_stats(app) == []


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"args": "ab"}, "args is a tuple or list"),
        ({"args": {"a": 1}}, "args is a tuple or list"),
        ({"args": (), "kwargs": [("a", 1)]}, "kwargs is a mapping"),
    ],
)
def test_apply_async_refuses_args_that_are_not_a_tuple_or_list(
    app: Faena, given: dict[str, Any], message: str
) -> None:
    @app.task
    def pair(a: Any = 0, b: Any = 0) -> None: ...

    with pytest.raises(TypeError, match=message):
        pair.apply_async(**given)
    with pytest.raises(TypeError, match=message):
        pair.s().apply_async(**given)
    assert queue_stats(app) == []


def test_enqueue_many_sends_one_job_per_call(app: Faena) -> None:
    # Given a task and many argument tuples
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    # When they are sent in one step with call options
    results = app.enqueue_many(add, [(i, i) for i in range(20)], queue="bulk", priority=4)
    # Then each call is its own job on that queue, and they all run
    assert len({r.id for r in results}) == 20
    assert [(s.queue, s.ready) for s in queue_stats(app)] == [("bulk", 20)]
    drain(app, ["bulk"])
    assert [r.get(timeout=5) for r in results] == [2 * i for i in range(20)]


def test_enqueue_many_by_name(app: Faena) -> None:
    # Given a task registered as bulk.double
    @app.task(name="bulk.double")
    def double(x: int) -> int:
        return 2 * x

    # When calls are sent in bulk by name
    results = app.enqueue_many("bulk.double", [(1,), (2,)])
    drain(app)
    # Then each ran
    assert [r.get(timeout=5) for r in results] == [2, 4]


def test_enqueue_many_sends_nothing_if_any_call_is_bad(make_app: AppFactory) -> None:
    # Given an app with a small message limit
    app = make_app(max_message_size=512)

    @app.task
    def f(x: Any) -> None: ...

    # When one call of a batch is bad, Then the whole batch is refused
    with pytest.raises(TypeError):
        app.enqueue_many(f, [(1,), (2,), (3, 4)])
    with pytest.raises(MessageTooLarge):
        app.enqueue_many(f, [("small",), ("x" * 1000,)])
    with pytest.raises(ConfigurationError, match="drop task_id"):
        app.enqueue_many(f, [(1,)], task_id="same")
    # And nothing was sent
    assert queue_stats(app) == []


def test_enqueue_many_in_eager_mode_runs_each(eager_app: Faena) -> None:
    # Given an eager app
    @eager_app.task
    def double(x: int) -> int:
        return 2 * x

    # When calls are sent in bulk, Then each ran inline
    assert [r.get(timeout=1) for r in eager_app.enqueue_many(double, [(1,), (5,)])] == [2, 10]


# -- arguments checked where the job is admitted --------------------------------------------


def test_keyword_only_arguments_are_checked_at_delay(app: Faena) -> None:
    # Given a task with a required keyword-only argument
    @app.task
    def report(day: str, *, fmt: str, pages: int = 1) -> str:
        return f"{day}:{fmt}:{pages}"

    # When it is sent without it, Then delay raises
    with pytest.raises(TypeError, match="missing a required argument: 'fmt'"):
        report.delay("mon")  # type: ignore[call-arg]
    # When it is sent with it, Then it runs
    r = report.delay("mon", fmt="pdf")
    drain(app)
    assert r.get(timeout=5) == "mon:pdf:1"


def test_a_countdown_or_eta_may_be_any_real_number(app: Faena, clock: FakeClock) -> None:
    @app.task
    def noop() -> None: ...

    # When sent with a Decimal countdown and a Fraction eta, Then both wait for their time
    noop.apply_async(countdown=Decimal("5"))
    noop.apply_async(eta=Fraction(int(clock.time()) + 5))
    assert [s.scheduled for s in queue_stats(app)] == [2]
    # And an expiry of any real number of seconds is sent, and honoured
    late = noop.apply_async(expires=Decimal("30"))
    clock.advance(31)
    drain(app)
    assert late.state == REVOKED

"""Routing: routes by name, glob and router; precedence; queue name validation."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from faena import ConfigurationError, Faena, chain, group
from faena.contracts.broker import Settlement
from faena.model.routing import Route, Routes

from .support import AppFactory

_QUEUES = ("billing", "refunds", "default", "declared", "routed", "call", "region-eu", "fallback")


def _where(app: Faena, job_id: str) -> tuple[str, int]:
    """The queue and priority the broker holds job ``job_id`` under (taken off the broker)."""

    async def take() -> tuple[str, int]:
        consumer = await app.broker.open_consumer(_QUEUES, "test")
        try:
            (delivery,) = await consumer.receive(1, 1.0)
            await consumer.settle([Settlement(delivery=delivery, action="ack")])
        finally:
            await consumer.close()
        assert delivery.id == job_id
        return delivery.queue, delivery.priority

    return asyncio.run(take())


def test_routes_send_by_exact_name_and_glob_with_exact_names_first(make_app: AppFactory) -> None:
    # Given routes by glob and an exact name that overrides it, and a priority-only route
    app = make_app(
        routes={
            "billing.*": "billing",
            "billing.refund": {"queue": "refunds", "priority": 7},
            "emails.*": {"priority": 9},
        }
    )

    @app.task(name="billing.charge")
    def charge() -> None: ...

    @app.task(name="billing.refund")
    def refund() -> None: ...

    @app.task(name="emails.send")
    def send() -> None: ...

    @app.task(name="other")
    def other() -> None: ...

    # When each is sent, Then each lands where its route says
    assert _where(app, charge.delay().id) == ("billing", 0)
    assert _where(app, refund.delay().id) == ("refunds", 7)
    assert _where(app, send.delay().id) == ("default", 9)
    assert _where(app, other.delay().id) == ("default", 0)


def test_precedence_is_call_then_task_then_routes_then_default(make_app: AppFactory) -> None:
    app = make_app(routes={"t*": {"queue": "routed", "priority": 3}}, default_priority=1)

    @app.task(name="t1", queue="declared")
    def declared() -> None: ...

    @app.task(name="t2")
    def routed() -> None: ...

    # Then the task's queue beats the route, the route's priority fills in what it lacks
    assert _where(app, declared.delay().id) == ("declared", 3)
    assert _where(app, routed.delay().id) == ("routed", 3)
    # And call options beat both
    assert _where(app, declared.apply_async(queue="call", priority=8).id) == ("call", 8)
    # And by name, unregistered tasks are routed too
    assert _where(app, app.enqueue("tx.remote").id) == ("routed", 3)


def test_a_callable_router_sees_the_arguments(make_app: AppFactory) -> None:
    def by_region(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return f"region-{kwargs['region']}" if "region" in kwargs else None

    app = make_app(routes=[by_region, {"*": "fallback"}])

    @app.task
    def work(region: str | None = None) -> None: ...

    assert _where(app, work.delay(region="eu").id) == ("region-eu", 0)
    assert _where(app, work.delay().id) == ("fallback", 0)


def test_a_router_answering_a_bad_queue_name_is_a_clear_error_at_enqueue(
    make_app: AppFactory,
) -> None:
    app = make_app(routes=lambda name, args, kwargs: "no spaces allowed")

    @app.task
    def work() -> None: ...

    # When sent, Then the error names the router's answer and the allowed characters
    with pytest.raises(ConfigurationError, match="invalid queue name 'no spaces allowed'"):
        work.delay()


@pytest.mark.parametrize(
    ("routes", "match"),
    [
        ({"a": "bad queue"}, "route 'a': invalid queue name"),
        ({"a": {"queue": "q", "prio": 1}}, "unknown route key"),
        ({"a": {"priority": 12}}, "priority must be an int from 0 to 9"),
        ({"a": 3}, "a route is a queue name"),
        (42, "routes must be a mapping"),
        ({"a" * 129: "q"}, None),
    ],
)
def test_bad_routes_are_errors_when_the_app_is_created(routes: Any, match: str | None) -> None:
    if match is None:  # a long task name is fine as a key; only queues are limited
        Faena("x", broker="memory://", routes=routes).close()
        return
    with pytest.raises(ConfigurationError, match=match):
        Faena("x", broker="memory://", routes=routes)


@pytest.mark.parametrize("queue", ["", "a" * 129, "-lead", "sp ace", "é"])
def test_queue_names_are_validated_at_enqueue(app: Faena, queue: str) -> None:
    @app.task
    def work() -> None: ...

    with pytest.raises(ConfigurationError, match="invalid queue name"):
        work.apply_async(queue=queue)


def test_routes_object_answers_no_route_when_nothing_matches() -> None:
    routes = Routes.build({"a.*": "q"})
    assert routes.route("b", (), {}) == Route()
    assert routes.route("a.x", (), {}) == Route("q", None)


def test_globs_and_routers_answer_in_the_order_given_and_a_name_given_twice_keeps_its_first() -> (
    None
):
    def router(name: str, args: Any, kwargs: Any) -> str | None:
        return "from-router" if name.startswith("x.") else None

    assert Routes.build([router, {"*": "fallback"}]).route("x.y", (), {}).queue == "from-router"
    assert Routes.build([{"*": "fallback"}, router]).route("x.y", (), {}).queue == "fallback"
    assert Routes.build([{"x.y": "first"}, {"x.y": "second"}]).route("x.y", (), {}).queue == (
        "first"
    )


def test_a_worker_without_queues_consumes_the_routed_ones(make_app: AppFactory) -> None:
    from faena.worker.options import default_queues

    app = make_app(routes=[{"billing.*": "billing", "x": {"priority": 3}}, lambda n, a, k: None])

    @app.task(queue="emails")
    def send() -> None: ...

    assert default_queues(app) == ("default", "billing", "emails")


def test_routes_apply_to_the_jobs_a_canvas_sends(make_app: AppFactory) -> None:
    # Given a route for billing tasks
    app = make_app(routes={"billing.*": {"queue": "billing", "priority": 3}})

    @app.task(name="billing.charge")
    def charge(amount: int) -> int:
        return amount

    @app.task(name="other")
    def other(amounts: list[int]) -> int:
        return sum(amounts)

    # When a group of them and a chain starting with one are sent
    group(charge.s(1), charge.s(2)).delay()
    chain(charge.s(3), other.s()).delay()

    # Then every job sent now waits where the route says (the chain's next step is sent later)
    async def take() -> list[tuple[str, int]]:
        consumer = await app.broker.open_consumer(_QUEUES, "test")
        try:
            return [(d.queue, d.priority) for d in await consumer.receive(10, 0)]
        finally:
            await consumer.close()

    assert asyncio.run(take()) == [("billing", 3)] * 3

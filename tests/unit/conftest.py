"""Fixtures for the unit tests: apps on the memory backends with a fake clock, closed after."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from faena import Faena, FakeClock

from .support import AppFactory

UNIT_TIMEOUT_S = 20
"""A unit test is fast; one that hangs (a worker that never drains) fails after this long."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(UNIT_TIMEOUT_S))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1_700_000_000.0)


@pytest.fixture
def make_app(clock: FakeClock) -> Iterator[AppFactory]:
    """``make_app(**settings)``: a memory app on the test's fake clock, closed after the test."""
    apps: list[Faena] = []

    def make(name: str = "unit", **settings: Any) -> Faena:
        settings.setdefault("clock", clock)
        app = Faena(name, broker="memory://", results="memory://", **settings)
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.close()


@pytest.fixture
def app(make_app: AppFactory) -> Faena:
    return make_app()


@pytest.fixture
def eager_app(make_app: AppFactory) -> Faena:
    return make_app("unit-eager", eager=True)


WORKFLOW_BACKENDS = ("memory", "sqlite", "redis", "eager")
"""Where the canvas tests run: a burst worker on each backend, and eager mode."""


@pytest.fixture(params=WORKFLOW_BACKENDS)
def workflow_app(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Faena]:
    """An app on one of :data:`WORKFLOW_BACKENDS` (Redis skips locally when it is down)."""
    kind = request.param
    url = {
        "memory": "memory://",
        "eager": "memory://",
        "sqlite": f"sqlite:///{tmp_path / 'flows.sqlite3'}",
    }.get(kind)
    if kind == "redis":
        from tests.services import redis_url

        url = redis_url()
    assert url is not None
    app = Faena(f"flows-{kind}", broker=url, results=url, eager=kind == "eager")
    yield app
    app.close()
    if kind == "redis":
        from tests.services import drop_prefix

        drop_prefix(url)

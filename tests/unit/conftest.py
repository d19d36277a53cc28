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

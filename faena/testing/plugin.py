"""pytest fixtures for projects that use faena (loaded automatically when faena is installed).

- ``faena_clock``: a :class:`~faena.FakeClock`.
- ``faena_app``: an app on the memory backend using ``faena_clock``; closed after the test.
- ``faena_eager_app``: the same in eager mode (tasks run inline at ``delay()``).
- ``faena_drain``: ``faena_drain(app)`` runs a worker until the queues are empty.

Use your own app's tasks with ``faena_app`` by declaring them in the test, or point your app at
``memory://`` (``FAENA_BROKER_URL=memory://``) in your test settings.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from faena.app.core import Faena
from faena.foundation.clock import FakeClock
from faena.testing.drain import drain, memory_app


@pytest.fixture
def faena_clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def faena_app(faena_clock: FakeClock) -> Iterator[Faena]:
    app = memory_app("test", clock=faena_clock)
    yield app
    app.close()


@pytest.fixture
def faena_eager_app(faena_clock: FakeClock) -> Iterator[Faena]:
    app = memory_app("test-eager", clock=faena_clock, eager=True)
    yield app
    app.close()


@pytest.fixture
def faena_drain() -> Callable[..., int]:
    def run(app: Faena, *args: Any, **kwargs: Any) -> int:
        return drain(app, *args, **kwargs)

    return run

"""Every conformance test must leave no backend thread running: closing is part of the contract."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _no_backend_threads_left() -> Iterator[None]:
    before = set(threading.enumerate())
    yield
    left = [t.name for t in threading.enumerate() if t not in before and t.name.startswith("faena")]
    assert not left, f"threads still running after the test: {left}"

"""Run a worker until the queues are empty, in this process."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from faena.app.core import Faena
from faena.worker.worker import Worker, WorkerOptions, default_queues


def memory_app(name: str = "test", **settings: Any) -> Faena:
    """An app on the in-memory broker and result store, for tests."""
    return Faena(name, broker="memory://", results="memory://", **settings)


async def adrain(
    app: Faena,
    queues: Sequence[str] | None = None,
    *,
    pool: str = "async",
    concurrency: int | None = None,
) -> int:
    """Run a worker on ``queues`` (default: every queue the app's tasks use, and the default
    queue) until nothing is ready or running; returns how many jobs it ran.

    Scheduled messages that are not due yet stay where they are: move a ``FakeClock`` forward
    and drain again.
    """
    if queues is None:
        queues = default_queues(app)
    worker = Worker(
        app,
        WorkerOptions(
            queues=tuple(queues), pool=pool, concurrency=concurrency, burst=True, grace_s=60.0
        ),
    )
    await worker.run()
    return worker.processed


def drain(
    app: Faena,
    queues: Sequence[str] | None = None,
    *,
    pool: str = "async",
    concurrency: int | None = None,
) -> int:
    """Blocking :func:`adrain`: run a worker until the queues are empty."""
    return asyncio.run(adrain(app, queues, pool=pool, concurrency=concurrency))

"""The tasks ``faena demo`` runs: one of each kind a newcomer wants to see work.

``faena demo`` starts ``faena worker -A faena.cli.demo_tasks`` with ``FAENA_BROKER_URL``
pointing at its own SQLite file, and sends these tasks by name.
"""

from __future__ import annotations

import asyncio
import time

from faena.app.core import Faena
from faena.model.task import JobContext

app = Faena("faena-demo")


@app.task
def add(x: int, y: int) -> int:
    """A plain task."""
    return x + y


@app.task(bind=True, max_retries=3)
def flaky_fetch(self: JobContext, feed: str) -> str:
    """Fails on its first attempt, as a flaky network call would, and succeeds on the retry."""
    if self.request.attempt == 1:
        raise self.retry(exc=ConnectionError(f"{feed}: connection reset"), countdown=0.5)
    return f"{feed} fetched on attempt {self.request.attempt}"


@app.task
def send_reminder(user: str) -> str:
    """Sent with a countdown, so it waits in the broker before it runs."""
    return f"reminded {user}"


@app.task
async def fetch_price(sku: str) -> float:
    """An ``async def`` task: runs on the worker's event loop."""
    await asyncio.sleep(0.3)  # stands in for an HTTP call
    return round(9.99 + len(sku) / 10, 2)


@app.task(bind=True)
def resize_images(self: JobContext, count: int) -> str:
    """Reports its progress as it goes."""
    for done in range(1, count + 1):
        time.sleep(0.2)  # stands in for real work
        self.update_progress(done / count, f"{done}/{count} images")
    return f"resized {count} images"

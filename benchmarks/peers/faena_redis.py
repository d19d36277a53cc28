"""faena on the benchmark's Redis: the app the workers load (`faena worker -A ...`) and the
producer.

Two flavours of the same no-op: ``faena`` sends the sync task (the body Celery, RQ and Dramatiq
run; faena's default ``async`` pool runs it in its threads) and ``faena-async`` the
``async def`` one (the body arq runs; faena runs it on the worker's event loop, with an
asyncio Redis client for the counter). Results-ignored tasks are declared with
``ignore_result=True``; ``get`` waits the way the result store offers.

``BENCH_FAENA_BROKER`` points faena at another broker URL (``sqlite:///...`` checks the harness
before the Redis broker exists); the counter stays on the private Redis server.

Bulk API: ``app.enqueue_many(task, [(i,), ...])``, one broker call.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import redis.asyncio

import faena
from benchmarks.peers.common import (
    Adapter,
    Unsupported,
    acount_run,
    count_run,
    redis_url,
    time_each,
)
from faena import Faena

app = Faena("bench", broker=os.environ.get("BENCH_FAENA_BROKER") or redis_url())

_async_client: tuple[asyncio.AbstractEventLoop, Any] | None = None


def _aclient() -> Any:
    global _async_client
    loop = asyncio.get_running_loop()
    if _async_client is None or _async_client[0] is not loop:
        _async_client = (loop, redis.asyncio.Redis.from_url(redis_url()))
    return _async_client[1]


@app.task(ignore_result=True)
def noop(i: int) -> None:
    count_run()


@app.task
def noop_result(i: int) -> int:
    count_run()
    return 1


@app.task(ignore_result=True)
async def anoop(i: int) -> None:
    await acount_run(_aclient())


@app.task
async def anoop_result(i: int) -> int:
    await acount_run(_aclient())
    return 1


@app.task
def total(values: list[int]) -> int:
    return sum(values)


class FaenaAdapter(Adapter):
    bulk_api = "app.enqueue_many(noop, [(i,), ...])"

    def __init__(self, is_async: bool) -> None:
        self.task = anoop if is_async else noop
        self.task_result = anoop_result if is_async else noop_result
        self.bulk_api = f"app.enqueue_many({'anoop' if is_async else 'noop'}, [(i,), ...])"

    def enqueue_one_by_one(self, first: int, count: int) -> None:
        delay = self.task.delay
        for i in range(first, first + count):
            delay(i)

    def enqueue_bulk(self, first: int, count: int) -> None:
        app.enqueue_many(self.task, [(i,) for i in range(first, first + count)])

    def round_trips(self, count: int, timeout_s: float) -> list[float]:
        delay = self.task_result.delay
        return time_each(count, lambda i: delay(i).get(timeout=timeout_s))

    def chord(self, members: int, timeout_s: float) -> int:
        make_chord = getattr(faena, "chord", None)
        if make_chord is None:
            raise Unsupported("this faena has no chord yet (faena.chord is missing)")
        member = self.task_result
        result = make_chord((member.s(i) for i in range(members)), total.s()).delay()
        return int(result.get(timeout=timeout_s))

    def close(self) -> None:
        app.close()


def adapter(system: str) -> Adapter:
    return FaenaAdapter(is_async=system == "faena-async")

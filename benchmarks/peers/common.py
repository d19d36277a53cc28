"""What every system's adapter shares: the task body, the adapter interface, the Redis keys.

The task body is the same everywhere: one ``INCR`` of a counter on the benchmark's private Redis
server. The counter is how the driver knows that every job ran, identically for every system,
without trusting any system's own bookkeeping. When the counter reaches the two marks the driver
set through the environment (the first 1 % of a drain, then its last job), the body also writes
the wall-clock time, so a drain is timed from inside the workers and process start-up is not
counted for anyone.

Configuration reaches the workers and the producer through ``BENCH_*`` environment variables,
read once per process:

- ``BENCH_REDIS_URL``: the private server (broker, results and counter alike);
- ``BENCH_RESULTS``: ``1`` where the metric needs results (round trip, chord), else results are
  not configured at all;
- ``BENCH_START_AT`` / ``BENCH_TARGET``: the counter values whose times a drain records.
"""

from __future__ import annotations

import os
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import redis

COUNTER = "bench:runs"
MARKS = "bench:marks"
DONE = "bench:done"


class Unsupported(Exception):
    """The system has no way to do what the metric asks (the report says so instead)."""


def redis_url() -> str:
    url = os.environ.get("BENCH_REDIS_URL")
    if not url:
        raise RuntimeError(
            "BENCH_REDIS_URL is not set: run the benchmark through `python -m "
            "benchmarks.peers.run`, which starts a private redis-server and sets it"
        )
    return url


def results_enabled() -> bool:
    return os.environ.get("BENCH_RESULTS") == "1"


def _marks() -> tuple[int, int]:
    return int(os.environ.get("BENCH_START_AT", "0")), int(os.environ.get("BENCH_TARGET", "0"))


_sync_client: tuple[int, redis.Redis] | None = None
_start_at, _target = _marks()


def _client() -> redis.Redis:
    # One client per process, made after any fork (prefork pools import the module first).
    global _sync_client
    pid = os.getpid()
    if _sync_client is None or _sync_client[0] != pid:
        _sync_client = (pid, redis.Redis.from_url(redis_url()))
    return _sync_client[1]


def _mark(client: redis.Redis, n: int) -> None:
    client.hset(MARKS, str(n), repr(time.time()))
    if n == _target:
        client.rpush(DONE, n)


def count_run() -> None:
    """The no-op task body, for systems whose tasks are plain functions."""
    client = _client()
    n = client.incr(COUNTER)
    if n in (_start_at, _target):
        _mark(client, n)


async def acount_run(client: Any) -> None:
    """The same body for ``async def`` tasks, on the system's own asyncio Redis client."""
    n = await client.incr(COUNTER)
    if n in (_start_at, _target):
        await client.hset(MARKS, str(n), repr(time.time()))
        if n == _target:
            await client.rpush(DONE, n)


def time_each(count: int, call: Callable[[int], object]) -> list[float]:
    """Seconds taken by each of ``count`` calls ``call(i)``, one after the other."""
    samples = []
    clock = time.perf_counter
    for i in range(count):
        start = clock()
        call(i)
        samples.append(clock() - start)
    return samples


class Adapter(ABC):
    """One system's producer side. Worker command lines live in :mod:`benchmarks.peers.specs`.

    Every ``enqueue_*`` call sends the results-ignored no-op task; ``round_trips`` and ``chord``
    use the task that stores its result (``BENCH_RESULTS=1`` is set for those metrics).
    """

    #: which call the bulk figure uses, shown in the report.
    bulk_api: str = ""

    @abstractmethod
    def enqueue_one_by_one(self, first: int, count: int) -> None:
        """Send ``count`` no-op jobs, one producer call each."""

    @abstractmethod
    def enqueue_bulk(self, first: int, count: int) -> None:
        """Send ``count`` no-op jobs through the system's bulk API (or its nearest idiom)."""

    @abstractmethod
    def round_trips(self, count: int, timeout_s: float) -> list[float]:
        """Send a job and wait for its result, ``count`` times in a row; seconds each."""

    def chord(self, members: int, timeout_s: float) -> int:
        """Run a chord of ``members`` no-op members whose body counts them; the body's result."""
        raise Unsupported(f"{type(self).__name__} has no chord")

    @abstractmethod
    def close(self) -> None:
        """Release connections."""

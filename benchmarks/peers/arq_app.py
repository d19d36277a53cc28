"""arq on the benchmark's Redis: the worker settings (`arq ...WorkerSettings`) and the producer.

arq runs ``async def`` functions only, so its body is the shared one on arq's own asyncio
Redis pool (``ctx["redis"]``). The results-ignored task is declared with ``keep_result=0``.
arq polls: the worker reads its queue every ``poll_delay`` (``BENCH_ARQ_POLL_DELAY``, arq's
default 0.5 s) and ``Job.result`` polls for the result with the same delay here, so the
round-trip configurations can shorten both. ``BENCH_ARQ_MAX_JOBS`` sets ``max_jobs`` (10).

Bulk API: arq has none; the nearest idiom is ``asyncio.gather`` over ``enqueue_job`` calls,
here 100 at a time (each call is a WATCH/MULTI transaction on a pooled connection; an
unbounded gather would open one connection per job).
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from arq import create_pool
from arq.connections import ArqRedis, RedisSettings
from arq.worker import func

from benchmarks.peers.common import Adapter, acount_run, redis_url

POLL_DELAY_S = float(os.environ.get("BENCH_ARQ_POLL_DELAY", "0.5"))
GATHER = 100
LOG_CONFIG: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"level": "WARNING", "class": "logging.StreamHandler"}},
    "loggers": {"arq": {"handlers": ["stderr"], "level": "WARNING"}},
}


async def noop(ctx: dict[str, Any], i: int) -> None:
    await acount_run(ctx["redis"])


async def noop_result(ctx: dict[str, Any], i: int) -> int:
    await acount_run(ctx["redis"])
    return 1


class WorkerSettings:
    functions = [func(noop, keep_result=0), noop_result]
    redis_settings = RedisSettings.from_dsn(redis_url())
    max_jobs = int(os.environ.get("BENCH_ARQ_MAX_JOBS", "10"))
    poll_delay = POLL_DELAY_S


class ArqAdapter(Adapter):
    bulk_api = "asyncio.gather(*(pool.enqueue_job('noop', i) ...)), 100 at a time (no bulk API)"

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.pool: ArqRedis = self.loop.run_until_complete(
            create_pool(RedisSettings.from_dsn(redis_url()))
        )

    def enqueue_one_by_one(self, first: int, count: int) -> None:
        async def send() -> None:
            enqueue = self.pool.enqueue_job
            for i in range(first, first + count):
                await enqueue("noop", i)

        self.loop.run_until_complete(send())

    def enqueue_bulk(self, first: int, count: int) -> None:
        async def send() -> None:
            enqueue = self.pool.enqueue_job
            for start in range(first, first + count, GATHER):
                stop = min(start + GATHER, first + count)
                await asyncio.gather(*(enqueue("noop", i) for i in range(start, stop)))

        self.loop.run_until_complete(send())

    def round_trips(self, count: int, timeout_s: float) -> list[float]:
        async def measure() -> list[float]:
            samples = []
            for i in range(count):
                start = time.perf_counter()
                job = await self.pool.enqueue_job("noop_result", i)
                if job is None:
                    raise RuntimeError(f"arq refused job {i}")
                value = await job.result(timeout=timeout_s, poll_delay=POLL_DELAY_S)
                samples.append(time.perf_counter() - start)
                if value != 1:
                    raise RuntimeError(f"arq job {i} returned {value!r}")
            return samples

        return self.loop.run_until_complete(measure())

    def close(self) -> None:
        self.loop.run_until_complete(self.pool.aclose())
        self.loop.close()


def adapter(system: str) -> Adapter:
    return ArqAdapter()

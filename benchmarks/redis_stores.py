"""Benchmark of the Redis result store and coordination store on their own (no broker).

Measures, against the Redis of ``FAENA_BENCH_REDIS_URL`` (default ``redis://127.0.0.1:6379/0``)
under a fresh key prefix deleted afterwards:

- the wake-up latency of a waiter: two processes play ping-pong through the result store (each
  stores a SUCCESS record the other waits for), so one half of a round trip is one ``store``
  plus the waiter's wake-up and read; reported as p50/p99 of that half;
- ``store`` and ``fetch`` one at a time, ``store_many``/``fetch_many`` in batches of 100;
- ``incr``, ``set_if_absent`` and ``aincr`` (100 at once on one event loop).

Run: ``python -m benchmarks.redis_stores [--quick]`` from the repository root.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import statistics
import time
import uuid
from collections.abc import Callable

import redis

from faena.backends.redis.coordination import RedisCoordinationStore
from faena.backends.redis.results import RedisResultStore
from faena.model.outcome import JobRecord
from faena.model.states import SUCCESS

BASE = os.environ.get("FAENA_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


def done(job_id: str) -> JobRecord:
    return JobRecord(id=job_id, state=SUCCESS, value=b"42", fence=1, task="bench.noop")


def ponger(url: str, rounds: int) -> None:
    """Wait for each ``ping-i``, answer with ``pong-i``."""
    store = RedisResultStore(url)
    try:
        for i in range(rounds):
            store.wait(f"ping-{i}", 30)
            store.store(done(f"pong-{i}"))
    finally:
        store.close()


def ping_pong(url: str, rounds: int) -> list[float]:
    """Half round trips in milliseconds, one per round."""
    other = multiprocessing.get_context("spawn").Process(target=ponger, args=(url, rounds))
    other.start()
    store = RedisResultStore(url)
    halves = []
    try:
        for i in range(rounds):
            start = time.perf_counter()
            store.store(done(f"ping-{i}"))
            if store.wait(f"pong-{i}", 30) is None:
                raise RuntimeError(f"no answer to ping {i}")
            halves.append((time.perf_counter() - start) * 1000 / 2)
    finally:
        store.close()
        other.join(30)
    return halves


def rate(n: int, body: Callable[[int], object]) -> float:
    start = time.perf_counter()
    for i in range(n):
        body(i)
    return n / (time.perf_counter() - start)


async def batched_rates(url: str, n: int) -> tuple[float, float, float]:
    store = RedisResultStore(url)
    keys = RedisCoordinationStore(url)
    try:
        batches = [[done(f"b{b}-{i}") for i in range(100)] for b in range(n // 100)]
        start = time.perf_counter()
        for batch in batches:
            await store.store_many(batch)
        stored = n / (time.perf_counter() - start)
        start = time.perf_counter()
        for batch in batches:
            await store.fetch_many([r.id for r in batch])
        fetched = n / (time.perf_counter() - start)
        start = time.perf_counter()
        for _ in range(n // 100):
            await asyncio.gather(*(keys.aincr("async-hits") for _ in range(100)))
        counted = n / (time.perf_counter() - start)
        return stored, fetched, counted
    finally:
        store.close()
        keys.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds, a smoke run")
    quick = parser.parse_args().quick
    rounds, n = (200, 1_000) if quick else (2_000, 10_000)
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    url = f"{BASE}?prefix={prefix}"
    try:
        halves = sorted(ping_pong(url, rounds))
        p50, p99 = statistics.median(halves), halves[int(len(halves) * 0.99) - 1]
        print(f"result wake-up (store -> waiter has it): p50 {p50:.3f} ms, p99 {p99:.3f} ms")
        store, keys = RedisResultStore(url), RedisCoordinationStore(url)
        try:
            print(f"store, one at a time: {rate(n, lambda i: store.store(done(f's{i}'))):,.0f}/s")
            print(f"fetch, one at a time: {rate(n, lambda i: store.fetch(f's{i}')):,.0f}/s")
            print(f"incr: {rate(n, lambda i: keys.incr('hits')):,.0f}/s")
            print(
                f"set_if_absent: {rate(n, lambda i: keys.set_if_absent(f'k{i}', 'v', 60)):,.0f}/s"
            )
        finally:
            store.close()
            keys.close()
        stored, fetched, counted = asyncio.run(batched_rates(url, n))
        print(f"store_many, batches of 100: {stored:,.0f} records/s")
        print(f"fetch_many, batches of 100: {fetched:,.0f} records/s")
        print(f"aincr, 100 at once: {counted:,.0f}/s")
    finally:
        admin = redis.Redis.from_url(BASE)
        doomed = list(admin.scan_iter(match=f"{prefix}:*", count=1000))
        for start in range(0, len(doomed), 500):
            admin.delete(*doomed[start : start + 500])
        admin.close()


if __name__ == "__main__":
    main()

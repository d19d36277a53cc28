"""Benchmark of the engine on the embedded brokers (SQLite and memory).

Measures, each repeated and reported as the median:
- single enqueue rate (``delay`` one at a time) and bulk enqueue rate (``enqueue_many``);
- drain rate of 20,000 no-op tasks by 1 and by 2 worker processes on one SQLite file
  (first job start to last job end, from the job records);
- drain rate of the memory broker with an in-process worker;
- enqueue-to-result round trip p50/p99 with one idle worker.

Run: ``python -m benchmarks.engine [--quick]`` from the repository root.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import msgspec

import faena
from faena import Faena
from faena.testing import memory_app
from faena.worker.worker import Worker, WorkerOptions

ROOT = Path(__file__).resolve().parents[1]
TASKS = "benchmarks.bench_tasks"


def median_of(runs: int, measure: Callable[[], float]) -> tuple[float, list[float]]:
    values = [measure() for _ in range(runs)]
    return statistics.median(values), values


def fresh_sqlite(directory: Path, tag: str) -> str:
    path = directory / f"{tag}-{time.monotonic_ns()}.sqlite3"
    return f"sqlite:///{path}"


def enqueue_single(url: str, n: int) -> float:
    with Faena("bench-producer", broker=url) as app:
        app.enqueue_many(f"{TASKS}.noop", [(0,)])  # create the schema outside the timing
        start = time.perf_counter()
        for i in range(n):
            app.enqueue(f"{TASKS}.noop", i)
        return n / (time.perf_counter() - start)


def enqueue_bulk(url: str, n: int) -> float:
    with Faena("bench-producer", broker=url) as app:
        app.enqueue_many(f"{TASKS}.noop", [(0,)])
        start = time.perf_counter()
        app.enqueue_many(f"{TASKS}.noop", [(i,) for i in range(n)])
        return n / (time.perf_counter() - start)


def start_workers(url: str, count: int, concurrency: int) -> list[subprocess.Popen[bytes]]:
    env = {**os.environ, "FAENA_BROKER_URL": url, "PYTHONPATH": str(ROOT)}
    return [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "faena",
                "worker",
                "-A",
                TASKS,
                "-c",
                str(concurrency),
                "--log-level",
                "WARNING",
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(count)
    ]


def stop_workers(workers: list[subprocess.Popen[bytes]]) -> None:
    for w in workers:
        w.send_signal(signal.SIGTERM)
    for w in workers:
        w.wait(60)


def drain_sqlite(url: str, n: int, processes: int, concurrency: int) -> float:
    with Faena("bench-producer", broker=url) as app:
        results = app.enqueue_many(f"{TASKS}.noop", [(i,) for i in range(n)])
        workers = start_workers(url, processes, concurrency)
        try:
            results[-1].get(timeout=300)
            records = asyncio.run(app.results.fetch_many([r.id for r in results]))
            while len(records) < n or any(r.finished_at is None for r in records.values()):
                time.sleep(0.05)
                records = asyncio.run(app.results.fetch_many([r.id for r in results]))
        finally:
            stop_workers(workers)
        first = min(r.started_at or 0.0 for r in records.values())
        last = max(r.finished_at or 0.0 for r in records.values())
        return n / (last - first)


def drain_memory(n: int, concurrency: int, ignore_result: bool, is_async: bool = False) -> float:
    app = memory_app("bench-memory")

    @app.task(ignore_result=ignore_result, name="noop")
    def noop(i: int) -> int:
        return i

    @app.task(ignore_result=ignore_result, name="anoop")
    async def anoop(i: int) -> int:
        return i

    app.enqueue_many(anoop if is_async else noop, [(i,) for i in range(n)])
    worker = Worker(app, WorkerOptions(concurrency=concurrency, burst=True))
    start = time.perf_counter()
    asyncio.run(worker.run())
    elapsed = time.perf_counter() - start
    app.close()
    assert worker.processed == n, worker.processed
    return n / elapsed


def round_trip(url: str, n: int) -> tuple[float, float]:
    workers = start_workers(url, 1, 4)
    try:
        with Faena("bench-producer", broker=url) as app:
            app.enqueue(f"{TASKS}.noop", -1).get(timeout=60)  # the worker is up
            samples = []
            for i in range(n):
                start = time.perf_counter()
                app.enqueue(f"{TASKS}.noop", i).get(timeout=10)
                samples.append(time.perf_counter() - start)
    finally:
        stop_workers(workers)
    samples.sort()
    return samples[len(samples) // 2] * 1000, samples[int(len(samples) * 0.99)] * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs, for a smoke test")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    n_drain = 2_000 if args.quick else 20_000
    n_single = 1_000 if args.quick else 5_000
    n_rt = 100 if args.quick else 1_000
    runs = 1 if args.quick else args.runs
    print(
        f"faena {faena.__version__}, Python {platform.python_version()}, msgspec "
        f"{msgspec.__version__}, SQLite {__import__('sqlite3').sqlite_version}, "
        f"{platform.machine()} x{os.cpu_count()}, {platform.platform()}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        rows: list[tuple[str, float, list[float], str]] = []

        def record(name: str, measure: Callable[[], float], unit: str) -> None:
            med, values = median_of(runs, measure)
            rows.append((name, med, values, unit))
            print(
                f"{name:<48} {med:>12,.0f} {unit}   runs: "
                + ", ".join(f"{v:,.0f}" for v in values),
                flush=True,
            )

        record(
            "sqlite enqueue, single (delay)",
            lambda: enqueue_single(fresh_sqlite(d, "s"), n_single),
            "msg/s",
        )
        record(
            "sqlite enqueue, bulk (enqueue_many)",
            lambda: enqueue_bulk(fresh_sqlite(d, "b"), n_drain),
            "msg/s",
        )
        record("memory enqueue, single", lambda: enqueue_single("memory://", n_single), "msg/s")
        record("memory enqueue, bulk", lambda: enqueue_bulk("memory://", n_drain), "msg/s")
        record(
            f"sqlite drain {n_drain:,} no-ops, 1 worker process",
            lambda: drain_sqlite(fresh_sqlite(d, "d1"), n_drain, 1, 16),
            "tasks/s",
        )
        record(
            f"sqlite drain {n_drain:,} no-ops, 2 worker processes",
            lambda: drain_sqlite(fresh_sqlite(d, "d2"), n_drain, 2, 16),
            "tasks/s",
        )
        record(
            f"memory drain {n_drain:,} no-ops, 1 process (results)",
            lambda: drain_memory(n_drain, 16, False),
            "tasks/s",
        )
        record(
            f"memory drain {n_drain:,} no-ops, 1 process (ignore_result)",
            lambda: drain_memory(n_drain, 16, True),
            "tasks/s",
        )
        record(
            f"memory drain {n_drain:,} async no-ops, 1 process (results)",
            lambda: drain_memory(n_drain, 64, False, is_async=True),
            "tasks/s",
        )
        p50, p99 = round_trip(fresh_sqlite(d, "rt"), n_rt)
        print(f"{'sqlite round trip, one idle worker':<48} p50 {p50:.2f} ms, p99 {p99:.2f} ms")


if __name__ == "__main__":
    main()

"""Benchmark of chords: time from ``chord(1,000 no-op members).delay()`` to the body's result.

Two worker processes (``-c 8`` each) run the members; the body sums their results. Each run
uses a fresh SQLite file (or a fresh Redis key prefix); the workers are started once per
backend and warm. Prints one JSON document: the median and every run, per backend.

Run from the repository root::

    python -m benchmarks.canvas [--runs 5] [--members 1000] [--redis redis://localhost:6379/0]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import msgspec

import faena
from benchmarks.bench_tasks import noop, tally
from benchmarks.engine import start_workers, stop_workers
from faena import Faena, chord


def _app_for(url: str) -> Faena:
    app = Faena("bench", broker=url)
    for task in (noop, tally):
        app.registry.register(task)
        task.bind_dispatcher(app)
    return app


def time_chords(url: str, members: int, runs: int, workers: int, concurrency: int) -> list[float]:
    """Seconds from sending each chord to its body's result, for ``runs`` chords in turn."""
    app = _app_for(url)
    procs = start_workers(url, workers, concurrency)
    try:
        noop.delay(0).get(timeout=60)  # the workers are up and the schema exists
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            result = chord((noop.s(i) for i in range(members)), tally.s()).delay()
            value = result.get(timeout=300)
            times.append(time.perf_counter() - start)
            assert value == sum(range(members)), value
        return times
    finally:
        stop_workers(procs)
        app.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--members", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--redis", help="a Redis URL; a fresh key prefix is added to it")
    args = parser.parse_args()
    report: dict[str, object] = {
        "benchmark": f"chord of {args.members} no-op members, send to body result",
        "python": sys.version.split()[0],
        "faena": faena.__version__,
        "machine": platform.platform(),
        "workers": f"{args.workers} x -c {args.concurrency}",
        "results": {},
    }
    results: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'chords.sqlite3'}"
        runs = time_chords(url, args.members, args.runs, args.workers, args.concurrency)
        results["sqlite"] = {"median_s": statistics.median(runs), "runs_s": runs}
    if args.redis:
        joiner = "&" if "?" in args.redis else "?"
        url = f"{args.redis}{joiner}prefix=bench{uuid.uuid4().hex[:8]}"
        runs = time_chords(url, args.members, args.runs, args.workers, args.concurrency)
        results["redis"] = {"median_s": statistics.median(runs), "runs_s": runs}
    report["results"] = results
    sys.stdout.write(msgspec.json.format(msgspec.json.encode(report)).decode() + "\n")


if __name__ == "__main__":
    main()

"""One measurement of one system, in a fresh process: prints one JSON object on its last line.

The driver (:mod:`benchmarks.peers.run`) starts this module once per repetition, so every
system's producer starts from a clean interpreter, with only its own library imported, and the
environment of the worker configuration it measures (``BENCH_*`` and the system's own
variables) is in place before the system's module is imported.

    python -m benchmarks.peers.measure SYSTEM METRIC [--spec LABEL] [--n N]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import statistics
import sys
import time
from typing import Any

import redis

from benchmarks.peers import procs, specs
from benchmarks.peers.common import COUNTER, DONE, MARKS, Adapter, Unsupported, redis_url

METRICS = ("drain", "single", "bulk", "rt", "pss", "chord")
NEEDS_RESULTS = ("rt", "chord")
START_TIMEOUT_S = 90.0


def flush() -> redis.Redis:
    client = redis.Redis.from_url(redis_url())
    client.flushall()  # the private server started by the driver, never a shared one
    return client


def load_adapter(system: str) -> Adapter:
    module = importlib.import_module(f"benchmarks.peers.{specs.MODULES[system]}")
    adapter: Adapter = module.adapter(system)
    return adapter


def wait_for_counter(client: redis.Redis, value: int, workers: procs.Workers, what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while int(client.get(COUNTER) or 0) < value:
        workers.check_alive()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: the counter did not reach {value} in {START_TIMEOUT_S} s")
        time.sleep(0.01)


def drain(system: str, spec: specs.WorkerSpec, n: int, timeout_s: float) -> dict[str, Any]:
    client = flush()
    start_at = max(1, n // 100)
    os.environ.update(BENCH_START_AT=str(start_at), BENCH_TARGET=str(n))
    adapter = load_adapter(system)
    loaded = time.perf_counter()
    adapter.enqueue_bulk(0, n)  # untimed: the drain starts with every message queued
    enqueue_s = time.perf_counter() - loaded
    adapter.close()
    deadline = time.monotonic() + timeout_s
    with procs.Workers(spec) as workers:
        while client.blpop([DONE], timeout=1) is None:
            workers.check_alive()
            if time.monotonic() > deadline:
                ran = int(client.get(COUNTER) or 0)
                raise TimeoutError(f"drain: {ran} of {n} jobs ran in {timeout_s} s")
        marks = {int(k): float(v) for k, v in client.hgetall(MARKS).items()}
        time.sleep(0.5)  # let a duplicate delivery, if any, show in the counter
        ran = int(client.get(COUNTER) or 0)
    elapsed = marks[n] - marks[start_at]
    return {
        "value": (n - start_at) / elapsed,
        "unit": "jobs/s",
        "jobs": n,
        "timed_jobs": n - start_at,
        "seconds": elapsed,
        "ran": ran,
        "prefill_s": enqueue_s,
    }


def single(system: str, n: int) -> dict[str, Any]:
    flush()
    adapter = load_adapter(system)
    adapter.enqueue_one_by_one(0, 50)  # warm-up: connections, scripts, first-call caches
    start = time.perf_counter()
    adapter.enqueue_one_by_one(50, n)
    elapsed = time.perf_counter() - start
    adapter.close()
    return {"value": n / elapsed, "unit": "msg/s", "messages": n, "seconds": elapsed}


def bulk(system: str, n: int) -> dict[str, Any]:
    flush()
    adapter = load_adapter(system)
    adapter.enqueue_bulk(0, 10)  # warm-up
    start = time.perf_counter()
    adapter.enqueue_bulk(10, n)
    elapsed = time.perf_counter() - start
    adapter.close()
    return {
        "value": n / elapsed,
        "unit": "msg/s",
        "messages": n,
        "seconds": elapsed,
        "api": adapter.bulk_api,
    }


def round_trip(system: str, spec: specs.WorkerSpec, n: int) -> dict[str, Any]:
    flush()
    adapter = load_adapter(system)
    with procs.Workers(spec):
        adapter.round_trips(1, START_TIMEOUT_S)  # the worker is up
        adapter.round_trips(20, 10.0)  # warm-up
        samples = sorted(adapter.round_trips(n, 10.0))
    adapter.close()
    ms = [s * 1000 for s in samples]
    return {
        "value": ms[len(ms) // 2],
        "unit": "ms p50",
        "p50_ms": ms[len(ms) // 2],
        "p99_ms": ms[min(len(ms) - 1, int(len(ms) * 0.99))],
        "mean_ms": statistics.fmean(ms),
        "round_trips": n,
    }


def pss(system: str, spec: specs.WorkerSpec, idle_s: float) -> dict[str, Any]:
    client = flush()
    adapter = load_adapter(system)
    with procs.Workers(spec) as workers:
        adapter.enqueue_one_by_one(0, 1)
        wait_for_counter(client, 1, workers, "pss")  # it took a job: it is up
        time.sleep(idle_s)  # the measurement itself: idle for this long
        sizes = workers.pss_kib()
    adapter.close()
    return {
        "value": sum(sizes.values()) / 1024,
        "unit": "MiB PSS",
        "processes": len(sizes),
        "per_process_kib": {str(pid): kib for pid, kib in sizes.items()},
    }


def chord(system: str, spec: specs.WorkerSpec, n: int, timeout_s: float) -> dict[str, Any]:
    flush()
    adapter = load_adapter(system)
    with procs.Workers(spec):
        if adapter.chord(10, START_TIMEOUT_S) != 10:  # warm-up, and the workers are up
            raise RuntimeError("the warm-up chord's body did not count 10 members")
        start = time.perf_counter()
        value = adapter.chord(n, timeout_s)
        elapsed = time.perf_counter() - start
    adapter.close()
    if value != n:
        raise RuntimeError(f"the chord's body counted {value} members, expected {n}")
    return {"value": elapsed * 1000, "unit": "ms", "members": n}


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    import faena

    found = {"python": sys.version.split()[0], "faena": faena.__version__}
    for name in ("celery", "kombu", "rq", "dramatiq", "arq", "redis", "hiredis", "msgspec"):
        with contextlib.suppress(PackageNotFoundError):
            found[name] = version(name)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("system", choices=(*specs.SYSTEMS, "versions"))
    parser.add_argument("metric", choices=METRICS, nargs="?")
    parser.add_argument("--spec", help="worker configuration label (see specs.py)")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--idle", type=float, default=3.0)
    args = parser.parse_args()
    if args.system == "versions":
        print(json.dumps(versions()))
        return
    spec = specs.find(args.system, args.spec) if args.spec else None
    if spec is not None:
        os.environ.update(spec.env)
    if args.metric in NEEDS_RESULTS:
        os.environ["BENCH_RESULTS"] = "1"
    if args.metric in ("drain", "rt", "pss", "chord") and spec is None:
        parser.error(f"{args.metric} needs --spec")
    load_before = os.getloadavg()[0]
    try:
        out = measure(args, spec)
    except Unsupported as exc:
        out = {"unsupported": str(exc)}
    out["load1"] = [load_before, os.getloadavg()[0]]
    print(json.dumps(out))


def measure(args: argparse.Namespace, spec: specs.WorkerSpec | None) -> dict[str, Any]:
    if args.metric == "drain":
        assert spec is not None
        out = drain(args.system, spec, args.n, args.timeout)
    elif args.metric == "single":
        out = single(args.system, args.n)
    elif args.metric == "bulk":
        out = bulk(args.system, args.n)
    elif args.metric == "rt":
        assert spec is not None
        out = round_trip(args.system, spec, args.n)
    elif args.metric == "pss":
        assert spec is not None
        out = pss(args.system, spec, args.idle)
    else:
        assert spec is not None
        out = chord(args.system, spec, args.n, args.timeout)
    return out


if __name__ == "__main__":
    main()

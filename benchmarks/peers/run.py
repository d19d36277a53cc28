"""Side-by-side benchmark: faena, Celery, RQ, Dramatiq and arq on one private Redis server.

For each system and metric, the driver runs a fresh measuring process (see
:mod:`benchmarks.peers.measure`) per repetition, flushing the private server first, and reports
the median. Where a system has several worker configurations (:mod:`benchmarks.peers.specs`),
each is tried once ("screening", at a quarter of the size) and the best one is then measured
``--runs`` times; the report names it.

Metrics: ``drain`` (N no-op jobs, results ignored, queued first, then 2 worker processes;
timed from the first 1 % to the last job, from inside the workers), ``single`` (one producer
call per job), ``bulk`` (the system's bulk API), ``rt`` (enqueue and wait for the result, in
a row, one idle worker; p50/p99), ``pss`` (an idle worker's PSS, its children included, after
3 s idle), ``chord`` (N members, the body counts them; from ``delay`` to the body's result, on
the drain's best configuration).

Bytecode: before measuring, the checkout's ``faena`` and ``benchmarks`` packages are compiled
(``compileall``) with each interpreter in use, as pip does when it installs a package; the peers
are installed with their bytecode. Without this, where ``PYTHONDONTWRITEBYTECODE`` is set, every
faena process would compile faena from source as it starts, which leaves about 1 MiB more in an
idle worker than an installed faena has.

Run from the repository root:
    /work/.venv-peers/bin/python -m benchmarks.peers.run --systems all --runs 3 --out peers.json
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis

from benchmarks.peers import specs

ROOT = Path(__file__).resolve().parents[2]
METRICS = ("drain", "single", "bulk", "rt", "pss", "chord")
SCREEN_FRACTION = {"drain": 4, "rt": 10, "pss": 1, "chord": 1}
CHORD_SYSTEMS = ("faena", "faena-async", "celery")
"""The systems with a chord; each is screened over its drain configurations."""
LOWER_IS_BETTER = ("rt", "pss", "chord")


@contextlib.contextmanager
def private_redis(server: str) -> Iterator[str]:
    """A redis-server of our own on a free port, without persistence, stopped afterwards."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    workdir = tempfile.mkdtemp(prefix="bench-redis-")
    proc = subprocess.Popen(
        [
            server,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            workdir,
            "--daemonize",
            "no",
            "--loglevel",
            "warning",
        ],
        stdout=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        client = redis.Redis.from_url(url)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{server} did not start on port {port}") from None
                time.sleep(0.05)
        client.close()
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


class Runner:
    def __init__(self, args: argparse.Namespace, url: str) -> None:
        self.args = args
        self.url = url
        self.pythons: dict[str, str] = dict(p.split("=", 1) for p in args.python)
        self.sqlite_dir = (
            Path(tempfile.mkdtemp(prefix="bench-faena-")) if args.faena_sqlite else None
        )
        self.calls = 0
        self.best_drain: dict[str, str] = {}

    def python(self, system: str) -> str:
        return self.pythons.get(system, sys.executable)

    def measure(self, system: str, metric: str, n: int, spec: str | None = None) -> dict[str, Any]:
        argv = [self.python(system), "-m", "benchmarks.peers.measure", system, metric]
        argv += ["--n", str(n), "--timeout", str(self.args.timeout)]
        if spec is not None:
            argv += ["--spec", spec]
        env = {**os.environ, "BENCH_REDIS_URL": self.url, "PYTHONPATH": str(ROOT)}
        if self.sqlite_dir is not None and system.startswith("faena"):
            self.calls += 1
            env["BENCH_FAENA_BROKER"] = f"sqlite:///{self.sqlite_dir}/{metric}-{self.calls}.sqlite3"
        try:
            done = subprocess.run(
                argv,
                check=False,
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=self.args.timeout + 180,
            )
        except subprocess.TimeoutExpired:
            return {"error": f"no answer within {self.args.timeout + 180} s"}
        lines = done.stdout.strip().splitlines()
        if done.returncode != 0 or not lines:
            return {"error": (done.stderr or done.stdout)[-2500:]}
        out: dict[str, Any] = json.loads(lines[-1])
        return out

    def size(self, metric: str) -> int:
        a = self.args
        return {
            "drain": a.drain_n,
            "single": a.single_n,
            "bulk": a.bulk_n,
            "rt": a.rt_n,
            "pss": 0,
            "chord": a.chord_n,
        }[metric]

    def pick(self, system: str, metric: str) -> tuple[str | None, list[dict[str, Any]]]:
        """The worker configuration to measure, and the screening that chose it."""
        if metric == "chord" and system not in CHORD_SYSTEMS:
            return self.best_drain.get(system, specs.SPECS["drain"][system][0].label), []
        if metric not in specs.SPECS and metric != "chord":
            return None, []
        # A chord runs on two worker processes, like the drain: its candidates are the drain's.
        candidates = specs.SPECS["drain" if metric == "chord" else metric][system]
        if len(candidates) == 1 or self.args.no_screen:
            return candidates[0].label, []
        n = max(1, self.size(metric) // SCREEN_FRACTION[metric])
        screening = []
        for spec in candidates:
            # Rounds go through every configuration in turn, like the repetitions.
            tries = [self.measure(system, metric, n, spec.label)]
            screening.append({"spec": spec.label, "tries": tries})
        for _ in range(self.args.screen_runs - 1):
            for entry in screening:
                entry["tries"].append(self.measure(system, metric, n, entry["spec"]))
        for entry in screening:
            values = [t["value"] for t in entry["tries"] if "value" in t]
            if values:
                entry["value"] = statistics.median(values)
            unit = entry["tries"][0].get("unit", "")
            shown = f"{entry['value']:,.2f} {unit}" if values else "failed"
            print(f"    screening {system} {metric} [{entry['spec']}]: {shown}", flush=True)
        good = [s for s in screening if "value" in s]
        if not good:
            return candidates[0].label, screening
        lower = metric in LOWER_IS_BETTER
        best = min(good, key=lambda s: s["value"]) if lower else max(good, key=lambda s: s["value"])
        return str(best["spec"]), screening

    def run(self, metric: str, systems: list[str]) -> dict[str, dict[str, Any]]:
        """Every system's figure for ``metric``. Repetitions go round the systems in turn, so a
        change in the machine's load touches every system alike."""
        absent = {s for s in systems if metric not in specs.ONLY.get(s, (metric,))}
        systems = [s for s in systems if s not in absent]
        picks = {system: self.pick(system, metric) for system in systems}
        runs: dict[str, list[dict[str, Any]]] = {system: [] for system in systems}
        for _ in range(self.args.runs):
            for system in systems:
                if any("unsupported" in r for r in runs[system]):
                    continue
                runs[system].append(
                    self.measure(system, metric, self.size(metric), picks[system][0])
                )
        out = {s: self.summarise(s, metric, *picks[s], runs[s]) for s in systems}
        for system in absent:
            out[system] = {"spec": None, "unsupported": f"{system} is not measured for {metric}"}
        return out

    def summarise(
        self,
        system: str,
        metric: str,
        spec: str | None,
        screening: list[dict[str, Any]],
        runs: list[dict[str, Any]],
    ) -> dict[str, Any]:
        entry: dict[str, Any] = {"spec": spec, "runs": runs, "screening": screening}
        if any("unsupported" in r for r in runs):
            entry["unsupported"] = runs[0].get("unsupported")
            return entry
        values = [r["value"] for r in runs if "value" in r]
        if values:
            entry["median"] = statistics.median(values)
            entry["unit"] = runs[0]["unit"]
            entry["values"] = values
        if metric == "rt" and values:
            entry["p99_median"] = statistics.median(r["p99_ms"] for r in runs if "p99_ms" in r)
        if metric == "bulk" and values:
            entry["api"] = runs[0].get("api")
        errors = [r["error"] for r in runs if "error" in r]
        if errors:
            entry["errors"] = errors
        if metric == "drain" and spec is not None and values:
            self.best_drain[system] = spec
        return entry


def expand(systems: str) -> list[str]:
    chosen: list[str] = []
    for word in systems.split(","):
        names = {"all": specs.SYSTEMS, "peers": specs.PEERS}.get(word, (word,))
        for name in names:
            if name not in specs.SYSTEMS:
                raise SystemExit(
                    f"unknown system {name!r}; choose from all, peers, {specs.SYSTEMS}"
                )
            if name not in chosen:
                chosen.append(name)
    return chosen


def machine(server: str) -> dict[str, Any]:
    def text(argv: list[str]) -> str:
        try:
            return subprocess.run(
                argv, check=False, capture_output=True, text=True, cwd=ROOT
            ).stdout.strip()
        except OSError:
            return ""

    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "loadavg_start": os.getloadavg(),
        "redis_server": text([server, "--version"]),
        "faena_commit": text(["git", "rev-parse", "--short", "HEAD"]),
        "faena_dirty": bool(text(["git", "status", "--porcelain", "--", "faena"])),
    }


def fmt(entry: dict[str, Any] | None, metric: str) -> str:
    if entry is None:
        return "-"
    if "unsupported" in entry:
        return "n/a"
    if "median" not in entry:
        return "failed"
    value = entry["median"]
    if metric == "rt":
        return f"{value:.2f} / {entry.get('p99_median', 0):.2f}"
    if metric in ("pss", "chord"):
        return f"{value:,.1f}"
    return f"{value:,.0f}"


HEADERS = {
    "drain": "drain jobs/s",
    "single": "single msg/s",
    "bulk": "bulk msg/s",
    "rt": "rt p50/p99 ms",
    "pss": "idle PSS MiB",
    "chord": "chord ms",
}


def table(results: dict[str, dict[str, Any]], metrics: list[str]) -> str:
    rows = [["system", *(HEADERS[m] for m in metrics)]]
    rows += [[s, *(fmt(results[s].get(m), m) for m in metrics)] for s in results]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [
        " | ".join(
            c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in rows
    ]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    configs = [
        f"  {s} {m}: {e['spec']}"
        for s, per in results.items()
        for m, e in per.items()
        if e.get("spec") and "unsupported" not in e
    ]
    return "\n".join([*lines, "", "worker configurations measured:", *configs])


def ratios(results: dict[str, dict[str, Any]]) -> list[str]:
    """faena against the goals, for each faena flavour measured."""

    def med(system: str, metric: str) -> float | None:
        value = results.get(system, {}).get(metric, {}).get("median")
        return float(value) if value is not None else None

    peers = [p for p in specs.PEERS if p in results]
    out = []
    for flavour in ("faena", "faena-async"):
        if flavour not in results or not peers:
            continue
        for metric, goal in (("drain", 2.0), ("single", 1.5), ("bulk", 4.0)):
            ours = med(flavour, metric)
            theirs = {p: v for p in peers if (v := med(p, metric)) is not None}
            if ours is None or not theirs:
                continue
            best = max(theirs, key=lambda p: theirs[p])
            out.append(
                f"{flavour} {metric}: {ours / theirs[best]:.2f}x the fastest peer ({best}); "
                f"goal {goal}x"
            )
        celery = med("celery", "drain")
        ours = med(flavour, "drain")
        if celery and ours:
            out.append(f"{flavour} drain: {ours / celery:.2f}x Celery's best; goal 5x")
        rt = med(flavour, "rt")
        if rt is not None:
            out.append(f"{flavour} round trip p50: {rt:.2f} ms; goal < 0.5 ms")
        floor_rt, floor_single = med("redis", "rt"), med("redis", "single")
        if rt is not None and floor_rt:
            out.append(
                f"{flavour} round trip p50: {rt / floor_rt:.1f}x plain redis-py's request and "
                f"reply through two lists ({floor_rt:.2f} ms)"
            )
        single = med(flavour, "single")
        if single and floor_single:
            out.append(
                f"{flavour} single: {single / floor_single:.2f}x plain redis-py's LPUSH per "
                f"call ({floor_single:,.0f} msg/s)"
            )
        pss = med(flavour, "pss")
        lightest = [v for p in peers if (v := med(p, "pss")) is not None]
        if pss is not None and lightest:
            out.append(f"{flavour} idle PSS: {pss:.1f} MiB; lightest peer {min(lightest):.1f} MiB")
        chord_ours, chord_celery = med(flavour, "chord"), med("celery", "chord")
        if chord_ours and chord_celery:
            out.append(f"{flavour} chord: {chord_celery / chord_ours:.2f}x faster than Celery")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--systems",
        default="all",
        help="all, peers, or a comma list of " + ", ".join(specs.SYSTEMS),
    )
    parser.add_argument(
        "--metrics", default=",".join(METRICS), help="comma list of " + ", ".join(METRICS)
    )
    parser.add_argument("--runs", type=int, default=3, help="repetitions per figure (median)")
    parser.add_argument("--out", type=Path, help="write every figure and run here (JSON)")
    parser.add_argument("--drain-n", type=int, default=20_000)
    parser.add_argument("--single-n", type=int, default=5_000)
    parser.add_argument("--bulk-n", type=int, default=20_000)
    parser.add_argument("--rt-n", type=int, default=1_000)
    parser.add_argument("--chord-n", type=int, default=1_000)
    parser.add_argument(
        "--no-screen",
        action="store_true",
        help="measure only each system's first worker configuration",
    )
    parser.add_argument(
        "--screen-runs",
        type=int,
        default=1,
        help="tries per worker configuration when choosing the best (median); 3 on a quiet "
        "machine for published figures",
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run: small sizes, 1 run")
    parser.add_argument("--timeout", type=float, default=600.0, help="per measurement, seconds")
    parser.add_argument(
        "--python",
        action="append",
        default=[],
        metavar="SYSTEM=PATH",
        help="run a system's producer and workers with another interpreter",
    )
    parser.add_argument(
        "--faena-sqlite",
        action="store_true",
        help="faena on a fresh sqlite:/// file per measurement, the peers on Redis",
    )
    parser.add_argument("--redis-server", default="redis-server")
    args = parser.parse_args()
    if args.quick:
        args.runs, args.drain_n, args.single_n, args.bulk_n = 1, 2_000, 1_000, 2_000
        args.rt_n, args.chord_n = 200, 200
    systems = expand(args.systems)
    metrics = [m.strip() for m in args.metrics.split(",")]
    unknown = set(metrics) - set(METRICS)
    if unknown:
        raise SystemExit(f"unknown metrics {sorted(unknown)}; choose from {METRICS}")
    report: dict[str, Any] = {
        "machine": machine(args.redis_server),
        "args": vars(args) | {"out": str(args.out)},
    }
    with private_redis(args.redis_server) as url:
        runner = Runner(args, url)
        report["versions"] = {
            python: runner_versions(python) for python in {runner.python(s) for s in systems}
        }
        print(json.dumps(report["machine"]), json.dumps(report["versions"]), sep="\n", flush=True)
        for python in sorted(report["versions"]):
            compile_sources(python)
        results: dict[str, dict[str, Any]] = {system: {} for system in systems}
        for metric in metrics:
            for system, entry in runner.run(metric, systems).items():
                results[system][metric] = entry
                print(
                    f"{system:<12} {metric:<7} {fmt(entry, metric):>16}"
                    + f"  [{entry.get('spec') or '-'}]"
                    + (f"  errors: {len(entry['errors'])}" if entry.get("errors") else "")
                    + (f"  ({entry['unsupported']})" if entry.get("unsupported") else ""),
                    flush=True,
                )
            if args.out:
                write(args.out, report | {"results": results})
    report["machine"]["loadavg_end"] = os.getloadavg()
    report["results"] = results
    report["ratios"] = ratios(results)
    if args.faena_sqlite and report["ratios"]:
        # faena's figures are of its SQLite broker, the peers' of Redis: say so beside them.
        report["ratios"].insert(
            0, "faena ran on sqlite:/// (--faena-sqlite), the others on Redis: not a Redis ratio"
        )
    print()
    print(table(results, metrics))
    if report["ratios"]:
        print("\n" + "\n".join(report["ratios"]))
    for system, per in results.items():
        for metric, entry in per.items():
            for error in entry.get("errors", []):
                print(f"\n{system} {metric} failed:\n{error}", file=sys.stderr)
    if args.out:
        write(args.out, report)


def compile_sources(python: str) -> None:
    """Compile the checkout's packages to bytecode for ``python`` (see the module docstring)."""
    subprocess.run(
        [python, "-m", "compileall", "-q", "faena", "benchmarks"],
        check=True,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
    )


def runner_versions(python: str) -> dict[str, str]:
    done = subprocess.run(
        [python, "-m", "benchmarks.peers.measure", "versions"],
        check=False,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else {}


def write(path: Path, report: dict[str, Any]) -> None:
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()

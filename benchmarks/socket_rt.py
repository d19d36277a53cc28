"""Round trip over TCP against the same over Redis's Unix socket (``redis+socket://``).

Starts a private ``redis-server`` (no persistence) listening on a free local port and on a
socket, then, alternating the two transports, starts one idle ``faena worker`` (defaults) on
the peers benchmark's app and times ``delay(i).get()`` one after the other, for the sync and
the ``async def`` no-op task (the task body's ``INCR`` goes over the same transport). Prints
each try's p50 and the median of the tries per transport and task.

Run from the repository root, in the peers benchmark's environment:
``python -m benchmarks.socket_rt [--tries 3] [--round-trips 2000]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FLAVOURS = ("faena-async", "faena")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def measure(env: dict[str, str], flavour: str, round_trips: int) -> float:
    """p50 in ms of ``round_trips`` round trips against a fresh worker."""
    command = [
        "-m",
        "faena",
        "worker",
        "-A",
        "benchmarks.peers.faena_redis",
        "--log-level",
        "ERROR",
    ]
    worker = subprocess.Popen([sys.executable, *command], env=env)
    try:
        code = (
            "import json, sys\n"
            "from benchmarks.peers.faena_redis import adapter, app\n"
            f"a = adapter({flavour!r})\n"
            "a.round_trips(300, 30)\n"  # warm-up; waits for the worker to be ready
            f"t = sorted(a.round_trips({round_trips}, 30))\n"
            "print(json.dumps(t[len(t) // 2] * 1000))\n"
            "app.close()\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True
        )
        return float(out.stdout.strip().splitlines()[-1])
    finally:
        worker.terminate()
        worker.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tries", type=int, default=3)
    parser.add_argument("--round-trips", type=int, default=2000)
    args = parser.parse_args()
    if shutil.which("redis-server") is None:
        sys.exit("redis-server is not on PATH")
    directory = Path(tempfile.mkdtemp(prefix="faena-sock-"))
    port, path = free_port(), str(directory / "redis.sock")
    listen = ["--port", str(port), "--bind", "127.0.0.1", "--unixsocket", path]
    keep = ["--unixsocketperm", "700", "--save", "", "--appendonly", "no", "--dir", str(directory)]
    server = subprocess.Popen(["redis-server", *listen, *keep], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not os.path.exists(path):
            if time.monotonic() > deadline or server.poll() is not None:
                sys.exit("redis-server did not start")
            time.sleep(0.05)
        transports = {
            "tcp": {"BENCH_REDIS_URL": f"redis://127.0.0.1:{port}/0", "BENCH_FAENA_BROKER": ""},
            "socket": {
                "BENCH_REDIS_URL": f"unix://{path}?db=0",
                "BENCH_FAENA_BROKER": f"redis+socket://{path}?db=0",
            },
        }
        found: dict[tuple[str, str], list[float]] = {}
        for attempt in range(args.tries):
            for flavour in FLAVOURS:
                for name, extra in transports.items():
                    env = {**os.environ, "BENCH_RESULTS": "1", **extra}
                    p50 = measure(env, flavour, args.round_trips)
                    found.setdefault((flavour, name), []).append(p50)
                    print(f"try {attempt + 1}: {flavour:12} {name:6} p50 {p50:.3f} ms", flush=True)
        print()
        for (flavour, name), values in found.items():
            runs = " · ".join(f"{v:.2f}" for v in values)
            print(f"{flavour:12} {name:6} median p50 {statistics.median(values):.3f} ms ({runs})")
    finally:
        server.terminate()
        server.wait(10)
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()

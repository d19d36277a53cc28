"""Tasks for the flow-control tests: each run writes a ledger line with the coordination
store's time, so a test can check limits without trusting the code under test.

Configured by the environment (set by the tests): FAENA_BROKER_URL, FLOW_LEDGER (path),
FLOW_LEASE_S, FLOW_SLEEP_S (seconds ``slot`` works).
"""

from __future__ import annotations

import os
import time
from typing import Any

from faena import Faena

app = Faena(
    "flow",
    lease_s=float(os.environ.get("FLOW_LEASE_S", "30")),
    poll_interval_s=0.005,
    revoke_check_s=0.1,
    concurrency_retry_s=0.05,
)

_redis: Any = None


def store_time() -> float:
    """Now by the coordination store's clock: Redis's TIME on Redis, else this machine's."""
    global _redis
    if not app.broker_url.startswith("redis"):
        return time.time()
    if _redis is None:
        import redis

        _redis = redis.Redis.from_url(app.broker_url.split("?")[0])
    seconds, micros = _redis.time()
    return float(seconds) + micros / 1e6


def ledger(line: str) -> None:
    # One short O_APPEND write per line: lines from several processes never interleave.
    fd = os.open(os.environ["FLOW_LEDGER"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{line}\n".encode())
    finally:
        os.close(fd)


@app.task(rate_limit="20/s")
def limited(i: int) -> None:
    ledger(f"limited {i} {store_time():.6f}")


@app.task
def free(i: int) -> None:
    ledger(f"free {i} {store_time():.6f}")


@app.task(concurrency_limit=2)
def slot(i: int) -> None:
    ledger(f"in {i} {os.getpid()}")
    time.sleep(float(os.environ.get("FLOW_SLEEP_S", "0.2")))
    ledger(f"out {i} {os.getpid()}")


@app.task(bind=True, concurrency_limit=1, max_retries=0)
def holder(self: Any, i: int) -> None:
    ledger(f"holding {i} {os.getpid()} {self.request.deliveries}")
    if i == 0 and self.request.deliveries == 1:
        time.sleep(60)  # the first run holds the slot until its worker is killed


@app.task
def sleeper(i: int) -> None:
    ledger(f"sleeping {i} {os.getpid()}")
    time.sleep(60)


@app.task
def marker(i: int) -> None:
    ledger(f"marker {i} {os.getpid()}")


@app.task(acks_late=False)
def dies_early_acked(i: int) -> None:
    """Ends its own process: in the processes pool the child dies, and the job is lost."""
    os._exit(7)


@app.task
def errback(job_id: str, error: dict[str, str]) -> None:
    ledger(f"errback {job_id} {error['type']}")

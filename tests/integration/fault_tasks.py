"""Tasks for the fault tests: each run writes a line to a ledger file, so a test can see what
ran, where and how often, without trusting the queue under test.

Configured by the environment of the worker process (set by the tests):
FAULT_LEDGER (path), FAULT_LEASE_S, FAULT_MAX_DELIVERIES, FAULT_SLEEP_S (seconds `work` sleeps).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from faena import Faena

app = Faena(
    "faults",
    lease_s=float(os.environ.get("FAULT_LEASE_S", "30")),
    max_deliveries=int(os.environ.get("FAULT_MAX_DELIVERIES", "5")),
    poll_interval_s=0.005,
)


def ledger(line: str) -> None:
    path = os.environ.get("FAULT_LEDGER")
    if path:
        # One short O_APPEND write per line: lines from several processes never interleave.
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{line}\n".encode())
        finally:
            os.close(fd)


@app.task
def work(i: int) -> int:
    ledger(f"start {i} {os.getpid()}")
    time.sleep(float(os.environ.get("FAULT_SLEEP_S", "0")))
    ledger(f"done {i} {os.getpid()}")
    return i


@app.task(ignore_result=False)
def noop(i: int) -> int:
    ledger(f"run {i} {os.getpid()}")
    return i


@app.task
def suicide() -> None:
    ledger(f"suicide {os.getpid()}")
    os.kill(os.getpid(), signal.SIGKILL)


@app.task(time_limit=1.0)
def hang() -> None:
    ledger(f"hang {os.getpid()} {time.time()}")
    while True:
        time.sleep(0.05)


@app.task
def rendezvous(name: str, directory: str, expected: int) -> int:
    """Wait (up to 10 s) until ``expected`` jobs have arrived here at the same time."""
    Path(directory, f"{name}.{os.getpid()}").touch()
    deadline = time.monotonic() + 10
    while len(list(Path(directory).iterdir())) < expected:
        if time.monotonic() > deadline:
            raise TimeoutError("the other jobs never arrived")
        time.sleep(0.01)
    return os.getpid()


@app.task
def whose(i: int) -> int:
    """Returns the pid of the process that ran it, after ``FAULT_SLEEP_S``."""
    ledger(f"start {i} {os.getpid()}")
    time.sleep(float(os.environ.get("FAULT_SLEEP_S", "0")))
    ledger(f"done {i} {os.getpid()}")
    return os.getpid()


@app.task(ignore_result=True)
def mark(i: int) -> None:
    ledger(f"mark {i} {os.getpid()}")


@app.task
def gather(values: list[int]) -> int:
    """A chord body: one ledger line per run, so a test can count its runs."""
    ledger(f"body {len(values)} {sum(values)} {os.getpid()}")
    return sum(values)


@app.task
def flaky_member(i: int) -> int:
    """A chord member that fails for ``i == 13``."""
    if i == 13:
        raise ValueError(f"member {i} cannot")
    return i


@app.task
def chord_errback(job_id: str, error: dict[str, str]) -> None:
    ledger(f"errback {job_id} {error['type']}")


@app.task
def fork_and_terminate() -> list[object]:
    """The run-with-a-timeout idiom: a forked child, terminated; is it gone, and how?"""
    import multiprocessing

    child = multiprocessing.get_context("fork").Process(target=time.sleep, args=(60,))
    child.start()
    child.terminate()
    child.join(10)
    return [child.is_alive(), child.exitcode]


async def _ignore_cancellation(i: int) -> None:
    import asyncio

    ledger(f"start {i} {os.getpid()}")
    while True:
        try:
            await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            ledger(f"swallowed {i} {os.getpid()}")


@app.task(time_limit=1)
async def stubborn(i: int) -> None:
    """Ignores cancellation: at its hard limit it is abandoned, still running on the loop."""
    await _ignore_cancellation(i)


@app.task
async def stubborn_forever(i: int) -> None:
    """No time limit, and ignores cancellation: only the process's end stops it."""
    await _ignore_cancellation(i)


@app.task(acks_late=False)
async def stubborn_early(i: int) -> None:
    """Acknowledged before it runs, and ignores cancellation."""
    await _ignore_cancellation(i)

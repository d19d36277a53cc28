"""Tasks for the process pool tests: the pool's children import this module as their app.

Each misbehaves in one precise way (dies, hangs, hogs memory) so a test can check how the pool
reports it. Sleeping inside a task stands for work; the tests never sleep to synchronise.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

from faena import Faena
from faena.foundation.exceptions import SoftTimeLimitExceeded
from faena.model.task import JobContext

app = Faena("pool-tests", broker="memory://")

_hoard: list[bytes] = []


@app.task
def add(a: int, b: int) -> int:
    return a + b


@app.task
async def async_add(a: int, b: int) -> int:
    await asyncio.sleep(0)
    return a + b


@app.task
def boom(text: str) -> None:
    raise ValueError(text)


@app.task
def pid() -> int:
    return os.getpid()


@app.task
def sleeper(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@app.task(bind=True)
def started_then_sleep(self: JobContext, seconds: float) -> float:
    """Reports progress once running, so a test knows the job is in a child right now."""
    self.update_progress(0.0, f"started {os.getpid()}")
    time.sleep(seconds)
    return seconds


@app.task
def suicide() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


@app.task
def hard_exit(code: int) -> None:
    os._exit(code)


@app.task
def hang() -> None:
    time.sleep(60)


@app.task
def soft_catcher() -> str:
    try:
        time.sleep(30)
    except SoftTimeLimitExceeded:
        return "cleaned up"
    return "not interrupted"


@app.task(bind=True)
def reporter(self: JobContext) -> str:
    self.update_progress(0.25, "quarter")
    self.update_progress(1.0, "done")
    return "reported"


@app.task
def hog(mib: int) -> int:
    """Keeps ``mib`` MiB resident (written, so the pages are really there)."""
    _hoard.append(b"\x01" * (mib * 1024 * 1024))
    return len(_hoard)


@app.task
def exits(code: int) -> None:
    raise SystemExit(code)


@app.task
def bad_text() -> None:
    name = b"caf\xe9.csv".decode("utf-8", "surrogateescape")  # as os.listdir gives it
    raise ValueError(f"cannot import {name}")


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text")


@app.task
def unprintable() -> None:
    raise Unprintable()


@app.task(bind=True)
def header_types(self: JobContext) -> dict[str, str]:
    return {k: repr(v) for k, v in self.request.headers.items()}


@app.task
def takes_alarm() -> str:
    """Sets a SIGALRM handler of its own, as alarm-based timeout helpers do."""
    signal.signal(signal.SIGALRM, lambda signum, frame: None)
    return "mine"

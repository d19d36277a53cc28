"""Real worker processes for the integration tests: ``faena worker`` started as a
subprocess on a SQLite file in the test's tmp_path, logs captured to a file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


class WorkerProcess:
    """One ``faena worker`` subprocess."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self._log_file = log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "faena", "worker", *args],
            cwd=ROOT,
            env=env,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            self._log_file.close()

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.wait(10)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """The environment shared by the test process and its workers."""
    values = {
        "FAENA_BROKER_URL": f"sqlite:///{tmp_path / 'faena.sqlite3'}",
        "FAULT_LEDGER": str(tmp_path / "ledger.txt"),
        "FAULT_LEASE_S": "30",
        "PYTHONPATH": str(ROOT),
    }
    return {**os.environ, **values}


@pytest.fixture
def start_worker(tmp_path: Path, env: dict[str, str]) -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []

    def start(*args: str, **overrides: str) -> WorkerProcess:
        log = tmp_path / f"worker-{len(started)}.log"
        worker = WorkerProcess(
            ["-A", "tests.integration.fault_tasks", *args], {**env, **overrides}, log
        )
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` until true; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


def ledger_lines(env: dict[str, str]) -> list[list[str]]:
    path = Path(env["FAULT_LEDGER"])
    if not path.exists():
        return []
    return [line.split() for line in path.read_text().splitlines() if line]

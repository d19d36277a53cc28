"""Worker processes: start a configuration's commands, watch them, measure them, stop them.

Each command starts in its own session, so its process group holds the command and every
child it forks (Celery's prefork children, Dramatiq's worker processes, RQ's work horses);
stopping sends SIGTERM to that group (the systems' warm shutdown), then SIGKILL after a grace.
Output goes to a log file per command, shown when a worker dies early.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from types import TracebackType

from benchmarks.peers.common import redis_url
from benchmarks.peers.specs import WorkerSpec

ROOT = Path(__file__).resolve().parents[2]
STOP_GRACE_S = 30.0


def program(name: str) -> str:
    """A program of this interpreter's virtualenv (``python`` is the interpreter itself)."""
    if name == "python":
        return sys.executable
    path = Path(sys.executable).parent / name
    if not path.exists():
        raise FileNotFoundError(f"{name} is not installed next to {sys.executable}")
    return str(path)


def descendants(root: int) -> list[int]:
    """``root`` and every process under it, from the parent links in /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: the fields follow the last ')'.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, ()))
    return found


def pss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/{pid}/smaps_rollup has no Pss line")


class Workers:
    """The processes of one worker configuration, started on entry and stopped on exit."""

    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        self.logs = Path(tempfile.mkdtemp(prefix="bench-workers-"))
        self.procs: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> Workers:
        env = {**os.environ, **self.spec.env, "PYTHONPATH": str(ROOT)}
        url = redis_url()
        for n, argv in enumerate(self.spec.commands):
            words = [w.replace("{redis}", url).replace("{n}", str(n)) for w in argv]
            log = (self.logs / f"worker-{n}.log").open("wb")
            self.procs.append(
                subprocess.Popen(
                    [program(words[0]), *words[1:]],
                    cwd=ROOT,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
            log.close()
        return self

    def check_alive(self) -> None:
        for n, proc in enumerate(self.procs):
            if proc.poll() is not None:
                tail = (self.logs / f"worker-{n}.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(
                    f"worker {n} of {self.spec.label!r} exited with {proc.returncode}:\n{tail}"
                )

    def pss_kib(self) -> dict[int, int]:
        """PSS of every process of the configuration (commands and their children), in KiB."""
        self.check_alive()
        return {pid: pss_kib(pid) for proc in self.procs for pid in descendants(proc.pid)}

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        # A command that exited may leave children behind in its group (a dying prefork
        # parent): nothing of ours may outlive the measurement.
        for proc in self.procs:
            for pid in group_members(proc.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def group_members(pgid: int) -> list[int]:
    """The live processes of process group ``pgid``."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[2]) == pgid:
            members.append(int(entry))
    return members

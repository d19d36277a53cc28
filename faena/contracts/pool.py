"""The pool seam: where a worker runs jobs (the event loop, threads, child processes)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

from faena.model.outcome import Outcome
from faena.model.task import ProgressSink, Request


@dataclass(slots=True, kw_only=True)
class Job:
    """One run of a task, ready to execute.

    ``body`` is the message as received, so that a process pool can hand it to a child
    without encoding the arguments again; ``args``/``kwargs`` are the decoded arguments for
    pools that run in this process.
    """

    request: Request
    body: bytes
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    serializer: str
    time_limit: float | None
    soft_time_limit: float | None
    progress: ProgressSink


@dataclass(frozen=True, slots=True, kw_only=True)
class PoolHealth:
    """``restarts``: child processes replaced; ``abandoned``: threads left running past their
    hard time limit (a thread cannot be killed)."""

    size: int
    busy: int
    restarts: int = 0
    abandoned: int = 0


class Pool(ABC):
    """Runs jobs; at most ``size`` at once. ``run`` never raises for a task's own failure."""

    name: str = "pool"

    def __init__(self, size: int) -> None:
        self.size = size

    @abstractmethod
    async def start(self) -> None:
        """Get ready to run jobs (spawn children, ...)."""

    @abstractmethod
    async def run(self, job: Job) -> Outcome:
        """Run one job to its outcome, enforcing its time limits as the pool documents."""

    @abstractmethod
    def terminate(self, job_id: str) -> bool:
        """Stop a running job now (revoke with terminate); ``True`` if it was running here.

        Its ``run`` then returns a failure outcome with ``TimeLimitExceeded``-like finality.
        """

    @abstractmethod
    async def stop(self, graceful: bool, timeout_s: float) -> None:
        """Stop; graceful waits up to ``timeout_s`` for running jobs, else stops them now."""

    def leftover(self) -> int:
        """After ``stop``: jobs still running that would keep the process alive at exit."""
        return 0

    @abstractmethod
    def health(self) -> PoolHealth:
        """Size, busy slots and restarts so far."""

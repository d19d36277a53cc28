"""How a worker runs: its options, and the queues it consumes when none are named."""

from __future__ import annotations

import os
from dataclasses import dataclass

from faena.app.core import Faena


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerOptions:
    """How a worker runs; every field has a CLI flag and a ``FAENA_*`` variable."""

    queues: tuple[str, ...] = ()
    concurrency: int | None = None
    pool: str = "async"
    prefetch: int | None = None
    max_tasks_per_child: int | None = None
    max_memory_per_child: int | None = None
    app_spec: str | None = None
    worker_id: str | None = None
    burst: bool = False
    grace_s: float | None = None

    def resolved_concurrency(self) -> int:
        if self.concurrency is not None:
            return self.concurrency
        if self.pool == "processes":
            return os.cpu_count() or 2
        return 1 if self.pool == "solo" else 10


def default_queues(app: Faena) -> tuple[str, ...]:
    """The queues a worker consumes when none are named: the app's default queue, then every
    queue a task of the app is declared with or a route of the app names."""
    declared = {t.defaults.queue for t in map(app.registry.get, app.registry)}
    declared.update(app.settings.routes.queues())
    named = sorted(q for q in declared if q and q != app.settings.default_queue)
    return (app.settings.default_queue, *named)

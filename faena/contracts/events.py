"""Job events: one on every state change, for monitoring and the dashboard.

A worker emits events to the listeners its app holds; emitting never blocks a job and a
listener that raises is logged and kept.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("faena.events")


@dataclass(frozen=True, slots=True, kw_only=True)
class JobEvent:
    """``kind`` is the job's new state name (``STARTED``, ``SUCCESS``, ...) or a worker event."""

    kind: str
    job_id: str
    task: str | None
    at: float
    worker: str | None = None
    parent_id: str | None = None
    root_id: str | None = None
    data: dict[str, Any] = field(default_factory=dict)


Listener = Callable[[JobEvent], None]


class EventBus:
    """Listeners for job events, called in order."""

    def __init__(self) -> None:
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Add a listener; returns a function that removes it."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def emit(self, event: JobEvent) -> None:
        for listener in tuple(self._listeners):
            try:
                listener(event)
            except Exception:
                log.exception("event listener %r failed on %s", listener, event.kind)

    def __bool__(self) -> bool:
        return bool(self._listeners)

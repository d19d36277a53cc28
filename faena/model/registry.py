"""The task registry: name to task, one per app."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from faena.foundation.exceptions import ConfigurationError, UnknownTaskError
from faena.model.task import Task


class Registry:
    """Tasks by name. Registering a second, different function under a taken name is an error."""

    def __init__(self) -> None:
        self._tasks: dict[str, Task[..., Any]] = {}

    def register(self, task: Task[..., Any]) -> None:
        existing = self._tasks.get(task.name)
        if existing is not None and existing.fn is not task.fn:
            # The same module-level function seen again (a module imported twice, a reload)
            # takes its place; two closures or lambdas of one name are two tasks.
            qualname = getattr(task.fn, "__qualname__", None)
            same_origin = (
                getattr(existing.fn, "__module__", None) == getattr(task.fn, "__module__", None)
                and getattr(existing.fn, "__qualname__", None) == qualname
                and isinstance(qualname, str)
                and "<locals>" not in qualname
                and "<lambda>" not in qualname
            )
            if not same_origin:
                raise ConfigurationError(
                    f"task name {task.name!r} is taken by {existing.fn!r}; give one of them "
                    "another name=..."
                )
        self._tasks[task.name] = task

    def get(self, name: str) -> Task[..., Any]:
        try:
            return self._tasks[name]
        except KeyError:
            raise UnknownTaskError(f"no task named {name!r} is registered") from None

    def find(self, name: str) -> Task[..., Any] | None:
        return self._tasks.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._tasks

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._tasks))

    def __len__(self) -> int:
        return len(self._tasks)

"""Tasks every app has, for workflows: ``faena.collect``, ``faena.map``, ``faena.starmap``.

``collect`` is the body of a bare group inside a workflow (it returns the member results it
is given). ``map``/``starmap`` run a task of the app over many argument sets in one job, the
way ``task.map(items)`` and ``task.chunks(items, n)`` send them.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

from faena.features.execution import run_coroutine
from faena.foundation.exceptions import UnknownTaskError
from faena.model.options import build_options
from faena.model.task import Task

if TYPE_CHECKING:
    from faena.app.core import Faena


def register_builtins(app: Faena) -> None:
    """Declare the workflow tasks on ``app`` (a worker of the app runs them)."""

    def collect(results: list[Any]) -> list[Any]:
        return results

    def call(name: str, args: tuple[Any, ...]) -> Any:
        task = app.registry.find(name)
        if task is None:
            raise UnknownTaskError(
                f"task {name!r} is not registered on this worker's app; map, starmap and "
                "chunks run tasks of the app that sends them"
            )
        value = task.run(None, args, {})
        return run_coroutine(value) if inspect.iscoroutine(value) else value

    def map_(name: str, items: list[Any]) -> list[Any]:
        return [call(name, (item,)) for item in items]

    def starmap(name: str, items: list[list[Any]]) -> list[Any]:
        return [call(name, tuple(item)) for item in items]

    for name, fn in (("collect", collect), ("map", map_), ("starmap", starmap)):
        app.registry.register(Task(fn, build_options(name=f"faena.{name}"), app))

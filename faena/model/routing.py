"""Routing: which queue (and priority) a message goes to.

An app's ``routes`` setting is a mapping of task names or glob patterns to a destination, a
callable router, or a list of those tried in order. A destination is a queue name, or a mapping
``{"queue": ..., "priority": ...}`` (either key may be left out).

Precedence, highest first: call options (``apply_async(queue=...)``), task options
(``@app.task(queue=...)``), routes, the app's ``default_queue``/``default_priority``. Queue and
priority are resolved separately: a route giving only a priority leaves the queue to the next
level down.

Example:
    >>> routes = Routes.build({"billing.*": "billing", "emails.send": {"priority": 9}})
    >>> routes.route("billing.charge", (), {})
    Route(queue='billing', priority=None)
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

from faena.foundation.exceptions import ConfigurationError
from faena.model.options import validate_priority, validate_queue

Router: TypeAlias = Callable[[str, tuple[Any, ...], dict[str, Any]], Any]
"""``router(task_name, args, kwargs)`` -> a destination, or ``None`` to pass."""


@dataclass(frozen=True, slots=True)
class Route:
    """Where a route sends a message; ``None`` leaves the choice to the next level."""

    queue: str | None = None
    priority: int | None = None


_NO_ROUTE = Route()


def destination(value: Any, where: str) -> Route:
    """A :class:`Route` from a queue name, a ``{"queue", "priority"}`` mapping or a Route.

    Raises:
        ConfigurationError: anything else, an unknown key, a bad queue name or priority.
    """
    if isinstance(value, Route):
        queue, priority = value.queue, value.priority
    elif isinstance(value, str):
        queue, priority = value, None
    elif isinstance(value, Mapping):
        unknown = sorted(set(value) - {"queue", "priority"})
        if unknown:
            raise ConfigurationError(
                f"{where}: unknown route key(s) {', '.join(map(str, unknown))}; a route is "
                "a queue name or a mapping with 'queue' and/or 'priority'"
            )
        queue, priority = value.get("queue"), value.get("priority")
    else:
        raise ConfigurationError(
            f"{where}: a route is a queue name or a mapping with 'queue' and/or 'priority', "
            f"got {value!r}"
        )
    try:
        if queue is not None:
            validate_queue(queue)
        if priority is not None:
            validate_priority(priority)
    except ConfigurationError as exc:
        raise ConfigurationError(f"{where}: {exc}") from None
    return Route(queue, priority)


@dataclass(frozen=True, slots=True)
class _Pattern:
    pattern: str
    matcher: re.Pattern[str] | None  # None: an exact name
    route: Route

    def matches(self, name: str) -> bool:
        return self.matcher.match(name) is not None if self.matcher else name == self.pattern


class Routes:
    """Compiled routes: exact names first (the first given for a name), then glob patterns
    and routers in the order given; the first that answers wins."""

    def __init__(self, rules: Sequence[_Pattern | Router]) -> None:
        self._exact: dict[str, Route] = {}
        for r in rules:
            if isinstance(r, _Pattern) and r.matcher is None:
                self._exact.setdefault(r.pattern, r.route)
        self._rules = [r for r in rules if not (isinstance(r, _Pattern) and r.matcher is None)]

    @classmethod
    def build(cls, spec: Any) -> Routes:
        """Compile a ``routes`` setting.

        Raises:
            ConfigurationError: the setting, or one of its routes, is malformed.
        """
        if spec is None:
            return cls([])
        parts = list(spec) if isinstance(spec, list | tuple) else [spec]
        rules: list[_Pattern | Router] = []
        for part in parts:
            if isinstance(part, Mapping):
                for pattern, value in part.items():
                    if not isinstance(pattern, str) or not pattern:
                        raise ConfigurationError(
                            f"routes: a key is a task name or a glob pattern, got {pattern!r}"
                        )
                    glob = any(c in pattern for c in "*?[")
                    matcher = re.compile(fnmatch.translate(pattern)) if glob else None
                    route = destination(value, f"route {pattern!r}")
                    rules.append(_Pattern(pattern, matcher, route))
            elif callable(part):
                rules.append(part)
            else:
                raise ConfigurationError(
                    "routes must be a mapping of task names or glob patterns to queues, a "
                    "callable router(task_name, args, kwargs), or a list of those; got "
                    f"{part!r}"
                )
        return cls(rules)

    def queues(self) -> tuple[str, ...]:
        """The queues named in the mapping routes, in order (a router's answers cannot be
        known ahead: a worker must name those with ``-Q``)."""
        named = [r.queue for r in self._exact.values()]
        named += [r.route.queue for r in self._rules if isinstance(r, _Pattern)]
        return tuple(dict.fromkeys(q for q in named if q is not None))

    def __bool__(self) -> bool:
        return bool(self._exact or self._rules)

    def route(self, task_name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Route:
        """The route of one call (``Route()`` when nothing matches).

        Raises:
            ConfigurationError: a router returned something that is not a destination.
        """
        exact = self._exact.get(task_name)
        if exact is not None:
            return exact
        for rule in self._rules:
            if isinstance(rule, _Pattern):
                if rule.matches(task_name):
                    return rule.route
                continue
            answer = rule(task_name, args, kwargs)
            if answer is not None:
                return destination(answer, f"router {rule!r} for {task_name!r}")
        return _NO_ROUTE


def resolve_destination(
    routes: Routes,
    task_name: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    call: Route,
    task: Route,
    default: Route,
) -> tuple[str, int]:
    """The queue and priority of a message: call > task > routes > app default, each part
    on its own. What producers, and canvas when it sends members, use.

    Raises:
        ConfigurationError: a bad queue name or priority from any level.
    """
    queue = call.queue or task.queue
    priority = call.priority if call.priority is not None else task.priority
    if (queue is None or priority is None) and routes:
        routed = routes.route(task_name, args, kwargs)
        queue = queue or routed.queue
        priority = priority if priority is not None else routed.priority
    queue = validate_queue(queue or default.queue or "default")
    priority = priority if priority is not None else default.priority
    return queue, validate_priority(priority if priority is not None else 0)

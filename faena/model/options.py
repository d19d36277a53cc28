"""Task options: their names, defaults and validation.

Unknown option names are an error where the task is declared, listing the valid ones.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields, replace
from typing import Any, Final

from faena.foundation.exceptions import ConfigurationError
from faena.model.limits import KeyFunction, check_limit_options, check_limit_pairs

QUEUE_NAME: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,127}$")
MIN_PRIORITY: Final = 0
MAX_PRIORITY: Final = 9


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskOptions:
    """The options a task is declared with. See ``docs/tasks.md`` for each one."""

    name: str | None = None
    bind: bool = False
    queue: str | None = None
    priority: int | None = None
    max_retries: int | None = 3
    default_retry_delay: float = 180.0
    retry_for: tuple[type[BaseException], ...] = ()
    retry_backoff: bool | float = False
    retry_backoff_max: float = 600.0
    retry_jitter: bool = True
    time_limit: float | None = None
    soft_time_limit: float | None = None
    ignore_result: bool = False
    acks_late: bool = True
    expires: float | None = None
    result_ttl: float | None = None
    serializer: str | None = None
    # flow control: see faena.model.limits
    rate_limit: str | None = None
    rate_limit_key: KeyFunction | None = None
    concurrency_limit: int | None = None
    concurrency_key: KeyFunction | None = None
    unique: bool = False
    unique_key: KeyFunction | None = None
    unique_for: float | None = None

    def merged(self, **changes: Any) -> TaskOptions:
        """A copy with ``changes`` validated and applied."""
        return build_options(base=self, **changes)


OPTION_NAMES: Final = tuple(sorted(f.name for f in fields(TaskOptions)))


def validate_queue(queue: str) -> str:
    """Return ``queue`` if it is a valid queue name, else raise ConfigurationError."""
    if not isinstance(queue, str) or not QUEUE_NAME.match(queue):
        raise ConfigurationError(
            f"invalid queue name {queue!r}: use 1-128 characters from letters, digits and "
            "'_.:-', starting with a letter or digit"
        )
    return queue


def validate_priority(priority: int) -> int:
    """Return ``priority`` if it is an int in 0..9, else raise ConfigurationError."""
    if type(priority) is not int or not MIN_PRIORITY <= priority <= MAX_PRIORITY:
        raise ConfigurationError(
            f"priority must be an int from 0 to 9 (higher runs first), got {priority!r}"
        )
    return priority


MAX_SECONDS = 1e9
"""The longest time limit, expiry or result lifetime a task takes (about 31 years): beyond
it, timers overflow (``sys.maxsize`` as "no limit" killed a process pool child)."""


def _check_seconds(name: str, value: Any, *, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not 0 < value < math.inf  # False for nan too
    ):
        raise ConfigurationError(
            f"task option {name} must be a positive number of seconds (not inf or nan), "
            f"got {value!r}"
        )
    if value > MAX_SECONDS:
        raise ConfigurationError(
            f"task option {name} must be at most {MAX_SECONDS:g} seconds (about 31 years), got "
            f"{value!r}; leave it unset (None) for no limit"
        )


_FLAGS: Final = ("bind", "ignore_result", "acks_late", "retry_jitter")


def check_max_retries(value: object) -> int | None:
    """Return ``value`` if it is a retry limit (an int >= 0, or ``None`` for none).

    Raises:
        ConfigurationError: anything else (a bool, a string, a negative number...).
    """
    if value is not None and (type(value) is not int or value < 0):
        raise ConfigurationError(
            f"max_retries must be an int >= 0 or None (no limit), got {value!r}"
        )
    return value


def _check_name(name: object) -> None:
    if name is not None and (not isinstance(name, str) or not name.strip() or name != name.strip()):
        raise ConfigurationError(
            "task option name must be a non-empty string without spaces at either end "
            f"(or None for the function's dotted path), got {name!r}"
        )


def _check_kinds(given: dict[str, Any]) -> None:
    """The name, the flags, the retry limit and the back-off factor."""
    if "max_retries" in given:
        check_max_retries(given["max_retries"])
    if "name" in given:
        _check_name(given["name"])
    for name in _FLAGS:
        if name in given and not isinstance(given[name], bool):
            raise ConfigurationError(
                f"task option {name} must be True or False, got {given[name]!r}"
            )
    backoff = given.get("retry_backoff", False)
    if not isinstance(backoff, bool) and (
        not isinstance(backoff, int | float) or not 0 < backoff < math.inf
    ):
        raise ConfigurationError(
            "task option retry_backoff must be True, False or a positive finite factor in "
            f"seconds, got {backoff!r}"
        )


def build_options(base: TaskOptions | None = None, **given: Any) -> TaskOptions:
    """Validate ``given`` option values and return the resulting options.

    Raises:
        ConfigurationError: an unknown option name (the valid ones are listed) or a bad value.
    """
    unknown = sorted(set(given) - set(OPTION_NAMES))
    if unknown:
        raise ConfigurationError(
            f"unknown task option(s) {', '.join(unknown)}; "
            f"valid options are: {', '.join(OPTION_NAMES)}"
        )
    if given.get("queue") is not None:
        validate_queue(given["queue"])
    if given.get("priority") is not None:
        validate_priority(given["priority"])
    for name in ("time_limit", "soft_time_limit", "expires", "result_ttl"):
        _check_seconds(name, given.get(name))
    for name in ("default_retry_delay", "retry_backoff_max"):
        if name in given and (
            isinstance(given[name], bool)
            or not isinstance(given[name], int | float)
            or not 0 <= given[name] < math.inf
        ):
            raise ConfigurationError(
                f"task option {name} must be a finite number of seconds >= 0, got {given[name]!r}"
            )
    _check_kinds(given)
    if "retry_for" in given:
        retry_for = given["retry_for"]
        retry_for = (retry_for,) if isinstance(retry_for, type) else tuple(retry_for)
        if not all(isinstance(t, type) and issubclass(t, BaseException) for t in retry_for):
            raise ConfigurationError(
                f"retry_for must be exception types, got {given['retry_for']!r}"
            )
        given["retry_for"] = retry_for
    if given.get("serializer") not in (None, "json", "pickle"):
        raise ConfigurationError(
            f"serializer must be 'json' or 'pickle', got {given['serializer']!r}"
        )
    check_limit_options(given)
    options = replace(base or TaskOptions(), **given)
    check_limit_pairs(options)
    if (
        options.time_limit is not None
        and options.soft_time_limit is not None
        and options.soft_time_limit >= options.time_limit
    ):
        raise ConfigurationError(
            f"soft_time_limit ({options.soft_time_limit}) must be below "
            f"time_limit ({options.time_limit})"
        )
    return options

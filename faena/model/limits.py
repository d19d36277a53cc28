"""Flow-control task options: global rate limits, concurrency limits and unique jobs.

Declared on a task and checked where it is declared, with errors that say what was expected:

- ``rate_limit="100/s"`` (also ``/m``, ``/h``): at most that many executions start in any window
  of that length, across every worker together. ``rate_limit_key=fn(args, kwargs) -> str``
  counts per key (per customer, per API host) instead of per task.
- ``concurrency_limit=N``: at most ``N`` jobs of the task run at once across the fleet;
  ``concurrency_key=fn(args, kwargs) -> str`` counts per key.
- ``unique=True`` or ``unique_key=fn(args, kwargs) -> str``: while a job with the same key is
  queued or running, sending another returns the existing job's handle. ``unique_for`` bounds
  how long a key is held (seconds, default one hour).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from faena.foundation.exceptions import ConfigurationError

KeyFunction = Callable[[tuple[Any, ...], dict[str, Any]], Any]
"""``fn(args, kwargs)`` -> the key a limit counts under (turned into text with ``str``)."""

LIMIT_OPTIONS: Final = (
    "concurrency_key",
    "concurrency_limit",
    "rate_limit",
    "rate_limit_key",
    "unique",
    "unique_for",
    "unique_key",
)
DEFAULT_UNIQUE_FOR_S: Final = 3600.0

STEPS: Final = 20
"""A rate window is also enforced in steps of 1/STEPS of it. Finer than tenths on purpose: with
uses spread at least a step apart, a start recorded a few milliseconds late (a loaded machine)
can push at most one extra start into a window measured at the task, not two."""

_RATE: Final = re.compile(r"^\s*(\d+)\s*/\s*(s|sec|second|m|min|minute|h|hour)\s*$")
_WINDOWS: Final = {"s": 1.0, "m": 60.0, "h": 3600.0}


@dataclass(frozen=True, slots=True)
class RateLimit:
    """``limit`` executions per ``window_s`` seconds."""

    limit: int
    window_s: float

    @property
    def step(self) -> int:
        """Uses allowed per twentieth of the window (:data:`STEPS`), so a backlog does not take
        the whole window at once: about a twentieth of the limit, at least one."""
        return max(1, -(-self.limit // STEPS))

    @property
    def step_s(self) -> float:
        """The length of one step window."""
        return self.window_s / STEPS

    @property
    def enforced_window_s(self) -> float:
        """The window the store counts in: one step longer than the declared one. The margin
        absorbs the delay between taking a use and the job's first line (a loaded machine
        delays some starts more than others), so starts measured inside the tasks stay within
        the limit too; the cost is a rate about 5% under the declared one."""
        return self.window_s + self.step_s


def parse_rate_limit(text: str) -> RateLimit:
    """``"100/s"`` -> ``RateLimit(100, 1.0)``; also ``/m`` and ``/h``.

    Raises:
        ConfigurationError: not of the form ``N/s``, ``N/m`` or ``N/h`` with ``N`` >= 1.
    """
    match = _RATE.match(text) if isinstance(text, str) else None
    if match is None or int(match.group(1)) < 1:
        raise ConfigurationError(
            f"rate_limit must look like '100/s', '30/m' or '500/h' (a whole number of at least "
            f"1, per second, minute or hour), got {text!r}"
        )
    return RateLimit(int(match.group(1)), _WINDOWS[match.group(2)[0]])


def check_limit_options(given: Mapping[str, Any]) -> None:
    """Validate the flow-control options among ``given`` (other names are ignored).

    Raises:
        ConfigurationError: a bad value, or a key function without its limit.
    """
    if given.get("rate_limit") is not None:
        parse_rate_limit(given["rate_limit"])
    limit = given.get("concurrency_limit")
    if limit is not None and (type(limit) is not int or limit < 1):
        raise ConfigurationError(
            f"concurrency_limit must be an int of at least 1 (jobs running at once), got {limit!r}"
        )
    for name in ("rate_limit_key", "concurrency_key", "unique_key"):
        if given.get(name) is not None and not callable(given[name]):
            raise ConfigurationError(
                f"{name} must be a function (args, kwargs) -> key, got {given[name]!r}"
            )
    if "unique" in given and not isinstance(given["unique"], bool):
        raise ConfigurationError(f"unique must be True or False, got {given['unique']!r}")
    unique_for = given.get("unique_for")
    if unique_for is not None and (
        isinstance(unique_for, bool)
        or not isinstance(unique_for, int | float)
        or not 0 < unique_for < math.inf
    ):
        raise ConfigurationError(
            f"unique_for must be a positive number of seconds (not inf or nan), got {unique_for!r}"
        )


def check_limit_pairs(options: Any) -> None:
    """Key functions need their limit: a key with nothing to count is a mistake.

    Raises:
        ConfigurationError: ``rate_limit_key`` without ``rate_limit``, ``concurrency_key``
            without ``concurrency_limit``.
    """
    if options.rate_limit_key is not None and options.rate_limit is None:
        raise ConfigurationError("rate_limit_key needs rate_limit (e.g. rate_limit='10/s')")
    if options.concurrency_key is not None and options.concurrency_limit is None:
        raise ConfigurationError("concurrency_key needs concurrency_limit (e.g. 2)")


class KeyFunctionFailed(Exception):
    """A ``rate_limit_key`` or ``concurrency_key`` function raised: the job cannot be placed
    under its limits, now or later. ``error`` is what the function raised."""

    def __init__(self, option: str, error: Exception) -> None:
        super().__init__(f"the task's {option} function raised {type(error).__name__}: {error}")
        self.option = option
        self.error = error


def limit_key(
    fn: KeyFunction | None,
    task: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    option: str = "key",
) -> str:
    """The key a limit of ``task`` counts this call under: the task, or the task and the
    key function's answer.

    Raises:
        KeyFunctionFailed: the key function raised (``option`` names it in the message).
    """
    if fn is None:
        return task
    try:
        return f"{task}|{fn(args, kwargs)}"
    except Exception as exc:
        raise KeyFunctionFailed(option, exc) from exc

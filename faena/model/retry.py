"""Retry decisions: pure functions of the options, the retry count and a random draw."""

from __future__ import annotations

import random
from collections.abc import Callable

from faena.model.options import TaskOptions


def retry_delay(
    options: TaskOptions,
    retries: int,
    *,
    countdown: float | None = None,
    uniform: Callable[[float, float], float] = random.uniform,
) -> float:
    """Seconds to wait before retry number ``retries + 1``.

    An explicit ``countdown`` wins. With ``retry_backoff`` the delay is exponential,
    ``factor * 2**retries`` capped at ``retry_backoff_max``, with full jitter (a uniform draw
    between 0 and that cap) unless ``retry_jitter`` is off. Otherwise ``default_retry_delay``.

    Example:
        >>> from faena.model.options import build_options
        >>> retry_delay(build_options(retry_backoff=2, retry_jitter=False), 3)
        16.0
    """
    if countdown is not None:
        return max(0.0, float(countdown))
    if options.retry_backoff:
        factor = 1.0 if options.retry_backoff is True else float(options.retry_backoff)
        ceiling = min(options.retry_backoff_max, factor * (2.0 ** min(retries, 62)))
        return uniform(0.0, ceiling) if options.retry_jitter else ceiling
    return float(options.default_retry_delay)


def may_retry(options: TaskOptions, retries: int, max_retries: int | None = None) -> bool:
    """Whether a job that has been retried ``retries`` times may be retried once more."""
    limit = options.max_retries if max_retries is None else max_retries
    return limit is None or retries < limit

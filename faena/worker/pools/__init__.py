"""Pools: where a worker runs jobs. ``make_pool`` builds one by name."""

from __future__ import annotations

from typing import Any, Final

from faena.contracts.pool import Pool
from faena.foundation.exceptions import ConfigurationError
from faena.model.registry import Registry

POOL_NAMES: Final = ("async", "threads", "processes", "solo")


def make_pool(name: str, size: int, registry: Registry, **options: Any) -> Pool:
    """The pool called ``name`` with ``size`` slots.

    ``options`` are pool-specific: the process pool takes ``app_spec`` (how a child finds
    the app), ``max_tasks_per_child`` and ``max_memory_per_child`` (KiB).
    """
    if name == "async":
        from faena.worker.pools.threads import AsyncPool

        return AsyncPool(size, registry)
    if name == "threads":
        from faena.worker.pools.threads import ThreadPool

        return ThreadPool(size, registry)
    if name == "solo":
        from faena.worker.pools.threads import ThreadPool

        return ThreadPool(1, registry, name="solo")
    if name == "processes":
        from faena.worker.pools.processes import ProcessPool

        return ProcessPool(size, registry, **options)
    raise ConfigurationError(f"unknown pool {name!r}; choose one of {', '.join(POOL_NAMES)}")

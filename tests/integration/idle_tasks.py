"""A task that reports what its worker process holds: the threads alive and which of some
modules are loaded. The broker is ``FAENA_BROKER_URL`` of the worker's environment."""

from __future__ import annotations

import sys
import threading

from faena import Faena

app = Faena("idle")

NOT_NEEDED = ("ctypes", "getpass", "faena.app.eager", "faena.cli.admin", "rich")
"""Modules a worker that runs plain jobs has no use for."""


@app.task
async def look_around() -> dict[str, list[str]]:
    return {
        "threads": sorted(t.name for t in threading.enumerate()),
        "loaded": [name for name in NOT_NEEDED if name in sys.modules],
    }

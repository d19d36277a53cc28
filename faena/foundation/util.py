"""Small helpers with no faena knowledge: ids, dotted-path imports."""

from __future__ import annotations

import importlib
import os
import socket
import uuid
from typing import Any


def new_id() -> str:
    """A new random job id (UUID4 text, like Celery's)."""
    return str(uuid.uuid4())


def import_string(path: str) -> Any:
    """Import ``"pkg.module:attr"`` or ``"pkg.module.attr"`` and return the object.

    Raises:
        ImportError: the module or attribute does not exist, with the path in the message.
    """
    if ":" in path:
        module_name, _, attr = path.partition(":")
    else:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise ImportError(f"{path!r} is not a dotted path like 'package.module:attribute'")
    module = importlib.import_module(module_name)
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ImportError(f"module {module_name!r} has no attribute {attr!r}") from None
    return obj


def worker_identity() -> str:
    """``hostname:pid``, the default worker id."""
    return f"{socket.gethostname()}:{os.getpid()}"

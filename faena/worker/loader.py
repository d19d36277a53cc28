"""Finding the app a worker runs: ``-A module`` or ``-A module:attribute``."""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

from faena.app.core import Faena
from faena.foundation.exceptions import ConfigurationError


def load_app(spec: str) -> Faena:
    """Import the app named by ``spec``.

    ``module:attribute`` names it exactly; a bare ``module`` is searched for an attribute
    ``app``, then for the only ``Faena`` instance in the module. The current directory is on
    the import path, as it is for ``python -m``.

    Raises:
        ConfigurationError: the module cannot be imported or holds no single app.
    """
    if not spec or not isinstance(spec, str):
        raise ConfigurationError("give the app as -A module or -A module:attribute")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except (ImportError, TypeError) as exc:  # TypeError: a relative name such as ./tasks.py
        hint = ""
        if module_name.endswith(".py") or "/" in module_name or os.sep in module_name:
            dotted = module_name.removesuffix(".py").replace(os.sep, "/").strip("./")
            hint = (
                f"; -A takes a module name, not a file: -A {dotted.replace('/', '.')}"
                f"{':' + attr if attr else ''}, run from the directory that holds it"
            )
        raise ConfigurationError(f"cannot import app module {module_name!r}: {exc}{hint}") from exc
    if attr:
        obj: Any = module
        path = module_name
        for part in attr.split("."):
            if not hasattr(obj, part):
                raise ConfigurationError(f"{spec!r}: {path} has no attribute {part!r}")
            obj = getattr(obj, part)
            path = f"{path}.{part}"
        if not isinstance(obj, Faena):
            raise ConfigurationError(f"{spec!r} is not a Faena app (found {type(obj).__name__})")
        return obj
    candidate = getattr(module, "app", None)
    if isinstance(candidate, Faena):
        return candidate
    apps = [v for v in vars(module).values() if isinstance(v, Faena)]
    if len(apps) == 1:
        return apps[0]
    if not apps:
        raise ConfigurationError(
            f"module {module_name!r} defines no Faena app; name it with -A {module_name}:attribute"
        )
    raise ConfigurationError(
        f"module {module_name!r} defines {len(apps)} Faena apps; "
        f"choose one with -A {module_name}:attribute"
    )

"""The canvas: compose tasks into workflows. ``from faena import chain, group, chord``.

Example:
    >>> (add.s(2, 2) | mul.s(4)).delay().get(timeout=10)          # chain: (2 + 2) * 4
    16
    >>> group(add.s(i, i) for i in range(4)).delay().get(timeout=10)
    [0, 2, 4, 6]
    >>> chord((add.s(i, i) for i in range(4)), tsum.s()).delay().get(timeout=10)
    12

See ``docs/canvas.md`` for the rules (errors, nesting, callbacks, durability).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from faena.app.workflow import GroupResult, WorkflowResult
from faena.model.signature import (
    Canvas,
    CanvasSender,
    Chain,
    Chord,
    Chunks,
    Group,
    Signature,
    from_dict,
)


def chain(*steps: Canvas | Iterable[Canvas]) -> Chain:
    """Steps run one after another, each given the previous result: ``chain(a, b, c)``."""
    return Chain(*steps)


def group(*members: Canvas | Iterable[Canvas]) -> Group:
    """Members run in parallel; ``delay()`` returns a :class:`GroupResult`."""
    return Group(*members)


def chord(header: Group | Iterable[Canvas], body: Canvas) -> Chord:
    """``header`` members run in parallel; ``body`` gets their results, in member order."""
    return Chord(header, body)


def signature(
    name: str,
    args: Iterable[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    options: Mapping[str, Any] | None = None,
    *,
    immutable: bool = False,
    app: CanvasSender | None = None,
) -> Signature:
    """A signature by task name (a task of another service too); ``app`` sends it.

    Example:
        >>> signature("billing.charge", (10,), options={"queue": "high"}, app=app).delay()
    """
    return Signature(name, args, kwargs, options, immutable=immutable, app=app)


__all__ = [
    "Canvas",
    "Chain",
    "Chord",
    "Chunks",
    "Group",
    "GroupResult",
    "Signature",
    "WorkflowResult",
    "chain",
    "chord",
    "from_dict",
    "group",
    "signature",
]

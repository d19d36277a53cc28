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
from typing import Any, overload

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


class ChordHeader:
    """``chord(header)`` without its body, as Celery writes it: calling it with the body sends
    the chord, ``chord(header)(body)`` being ``chord(header, body).apply_async()``."""

    def __init__(self, header: Group | Iterable[Canvas]) -> None:
        self.header = header if isinstance(header, Group) else Group(header)

    def __repr__(self) -> str:
        return f"chord({self.header!r})"

    def __call__(self, body: Canvas, **options: Any) -> Any:
        """Send the chord with ``body``; options apply as in :meth:`Canvas.apply_async`."""
        return Chord(self.header, body).apply_async(**options)


@overload
def chord(header: Group | Iterable[Canvas], body: Canvas) -> Chord: ...
@overload
def chord(header: Group | Iterable[Canvas], body: None = None) -> ChordHeader: ...
def chord(header: Group | Iterable[Canvas], body: Canvas | None = None) -> Chord | ChordHeader:
    """``header`` members run in parallel; ``body`` gets their results, in member order.

    Without ``body``, a header to call with it, which sends the chord (Celery's
    ``chord(header)(body)``).
    """
    if body is None:
        return ChordHeader(header)
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
    "ChordHeader",
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

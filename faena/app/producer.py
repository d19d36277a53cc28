"""Turning a call into an encoded message: options precedence, timing, lineage, size limit."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from faena.app.settings import Settings
from faena.contracts.broker import Outgoing
from faena.foundation.exceptions import ConfigurationError, MessageTooLarge, finite_seconds
from faena.foundation.util import new_id
from faena.model.message import Message, encode_message, pack_arguments, pack_headers
from faena.model.options import TaskOptions
from faena.model.routing import Route, resolve_destination
from faena.model.task import CallOptions, current_context

_NO_OPTIONS = TaskOptions()


def _timestamp(value: datetime | float) -> float:
    return value.timestamp() if isinstance(value, datetime) else float(value)


def _expiry(value: datetime | timedelta | float, now: float) -> float:
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, timedelta):
        return now + value.total_seconds()
    seconds = finite_seconds("expires", value, "a datetime, a timedelta or ")
    assert seconds is not None  # (None means no expiry, and never reaches here)
    return now + seconds


def eta_of(call: CallOptions, now: float) -> float:
    """When a call with ``eta`` or ``countdown`` is due (``now`` if it has neither)."""
    if call.eta is not None:
        return _timestamp(call.eta)
    if call.countdown is not None:
        return now + float(call.countdown)
    return now


def build_message(
    settings: Settings,
    task_name: str,
    defaults: TaskOptions | None,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    call: CallOptions,
) -> Message:
    """The message for one call. Call options beat task options, which beat app settings.

    Raises:
        SerializationError: an argument cannot be encoded (it is named).
    """
    defaults = defaults or _NO_OPTIONS
    now = settings.clock.time()
    eta = eta_of(call, now) if call.eta is not None or call.countdown is not None else None
    expires: float | None = None
    if call.expires is not None:
        expires = _expiry(call.expires, now)
    elif defaults.expires is not None:
        expires = now + defaults.expires
    queue, priority = resolve_destination(
        settings.routes,
        task_name,
        args,
        kwargs,
        call=Route(call.queue, call.priority),
        task=Route(defaults.queue, defaults.priority),
        default=Route(settings.default_queue, settings.default_priority),
    )
    serializer = call.serializer or defaults.serializer or settings.serializer
    if serializer not in settings.accept:
        raise ConfigurationError(
            f"task {task_name} would be sent with serializer {serializer!r}, which this app does "
            f"not accept ({settings.accept!r}): its workers would refuse it; add it to accept"
        )
    parent_id, root_id = call.parent_id, call.root_id
    running = current_context()
    if parent_id is None and running is not None:
        parent_id = running.request.id
        root_id = root_id or running.request.root_id or running.request.id
    job_id = call.task_id or new_id()
    return Message(
        id=job_id,
        task=task_name,
        queue=queue,
        priority=priority,
        serializer=serializer,
        eta=eta,
        expires=expires,
        headers=pack_headers(call.headers),
        parent_id=parent_id,
        # A parent given without its root: the parent stands for the root (its own is not
        # known here), so the job still has one.
        root_id=root_id or parent_id or job_id,
        sent_at=now,
        **pack_arguments(args, kwargs, serializer),
    )


def to_outgoing(settings: Settings, message: Message) -> Outgoing:
    """Encode ``message`` and check its size.

    Raises:
        MessageTooLarge: the encoded message is over ``max_message_size``.
    """
    body = encode_message(message)
    if len(body) > settings.max_message_size:
        raise MessageTooLarge(
            f"message for {message.task} is {len(body):,} bytes, over max_message_size "
            f"({settings.max_message_size:,}); pass a reference (a URL, a row id) "
            "instead of the data"
        )
    due = message.eta if message.eta is not None and message.eta > message.sent_at else None
    return Outgoing(
        id=message.id, queue=message.queue, body=body, priority=message.priority, due=due
    )


def function_task_name(fn: Any) -> str:
    """``module:qualname`` of an importable function, the name RQ-style jobs travel under."""
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", None)
    if not callable(fn) or not module or not qualname or "<" in qualname or module == "__main__":
        raise ConfigurationError(
            f"{fn!r} cannot be enqueued by reference: only module-level functions of an "
            "importable module (not __main__, not lambdas or nested functions) can be "
            "found by a worker"
        )
    return f"{module}:{qualname}"

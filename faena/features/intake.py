"""Admitting a received message: every check between raw bytes and a runnable job.

In order, each failure naming the dead-letter reason it gets:

=========================  ==============================================================
``too_large``              the body is over ``max_message_size`` (checked before decoding)
``malformed``              not a valid envelope of a known version
``serializer_refused``     a serializer this worker does not accept (the body is not opened)
``unknown_task``           no task by that name (nothing is imported to find one)
``undecodable_arguments``  the arguments cannot be decoded
``wrong_arguments``        the task cannot be called with them (no retry: it never could)
=========================  ==============================================================

A name of the form ``module:function`` (RQ-style jobs, see ``Faena.queue``) is imported only
when the module is within the app's ``function_modules``.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from faena.foundation.exceptions import SerializationError
from faena.foundation.util import import_string
from faena.model.message import Message, decode_message, unpack_arguments, unpack_headers
from faena.model.options import TaskOptions
from faena.model.registry import Registry
from faena.model.task import Request, Task

log = logging.getLogger("faena.worker")


@dataclass(frozen=True, slots=True)
class Admitted:
    message: Message
    task: Task[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    headers: dict[str, Any] = field(default_factory=dict)

    def request(self, deliveries: int, worker: str) -> Request:
        """What the job's ``self.request`` says, for this delivery on this worker."""
        m = self.message
        return Request(
            id=m.id,
            task=m.task,
            queue=m.queue,
            retries=m.retries,
            deliveries=deliveries,
            eta=m.eta,
            expires=m.expires,
            headers=self.headers,
            parent_id=m.parent_id,
            root_id=m.root_id,
            worker=worker,
        )


@dataclass(frozen=True, slots=True)
class Refused:
    reason: str
    detail: str
    message: Message | None


def function_allowed(module: str, patterns: Sequence[str]) -> bool:
    """Whether ``module`` matches one of ``patterns`` (``"proj"`` also covers ``"proj.sub"``)."""
    for pattern in patterns:
        if fnmatch.fnmatchcase(module, pattern) or module.startswith(
            pattern.rstrip("*").rstrip(".") + "."
        ):
            return True
    return False


def resolve_task(
    registry: Registry, name: str, function_modules: Sequence[str]
) -> Task[..., Any] | str:
    """The task for ``name`` (a registered one, or an allowed ``module:function`` reference),
    or why there is none, to follow "no task named ...": a hint or the import's error."""
    task = registry.find(name)
    if task is not None:
        return task
    if ":" not in name:
        return "; is the module that declares it imported by the worker's -A app?"
    module = name.partition(":")[0]
    if (
        module == "faena"
        or module.startswith("faena.")
        or not function_allowed(module, function_modules)
    ):
        return " (a module:function reference outside function_modules)"
    try:
        fn = import_string(name)
    except Exception as exc:  # ImportError, or the module failing as it imports: not runnable
        log.exception("cannot import %s for a job that names it", name)
        return f": importing it failed: {type(exc).__name__}: {exc}"
    if not callable(fn):
        return f": {name} is a {type(fn).__name__}, not a function"
    task = Task(fn, TaskOptions(name=name))
    registry.register(task)
    return task


def admit(
    body: bytes,
    *,
    max_size: int,
    accept: Sequence[str],
    registry: Registry,
    function_modules: Sequence[str],
) -> Admitted | Refused:
    """Check a received body and decode it into a runnable job, or say why not."""
    if len(body) > max_size:
        return Refused(
            "too_large", f"{len(body):,} bytes, over max_message_size ({max_size:,})", None
        )
    try:
        message = decode_message(body)
    except SerializationError as exc:
        return Refused("malformed", str(exc), None)
    if message.serializer not in accept:
        return Refused(
            "serializer_refused",
            f"the message uses {message.serializer!r}; this worker accepts {', '.join(accept)}",
            message,
        )
    task = resolve_task(registry, message.task, function_modules)
    if isinstance(task, str):
        return Refused("unknown_task", f"no task named {message.task!r}{task}", message)
    try:
        args, kwargs = unpack_arguments(message)
        headers = unpack_headers(message)
    except SerializationError as exc:
        return Refused("undecodable_arguments", str(exc), message)
    except Exception as exc:  # a corrupt tag payload: bad isoformat, bad base64, ...
        return Refused("undecodable_arguments", f"{type(exc).__name__}: {exc}", message)
    try:
        task.check_arguments(args, kwargs)
    except TypeError as exc:
        return Refused("wrong_arguments", f"{task.name}{task.call_signature}: {exc}", message)
    return Admitted(message, task, args, kwargs, headers)

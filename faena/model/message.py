"""The message envelope: one immutable request to run a task.

The envelope is JSON, encoded once by msgspec. ``v`` is its format version; a worker refuses a
version it does not know (the message is dead-lettered, not guessed at). With the JSON
serializer the arguments sit inline, packed by :mod:`faena.model.serialization`; with pickle
they travel as one opaque ``body`` that a worker opens only if it accepts pickle.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import msgspec

from faena.foundation.exceptions import SerializationError
from faena.model.flow import Flow
from faena.model.serialization import dumps_pickle, loads_pickle, pack, unpack

ENVELOPE_VERSION: Final = 1
FLOW_ENVELOPE_VERSION: Final = 2
"""The version of a message that carries a workflow (``flow``); plain messages stay at 1, so
a worker that predates workflows refuses only the messages it could not carry through."""


class Message(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One request to run a task. Times are Unix seconds."""

    id: str
    task: str
    queue: str
    v: int = ENVELOPE_VERSION
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    body: bytes | None = None
    serializer: str = "json"
    priority: int = 0
    eta: float | None = None
    expires: float | None = None
    retries: int = 0
    parent_id: str | None = None
    root_id: str | None = None
    headers: dict[str, Any] = {}
    sent_at: float = 0.0
    flow: Flow | None = None


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Message)


def pack_arguments(
    args: tuple[Any, ...] | list[Any], kwargs: dict[str, Any], serializer: str
) -> dict[str, Any]:
    """Encode call arguments into the envelope fields for ``serializer``.

    Raises:
        SerializationError: naming the argument that cannot be encoded.
    """
    if serializer == "pickle":
        return {"body": dumps_pickle((tuple(args), kwargs), "the arguments")}
    for key in kwargs:
        if type(key) is not str:
            raise SerializationError(f"keyword argument names must be str, got {key!r}")
    return {
        "args": [pack(a, f"args[{i}]") for i, a in enumerate(args)],
        "kwargs": {k: pack(v, f"kwargs[{k!r}]") for k, v in kwargs.items()},
    }


def pack_headers(headers: Mapping[str, Any] | None) -> dict[str, Any]:
    """Headers in the tagged JSON form (they travel as JSON whatever the serializer)."""
    if not headers:
        return {}
    for key in headers:
        if type(key) is not str:
            raise SerializationError(f"header names must be str, got {key!r}")
    return {k: pack(v, f"headers[{k!r}]") for k, v in headers.items()}


def unpack_headers(message: Message) -> dict[str, Any]:
    """The headers of ``message`` as they were sent."""
    return {k: unpack(v) for k, v in message.headers.items()} if message.headers else {}


def unpack_arguments(message: Message) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The call arguments of ``message``. Check the serializer is accepted first."""
    if message.serializer == "pickle":
        if message.body is None:
            raise SerializationError("a pickle message has no body")
        decoded = loads_pickle(message.body)
        if not (isinstance(decoded, tuple) and len(decoded) == 2):
            raise SerializationError("a pickle body must hold (args, kwargs)")
        args, kwargs = decoded
        return tuple(args), dict(kwargs)
    return tuple(unpack(a) for a in message.args), {k: unpack(v) for k, v in message.kwargs.items()}


def encode_message(message: Message) -> bytes:
    """The wire form of ``message``.

    Raises:
        SerializationError: a value the encoder refuses (a str with a lone surrogate, ...),
            naming the argument that holds it.
    """
    try:
        return _encoder.encode(message)
    except Exception as exc:
        raise SerializationError(
            f"cannot encode the message for {message.task}: {_culprit(message)}{exc}"
        ) from exc


def _culprit(message: Message) -> str:
    """Which argument or header the encoder refused, found by encoding each alone."""
    parts = [(f"args[{i}]", a) for i, a in enumerate(message.args)]
    parts += [(f"kwargs[{k!r}]", v) for k, v in message.kwargs.items()]
    parts += [(f"headers[{k!r}]", v) for k, v in message.headers.items()]
    for name, value in parts:
        try:
            _encoder.encode(value)
        except Exception:
            return f"{name}: "
    return ""


def decode_message(data: bytes) -> Message:
    """Parse the wire form; arguments stay packed until :func:`unpack_arguments`.

    Raises:
        SerializationError: the bytes are not a valid envelope of a known version.
    """
    try:
        message = _decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise SerializationError(f"malformed message envelope: {exc}") from exc
    expected = ENVELOPE_VERSION if message.flow is None else FLOW_ENVELOPE_VERSION
    if message.v != expected:
        raise SerializationError(
            f"message envelope version {message.v} is not supported by this worker "
            f"(it reads version {ENVELOPE_VERSION}, and {FLOW_ENVELOPE_VERSION} for workflow "
            "messages); upgrade the worker"
        )
    return message

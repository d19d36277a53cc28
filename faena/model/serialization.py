"""Encoding of task arguments and results.

JSON is the default and the safe choice. Types JSON lacks travel as one-key objects whose key
starts with ``~`` (``{"~dt": "2024-05-01T10:00:00+00:00"}``), so that datetime, date, time,
timedelta, UUID, Decimal, bytes, tuple, set, frozenset, dicts with non-string keys and
dataclasses come back as what was sent. A user dict that could be mistaken for a tag is itself
wrapped (``{"~map": {...}}``).

Dataclasses are rebuilt only from classes already imported in the decoding process, so a
message can never make a worker import a module.

Pickle is available for trusted deployments only: the producer must choose it
(``serializer="pickle"``) and the worker must list it in ``accept``.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import math
import pickle
import sys
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any, Final, Literal

import msgspec

from faena.foundation.exceptions import SerializationError

SerializerName = Literal["json", "pickle"]
SERIALIZERS: Final = ("json", "pickle")

_SCALARS: Final = (str, int, float, bool, type(None))
_json_encode = msgspec.json.Encoder().encode
_json_decode = msgspec.json.Decoder().decode


def pack(value: Any, where: str = "value") -> Any:
    """Turn ``value`` into a tree of JSON-native values, tagging the types JSON lacks.

    Args:
        value: what to pack.
        where: how to name ``value`` in an error, e.g. ``"args[1]"``.

    Raises:
        SerializationError: naming the first part of ``value`` that has no JSON form.
    """
    kind = type(value)
    if kind in _SCALARS:
        if kind is float and not math.isfinite(value):
            return {"~f": repr(value)}  # JSON has no NaN or infinity
        return value
    if kind is list:
        return [pack(item, f"{where}[{i}]") for i, item in enumerate(value)]
    if kind is dict:
        return _pack_dict(value, where)
    return _pack_other(value, where)


def _pack_dict(value: dict[Any, Any], where: str) -> Any:
    if all(type(k) is str for k in value):
        packed = {k: pack(v, f"{where}[{k!r}]") for k, v in value.items()}
        if len(packed) == 1 and next(iter(packed)).startswith("~"):
            return {"~map": packed}
        return packed
    return {
        "~dict": [
            [pack(k, f"{where} key {k!r}"), pack(v, f"{where}[{k!r}]")] for k, v in value.items()
        ]
    }


def _pack_other(value: Any, where: str) -> Any:
    if isinstance(value, dt.datetime):
        return {"~dt": value.isoformat()}
    if isinstance(value, dt.date):
        return {"~date": value.isoformat()}
    if isinstance(value, dt.time):
        return {"~time": value.isoformat()}
    if isinstance(value, dt.timedelta):
        return {"~td": [value.days, value.seconds, value.microseconds]}
    if isinstance(value, uuid.UUID):
        return {"~uuid": str(value)}
    if isinstance(value, Decimal):
        return {"~dec": str(value)}
    if isinstance(value, bytes | bytearray | memoryview):
        return {"~b": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return {"~tuple": [pack(item, f"{where}[{i}]") for i, item in enumerate(value)]}
    if isinstance(value, set | frozenset):
        tag = "~set" if isinstance(value, set) else "~fset"
        return {tag: [pack(item, f"{where} item") for item in value]}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        cls = type(value)
        fields = {
            f.name: pack(getattr(value, f.name), f"{where}.{f.name}")
            for f in dataclasses.fields(value)
        }
        return {"~dc": [f"{cls.__module__}:{cls.__qualname__}", fields]}
    if isinstance(value, int | float | str | list | dict):  # subclasses (IntEnum, ...)
        base = next(t for t in (bool, int, float, str, list, dict) if isinstance(value, t))
        raise SerializationError(
            f"cannot serialize {where}: {type(value).__qualname__} is a subclass of "
            f"{base.__name__} and would come back as a plain {base.__name__}; pass "
            f"{base.__name__}(value), or enable pickle"
        )
    raise SerializationError(
        f"cannot serialize {where}: {type(value).__qualname__} values have no JSON form. "
        "Pass plain data (str, int, float, bool, None, list, dict, tuple, set, datetime, date, "
        "time, timedelta, UUID, Decimal, bytes, dataclasses) or enable pickle on both sides"
    )


def unpack(value: Any) -> Any:
    """Rebuild what :func:`pack` produced."""
    kind = type(value)
    if kind is list:
        return [unpack(item) for item in value]
    if kind is dict:
        if len(value) == 1:
            key = next(iter(value))
            if key.startswith("~"):
                return _unpack_tag(key, value[key])
        return {k: unpack(v) for k, v in value.items()}
    return value


_SIMPLE_TAGS: Final[dict[str, Callable[[Any], Any]]] = {
    "~dt": dt.datetime.fromisoformat,
    "~date": dt.date.fromisoformat,
    "~time": dt.time.fromisoformat,
    "~td": lambda b: dt.timedelta(days=b[0], seconds=b[1], microseconds=b[2]),
    "~uuid": uuid.UUID,
    "~dec": Decimal,
    "~b": base64.b64decode,
    "~tuple": lambda b: tuple(unpack(item) for item in b),
    "~set": lambda b: {unpack(item) for item in b},
    "~fset": lambda b: frozenset(unpack(item) for item in b),
    "~map": lambda b: {k: unpack(v) for k, v in b.items()},
    "~dict": lambda b: {unpack(k): unpack(v) for k, v in b},
    "~dc": lambda b: _rebuild_dataclass(b[0], b[1]),
    "~f": float,
}


def _unpack_tag(tag: str, body: Any) -> Any:
    decode = _SIMPLE_TAGS.get(tag)
    if decode is None:
        raise SerializationError(
            f"unknown type tag {tag!r} in a message; was it sent by a newer faena?"
        )
    return decode(body)


def _rebuild_dataclass(type_path: str, fields: dict[str, Any]) -> Any:
    module_name, _, qualname = type_path.partition(":")
    obj: Any = sys.modules.get(module_name)
    if obj is None:
        raise SerializationError(
            f"dataclass {type_path} cannot be rebuilt: module {module_name!r} is not imported in "
            "this process (faena never imports a module a message names); import it in the "
            "module that declares your tasks"
        )
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
    if not (isinstance(obj, type) and dataclasses.is_dataclass(obj)):
        raise SerializationError(f"{type_path} is not a dataclass in this process")
    values = {k: unpack(v) for k, v in fields.items()}
    init = {f.name for f in dataclasses.fields(obj) if f.init}
    instance = obj(**{k: v for k, v in values.items() if k in init})
    for name, value in values.items():
        if name not in init:
            object.__setattr__(instance, name, value)
    return instance


def dumps_json(value: Any, where: str = "value") -> bytes:
    """Pack and encode ``value`` as JSON bytes."""
    try:
        return _json_encode(pack(value, where))
    except SerializationError:
        raise
    except Exception as exc:  # e.g. a str with a lone surrogate: not valid UTF-8
        raise SerializationError(f"cannot serialize {where}: {exc}") from exc


def loads_json(data: bytes) -> Any:
    """Decode and unpack JSON bytes made by :func:`dumps_json`."""
    try:
        return unpack(_json_decode(data))
    except msgspec.DecodeError as exc:
        raise SerializationError(f"malformed JSON: {exc}") from exc


def dumps_pickle(value: Any, where: str = "value") -> bytes:
    """Pickle ``value`` (trusted deployments only)."""
    try:
        return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        raise SerializationError(f"cannot pickle {where}: {exc}") from exc


def loads_pickle(data: bytes) -> Any:
    """Unpickle bytes made by :func:`dumps_pickle`. Never call this on untrusted data."""
    try:
        return pickle.loads(data)
    except Exception as exc:
        raise SerializationError(f"cannot unpickle: {exc}") from exc

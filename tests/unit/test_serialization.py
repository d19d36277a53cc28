"""JSON by default with the types JSON lacks round-tripping; pickle only when both sides opt
in; arguments that cannot travel fail at ``delay()``, naming the argument."""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import uuid
from decimal import Decimal
from typing import Any

import pytest

from faena import ConfigurationError, Faena, MessageTooLarge, SerializationError, TaskFailed
from faena.app.producer import build_message, to_outgoing
from faena.model.message import decode_message, encode_message, unpack_arguments
from faena.model.serialization import dumps_json, dumps_pickle, loads_json, pack
from faena.model.task import CallOptions

from .support import AppFactory, dead_letters, drain, queue_stats


@dataclasses.dataclass(frozen=True)
class Point:
    x: int
    y: int


@dataclasses.dataclass
class Shape:
    name: str
    corners: list[Point]
    tags: frozenset[str] = frozenset()
    area: float = dataclasses.field(default=0.0, init=False)


class Opaque:
    """No JSON form; picklable."""

    def __init__(self, value: int) -> None:
        self.value = value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Opaque) and other.value == self.value

    def __hash__(self) -> int:
        return hash(self.value)


def _shape() -> Shape:
    shape = Shape("tri", [Point(0, 0), Point(1, 0), Point(0, 1)], frozenset({"a"}))
    shape.area = 0.5
    return shape


ROUND_TRIP = {
    "aware datetime": dt.datetime(2024, 5, 1, 10, 0, tzinfo=dt.timezone(dt.timedelta(hours=5))),
    "naive datetime": dt.datetime(2024, 5, 1, 10, 0, 0, 123456),
    "date": dt.date(2024, 2, 29),
    "time with tz": dt.time(23, 59, 1, tzinfo=dt.UTC),
    "negative timedelta": dt.timedelta(days=-1, seconds=5, microseconds=7),
    "uuid": uuid.UUID("12345678-1234-5678-1234-567812345678"),
    "decimal": Decimal("1234.5600"),
    "bytes": b"\x00\xffbinary",
    "tuple": (1, "a", (2, 3)),
    "set": {1, 2, 3},
    "frozenset": frozenset({"x", "y"}),
    "nested dataclass": _shape(),
    "dict with int keys": {1: "one", 2: {3: "three"}},
    "dict with tuple keys": {(1, 2): "a", "b": 2},
    "user dict with a ~ key": {"~dt": "not a date"},
    "user dict with a nested ~ key": {"~": {"~map": 1}},
    "big int": 2**70,
    "plain json": {"a": [1, 2.5, None, True, "s"]},
}


@pytest.mark.parametrize("value", ROUND_TRIP.values(), ids=ROUND_TRIP.keys())
def test_json_round_trip_keeps_type_and_value(value: Any) -> None:
    # Given a value of a type plain JSON lacks
    # When it is encoded and decoded
    back = loads_json(dumps_json(value))
    # Then the same value of the same type comes back
    assert back == value
    assert type(back) is type(value)


def test_dataclass_fields_not_in_init_are_restored() -> None:
    # Given a dataclass with a field set after __init__ (init=False)
    shape = _shape()
    # When it round-trips
    back = loads_json(dumps_json(shape))
    # Then that field keeps its value and nested dataclasses are rebuilt as such
    assert back.area == 0.5
    assert isinstance(back.corners[0], Point)


def test_decoding_never_imports_a_module_named_by_a_message() -> None:
    # Given a packed dataclass that names a module nobody imported
    data = b'{"~dc": ["faena_unit_never_imported:Thing", {"x": 1}]}'
    # When it is decoded, Then it is refused (no import happens)
    with pytest.raises(SerializationError, match="not imported"):
        loads_json(data)


def test_unknown_type_tag_is_refused() -> None:
    # When a message carries a type tag this faena does not know, Then decoding refuses it
    with pytest.raises(SerializationError, match="unknown type tag"):
        loads_json(b'{"~nope": 1}')


def test_arguments_round_trip_through_a_worker(app: Faena) -> None:
    # Given a task that returns what it received
    @app.task
    def echo(*args: Any, **kwargs: Any) -> Any:
        return [list(args), kwargs]

    values = list(ROUND_TRIP.values())
    # When the values travel as arguments to a worker and back as the result
    r = echo.delay(*values, when=ROUND_TRIP["aware datetime"])
    drain(app)
    args, kwargs = r.get(timeout=5)
    # Then each argument arrived as it was sent
    assert args == values
    assert [type(a) for a in args] == [type(v) for v in values]
    assert kwargs == {"when": ROUND_TRIP["aware datetime"]}


def test_unserializable_positional_argument_fails_at_delay_naming_it(app: Faena) -> None:
    @app.task
    def add(x: Any, y: Any) -> None: ...

    # When an argument has no JSON form
    with pytest.raises(SerializationError, match=r"args\[1\]") as caught:
        add.delay(1, object())
    # Then nothing was sent, and the error says what to do
    assert "enable pickle" in str(caught.value)
    assert queue_stats(app) == []


def test_unserializable_keyword_argument_fails_at_delay_naming_it(app: Faena) -> None:
    # Given a task
    @app.task
    def f(x: Any = None) -> None: ...

    # When a keyword argument holds a value with no JSON form, Then delay names it
    with pytest.raises(SerializationError, match=r"kwargs\['x'\]"):
        f.delay(x={"deep": [object()]})


def test_nested_unserializable_value_is_named_by_its_path() -> None:
    # When a value deep inside an argument cannot be packed, Then the error gives its path
    with pytest.raises(SerializationError, match=r"args\[0\]\[1\]\['k'\]\[0\]"):
        pack([1, {"k": [object()]}], "args[0]")


def test_subclass_of_a_json_type_is_refused_not_silently_downcast() -> None:
    # Given an IntEnum member (an int subclass)
    import enum

    class Colour(enum.IntEnum):
        RED = 1

    # When it is packed, Then it is refused rather than sent as a plain int
    with pytest.raises(SerializationError, match="is a subclass of"):
        dumps_json(Colour.RED, "args[0]")


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_non_finite_floats_round_trip(value: float) -> None:
    # Given a float plain JSON cannot represent
    # When it is encoded and decoded
    back = loads_json(dumps_json(value))
    # Then the same float comes back (not null / None)
    assert isinstance(back, float)
    assert back == value or (math.isnan(back) and math.isnan(value))


def test_unencodable_string_fails_at_delay_as_serialization_error(app: Faena) -> None:
    # Given a task
    @app.task
    def f(name: str) -> None: ...

    # When a str argument cannot be encoded as UTF-8, Then delay raises SerializationError naming it
    with pytest.raises(SerializationError, match=r"args\[0\]"):
        f.delay("bad-\udc80-name")
    assert queue_stats(app) == []


@pytest.mark.parametrize(
    "value", [object(), "bad-\udc80", {1: object()}], ids=["object", "lone-surrogate", "nested"]
)
def test_unserializable_return_value_fails_the_job_on_a_worker(app: Faena, value: Any) -> None:
    # Given a task that returns something that cannot be encoded
    @app.task
    def leak() -> Any:
        return value

    # When a worker runs it
    r = leak.delay()
    worker = drain(app)
    # Then the job fails with a SerializationError (the worker is unharmed)
    failed = r.get(timeout=5, propagate=False)
    assert isinstance(failed, TaskFailed)
    assert failed.type_name == "faena.SerializationError"
    assert "the return value" in failed.error_message
    assert worker.processed == 1


def test_pickle_is_not_used_unless_the_task_chooses_it(app: Faena) -> None:
    # Given a json app and a task that did not choose pickle
    @app.task
    def f(x: Any) -> None: ...

    # A JSON app refuses an object without a JSON form rather than pickling it
    # When an object with no JSON form is sent, Then it is refused, not pickled
    with pytest.raises(SerializationError):
        f.delay(Opaque(1))


def test_pickle_task_runs_when_the_worker_accepts_pickle(make_app: AppFactory) -> None:
    # Given an app whose workers accept pickle, and a task that chooses it
    app = make_app(accept=["json", "pickle"])

    @app.task(serializer="pickle")
    def bump(o: Opaque) -> Opaque:
        return Opaque(o.value + 1)

    # When an object with no JSON form is sent and run
    r = bump.delay(Opaque(41))
    drain(app)
    # Then it arrived and came back as the object itself
    assert r.get(timeout=5) == Opaque(42)


def test_a_json_only_app_refuses_to_send_pickle(app: Faena) -> None:
    # Given a json-only app and a task that chooses pickle (as a task or a call option)
    @app.task(serializer="pickle")
    def f(x: int) -> None: ...

    @app.task
    def g(x: int) -> None: ...

    # When it is sent, Then it is refused (its own workers would refuse it), and nothing is sent
    with pytest.raises(ConfigurationError, match="serializer 'pickle', which this app does not"):
        f.delay(1)
    with pytest.raises(ConfigurationError, match="which this app does not accept"):
        g.apply_async((1,), serializer="pickle")
    assert queue_stats(app) == []


def test_pickle_message_is_refused_by_a_json_only_worker(app: Faena) -> None:
    # Given a json-only app, and a pickle message of its task sent by another producer
    ran: list[int] = []

    @app.task
    def f(x: int) -> None:
        ran.append(x)

    other = dataclasses.replace(app.settings, accept=("json", "pickle"), serializer="pickle")
    message = build_message(other, f.name, f.defaults, (1,), {}, CallOptions())
    app.broker.enqueue([to_outgoing(other, message)])
    r = app.AsyncResult(message.id)
    # When a worker of the app receives it
    drain(app)
    # Then the body is never opened: the message is dead-lettered as serializer_refused
    assert ran == []
    assert dead_letters(app)[r.id].reason == "serializer_refused"
    assert r.state == "FAILURE"


def test_pickle_result_is_not_unpickled_by_an_app_that_does_not_accept_it(app: Faena) -> None:
    # Given a record holding a pickled value (written by a pickle-accepting worker)
    from faena.model.outcome import JobRecord

    app.results.store(
        JobRecord(id="j1", state="SUCCESS", value=dumps_pickle(Opaque(1)), serializer="pickle")
    )
    # When a json-only app reads it, Then it refuses to unpickle
    with pytest.raises(SerializationError, match="does not accept pickle"):
        app.AsyncResult("j1").get(timeout=1)


def test_pickle_serializer_requires_accept_at_app_creation(make_app: AppFactory) -> None:
    from faena import ConfigurationError

    # When an app chooses pickle without accepting it, Then it is refused
    with pytest.raises(ConfigurationError, match="not in accept"):
        make_app(serializer="pickle")


def test_message_over_the_size_limit_fails_at_delay(make_app: AppFactory) -> None:
    # Given an app with a small message size limit
    app = make_app(max_message_size=512)

    @app.task
    def f(blob: bytes) -> None: ...

    f.delay(b"x" * 10)  # small enough
    # When a call's message is over the limit, Then delay raises and sends nothing
    with pytest.raises(MessageTooLarge, match="max_message_size"):
        f.delay(b"x" * 1000)
    assert [s.ready for s in queue_stats(app)] == [1]


def test_envelope_round_trip_keeps_packed_arguments() -> None:
    # Given a message built for a call
    from faena.model.message import Message, pack_arguments

    message = Message(
        id="m1",
        task="t",
        queue="default",
        **pack_arguments((dt.date(2024, 1, 1),), {"k": {1, 2}}, "json"),
    )
    # When it is encoded and decoded
    decoded = decode_message(encode_message(message))
    # Then the arguments unpack to what was given
    assert decoded == message
    assert unpack_arguments(decoded) == ((dt.date(2024, 1, 1),), {"k": {1, 2}})


@pytest.mark.parametrize(
    "body",
    [b"not json", b'{"id": "x"}', b'{"id":"x","task":"t","queue":"q","v":99}'],
    ids=["garbage", "missing fields", "future version"],
)
def test_malformed_envelope_is_a_serialization_error(body: bytes) -> None:
    # When bytes that are not a valid envelope are decoded, Then a SerializationError says so
    with pytest.raises(SerializationError):
        decode_message(body)

"""The follow-up rules of a chord member run more than once (a redelivery): it is counted once,
cannot fire the body early, and on a second run after the body was sent sends it only if the
first run died before sending it."""

from __future__ import annotations

import asyncio
from typing import Any

from faena import Faena, chord
from faena.backends.memory import MemoryCoordinationStore
from faena.features.followups import after_success, counted_only
from faena.model import states
from faena.model.flow import chord_key
from faena.model.message import Message, decode_message
from faena.model.outcome import JobRecord


class Recorded:
    """FlowIO on real memory stores; what it publishes is kept, not sent."""

    def __init__(self) -> None:
        self.coordination = MemoryCoordinationStore()
        self.records: dict[str, JobRecord] = {}
        self.sent: list[Message] = []

    def now(self) -> float:
        return 1_700_000_000.0

    def ttl(self) -> float:
        return 3600.0

    def add_member(self, key: str, member: str) -> tuple[bool, int]:
        return self.coordination.add_member(key, member, self.ttl())

    def take_once(self, key: str, value: str) -> bool:
        return self.coordination.set_if_absent(key, value, self.ttl())

    def holder(self, key: str) -> str | None:
        return self.coordination.get(key)

    def values(self, job_ids: list[str]) -> dict[str, Any]:
        return {i: int(self.records[i].value or b"0") for i in job_ids if i in self.records}

    def recorded(self, job_ids: list[str]) -> set[str]:
        return {i for i in job_ids if i in self.records}

    def publish(self, messages: list[Message]) -> None:
        self.sent += messages

    def store(self, records: list[JobRecord]) -> None:
        self.records.update({r.id: r for r in records})

    def succeed(self, message: Message, value: int, again: bool = False) -> list[Message]:
        """Record ``message`` as done with ``value``, run the rules; what they sent."""
        self.records[message.id] = JobRecord(
            id=message.id, state=states.SUCCESS, value=str(value).encode()
        )
        before = len(self.sent)
        after_success(self, message, value, again)
        return self.sent[before:]


def _members(app: Faena, n: int) -> list[Message]:
    @app.task(name="f.member")
    def member(i: int) -> int:
        return i

    @app.task(name="f.body")
    def body(values: list[int]) -> int:
        return sum(values)

    chord((member.s(i) for i in range(n)), body.s()).delay()

    async def take() -> list[Message]:
        consumer = await app.broker.open_consumer(["default"], "test")
        deliveries = await consumer.receive(n, 0.1)
        await consumer.close()
        return [decode_message(d.body) for d in deliveries]

    return sorted(asyncio.run(take()), key=lambda m: m.flow.chord.index)  # type: ignore[union-attr]


def test_a_member_counted_twice_does_not_fire_the_body_early(app: Faena) -> None:
    io = Recorded()
    first, second, third = _members(app, 3)
    # Given the first member run twice (redelivered), and the second once
    assert io.succeed(first, 0) == []
    assert io.succeed(first, 0, again=True) == []
    assert io.succeed(second, 1) == []
    # When the last member completes the set
    [body] = io.succeed(third, 2)
    # Then the body is sent once, given the results in member order
    assert body.task == "f.body"
    assert body.args == [[0, 1, 2]]
    # And a redelivery of any member afterwards sends nothing once the body has a record
    io.records[body.id] = JobRecord(id=body.id, state=states.STARTED)
    assert io.succeed(third, 2, again=True) == []
    assert io.succeed(first, 0, again=True) == []


def test_a_last_member_that_died_before_sending_the_body_sends_it_when_run_again(
    app: Faena,
) -> None:
    io = Recorded()
    first, second = _members(app, 2)
    io.succeed(first, 5)
    # Given the last member counted, then its worker died before the body was sent
    io.coordination.add_member(f"faena:chord:{second.flow.chord.group}", "1", 60)  # type: ignore[union-attr]
    # When it is delivered again and succeeds
    [body] = io.succeed(second, 7, again=True)
    # Then the body is sent, with both results
    assert body.args == [[5, 7]]


def test_only_workflow_messages_use_the_second_envelope_version(app: Faena) -> None:
    import msgspec
    import pytest

    from faena import SerializationError
    from faena.model.message import encode_message

    @app.task(name="f.plain")
    def plain(i: int) -> int:
        return i

    # Given a plain send and a chain
    plain.delay(1)
    (plain.s(1) | plain.s()).delay()

    async def take() -> list[Message]:
        consumer = await app.broker.open_consumer(["default"], "test")
        deliveries = await consumer.receive(10, 0.1)
        await consumer.close()
        return [decode_message(d.body) for d in deliveries]

    versions = sorted((m.v, m.flow is not None) for m in asyncio.run(take()))
    # Then the plain message stays at version 1, the workflow's first job is version 2
    assert versions == [(1, False), (2, True)]
    # And a version the message's content does not match is refused, naming both versions
    odd = Message(id="x", task="f.plain", queue="default", v=2)
    with pytest.raises(SerializationError, match="version 2 is not supported"):
        decode_message(encode_message(odd))
    assert msgspec.json.decode(encode_message(odd))["v"] == 2


def test_a_group_of_ten_thousand_is_sent_at_once_and_a_chord_of_them_completes(
    app: Faena,
) -> None:
    from .support import drain, queue_stats

    @app.task(name="f.one")
    def one(i: int) -> int:
        return i

    @app.task(name="f.sum")
    def total(values: list[int]) -> int:
        return sum(values)

    # When a chord of 10,000 members is sent
    result = chord((one.s(i) for i in range(10_000)), total.s()).delay()
    # Then all members are queued by the time delay() returns, and the body gets every result
    assert sum(s.ready for s in queue_stats(app)) == 10_000
    drain(app)
    assert result.get(timeout=5) == sum(range(10_000))


def test_a_failed_member_run_again_finishes_failing_the_chord_and_sends_nothing_twice(
    app: Faena,
) -> None:
    from faena.features.followups import after_failure
    from faena.model.outcome import ErrorInfo

    @app.task(name="f.alert")
    def alert(job_id: str, error: dict[str, str]) -> None:
        return None

    io = Recorded()
    app.registry.register(alert)
    members = _members_with_errback(app, alert)
    error = ErrorInfo(type="ValueError", message="no")
    # Given the first member failed and took the chord's failure, then its worker died
    io.take_once(f"faena:chord:{members[0].flow.chord.group}:failed", members[0].id)  # type: ignore[union-attr]
    # When it runs again and fails again
    after_failure(io, members[0], error, again=True)
    # Then the chord's failure is carried through: the errback is sent, the chord is failed
    [errback] = io.sent
    assert errback.task == "f.alert"
    assert errback.args[0] == members[0].id
    chord_id = members[0].flow.chord.id  # type: ignore[union-attr]
    assert io.records[chord_id].error.type == "faena.ChordError"  # type: ignore[union-attr]
    # And once the errback has a record, a third run sends nothing; another member nothing
    io.records[errback.id] = JobRecord(id=errback.id, state=states.SUCCESS)
    after_failure(io, members[0], error, again=True)
    after_failure(io, members[1], error, again=False)
    assert io.sent == [errback]


def _members_with_errback(app: Faena, errback: Any) -> list[Message]:
    @app.task(name="f.m")
    def m(i: int) -> int:
        return i

    @app.task(name="f.b")
    def b(values: list[int]) -> int:
        return sum(values)

    chord((m.s(i) for i in range(2)), b.s()).apply_async(link_error=errback.s())

    async def take() -> list[Message]:
        consumer = await app.broker.open_consumer(["default"], "test")
        deliveries = await consumer.receive(2, 0.1)
        await consumer.close()
        return [decode_message(d.body) for d in deliveries]

    return sorted(asyncio.run(take()), key=lambda x: x.flow.chord.index)  # type: ignore[union-attr]


def test_counted_only_is_true_exactly_when_the_rules_would_send_nothing(app: Faena) -> None:
    first, _, third = _members(app, 3)
    # A member whose add did not fill the set has nothing more to do
    assert counted_only(first, (True, 1), again=False)
    # A redelivered member told "already there" with the set full does not send the body on a
    # first run, but a second run must (its first run may have died before sending it)
    assert counted_only(first, (False, 3), again=False)
    assert not counted_only(first, (False, 3), again=True)
    # The member whose add filled the set sends the body
    assert not counted_only(third, (True, 3), again=False)
    # And the rules agree: what counted_only calls done sends nothing
    io = Recorded()
    assert counted_only(first, io.coordination.add_member(_key(first), "0", 60), False)
    assert io.succeed(first, 0) == []


def test_a_member_with_a_callback_is_never_counted_only(app: Faena) -> None:
    @app.task(name="g.member")
    def member(i: int) -> int:
        return i

    @app.task(name="g.body")
    def body(values: list[int]) -> int:
        return sum(values)

    chord([member.s(1).on_success(body.s()), member.s(2)], body.s()).delay()

    async def take() -> list[Message]:
        consumer = await app.broker.open_consumer(["default"], "test")
        deliveries = await consumer.receive(2, 0.1)
        await consumer.close()
        return [decode_message(d.body) for d in deliveries]

    linked = next(m for m in asyncio.run(take()) if m.flow and m.flow.link)
    # Then its rules run even when its add did not fill the set: the callback is still to send
    assert not counted_only(linked, (True, 1), again=False)


def _key(message: Message) -> str:
    assert message.flow is not None
    assert message.flow.chord is not None
    return chord_key(message.flow.chord.group)

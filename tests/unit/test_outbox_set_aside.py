"""The outbox's handling of settlements a broker refuses while it applies the others
(:class:`SettlementsRefused`): the applied ones are reported, the refused ones set aside and
sent again after a pause of their own. The pause's timer is fired by hand here; the same
path against a real Redis and worker is in tests/integration/test_redis_same_id.py."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import pytest

from faena.contracts.broker import Delivery, Settlement
from faena.foundation.exceptions import SettlementsRefused
from faena.model.outcome import JobRecord
from faena.worker.outbox import Outbox


class Queues:
    """A broker's answers to settlements: those of a refused queue are refused."""

    def __init__(self) -> None:
        self.refused: set[str] = set()
        self.applied: list[str] = []

    async def settle(self, settlements: Sequence[Settlement]) -> list[bool]:
        done: list[bool | None] = [
            None if s.delivery.queue in self.refused else True for s in settlements
        ]
        self.applied += [s.delivery.id for s, ok in zip(settlements, done, strict=True) if ok]
        if None in done:
            raise SettlementsRefused(f"refused {sorted(self.refused)}", done)
        return [True] * len(settlements)


class NoRecords:
    async def store_many(self, records: Sequence[JobRecord]) -> list[bool]:
        return [True] * len(records)


def ack(queue: str, n: int) -> Settlement:
    delivery = Delivery(
        id=f"{queue}{n}", queue=queue, body=b"", priority=0, deliveries=1, fence=1, enqueued_at=0
    )
    return Settlement(delivery=delivery, action="ack")


def outbox_of(queues: Queues, settled: list[str]) -> Outbox:
    """An outbox settling through ``queues``, noting each settled id in ``settled``."""
    return Outbox(
        NoRecords(),  # type: ignore[arg-type]
        queues,  # type: ignore[arg-type]
        lambda s, ok: settled.append(s.delivery.id),
    )


def pause_ends(outbox: Outbox) -> None:
    """End the pause under way now, as its timer would."""
    timer = outbox._park_timer
    assert timer is not None
    timer.cancel()
    outbox._unpark_later()


def pauses(caplog: pytest.LogCaptureFixture) -> list[float]:
    return [
        float(r.getMessage().split(" in ", 1)[1].split("s:", 1)[0])
        for r in caplog.records
        if "refused by the broker" in r.getMessage()
    ]


def test_refused_settlements_wait_pauses_twice_as_long_each_time(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "faena.worker")
    queues, settled = Queues(), list[str]()
    queues.refused = {"b"}

    async def scenario() -> None:
        outbox = outbox_of(queues, settled)
        # Given a settlement of a refused queue, and others of a healthy one
        outbox.settle(ack("b", 0))
        outbox.settle(ack("a", 0))
        await outbox.flush()
        # Then the healthy one is reported, the refused one set aside
        assert (settled, outbox.set_aside()) == (["a0"], 1)
        # And every other queue's write goes on without it
        outbox.settle(ack("a", 1))
        await outbox.flush()
        assert (settled, queues.applied) == (["a0", "a1"], ["a0", "a1"])
        # When its pauses end while the queue is still refused, Then each is twice the last
        for _ in range(3):
            pause_ends(outbox)
            await outbox.flush()
        assert pauses(caplog) == [0.5, 1.0, 2.0, 4.0]
        # And once the queue is taken again, it goes through, and the log says so
        queues.refused = set()
        pause_ends(outbox)
        await outbox.flush()
        assert (settled[-1], outbox.set_aside()) == ("b0", 0)
        assert any("had refused are written" in r.getMessage() for r in caplog.records)

    asyncio.run(scenario())


def test_set_aside_settlements_that_go_through_beside_a_new_refusal_start_the_pauses_over(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "faena.worker")
    queues, settled = Queues(), list[str]()
    queues.refused = {"b"}

    async def scenario() -> None:
        outbox = outbox_of(queues, settled)
        # Given a settlement of queue b refused twice
        outbox.settle(ack("b", 0))
        await outbox.flush()
        pause_ends(outbox)
        await outbox.flush()
        # When b is taken again but c is refused, and both go in one write
        queues.refused = {"c"}
        pause_ends(outbox)
        outbox.settle(ack("c", 0))
        await outbox.flush()
        # Then b's went through, the log says so, and c's first pause is the first one
        assert settled == ["b0"]
        assert any(
            "1 settlement(s) the broker had refused" in r.getMessage() for r in caplog.records
        )
        assert pauses(caplog) == [0.5, 1.0, 0.5]

    asyncio.run(scenario())


def test_a_set_aside_settlement_refused_again_beside_one_that_went_through_keeps_its_pauses(
    caplog: pytest.LogCaptureFixture,
) -> None:
    queues, settled = Queues(), list[str]()
    queues.refused = {"b", "c"}

    async def scenario() -> None:
        outbox = outbox_of(queues, settled)
        # Given settlements of two refused queues, set aside together
        outbox.settle(ack("b", 0))
        outbox.settle(ack("c", 0))
        await outbox.flush()
        # When only c is taken again
        queues.refused = {"b"}
        pause_ends(outbox)
        await outbox.flush()
        # Then c's went through, and b's next pause is twice the last
        assert settled == ["c0"]
        assert pauses(caplog) == [0.5, 1.0]

    asyncio.run(scenario())


def test_the_last_flush_sends_set_aside_settlements_without_waiting() -> None:
    queues, settled = Queues(), list[str]()
    queues.refused = {"b"}

    async def scenario() -> None:
        outbox = outbox_of(queues, settled)
        outbox.settle(ack("b", 0))
        await outbox.flush()
        queues.refused = set()
        await outbox.flush()  # (a flush of other work leaves them to their pause)
        assert outbox.set_aside() == 1
        await outbox.flush(set_aside_too=True)
        assert (settled, outbox.set_aside()) == (["b0"], 0)

    asyncio.run(scenario())

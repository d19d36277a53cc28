"""The conformance suites every broker, result store and coordination store must pass,
shipped for any backend.

Subclass a suite in a test module and supply the backend; pytest collects the subclass::

    from faena.testing.conformance import (
        BrokerConformance,
        CoordinationConformance,
        ResultStoreConformance,
    )

    class TestMyBroker(BrokerConformance):
        def make_broker(self, config: BrokerConfig) -> Broker:
            return MyBroker("my://localhost/0", config)

    class TestMyResults(ResultStoreConformance):
        def make_result_store(self, clock: Clock) -> ResultStore:
            return MyResultStore("my://localhost/0", clock)

    class TestMyCoordination(CoordinationConformance):
        def make_coordination_store(self, clock: Clock) -> CoordinationStore:
            return MyCoordinationStore("my://localhost/0", clock)

Each test makes its own backend through the hook, starting empty (a fresh file, a flushed
database; a second coordination store in the same test is a second client of the same data),
and closes it in ``teardown_method``; a subclass that overrides ``setup_method`` or
``teardown_method`` calls ``super()``. Time is a :class:`FakeClock` the tests move by hand, so
the backend must read ``config.clock`` (or the ``clock`` it was given) for every due time,
lease and expiry. A blocking ``receive``/``wait`` measures its timeout on that clock too (as
the in-memory reference does), so fake-clock tests pass ``timeout_s=0``; only the tests about
blocking waits use the real clock, with short timeouts. The suites need no pytest plugin: async
bodies run on a fresh event loop per test.

The module is long because it is the contract's executable specification: one test per rule,
kept together so a backend author reads the whole contract in one place.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import itertools
import math
import threading
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any, ClassVar, Protocol, TypeVar, cast

import pytest

from faena.contracts.broker import (
    Broker,
    BrokerConfig,
    Consumer,
    Delivery,
    Outgoing,
    QueueStats,
    SettleAction,
    Settlement,
    WorkerInfo,
)
from faena.contracts.coordination import CoordinationStore
from faena.contracts.results import ResultStore
from faena.foundation.clock import SYSTEM_CLOCK, Clock, FakeClock
from faena.foundation.exceptions import ConfigurationError
from faena.model.outcome import FINAL_FENCE, JobRecord
from faena.model.states import FAILURE, REVOKED, STARTED, SUCCESS

__all__ = [
    "PROMPT_S",
    "BrokerConformance",
    "CoordinationConformance",
    "ResultStoreConformance",
    "async_test",
    "out",
    "record",
    "run",
]

T = TypeVar("T")
S = TypeVar("S")

TEST_TIMEOUT_S = 30.0
"""No async test body may run longer than this, whatever the backend does."""
PROMPT_S = 2.5
"""A wake-up must arrive within this; the blocking calls under test wait up to 5 s."""


def run(coro: Coroutine[Any, Any, T], timeout_s: float = TEST_TIMEOUT_S) -> T:
    """Run ``coro`` on a fresh event loop, bounded by ``timeout_s``."""
    return asyncio.run(asyncio.wait_for(coro, timeout_s))


def async_test(fn: Callable[[S], Coroutine[Any, Any, None]]) -> Callable[[S], None]:
    """Turn an ``async def test_...(self)`` into a sync test method (no pytest-asyncio)."""

    def test(self: S) -> None:
        run(fn(self))

    # Copy the identity by hand: a __wrapped__ attribute would make pytest see a coroutine.
    test.__name__, test.__qualname__, test.__doc__ = fn.__name__, fn.__qualname__, fn.__doc__
    return test


def out(
    mid: str,
    queue: str = "default",
    *,
    priority: int = 0,
    due: float | None = None,
    body: bytes | None = None,
) -> Outgoing:
    """An outgoing message whose body defaults to its id."""
    return Outgoing(
        id=mid,
        queue=queue,
        body=body if body is not None else mid.encode(),
        priority=priority,
        due=due,
    )


def ids(deliveries: list[Delivery]) -> list[str]:
    return [d.id for d in deliveries]


def settle(delivery: Delivery, action: SettleAction, **kw: Any) -> Settlement:
    return Settlement(delivery=delivery, action=action, **kw)


class _Closing(Protocol):
    def close(self) -> None: ...


class _Suite(ABC):
    """What every conformance suite shares: a fake clock, and closing what a test opened."""

    clock: FakeClock
    _opened: list[_Closing]

    def setup_method(self) -> None:
        self.clock = FakeClock()
        self._opened = []

    def teardown_method(self) -> None:
        for backend in self._opened:
            backend.close()

    def _keep(self, backend: T) -> T:
        """Close ``backend`` after the test."""
        self._opened.append(cast(_Closing, backend))
        return backend


class BrokerConformance(_Suite):
    """The broker contract (``faena.contracts.broker``). Implement :meth:`make_broker`."""

    lease_s: ClassVar[float] = 30.0
    max_deliveries: ClassVar[int] = 3

    @abstractmethod
    def make_broker(self, config: BrokerConfig) -> Broker:
        """A new, empty broker of the backend under test, honouring ``config``."""

    def broker(self, *, real_time: bool = False, **overrides: Any) -> Broker:
        """A broker on the fake clock (or the real one), closed after the test."""
        config = BrokerConfig(
            lease_s=self.lease_s,
            max_deliveries=self.max_deliveries,
            clock=SYSTEM_CLOCK if real_time else self.clock,
        )
        return self._keep(self.make_broker(dataclasses.replace(config, **overrides)))

    @asynccontextmanager
    async def consumer(
        self, broker: Broker, *queues: str, worker: str = "w1"
    ) -> AsyncIterator[Consumer]:
        consumer = await broker.open_consumer(list(queues) or ["default"], worker)
        try:
            yield consumer
        finally:
            await consumer.close()

    # -- hand-out ---------------------------------------------------------------------------
    @async_test
    async def test_enqueue_then_receive_round_trip(self) -> None:
        broker = self.broker()
        # Given one message enqueued now
        broker.enqueue([out("m1", "q", priority=4, body=b"payload")])
        assert broker.locate("m1") == "queued"
        async with self.consumer(broker, "q") as consumer:
            # When a consumer receives
            got = await consumer.receive(10, 0)
        # Then it is leased with its body and a first delivery
        assert len(got) == 1
        d = got[0]
        assert (d.id, d.queue, d.body, d.priority) == ("m1", "q", b"payload", 4)
        assert d.deliveries == 1
        assert d.fence >= 1
        assert d.last_reason is None
        assert d.enqueued_at == self.clock.time()
        assert broker.locate("m1") == "leased"

    @async_test
    async def test_aenqueue_is_enqueue_for_async_callers(self) -> None:
        broker = self.broker()
        await broker.aenqueue([out("m1"), out("m2")])
        async with self.consumer(broker) as consumer:
            assert ids(await consumer.receive(10, 0)) == ["m1", "m2"]

    @async_test
    async def test_receive_hands_out_at_most_max_messages(self) -> None:
        broker = self.broker()
        broker.enqueue([out(f"m{i}") for i in range(5)])
        async with self.consumer(broker) as consumer:
            assert ids(await consumer.receive(3, 0)) == ["m0", "m1", "m2"]
            assert ids(await consumer.receive(10, 0)) == ["m3", "m4"]
            assert await consumer.receive(10, 0) == []

    @async_test
    async def test_higher_priority_first_then_oldest_first(self) -> None:
        broker = self.broker()
        broker.enqueue(
            [
                out("low", priority=0),
                out("mid1", priority=5),
                out("high", priority=9),
                out("mid2", priority=5),
            ]
        )
        async with self.consumer(broker) as consumer:
            assert ids(await consumer.receive(10, 0)) == ["high", "mid1", "mid2", "low"]

    @async_test
    async def test_queues_are_served_round_robin(self) -> None:
        broker = self.broker()
        broker.enqueue([out("a1", "a"), out("a2", "a"), out("b1", "b"), out("b2", "b")])
        async with self.consumer(broker, "a", "b") as consumer:
            # When receiving one at a time, each claim round starts at the next queue
            got = [ids(await consumer.receive(1, 0)) for _ in range(4)]
        assert got == [["a1"], ["b1"], ["a2"], ["b2"]]

    @async_test
    async def test_a_batch_takes_from_each_queue_in_round_order(self) -> None:
        broker = self.broker()
        broker.enqueue([out("a1", "a"), out("a2", "a"), out("b1", "b"), out("b2", "b")])
        async with self.consumer(broker, "a", "b") as consumer:
            assert ids(await consumer.receive(3, 0)) == ["a1", "a2", "b1"]
            assert ids(await consumer.receive(3, 0)) == ["b2"]

    @async_test
    async def test_a_delayed_message_waits_until_due(self) -> None:
        broker = self.broker()
        # Given a message due in 10 s
        broker.enqueue([out("later", due=self.clock.time() + 10)])
        assert broker.locate("later") == "scheduled"
        async with self.consumer(broker) as consumer:
            # Then it is not handed out before it is due
            assert await consumer.receive(10, 0) == []
            self.clock.advance(9.5)
            assert await consumer.receive(10, 0) == []
            # When it falls due, it is
            self.clock.advance(0.5)
            assert ids(await consumer.receive(10, 0)) == ["later"]

    @async_test
    async def test_a_message_due_in_two_hours_is_delivered_once(self) -> None:
        broker = self.broker()
        broker.enqueue([out("report", due=self.clock.time() + 2 * 3600)])
        async with self.consumer(broker, worker="w1") as a, self.consumer(broker, worker="w2") as b:
            # While it waits, many lease lengths pass and nobody is handed it
            for _ in range(20):
                self.clock.advance(359)
                assert await a.receive(10, 0) == []
                assert await b.receive(10, 0) == []
            # When it falls due, exactly one consumer gets it, and its ack is final
            self.clock.advance(21)
            first, second = await a.receive(10, 0), await b.receive(10, 0)
            assert ids(first) == ["report"]
            assert second == []
            assert await a.settle([settle(first[0], "ack")]) == [True]
            # Then hours later it is not handed out again
            self.clock.advance(6 * 3600)
            assert await a.receive(10, 0) + await b.receive(10, 0) == []
        assert broker.locate("report") is None

    # -- leases -----------------------------------------------------------------------------
    @async_test
    async def test_an_expired_lease_is_redelivered_with_a_new_fence(self) -> None:
        broker = self.broker()
        broker.enqueue([out("m1")])
        async with self.consumer(broker) as consumer:
            (first,) = await consumer.receive(1, 0)
            # When the lease runs out without a renewal
            self.clock.advance(self.lease_s + 1)
            (second,) = await consumer.receive(1, 0)
        # Then the message comes back, counted, with a higher fence and the reason
        assert second.id == "m1"
        assert second.deliveries == first.deliveries + 1
        assert second.fence == first.fence + 1
        assert second.last_reason == "lease_expired"

    @pytest.mark.parametrize("end", ["ack", "dead", "purge", "remove"])
    def test_a_later_send_of_the_same_id_never_reuses_an_earlier_sends_fence(
        self, end: str
    ) -> None:
        run(self._send_again_after(end))

    async def _send_again_after(self, end: str) -> None:
        broker = self.broker()
        broker.enqueue([out("m1", "q", body=b"first")])
        async with self.consumer(broker, "q") as consumer:
            # Given a worker whose lease ran out, and a second delivery that ended the message
            (stale,) = await consumer.receive(1, 0)
            self.clock.advance(self.lease_s + 1)
            (winner,) = await consumer.receive(1, 0)
            if end in ("purge", "remove"):
                assert await consumer.settle([settle(winner, "release")]) == [True]
                if end == "purge":
                    assert await broker.purge(["q"]) == 1
                else:
                    assert broker.remove("m1")
            else:
                ending = settle(winner, "dead", reason="rejected") if end == "dead" else None
                assert await consumer.settle([ending or settle(winner, "ack")]) == [True]
            # When the same id is sent again and handed out
            broker.enqueue([out("m1", "q", body=b"second")])
            (fresh,) = await consumer.receive(1, 0)
            assert fresh.body == b"second"
            # Then no holder of the first send can settle or renew it
            assert fresh.fence > winner.fence > stale.fence
            assert await consumer.extend([stale], self.lease_s) == {"m1"}
            assert await consumer.extend([winner], self.lease_s) == {"m1"}
            assert await consumer.settle([settle(stale, "ack"), settle(winner, "ack")]) == [
                False,
                False,
            ]
            # and its own holder still can: the message was not touched
            assert await consumer.settle([settle(fresh, "ack")]) == [True]
        assert broker.locate("m1") == ("dead" if end == "dead" else None)

    @async_test
    async def test_extend_keeps_the_lease(self) -> None:
        broker = self.broker()
        broker.enqueue([out("m1")])
        async with self.consumer(broker) as consumer:
            (d,) = await consumer.receive(1, 0)
            self.clock.advance(self.lease_s * 0.8)
            # When the holder renews before expiry
            assert await consumer.extend([d], self.lease_s) == set()
            self.clock.advance(self.lease_s * 0.8)
            # Then the message is not handed out again past the original lease
            assert await consumer.receive(1, 0) == []
            assert broker.locate("m1") == "leased"
            assert await consumer.settle([settle(d, "ack")]) == [True]

    @async_test
    async def test_extend_reports_leases_lost_to_someone_else(self) -> None:
        broker = self.broker()
        broker.enqueue([out("m1")])
        async with self.consumer(broker) as consumer:
            # Given m1's first lease ran out and m1 was handed out again, and m2 is new
            (stale,) = await consumer.receive(1, 0)
            self.clock.advance(self.lease_s + 1)
            (current,) = await consumer.receive(1, 0)
            broker.enqueue([out("m2")])
            (fresh,) = await consumer.receive(1, 0)
            # When the holder of the first lease renews it along with m2
            lost = await consumer.extend([stale, fresh], self.lease_s)
            # Then m1 is reported lost, and its current holder can still renew it
            assert lost == {"m1"}
            assert await consumer.extend([current], self.lease_s) == set()

    # -- settlements ------------------------------------------------------------------------
    @async_test
    async def test_ack_deletes_the_message(self) -> None:
        broker = self.broker()
        broker.enqueue([out("m1")])
        async with self.consumer(broker) as consumer:
            (d,) = await consumer.receive(1, 0)
            assert await consumer.settle([settle(d, "ack")]) == [True]
            self.clock.advance(self.lease_s + 1)
            assert await consumer.receive(1, 0) == []
        assert broker.locate("m1") is None

    @async_test
    async def test_retry_replaces_the_body_reschedules_and_restarts_counting(self) -> None:
        broker = self.broker()
        broker.enqueue([out("m1", body=b"attempt-1")])
        async with self.consumer(broker) as consumer:
            (d,) = await consumer.receive(1, 0)
            # When the job is retried in 60 s with its next attempt's body
            retry = settle(d, "retry", body=b"attempt-2", due=self.clock.time() + 60)
            assert await consumer.settle([retry]) == [True]
            # Then it waits in the schedule, and comes back as a first delivery
            assert broker.locate("m1") == "scheduled"
            assert await consumer.receive(1, 0) == []
            self.clock.advance(60)
            (again,) = await consumer.receive(1, 0)
        assert (again.body, again.deliveries, again.last_reason) == (b"attempt-2", 1, None)
        assert again.fence > d.fence

    @async_test
    async def test_dead_moves_the_message_to_the_dead_letters(self) -> None:
        broker = self.broker()
        broker.enqueue([out("m1", "q")])
        async with self.consumer(broker, "q") as consumer:
            (d,) = await consumer.receive(1, 0)
            dead = settle(d, "dead", reason="unknown_task", detail="no task 'x'")
            assert await consumer.settle([dead]) == [True]
        assert broker.locate("m1") == "dead"
        (letter,) = await broker.dead_letters()
        assert (letter.id, letter.queue, letter.reason, letter.detail) == (
            "m1",
            "q",
            "unknown_task",
            "no task 'x'",
        )
        assert (letter.deliveries, letter.body, letter.dead_at) == (1, b"m1", self.clock.time())

    @async_test
    async def test_release_without_reason_does_not_count_a_delivery(self) -> None:
        broker = self.broker()
        broker.enqueue([out("m1")])
        async with self.consumer(broker) as consumer:
            (d,) = await consumer.receive(1, 0)
            # When an unstarted message is handed back at shutdown
            assert await consumer.settle([settle(d, "release")]) == [True]
            (again,) = await consumer.receive(1, 0)
        # Then it is ready at once and its next hand-out is still the first
        assert (again.id, again.deliveries, again.last_reason) == ("m1", 1, None)

    @staticmethod
    async def _lost_once(consumer: Consumer) -> Delivery:
        """Lease the one waiting message, hand it back as lost (counted, ``worker_lost``), and
        return its next delivery."""
        (d,) = await consumer.receive(1, 0)
        lost = settle(d, "release", reason="worker_lost")
        assert await consumer.settle([lost]) == [True]
        (again,) = await consumer.receive(1, 0)
        return again

    @async_test
    async def test_release_with_reason_counts_and_records_it(self) -> None:
        broker = self.broker()
        broker.enqueue([out("m1")])
        async with self.consumer(broker) as consumer:
            again = await self._lost_once(consumer)
        assert (again.deliveries, again.last_reason) == (2, "worker_lost")

    @async_test
    async def test_release_due_later_keeps_the_count_and_the_last_reason(self) -> None:
        broker = self.broker()
        broker.enqueue([out("m1")])
        async with self.consumer(broker) as consumer:
            # Given a message lost once (a worker died holding it)
            d = await self._lost_once(consumer)
            # When it is handed back due later, uncounted (a job postponed by its limits)
            due = self.clock.time() + 30
            assert await consumer.settle([settle(d, "release", due=due)]) == [True]
            # Then it waits until then
            assert broker.locate("m1") == "scheduled"
            assert await consumer.receive(1, 0) == []
            self.clock.advance(30)
            (again,) = await consumer.receive(1, 0)
            # And its count and reason are those of before: still the same attempt
            assert (again.deliveries, again.last_reason) == (2, "worker_lost")
            # When it is handed back due later and counted, Then that delivery counts too
            later = self.clock.time() + 5
            counted = settle(again, "release", reason="worker_lost", due=later)
            assert await consumer.settle([counted]) == [True]
            self.clock.advance(5)
            (last,) = await consumer.receive(1, 0)
        assert (last.deliveries, last.last_reason) == (3, "worker_lost")

    @async_test
    async def test_a_release_due_later_goes_to_the_back_of_the_line(self) -> None:
        broker = self.broker()
        broker.enqueue([out("m1"), out("m2")])
        async with self.consumer(broker) as consumer:
            # Given the first message handed back due later (it had its turn), after one more
            # was sent
            (d,) = await consumer.receive(1, 0)
            assert d.id == "m1"
            broker.enqueue([out("m3")])
            assert await consumer.settle([settle(d, "release", due=self.clock.time() + 5)])
            # When it falls due, Then the messages sent before it was handed back come first
            self.clock.advance(5)
            got = await consumer.receive(3, 0)
        assert ids(got) == ["m2", "m3", "m1"]

    @async_test
    async def test_a_stale_delivery_cannot_settle(self) -> None:
        broker = self.broker()
        broker.enqueue([out("m1")])
        async with self.consumer(broker) as consumer:
            # Given a delivery whose lease expired and was handed out again
            (stale,) = await consumer.receive(1, 0)
            self.clock.advance(self.lease_s + 1)
            (current,) = await consumer.receive(1, 0)
            # Then the old holder's settlements are refused, each in its own slot
            refused = [
                settle(stale, "ack"),
                settle(stale, "retry", body=b"x"),
                settle(stale, "dead", reason="r"),
                settle(stale, "release"),
            ]
            assert await consumer.settle(refused) == [False, False, False, False]
            assert broker.locate("m1") == "leased"
            # And the current holder's ack goes through
            assert await consumer.settle([settle(current, "ack")]) == [True]
        assert broker.locate("m1") is None

    @async_test
    async def test_settle_answers_per_item_in_one_batch(self) -> None:
        broker = self.broker()
        broker.enqueue([out("m1"), out("m2"), out("m3")])
        async with self.consumer(broker) as consumer:
            d1, d2, d3 = await consumer.receive(3, 0)
            batch = [
                settle(d1, "ack"),
                settle(d2, "release"),
                settle(d1, "ack"),
                settle(d3, "retry", body=b"next"),
            ]
            assert await consumer.settle(batch) == [True, True, False, True]
        assert [broker.locate(m) for m in ("m1", "m2", "m3")] == [None, "queued", "queued"]

    @async_test
    async def test_settlements_of_one_delivery_apply_in_order(self) -> None:
        broker = self.broker()
        broker.enqueue([out("m1")])
        async with self.consumer(broker) as consumer:
            (d,) = await consumer.receive(1, 0)
            # When a batch retries a delivery and then acks it
            batch = [settle(d, "retry", body=b"again"), settle(d, "ack")]
            # Then the retry ended the lease, so the ack is refused
            assert await consumer.settle(batch) == [True, False]
        assert broker.locate("m1") == "queued"

    @async_test
    async def test_retried_and_recovered_messages_go_to_the_back_of_the_line(self) -> None:
        broker = self.broker()
        broker.enqueue([out("retried"), out("expired")])
        async with self.consumer(broker) as consumer:
            retried, _ = await consumer.receive(2, 0)
            broker.enqueue([out("waiting")])
            # When one is retried now and the other's lease runs out
            await consumer.settle([settle(retried, "retry")])
            self.clock.advance(self.lease_s + 1)
            # Then both line up behind the message that was already waiting
            assert ids(await consumer.receive(10, 0)) == ["waiting", "retried", "expired"]

    # -- dead-lettering by delivery count ---------------------------------------------------
    @async_test
    async def test_too_many_lost_leases_dead_letter_with_the_last_reason(self) -> None:
        broker = self.broker(max_deliveries=2)
        broker.enqueue([out("m1")])
        async with self.consumer(broker) as consumer:
            for _ in range(2):
                assert ids(await consumer.receive(1, 0)) == ["m1"]
                self.clock.advance(self.lease_s + 1)
            # When a third hand-out would exceed max_deliveries
            assert await consumer.receive(1, 0) == []
        # Then the message is dead, with the reason of its last loss
        assert broker.locate("m1") == "dead"
        (letter,) = await broker.dead_letters()
        assert (letter.reason, letter.deliveries) == ("lease_expired", 2)

    @async_test
    async def test_a_lost_worker_counts_towards_max_deliveries(self) -> None:
        broker = self.broker(max_deliveries=1)
        broker.enqueue([out("m1"), out("m2")])
        async with self.consumer(broker) as consumer:
            d1, _ = await consumer.receive(2, 0)
            await consumer.settle([settle(d1, "release", reason="worker_lost")])
            assert await consumer.receive(1, 0) == []
        (letter,) = await broker.dead_letters()
        assert (letter.id, letter.reason) == ("m1", "worker_lost")

    # -- producers' view --------------------------------------------------------------------
    @async_test
    async def test_locate_and_remove(self) -> None:
        broker = self.broker()
        assert broker.locate("nothing") is None
        assert broker.remove("nothing") is False
        async with self.consumer(broker) as consumer:
            # Given one leased, one ready and one scheduled message
            broker.enqueue([out("busy")])
            assert ids(await consumer.receive(1, 0)) == ["busy"]
            broker.enqueue([out("ready"), out("later", due=self.clock.time() + 5)])
            assert [broker.locate(m) for m in ("busy", "ready", "later")] == [
                "leased",
                "queued",
                "scheduled",
            ]
            # Then the waiting ones can be removed, the leased one cannot
            assert broker.remove("ready") is True
            assert broker.remove("later") is True
            assert broker.remove("busy") is False
            assert [broker.locate(m) for m in ("busy", "ready", "later")] == ["leased", None, None]
            self.clock.advance(5)
            assert await consumer.receive(10, 0) == []

    @async_test
    async def test_take_removes_a_waiting_message_and_returns_its_body(self) -> None:
        broker = self.broker()
        assert broker.take("nothing") is None
        async with self.consumer(broker) as consumer:
            # Given one leased and one waiting message
            broker.enqueue([out("busy"), out("waiting", body=b"\x00body\xff")])
            assert ids(await consumer.receive(1, 0)) == ["busy"]
            # Then the waiting one is taken with its body, once; the leased one stays
            assert broker.take("waiting") == b"\x00body\xff"
            assert broker.take("waiting") is None
            assert broker.take("busy") is None
            assert broker.locate("busy") == "leased"

    @async_test
    async def test_re_enqueue_replaces_a_waiting_message(self) -> None:
        broker = self.broker()
        broker.enqueue([out("m1", body=b"old"), out("m2")])
        broker.enqueue([out("m1", body=b"new")])
        async with self.consumer(broker) as consumer:
            got = await consumer.receive(10, 0)
        assert [(d.id, d.body) for d in got] == [("m2", b"m2"), ("m1", b"new")]

    @async_test
    async def test_re_enqueue_of_a_leased_message_is_dropped(self) -> None:
        broker = self.broker()
        broker.enqueue([out("m1", body=b"running")])
        async with self.consumer(broker) as consumer:
            (d,) = await consumer.receive(1, 0)
            broker.enqueue([out("m1", body=b"duplicate")])
            assert broker.locate("m1") == "leased"
            assert await consumer.settle([settle(d, "ack")]) == [True]
            assert await consumer.receive(1, 0) == []

    # -- administration ---------------------------------------------------------------------
    @async_test
    async def test_stats_count_every_place_per_queue(self) -> None:
        broker = self.broker()
        broker.enqueue(
            [
                out("a1", "a"),
                out("a2", "a"),
                out("a3", "a", due=self.clock.time() + 9),
                out("a4", "a"),
                out("b1", "b"),
            ]
        )
        async with self.consumer(broker, "a") as consumer:
            d1, d2 = await consumer.receive(2, 0)
            await consumer.settle([settle(d2, "dead", reason="r")])
        assert await broker.stats() == [
            QueueStats(queue="a", ready=1, scheduled=1, leased=1, dead=1),
            QueueStats(queue="b", ready=1),
        ]
        assert d1.id == "a1"

    @async_test
    async def test_purge_deletes_waiting_messages_only(self) -> None:
        broker = self.broker()
        broker.enqueue(
            [
                out("a1", "a"),
                out("a2", "a", due=self.clock.time() + 9),
                out("a3", "a"),
                out("b1", "b"),
            ]
        )
        async with self.consumer(broker, "a") as consumer:
            (leased,) = await consumer.receive(1, 0)
            assert await broker.purge(["a"]) == 2
            assert [broker.locate(m) for m in ("a1", "a2", "a3", "b1")] == [
                "leased",
                None,
                None,
                "queued",
            ]
            assert await consumer.settle([settle(leased, "ack")]) == [True]

    @async_test
    async def test_purge_deletes_messages_whose_lease_expired(self) -> None:
        broker = self.broker()
        broker.enqueue([out("running"), out("crashed1"), out("crashed2"), out("waiting")])
        async with self.consumer(broker) as live, self.consumer(broker) as dead:
            # Given one message leased by a live worker, two by a worker that died (their
            # leases run out, the live one's is renewed), and one waiting
            (running,) = await live.receive(1, 0)
            assert ids(await dead.receive(2, 0)) == ["crashed1", "crashed2"]
            self.clock.advance(self.lease_s / 2)
            assert await live.extend([running], self.lease_s) == set()
            self.clock.advance(self.lease_s / 2 + 1)
            # When the queue is purged, Then all but the live worker's message are deleted
            assert await broker.purge(["default"]) == 3
            assert [broker.locate(m) for m in ("crashed1", "crashed2", "waiting")] == [None] * 3
            assert broker.locate("running") == "leased"
            assert await live.settle([settle(running, "ack")]) == [True]

    async def _bury(self, broker: Broker, *mids: str, queue: str = "default") -> None:
        """Dead-letter ``mids`` one second apart, in order."""
        broker.enqueue([out(m, queue) for m in mids])
        async with self.consumer(broker, queue) as consumer:
            for m in mids:
                (d,) = await consumer.receive(1, 0)
                assert d.id == m
                await consumer.settle([settle(d, "dead", reason=f"bad-{m}")])
                self.clock.advance(1)

    @async_test
    async def test_dead_letters_newest_first_limited_and_by_queue(self) -> None:
        broker = self.broker()
        await self._bury(broker, "d1", "d2", "d3")
        await self._bury(broker, "x1", queue="other")
        assert [x.id for x in await broker.dead_letters()] == ["x1", "d3", "d2", "d1"]
        assert [x.id for x in await broker.dead_letters(limit=2)] == ["x1", "d3"]
        assert [x.id for x in await broker.dead_letters(queue="default")] == ["d3", "d2", "d1"]

    @async_test
    async def test_requeue_dead_puts_letters_back_uncounted(self) -> None:
        broker = self.broker()
        await self._bury(broker, "d1", "d2", "d3")
        # When one named letter, then all the rest, are requeued
        assert await broker.requeue_dead(["d2", "missing"]) == 1
        assert [broker.locate(m) for m in ("d1", "d2")] == ["dead", "queued"]
        assert await broker.requeue_dead() == 2
        assert await broker.dead_letters() == []
        async with self.consumer(broker) as consumer:
            got = await consumer.receive(10, 0)
        # Then they are handed out again as first deliveries with their bodies
        assert sorted((d.id, d.body, d.deliveries) for d in got) == [
            ("d1", b"d1", 1),
            ("d2", b"d2", 1),
            ("d3", b"d3", 1),
        ]

    @async_test
    async def test_requeue_dead_leaves_a_letter_whose_id_is_in_use_again(self) -> None:
        broker = self.broker()
        await self._bury(broker, "d1")
        # Given the same id sent anew and now leased to a worker
        broker.enqueue([out("d1", body=b"newer")])
        # (it is found as a dead letter first, and as the newer message when asked so)
        assert broker.locate("d1") == "dead"
        assert broker.locate("d1", live_first=True) == "queued"
        async with self.consumer(broker) as consumer:
            (newer,) = await consumer.receive(1, 0)
            assert broker.locate("d1", live_first=True) == "leased"
            assert await broker.alocate("d1", live_first=True) == "leased"
            # When the dead letter is requeued
            assert await broker.requeue_dead(["d1"]) == 0
            # Then the newer message is untouched (still ours to ack) and the letter waits
            assert newer.body == b"newer"
            assert [d.id for d in await broker.dead_letters()] == ["d1"]
            assert await consumer.settle([settle(newer, "ack")]) == [True]

    @async_test
    async def test_an_id_named_twice_counts_once(self) -> None:
        broker = self.broker()
        await self._bury(broker, "d1", "d2")
        assert await broker.requeue_dead(["d1", "d1"]) == 1
        assert await broker.purge_dead(["d2", "d2"]) == 1
        assert await broker.dead_letters() == []
        assert broker.locate("d1") == "queued"

    @async_test
    async def test_a_consumer_needs_a_queue(self) -> None:
        broker = self.broker()
        with pytest.raises(ConfigurationError, match="at least one queue"):
            await broker.open_consumer([], "w1")

    @async_test
    async def test_a_consumer_of_hundreds_of_queues_is_served_from_each(self) -> None:
        broker = self.broker()
        # Given a consumer of 600 queues (more parts than one SQL statement takes) and a
        # message in the first and in the last
        queues = [f"q{i}" for i in range(600)]
        broker.enqueue([out("first", "q0"), out("last", "q599")])
        async with self.consumer(broker, *queues) as consumer:
            # When it claims, Then it gets both, in queue order
            assert [d.id for d in await consumer.receive(10, 0)] == ["first", "last"]

    @async_test
    async def test_purge_dead_by_id_and_all(self) -> None:
        broker = self.broker()
        await self._bury(broker, "d1", "d2", "d3")
        assert await broker.purge_dead(["d1", "missing"]) == 1
        assert await broker.purge_dead() == 2
        assert await broker.dead_letters() == []
        assert broker.locate("d2") is None

    @async_test
    async def test_workers_are_listed_while_their_heartbeat_is_recent(self) -> None:
        broker = self.broker()
        info = WorkerInfo(
            id="host:1",
            hostname="host",
            pid=1,
            queues=("a", "b"),
            concurrency=4,
            pool="threads",
            started_at=self.clock.time(),
            processed=7,
            running=2,
            extra={"version": "1"},
        )
        await broker.register_worker(info)
        listed = await broker.workers()
        assert listed == [dataclasses.replace(info, heartbeat_at=self.clock.time())]
        # When the heartbeat is older than the lease, the worker is presumed dead
        self.clock.advance(self.lease_s + 1)
        assert await broker.workers() == []
        # And a fresh heartbeat brings it back, until it unregisters
        await broker.register_worker(info)
        assert [w.id for w in await broker.workers()] == ["host:1"]
        await broker.unregister_worker("host:1")
        assert await broker.workers() == []

    @async_test
    async def test_a_worker_with_a_longer_lease_is_listed_by_its_own(self) -> None:
        # Given a worker of an app whose lease is four times this broker's, which beats less
        # often, and one that says nothing of its lease
        broker = self.broker()
        slow = WorkerInfo(
            id="slow:1",
            hostname="host",
            pid=1,
            queues=("a",),
            concurrency=1,
            pool="threads",
            started_at=self.clock.time(),
            alive_s=4 * self.lease_s,
        )
        plain = dataclasses.replace(slow, id="plain:1", alive_s=0.0)
        await broker.register_worker(slow)
        await broker.register_worker(plain)
        # When its last heartbeat is older than this broker's lease but within its own
        self.clock.advance(self.lease_s + 1)
        # Then it is still listed (and kept: a listing does not forget it), the other is not
        assert [w.id for w in await broker.workers()] == ["slow:1"]
        assert [w.id for w in await broker.workers()] == ["slow:1"]
        # And past its own lease it is presumed dead too
        self.clock.advance(3 * self.lease_s)
        assert await broker.workers() == []

    # -- blocking receive (real clock) ------------------------------------------------------
    @async_test
    async def test_receive_times_out_with_nothing(self) -> None:
        broker = self.broker(real_time=True)
        async with self.consumer(broker) as consumer:
            started = SYSTEM_CLOCK.monotonic()
            assert await consumer.receive(1, 0.2) == []
        assert 0.15 <= SYSTEM_CLOCK.monotonic() - started < PROMPT_S

    @async_test
    async def test_a_waiting_receive_wakes_on_enqueue(self) -> None:
        broker = self.broker(real_time=True)
        async with self.consumer(broker) as consumer:
            # Given a receive waiting up to 5 s on an empty queue
            waiting = asyncio.create_task(consumer.receive(1, 5.0))
            # When another thread enqueues (the delay only lets the receive start waiting;
            # the assertions hold whichever comes first)
            producer = threading.Timer(0.05, broker.enqueue, ([out("m1")],))
            started = SYSTEM_CLOCK.monotonic()
            producer.start()
            try:
                got = await waiting
            finally:
                producer.join()
        # Then the receive returns the message well before its timeout
        assert ids(got) == ["m1"]
        assert SYSTEM_CLOCK.monotonic() - started < PROMPT_S

    @async_test
    async def test_closing_the_consumer_ends_a_waiting_receive(self) -> None:
        broker = self.broker(real_time=True)
        consumer = await broker.open_consumer(["default"], "w1")
        # Given a receive waiting up to 5 s on an empty queue
        waiting = asyncio.create_task(consumer.receive(1, 5.0))
        closing: list[asyncio.Task[None]] = []
        started = SYSTEM_CLOCK.monotonic()
        # When the consumer is closed meanwhile
        asyncio.get_running_loop().call_later(
            0.05, lambda: closing.append(asyncio.create_task(consumer.close()))
        )
        # Then the receive ends empty-handed well before its timeout
        assert await waiting == []
        assert SYSTEM_CLOCK.monotonic() - started < PROMPT_S
        await asyncio.gather(*closing)

    def test_close_is_idempotent(self) -> None:
        broker = self.broker()
        broker.close()
        broker.close()


def record(job_id: str, state: str = STARTED, fence: int = 1, **fields: Any) -> JobRecord:
    return JobRecord(id=job_id, state=state, fence=fence, **fields)


class ResultStoreConformance(_Suite):
    """The result store contract (``faena.contracts.results``). Implement the hook."""

    @abstractmethod
    def make_result_store(self, clock: Clock) -> ResultStore:
        """A new, empty result store of the backend under test, reading time from ``clock``."""

    def store(self, *, real_time: bool = False) -> ResultStore:
        return self._keep(self.make_result_store(SYSTEM_CLOCK if real_time else self.clock))

    @async_test
    async def test_store_then_fetch_round_trip(self) -> None:
        store = self.store()
        full = record(
            "j1",
            SUCCESS,
            fence=3,
            task="t.add",
            queue="q",
            worker="w",
            value=b"4",
            progress=1.0,
            retries=2,
            deliveries=1,
            started_at=1.0,
            finished_at=2.0,
            updated_at=2.0,
            parent_id="p",
            root_id="r",
        )
        assert store.store(full) is True
        assert store.fetch("j1") == full
        assert await store.afetch("j1") == full
        assert store.fetch("unknown") is None

    @async_test
    async def test_any_job_id_is_stored_apart_and_wakes_its_waiter(self) -> None:
        # Given job ids made of the characters a backend might treat specially
        ids = ["}x", "{a}", "a}b{c", "%7Dx", "%", "id with spaces", "ünï/cødé*?"]
        store = self.store()
        for i, job_id in enumerate(ids):
            # Then each is written, read and awaited as itself, apart from the others
            assert store.store(record(job_id, SUCCESS, value=str(i).encode())) is True
        for i, job_id in enumerate(ids):
            got = store.wait(job_id, PROMPT_S)
            again = await store.await_ready(job_id, PROMPT_S)
            assert [r.value if r else None for r in (got, again)] == [str(i).encode()] * 2
        assert set((await store.fetch_many(ids)).keys()) == set(ids)
        # and each expires, and is cleaned up, like any other
        for job_id in ids:
            store.store(record(job_id, SUCCESS, fence=2, expires_at=self.clock.time() + 10))
        self.clock.advance(11)
        assert await store.cleanup() == len(ids)
        assert await store.fetch_many(ids) == {}

    def test_a_lower_fence_is_not_written(self) -> None:
        store = self.store()
        assert store.store(record("j1", fence=2, worker="current")) is True
        # When a worker that lost its lease writes with an older fence
        assert store.store(record("j1", SUCCESS, fence=1, worker="stale")) is False
        # Then the record is unchanged; an equal fence still writes
        assert store.fetch("j1") == record("j1", fence=2, worker="current")
        assert store.store(record("j1", SUCCESS, fence=2)) is True
        assert store.fetch("j1") == record("j1", SUCCESS, fence=2)

    @pytest.mark.parametrize("ready", [SUCCESS, FAILURE, REVOKED])
    def test_unless_ready_keeps_a_finished_outcome(self, ready: str) -> None:
        store = self.store()
        revoke = record("j1", REVOKED, fence=FINAL_FENCE, reason="by hand")
        # Given a job still running: a revoke that spares finished outcomes is written
        assert store.store(record("j1", STARTED, fence=5)) is True
        assert store.store(revoke, unless_ready=True) is True
        assert store.fetch("j1") == revoke
        # Given a job that has finished (whatever its fence)
        assert store.store(record("j2", ready, fence=5, value=b"42")) is True
        # When such a revoke comes, Then the outcome stands
        assert store.store(record("j2", REVOKED, fence=FINAL_FENCE), unless_ready=True) is False
        assert store.fetch("j2") == record("j2", ready, fence=5, value=b"42")
        # Whatever the length of the job id
        for long_id in ("x" * 40, "y" * 300, "z" * 70_000):
            assert store.store(record(long_id, ready, fence=5)) is True
            revoke_it = record(long_id, REVOKED, fence=FINAL_FENCE)
            assert store.store(revoke_it, unless_ready=True) is False
            running = record(long_id + "-running", STARTED, fence=5)
            assert store.store(running) is True
            assert (
                store.store(record(running.id, REVOKED, fence=FINAL_FENCE), unless_ready=True)
                is True
            )
        # And once that outcome has expired, it no longer stands in the way
        store.store(record("j3", ready, fence=5, expires_at=self.clock.time() + 10))
        self.clock.advance(11)
        assert store.store(record("j3", REVOKED, fence=FINAL_FENCE), unless_ready=True) is True

    def test_the_final_fence_wins(self) -> None:
        store = self.store()
        assert store.store(record("j1", REVOKED, fence=FINAL_FENCE)) is True
        assert store.store(record("j1", SUCCESS, fence=10**6)) is False
        fetched = store.fetch("j1")
        assert fetched is not None
        assert fetched.state == REVOKED

    @async_test
    async def test_expired_records_read_as_missing_and_are_cleaned_up(self) -> None:
        store = self.store()
        now = self.clock.time()
        store.store(record("short", expires_at=now + 10))
        store.store(record("long", expires_at=now + 100))
        store.store(record("forever"))
        self.clock.advance(10)
        # Then the expired record is gone for readers, and cleanup deletes only it
        assert store.fetch("short") is None
        assert await store.fetch_many(["short", "long"]) == {"long": store.fetch("long")}
        assert await store.cleanup() == 1
        assert await store.cleanup() == 0
        assert store.fetch("forever") is not None

    def test_an_expired_record_never_blocks_a_new_write(self) -> None:
        store = self.store()
        store.store(record("j1", fence=5, expires_at=self.clock.time() + 1))
        self.clock.advance(2)
        assert store.store(record("j1", fence=1)) is True
        assert store.fetch("j1") == record("j1", fence=1)

    @async_test
    async def test_store_many_answers_per_record(self) -> None:
        store = self.store()
        store.store(record("b", fence=3))
        written = await store.store_many(
            [record("a"), record("b", SUCCESS, fence=2), record("c", SUCCESS)]
        )
        assert written == [True, False, True]
        found = await store.fetch_many(["a", "b", "c", "missing"])
        assert found == {"a": record("a"), "b": record("b", fence=3), "c": record("c", SUCCESS)}

    def test_forget_deletes_the_record(self) -> None:
        store = self.store()
        store.store(record("j1", SUCCESS))
        store.forget("j1")
        store.forget("j1")
        assert store.fetch("j1") is None

    @async_test
    async def test_wait_returns_a_ready_record_at_once(self) -> None:
        store = self.store()
        store.store(record("j1", SUCCESS, value=b"1"))
        assert store.wait("j1", 5.0) == record("j1", SUCCESS, value=b"1")
        assert await store.await_ready("j1", 5.0) == record("j1", SUCCESS, value=b"1")

    @async_test
    async def test_wait_returns_the_last_record_when_time_is_up(self) -> None:
        store = self.store(real_time=True)
        store.store(record("j1", STARTED))
        assert store.wait("j1", 0.1) == record("j1", STARTED)
        assert await store.await_ready("j1", 0.1) == record("j1", STARTED)
        assert store.wait("unknown", 0.05) is None
        assert await store.await_ready("unknown", 0) is None

    def test_wait_is_woken_by_a_store_from_another_thread(self) -> None:
        store = self.store(real_time=True)
        # Given a job running, and a thread that finishes it shortly
        store.store(record("j1", STARTED))
        finisher = threading.Timer(0.05, store.store, (record("j1", SUCCESS, fence=2),))
        started = SYSTEM_CLOCK.monotonic()
        finisher.start()
        try:
            # When the caller waits up to 5 s
            got = store.wait("j1", 5.0)
        finally:
            finisher.join()
        # Then it gets the final record well before the timeout
        assert got == record("j1", SUCCESS, fence=2)
        assert SYSTEM_CLOCK.monotonic() - started < PROMPT_S

    @async_test
    async def test_await_ready_is_woken_by_a_store_from_another_thread(self) -> None:
        store = self.store(real_time=True)
        finisher = threading.Timer(0.05, store.store, (record("j1", SUCCESS),))
        started = SYSTEM_CLOCK.monotonic()
        finisher.start()
        try:
            got = await store.await_ready("j1", 5.0)
        finally:
            finisher.join()
        assert got == record("j1", SUCCESS)
        assert SYSTEM_CLOCK.monotonic() - started < PROMPT_S

    def test_close_is_idempotent(self) -> None:
        store = self.store()
        store.close()
        store.close()


class CoordinationConformance(_Suite):
    """The coordination store contract (``faena.contracts.coordination``). Implement the hook."""

    shared_between_stores: ClassVar[bool] = True
    """Whether two stores made in one test reach the same keys (one file, one server). The
    in-memory backend, where each store is its own keyspace, sets it False: the sharing test is
    skipped, and the racing threads share one store instead of each having its own."""
    races: ClassVar[int] = 200
    """Rounds of the set_if_absent race; each round is a fresh key every racer contends for."""
    racers: ClassVar[int] = 4
    """Threads in each race."""

    @abstractmethod
    def make_coordination_store(self, clock: Clock) -> CoordinationStore:
        """A new coordination store of the backend under test, reading time from ``clock``.

        The first call in a test starts empty; later calls in the same test are further clients
        of the same data, if the backend can share it (see ``shared_between_stores``).
        """

    def store(self) -> CoordinationStore:
        return self._keep(self.make_coordination_store(self.clock))

    # -- set_if_absent, get, expiry ---------------------------------------------------------
    def test_set_if_absent_creates_once_and_get_reads_it(self) -> None:
        store = self.store()
        assert store.get("k") is None
        # When two callers try to create the same key
        assert store.set_if_absent("k", "first", 10) is True
        assert store.set_if_absent("k", "second", 10) is False
        # Then the first value stays
        assert store.get("k") == "first"
        assert store.get("other") is None

    def test_any_key_is_kept_apart(self) -> None:
        # Given keys made of the characters a backend might treat specially
        keys = ["}k", "{k}", "k}x{y", "%7Dk", "%", "", "key with spaces", "ünï/cødé*?"]
        store = self.store()
        for i, key in enumerate(keys):
            # Then each holds its own value, counter and set
            assert store.set_if_absent(key, str(i), 10) is True
            assert store.incr(key + ":n", i + 1) == i + 1
            assert store.add_member(key + ":s", "m", 10) == (True, 1)
        assert [store.get(k) for k in keys] == [str(i) for i in range(len(keys))]

    def test_a_key_expires_when_its_ttl_has_passed(self) -> None:
        store = self.store()
        store.set_if_absent("k", "first", 10)
        self.clock.advance(9.5)
        assert store.get("k") == "first"
        assert store.set_if_absent("k", "second", 10) is False
        # When the TTL has fully passed, the key is absent: it reads as None and can be taken
        self.clock.advance(0.5)
        assert store.get("k") is None
        assert store.set_if_absent("k", "second", 10) is True
        assert store.get("k") == "second"
        # And the new holder has a TTL of its own, counted from its creation
        self.clock.advance(9.5)
        assert store.get("k") == "second"
        self.clock.advance(0.5)
        assert store.get("k") is None

    @pytest.mark.parametrize("ttl_s", [0, -1.0, math.nan, math.inf])
    def test_an_invalid_ttl_is_a_value_error_and_changes_nothing(self, ttl_s: float) -> None:
        store = self.store()
        store.set_if_absent("held", "me", 10)
        with pytest.raises(ValueError, match="TTL"):
            store.set_if_absent("k", "v", ttl_s)
        with pytest.raises(ValueError, match="TTL"):
            store.incr("n", 1, ttl_s)
        with pytest.raises(ValueError, match="TTL"):
            store.expire("held", ttl_s)
        with pytest.raises(ValueError, match="TTL"):
            store.compare_and_expire("held", "me", ttl_s)
        assert (store.get("k"), store.get("n"), store.get("held")) == (None, None, "me")
        self.clock.advance(10)
        assert store.get("held") is None

    @pytest.mark.parametrize("amount", [1.5, "2", True, None, 2**63])
    def test_an_increment_that_is_no_whole_number_is_a_value_error_and_writes_nothing(
        self, amount: Any
    ) -> None:
        store = self.store()
        with pytest.raises(ValueError, match="increment"):
            store.incr("n", amount)
        with pytest.raises(ValueError, match="increment"):
            asyncio.run(store.aincr("n", amount))
        assert store.get("n") is None
        assert store.incr("n", 2) == 2

    # -- ownership --------------------------------------------------------------------------
    def test_compare_and_delete_deletes_only_the_expected_value(self) -> None:
        store = self.store()
        store.set_if_absent("lock", "owner", 10)
        # When someone else tries to release the lock, it stays
        assert store.compare_and_delete("lock", "intruder") is False
        assert store.get("lock") == "owner"
        # When the owner releases it, it is gone, once
        assert store.compare_and_delete("lock", "owner") is True
        assert store.get("lock") is None
        assert store.compare_and_delete("lock", "owner") is False
        assert store.compare_and_delete("missing", "owner") is False
        assert store.set_if_absent("lock", "next", 10) is True

    def test_compare_and_expire_renews_only_for_the_owner(self) -> None:
        store = self.store()
        store.set_if_absent("lock", "owner", 10)
        self.clock.advance(8)
        # When another caller tries to renew, nothing changes
        assert store.compare_and_expire("lock", "intruder", 100) is False
        # When the owner renews for 10 s, the lock outlives its first TTL by that much
        assert store.compare_and_expire("lock", "owner", 10) is True
        self.clock.advance(9.5)
        assert store.get("lock") == "owner"
        self.clock.advance(0.5)
        assert store.get("lock") is None
        assert store.compare_and_expire("lock", "owner", 10) is False

    def test_a_refused_renewal_keeps_the_old_expiry(self) -> None:
        store = self.store()
        store.set_if_absent("lock", "owner", 10)
        assert store.compare_and_expire("lock", "intruder", 100) is False
        self.clock.advance(10)
        assert store.get("lock") is None

    def test_compare_and_expire_may_shorten_the_ttl(self) -> None:
        store = self.store()
        store.set_if_absent("lock", "owner", 100)
        assert store.compare_and_expire("lock", "owner", 1) is True
        self.clock.advance(1)
        assert store.get("lock") is None

    def test_an_expired_key_cannot_be_compared_extended_or_deleted(self) -> None:
        store = self.store()
        store.set_if_absent("lock", "owner", 10)
        store.incr("count", 1, 10)
        # Given both keys expired
        self.clock.advance(10)
        # Then no operation finds them, and none revives them
        assert store.compare_and_expire("lock", "owner", 100) is False
        assert store.expire("lock", 100) is False
        assert store.expire("count", 100) is False
        assert store.compare_and_delete("lock", "owner") is False
        assert store.delete("lock") is False
        assert store.delete("count") is False
        assert (store.get("lock"), store.get("count")) == (None, None)
        assert store.set_if_absent("lock", "next", 10) is True

    # -- counters ---------------------------------------------------------------------------
    def test_incr_creates_at_zero_and_adds_any_amount(self) -> None:
        store = self.store()
        assert store.incr("n") == 1
        assert store.incr("n", 5) == 6
        # Negative amounts decrement, with no floor; zero reads
        assert store.incr("n", -10) == -4
        assert store.incr("n", 0) == -4
        assert store.get("n") == "-4"
        assert store.incr("down", -1) == -1

    def test_incr_sets_the_ttl_when_it_creates_the_counter_and_keeps_it_after(self) -> None:
        store = self.store()
        # Given a counter created with a 10 s window
        assert store.incr("hits", 1, 10) == 1
        self.clock.advance(6)
        # When later increments pass a TTL too, the window is not stretched
        assert store.incr("hits", 1, 10) == 2
        assert store.incr("hits", 1) == 3
        self.clock.advance(4)
        assert store.get("hits") is None
        # And once expired, the next increment starts a new window from zero
        assert store.incr("hits", 1, 10) == 1
        self.clock.advance(9.5)
        assert store.get("hits") == "1"
        self.clock.advance(0.5)
        assert store.get("hits") is None

    def test_a_counter_created_without_ttl_never_expires_unless_told(self) -> None:
        store = self.store()
        store.incr("total", 2)
        # A TTL passed to a later increment does not apply to an existing counter
        store.incr("total", 1, 5)
        self.clock.advance(10**9)
        assert store.get("total") == "3"
        # expire gives any key a TTL, counters included
        assert store.expire("total", 5) is True
        self.clock.advance(5)
        assert store.get("total") is None

    def test_incr_of_a_text_value_is_a_value_error(self) -> None:
        store = self.store()
        store.set_if_absent("lock", "owner", 10)
        store.set_if_absent("digits", "5", 10)
        # Text is never counted on, even text that looks like a number
        with pytest.raises(ValueError, match="not a counter"):
            store.incr("lock")
        with pytest.raises(ValueError, match="not a counter"):
            store.incr("digits", 1, 10)
        assert (store.get("lock"), store.get("digits")) == ("owner", "5")
        # Once the text has expired, the key is free for a counter
        self.clock.advance(10)
        assert store.incr("lock") == 1

    def test_a_counter_compares_as_its_decimal_text(self) -> None:
        store = self.store()
        store.incr("n", 3)
        assert store.set_if_absent("n", "other", 10) is False
        assert store.compare_and_expire("n", "2", 10) is False
        assert store.compare_and_expire("n", "3", 10) is True
        assert store.compare_and_delete("n", "2") is False
        assert store.compare_and_delete("n", "3") is True
        assert store.get("n") is None

    # -- expire, delete ---------------------------------------------------------------------
    def test_expire_replaces_the_ttl_of_a_live_key(self) -> None:
        store = self.store()
        store.set_if_absent("k", "v", 10)
        assert store.expire("k", 100) is True
        self.clock.advance(50)
        assert store.get("k") == "v"
        assert store.expire("k", 1) is True
        self.clock.advance(1)
        assert store.get("k") is None
        assert store.expire("missing", 10) is False

    def test_delete_removes_text_and_counters_alike(self) -> None:
        store = self.store()
        store.set_if_absent("k", "v", 10)
        store.incr("n", 7)
        assert store.delete("k") is True
        assert store.delete("n") is True
        assert store.delete("k") is False
        assert store.delete("missing") is False
        # Then the keys are free again: a new value, a counter from zero
        assert store.set_if_absent("k", "again", 10) is True
        assert store.incr("n") == 1

    # -- sets (add_member) ------------------------------------------------------------------
    def test_add_member_creates_the_set_and_answers_added_and_size(self) -> None:
        store = self.store()
        assert store.add_member("done", "a", 10) == (True, 1)
        assert store.add_member("done", "b", 10) == (True, 2)
        # Adding a member again changes nothing and says so
        assert store.add_member("done", "a", 10) == (False, 2)
        assert store.set_if_absent("done", "text", 10) is False
        assert store.compare_and_delete("done", "a") is False
        assert store.compare_and_expire("done", "", 10) is False

    def test_an_existing_set_keeps_its_expiry(self) -> None:
        store = self.store()
        store.add_member("done", "a", 10)
        self.clock.advance(6)
        # When later members pass a longer TTL, the set still expires at its first deadline
        assert store.add_member("done", "b", 100) == (True, 2)
        self.clock.advance(4)
        # Then it is gone, members and all, and starts afresh
        assert store.add_member("done", "b", 10) == (True, 1)

    def test_text_counters_and_sets_do_not_mix(self) -> None:
        store = self.store()
        store.set_if_absent("text", "v", 10)
        store.incr("count", 3)
        store.add_member("set", "a", 10)
        # A set operation on text or a counter, or a text or counter read of a set, is refused
        with pytest.raises(ValueError, match=r"holds a text value .* not a set"):
            store.add_member("text", "a", 10)
        with pytest.raises(ValueError, match="holds a counter, not a set"):
            store.add_member("count", "a", 10)
        with pytest.raises(ValueError, match="holds a set, not a text value"):
            store.get("set")
        with pytest.raises(ValueError, match="holds a set, not a counter"):
            store.incr("set")
        with pytest.raises(ValueError, match="TTL"):
            store.add_member("other", "a", 0)
        # And nothing changed
        assert (store.get("text"), store.get("count"), store.get("other")) == ("v", "3", None)
        assert store.add_member("set", "a", 10) == (False, 1)

    @async_test
    async def test_delete_expire_and_cleanup_treat_sets_like_any_key(self) -> None:
        store = self.store()
        store.add_member("a", "x", 10)
        store.add_member("b", "x", 10)
        store.add_member("c", "x", 10)
        assert store.delete("a") is True
        assert store.delete("a") is False
        assert store.expire("b", 100) is True
        self.clock.advance(10)
        # Then the deleted set starts afresh, the extended one lives on, the third is cleaned up
        assert await store.cleanup() == 1
        assert store.add_member("a", "y", 10) == (True, 1)
        assert store.add_member("b", "y", 10) == (True, 2)
        assert store.add_member("c", "x", 10) == (True, 1)

    @async_test
    async def test_aadd_member_does_what_add_member_does(self) -> None:
        store = self.store()
        assert await store.aadd_member("s", "a", 10) == (True, 1)
        assert await store.aadd_member("s", "a", 10) == (False, 1)
        store.incr("n")
        with pytest.raises(ValueError, match="not a set"):
            await store.aadd_member("n", "a", 10)

    # -- sets, many adds at once (add_members) ----------------------------------------------
    def test_add_members_answers_what_add_member_would_in_order(self) -> None:
        store = self.store()
        store.add_member("a", "x", 10)
        items = [("a", "y"), ("b", "x"), ("a", "x"), ("a", "z"), ("b", "x"), ("b", "y")]
        # Each answer counts the adds before it in the same call: a member already there, or
        # given twice, is added once
        assert store.add_members(items, 10) == [
            (True, 2),
            (True, 1),
            (False, 2),
            (True, 3),
            (False, 1),
            (True, 2),
        ]
        assert store.add_members([], 10) == []
        # And the sets hold what they answered, for add_member as for a second add_members
        assert store.add_member("a", "z", 10) == (False, 3)
        assert store.add_members([("b", "y"), ("b", "w")], 10) == [(False, 2), (True, 3)]

    def test_add_members_keeps_the_expiry_rules_of_add_member(self) -> None:
        store = self.store()
        store.add_members([("old", "a")], 10)
        self.clock.advance(6)
        # A longer TTL does not stretch an existing set; a new set takes the call's TTL
        assert store.add_members([("old", "b"), ("new", "a")], 100) == [(True, 2), (True, 1)]
        self.clock.advance(4)
        # Then the first set is gone and starts afresh; the second lives on
        assert store.add_members([("old", "b"), ("new", "b")], 10) == [(True, 1), (True, 2)]

    def test_add_members_refuses_text_counters_and_bad_ttls(self) -> None:
        store = self.store()
        store.set_if_absent("text", "v", 10)
        store.incr("count", 3)
        with pytest.raises(ValueError, match=r"holds a text value .* not a set"):
            store.add_members([("text", "a")], 10)
        with pytest.raises(ValueError, match="holds a counter, not a set"):
            store.add_members([("count", "a")], 10)
        with pytest.raises(ValueError, match="TTL"):
            store.add_members([("set", "a")], 0)
        with pytest.raises(ValueError, match="TTL"):
            store.add_members([], -1)
        # And the keys are unchanged; the refused TTL added nothing
        assert (store.get("text"), store.get("count")) == ("v", "3")
        assert store.add_member("set", "a", 10) == (True, 1)

    @async_test
    async def test_aadd_members_does_what_add_members_does(self) -> None:
        store = self.store()
        items = [("s", "a"), ("t", "a"), ("s", "b"), ("s", "a")]
        assert await store.aadd_members(items, 10) == [(True, 1), (True, 1), (True, 2), (False, 2)]
        assert await store.aadd_members([], 10) == []
        store.incr("n")
        with pytest.raises(ValueError, match="not a set"):
            await store.aadd_members([("n", "a")], 10)
        with pytest.raises(ValueError, match="TTL"):
            await store.aadd_members([("s", "c")], 0)
        assert store.add_member("s", "c", 10) == (True, 3)

    def test_racing_add_members_counts_every_member_once(self) -> None:
        stores = self._racing_stores()

        def add(store: CoordinationStore, n: int) -> list[tuple[bool, int]]:
            # every racer adds the shared member and 50 of its own, ten at a time
            answers = store.add_members([("group", "shared")], 60)
            for start in range(0, 50, 10):
                items = [("group", f"{n}-{i}") for i in range(start, start + 10)]
                answers += store.add_members(items, 60)
            return answers

        answers = [a for got in self._race(stores, add) for a in got]
        # Then, as with add_member, every size was seen by exactly one add
        total = 1 + 50 * len(stores)
        assert sum(added for added, _ in answers) == total
        assert sorted(size for added, size in answers if added) == list(range(1, total + 1))

    def test_racing_add_member_counts_every_member_once(self) -> None:
        stores = self._racing_stores()

        def add(store: CoordinationStore, n: int) -> list[tuple[bool, int]]:
            # every racer adds the shared member, and 50 of its own
            answers = [store.add_member("group", "shared", 60)]
            answers += [store.add_member("group", f"{n}-{i}", 60) for i in range(50)]
            return answers

        answers = [a for got in self._race(stores, add) for a in got]
        # Then the shared member was added once, and every size was seen exactly once: the
        # call that saw the full size is the only one that may act on it (a chord's last member)
        total = 1 + 50 * len(stores)
        assert sum(added for added, _ in answers) == total
        assert sorted(size for added, size in answers if added) == list(range(1, total + 1))

    # -- fencing tokens ---------------------------------------------------------------------
    def test_next_token_starts_at_one_and_increases_per_name(self) -> None:
        store = self.store()
        firsts = [store.next_token("a"), store.next_token("b")]
        drawn = [store.next_token("a") for _ in range(20)]
        assert firsts == [1, 1]
        assert all(x < y for x, y in itertools.pairwise([1, *drawn]))
        assert store.next_token("b") == 2

    @async_test
    async def test_tokens_never_expire_and_keys_do_not_touch_them(self) -> None:
        store = self.store()
        assert store.next_token("lock") == 1
        # Given a key of the same name, deleted, cleaned up, and a very long time
        store.set_if_absent("lock", "owner", 1)
        assert store.delete("lock") is True
        store.incr("lock", 5, 1)
        self.clock.advance(10**9)
        await store.cleanup()
        # Then the token sequence goes on where it was, and drawing a token made no key
        assert store.next_token("lock") == 2
        assert store.next_token("fresh") == 1
        assert (store.get("lock"), store.get("fresh")) == (None, None)

    # -- async twins, cleanup, close --------------------------------------------------------
    @async_test
    async def test_async_twins_do_what_the_sync_operations_do(self) -> None:
        store = self.store()
        assert await store.aset_if_absent("lock", "owner", 10) is True
        assert await store.aset_if_absent("lock", "other", 10) is False
        assert await store.acompare_and_expire("lock", "other", 100) is False
        assert await store.acompare_and_expire("lock", "owner", 20) is True
        assert await store.aincr("n", 2, 5) == 2
        assert await store.aincr("n", -3, 100) == -1
        assert await store.aexpire("n", 30) is True
        assert await store.aexpire("missing", 30) is False
        self.clock.advance(15)
        assert (store.get("lock"), store.get("n")) == ("owner", "-1")
        assert await store.acompare_and_delete("lock", "other") is False
        assert await store.acompare_and_delete("lock", "owner") is True
        assert store.get("lock") is None
        with pytest.raises(ValueError, match="TTL"):
            await store.aset_if_absent("k", "v", 0)
        store.set_if_absent("text", "x", 5)
        with pytest.raises(ValueError, match="not a counter"):
            await store.aincr("text")
        self.clock.advance(15)
        assert store.get("n") is None

    @async_test
    async def test_cleanup_deletes_expired_keys_only(self) -> None:
        store = self.store()
        store.set_if_absent("short", "v", 5)
        store.incr("short-count", 1, 5)
        store.set_if_absent("long", "v", 100)
        store.incr("forever")
        store.next_token("t")
        self.clock.advance(5)
        # Then only the two expired keys go (none was read since it expired)
        assert await store.cleanup() == 2
        assert await store.cleanup() == 0
        assert (store.get("long"), store.get("forever")) == ("v", "1")
        assert store.next_token("t") == 2

    # -- sliding windows ----------------------------------------------------------------------
    def test_take_in_window_admits_up_to_the_limit_then_says_how_long_to_wait(self) -> None:
        store = self.store()
        # Given a window of 3 uses per 10 s, taken at t=0, 2 and 4
        assert store.take_in_window("w", 3, 10) == 0.0
        self.clock.advance(2)
        assert store.take_in_window("w", 3, 10) == 0.0
        self.clock.advance(2)
        assert store.take_in_window("w", 3, 10) == 0.0
        # When a fourth use is asked for at t=4, Then it waits until the first (t=0) leaves
        assert store.take_in_window("w", 3, 10) == pytest.approx(6, abs=0.01)
        # And another window name is not affected
        assert store.take_in_window("other", 3, 10) == 0.0
        # When the oldest use has left the window, Then exactly one more use fits
        self.clock.advance(6)
        assert store.take_in_window("w", 3, 10) == 0.0
        assert store.take_in_window("w", 3, 10) == pytest.approx(2, abs=0.01)

    def test_a_refused_use_is_not_recorded(self) -> None:
        store = self.store()
        assert store.take_in_window("w", 1, 5) == 0.0
        for _ in range(10):
            assert store.take_in_window("w", 1, 5) > 0
        # When the one recorded use has left the window, Then the window is free again
        self.clock.advance(5)
        assert store.take_in_window("w", 1, 5) == 0.0

    def test_windows_and_keys_are_separate_keyspaces(self) -> None:
        store = self.store()
        store.take_in_window("same", 1, 10)
        # Then a key of the same name is unaffected, and deleting it leaves the window
        assert store.get("same") is None
        assert store.set_if_absent("same", "v", 10) is True
        assert store.delete("same") is True
        assert store.take_in_window("same", 1, 10) > 0

    @pytest.mark.parametrize("limit", [0, -1, 1.5, True])
    def test_an_invalid_window_limit_is_a_value_error(self, limit: Any) -> None:
        store = self.store()
        with pytest.raises(ValueError, match="window limit"):
            store.take_in_window("w", limit, 1)
        with pytest.raises(ValueError, match="TTL"):
            store.take_in_window("w", 1, 0)

    @async_test
    async def test_atake_in_window_and_cleanup_of_old_uses(self) -> None:
        store = self.store()
        got = await asyncio.gather(*(store.atake_in_window("w", 5, 10) for _ in range(8)))
        # Then exactly five of eight concurrent takers got a use
        assert sum(1 for wait in got if wait == 0.0) == 5
        self.clock.advance(10)
        await store.cleanup()
        assert await store.atake_in_window("w", 5, 10) == 0.0

    def test_racing_takers_never_exceed_the_limit(self) -> None:
        stores = self._racing_stores()

        def take(store: CoordinationStore, n: int) -> int:
            return sum(store.take_in_window("race", 30, 60) == 0.0 for _ in range(25))

        # Given 4 racers taking 25 uses each from a window of 30, Then exactly 30 are taken
        assert sum(self._race(stores, take)) == 30

    def test_close_is_idempotent(self) -> None:
        store = self.store()
        store.close()
        store.close()

    # -- concurrency ------------------------------------------------------------------------
    def _racing_stores(self) -> list[CoordinationStore]:
        """One store per racer where stores share their data (separate clients), else one."""
        if self.shared_between_stores:
            return [self.store() for _ in range(self.racers)]
        return [self.store()] * self.racers

    def _race(
        self, stores: list[CoordinationStore], body: Callable[[CoordinationStore, int], T]
    ) -> list[T]:
        """``body(stores[n], n)`` in one thread per store, started together (a barrier); the
        answers in order."""
        start = threading.Barrier(len(stores))

        def together(store: CoordinationStore, n: int) -> T:
            try:
                start.wait(TEST_TIMEOUT_S)
            except BaseException:
                start.abort()
                raise
            return body(store, n)

        with concurrent.futures.ThreadPoolExecutor(len(stores)) as pool:
            futures = [pool.submit(together, store, n) for n, store in enumerate(stores)]
            return [f.result(timeout=TEST_TIMEOUT_S) for f in futures]

    def test_racing_set_if_absent_has_exactly_one_winner_per_key(self) -> None:
        stores = self._racing_stores()
        barrier = threading.Barrier(len(stores))

        def race(store: CoordinationStore, n: int) -> list[int]:
            won = []
            try:
                for r in range(self.races):
                    barrier.wait(TEST_TIMEOUT_S)  # each round starts together: a real contest
                    if store.set_if_absent(f"round-{r}", f"racer-{n}", 60):
                        won.append(r)
            except BaseException:
                barrier.abort()  # the other racers fail at once instead of timing out
                raise
            return won

        # Given racers contending for a fresh key each round, Then each round has one winner
        wins = self._race(stores, race)
        assert sorted(r for won in wins for r in won) == list(range(self.races))
        assert stores[0].get("round-0") in {f"racer-{n}" for n in range(len(stores))}

    def test_concurrent_incr_adds_up_exactly(self) -> None:
        stores = self._racing_stores()

        def count(store: CoordinationStore, n: int) -> None:
            for _ in range(250):
                store.incr("total", n + 1, 60)

        self._race(stores, count)
        assert stores[0].get("total") == str(250 * sum(range(1, len(stores) + 1)))

    @async_test
    async def test_concurrent_aincr_adds_up_exactly(self) -> None:
        store = self.store()
        got = await asyncio.gather(*(store.aincr("total") for _ in range(200)))
        assert sorted(got) == list(range(1, 201))

    def test_two_stores_share_keys_counters_and_tokens(self) -> None:
        if not self.shared_between_stores:
            pytest.skip("each store of this backend is its own keyspace")
        first, second = self.store(), self.store()
        assert first.set_if_absent("lock", "first", 10) is True
        assert second.set_if_absent("lock", "second", 10) is False
        assert second.get("lock") == "first"
        assert (first.incr("n"), second.incr("n"), first.incr("n")) == (1, 2, 3)
        tokens = [s.next_token("t") for s in (first, second, first, second)]
        assert tokens == [1, 2, 3, 4]
        # Closing one client leaves the other working
        first.close()
        assert second.compare_and_delete("lock", "first") is True

"""A job whose acknowledgement was lost after its result was written, on Redis: the next
delivery reads the job's SUCCESS record with its claim and does not run the job again."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from faena import Faena, FakeClock, chord
from faena.backends.redis import consumer as redis_consumer
from faena.worker.worker import Worker, WorkerOptions
from tests.services import drop_prefix, redis_url, require

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1_700_000_000.0)


@pytest.fixture
def app(clock: FakeClock) -> Iterator[Faena]:
    require("redis", "127.0.0.1", 6379)
    url = redis_url()
    app = Faena("lost-ack", broker=url, results=url, clock=clock)
    yield app
    app.close()
    drop_prefix(url)


def drain(app: Faena, queues: tuple[str, ...] = ()) -> None:
    options = WorkerOptions(queues=queues, burst=True)
    assert asyncio.run(asyncio.wait_for(Worker(app, options).run(), 30)) == 0


def test_the_next_delivery_of_a_job_whose_ack_was_lost_does_not_run_it(
    app: Faena, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    ran: list[tuple[str, object]] = []

    @app.task(name="lost.add")
    def add(x: int, y: int) -> int:
        ran.append(("add", (x, y)))
        return x + y

    @app.task(name="lost.total")
    def total(values: list[int]) -> list[int]:
        ran.append(("total", values))
        return values

    # Given a chord member that ran and was counted, whose acknowledgement never reached Redis
    # (its worker died after the result), while the other member waited on another queue
    real = redis_consumer.RedisConsumer.settle
    lost: list[str] = []

    async def settle(self, settlements):  # type: ignore[no-untyped-def]
        if not lost and settlements[0].action == "ack":
            lost.append(settlements[0].delivery.id)
            return [True, *await real(self, settlements[1:])]
        return await real(self, settlements)

    monkeypatch.setattr(redis_consumer.RedisConsumer, "settle", settle)
    result = chord([add.s(1, 1), add.s(2, 2).set(queue="later")], total.s()).delay()
    drain(app)
    assert ran == [("add", (1, 1))]
    # When its lease ends and a worker takes it again, with the other member
    clock.advance(app.settings.lease_s + 1)
    drain(app, ("default", "later"))
    # Then it did not run again, the body got both results, and nothing is left
    assert ran == [("add", (1, 1)), ("add", (2, 2)), ("total", [2, 4])]
    assert result.get(timeout=5) == [2, 4]
    assert app.AsyncResult(lost[0]).get(timeout=5) == 2
    assert asyncio.run(app.broker.stats()) == []

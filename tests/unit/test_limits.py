"""Flow-control options on the memory backend with a fake clock: validation, rate limits,
concurrency limits and unique jobs."""

from __future__ import annotations

import asyncio
import concurrent.futures
from typing import Any

import pytest

from faena import (
    SUCCESS,
    AsyncResult,
    BrokerError,
    BrokerUnavailable,
    ConfigurationError,
    Faena,
    FakeClock,
    JobContext,
    MessageTooLarge,
    TaskFailed,
)
from faena.features import unique
from faena.model.limits import RateLimit, parse_rate_limit

from .support import AppFactory, dead_letters, drain, queue_stats


@pytest.mark.parametrize(
    ("text", "expected"),
    [("100/s", RateLimit(100, 1.0)), ("30/m", RateLimit(30, 60.0)), (" 5 / h", RateLimit(5, 3600))],
)
def test_rate_limits_parse_per_second_minute_and_hour(text: str, expected: RateLimit) -> None:
    assert parse_rate_limit(text) == expected


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"rate_limit": "100"}, "rate_limit must look like '100/s'"),
        ({"rate_limit": "0/s"}, "rate_limit must look like"),
        ({"rate_limit": "10/d"}, "rate_limit must look like"),
        ({"concurrency_limit": 0}, "concurrency_limit must be an int of at least 1"),
        ({"concurrency_limit": 1.5}, "concurrency_limit must be an int"),
        ({"unique_key": "user"}, "unique_key must be a function"),
        ({"unique": "yes"}, "unique must be True or False"),
        ({"unique_for": 0}, "unique_for must be a positive number"),
        ({"unique_for": float("inf")}, r"unique_for must be a positive number .*not inf or nan"),
        ({"rate_limit_key": lambda a, k: 1}, "rate_limit_key needs rate_limit"),
        ({"concurrency_key": lambda a, k: 1}, "concurrency_key needs concurrency_limit"),
    ],
)
def test_bad_limit_options_are_errors_at_declaration(
    app: Faena, options: dict[str, Any], match: str
) -> None:
    with pytest.raises(ConfigurationError, match=match):
        app.task(**options)


def test_a_rate_limited_task_is_delayed_not_failed_and_others_keep_running(
    app: Faena, clock: FakeClock
) -> None:
    ran: list[tuple[str, float]] = []

    # Given 22 jobs of a task limited to 20/s, and 10 jobs of an unlimited task, one queue
    @app.task(rate_limit="20/s")
    def limited(n: int) -> None:
        ran.append(("limited", clock.time()))

    @app.task
    def free(n: int) -> None:
        ran.append(("free", clock.time()))

    handles = [limited.delay(i) for i in range(22)] + [free.delay(i) for i in range(10)]
    # When a worker drains the queue at one instant
    drain(app)
    # Then every unlimited job ran, and only a twentieth of the limit of the limited ones
    assert sum(1 for kind, _ in ran if kind == "free") == 10
    assert sum(1 for kind, _ in ran if kind == "limited") == 1
    # And the others wait in the broker, scheduled, not failed
    assert sum(s.scheduled for s in queue_stats(app)) == 21
    # When time moves on in small steps, Then no second holds more than 20 of them
    while len(ran) < 32:
        clock.advance(0.05)
        drain(app)
    times = sorted(t for kind, t in ran if kind == "limited")
    assert all(b - a >= 1.0 - 1e-9 for a, b in zip(times, times[20:], strict=False))
    assert all(h.state == SUCCESS for h in handles)
    # And waiting was not an attempt: no job counts a retry
    assert {app.results.fetch(h.id).retries for h in handles} == {0}  # type: ignore[union-attr]


def test_rate_limit_key_counts_per_key(app: Faena, clock: FakeClock) -> None:
    ran: list[str] = []

    @app.task(rate_limit="1/m", rate_limit_key=lambda args, kwargs: args[0])
    def call(host: str, n: int) -> None:
        ran.append(host)

    for n in range(3):
        call.delay("a.example", n)
        call.delay("b.example", n)
    drain(app)
    # Then each host had its one call in this minute
    assert sorted(ran) == ["a.example", "b.example"]


@pytest.mark.parametrize("option", ["rate_limit_key", "concurrency_key"])
def test_a_limit_key_function_that_raises_fails_the_job_without_running_it(
    app: Faena, option: str
) -> None:
    # Given a task whose key function needs a keyword the call leaves to its default
    ran: list[str] = []
    limit = {"rate_limit": "10/s"} if option == "rate_limit_key" else {"concurrency_limit": 2}

    @app.task(**limit, **{option: lambda args, kwargs: kwargs["host"]})
    def call(path: str, host: str = "api.example") -> None:
        ran.append(host)

    # When one call gives the keyword and one does not
    good = call.delay("/a", host="b.example")
    bad = call.delay("/b")
    drain(app)
    # Then the first runs, and the second fails at once with the function's error, dead-lettered
    # with its reason, never run (not handed back for ever)
    assert ran == ["b.example"]
    assert good.state == SUCCESS
    with pytest.raises(TaskFailed, match="KeyError"):
        bad.get(timeout=1)
    letters = dead_letters(app)
    assert set(letters) == {bad.id}
    assert letters[bad.id].reason == "limit_key_failed"
    assert [(q.ready, q.scheduled, q.leased) for q in queue_stats(app)] == [(0, 0, 0)]


def test_concurrency_limit_holds_a_slot_per_running_job(app: Faena, clock: FakeClock) -> None:
    inside: list[int] = []
    most: list[int] = []

    # Given a task limited to 2 at once, and a worker with 8 slots
    @app.task(concurrency_limit=2)
    async def work(n: int) -> None:
        inside.append(n)
        most.append(len(inside))
        await asyncio.sleep(0.01)  # the job's own work, so several overlap
        inside.remove(n)

    for n in range(6):
        work.delay(n)
    # When drained repeatedly (a refused job comes back after concurrency_retry_s)
    for _ in range(20):
        drain(app, concurrency=8)
        if not any(s.scheduled or s.ready for s in queue_stats(app)):
            break
        clock.advance(app.settings.concurrency_retry_s)
    # Then at most 2 ran at once, and all ran
    assert max(most) <= 2
    assert len(most) == 6
    # And every slot was given back
    assert all(app.coordination.get(f"faena:slot:{work.name}:{i}") is None for i in range(2))


def test_a_dead_holders_slot_expires_with_the_lease(app: Faena, clock: FakeClock) -> None:
    # Given both slots held by a worker that died (nobody renews them)
    @app.task(concurrency_limit=1)
    def work() -> None: ...

    app.coordination.set_if_absent(f"faena:slot:{work.name}:0", "dead-job", app.settings.lease_s)
    work.delay()
    drain(app)
    assert sum(s.scheduled for s in queue_stats(app)) == 1
    # When the lease has passed, Then the job gets the slot and runs
    clock.advance(app.settings.lease_s)
    drain(app)
    assert not any(s.scheduled or s.ready for s in queue_stats(app))


def test_unique_jobs_return_the_existing_handle_while_unfinished(app: Faena) -> None:
    @app.task(unique=True)
    def report(day: str) -> str:
        return day

    # When the same call is sent twice, Then it is one job; other arguments are another job
    first, again = report.delay("mon"), report.delay("mon")
    other = report.delay("tue")
    assert first.id == again.id
    assert other.id != first.id
    drain(app)
    # When the job has finished, Then the same call makes a new job
    assert first.get(timeout=1) == "mon"
    assert report.delay("mon").id != first.id


def test_unique_calls_are_the_same_whatever_the_order_of_their_keywords(app: Faena) -> None:
    @app.task(unique=True)
    def report(day: str, region: str, filters: dict[str, int]) -> None: ...

    first = report.delay(day="2026-11-28", region="eu", filters={"a": 1, "b": 2})
    again = report.delay(region="eu", filters={"b": 2, "a": 1}, day="2026-11-28")
    other = report.delay(day="2026-11-28", region="us", filters={"a": 1, "b": 2})
    assert again.id == first.id
    assert other.id != first.id


def test_a_unique_key_function_and_many_concurrent_senders(make_app: AppFactory) -> None:
    app = make_app()

    @app.task(unique_key=lambda args, kwargs: kwargs["user"], unique_for=60)
    def sync_user(user: int, attempt: int = 0) -> None: ...

    # When 100 threads send the same key at once
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        handles = list(pool.map(lambda n: sync_user.delay(user=7, attempt=n), range(100)))
    # Then there is one job and 100 handles to it
    assert len({h.id for h in handles}) == 1
    assert sum(s.ready for s in queue_stats(app)) == 1


@pytest.mark.parametrize("acks_late", [True, False])
def test_the_worker_frees_a_unique_key_when_the_job_ends(app: Faena, acks_late: bool) -> None:
    # Given a unique task whose outcome is not recorded (acknowledged after its run, or
    # before it)
    @app.task(unique=True, ignore_result=True, acks_late=acks_late)
    def ping(host: str) -> None: ...

    first = ping.delay("a")
    assert ping.delay("a").id == first.id
    # When a worker has run it
    drain(app)
    # Then the same call makes a new job (the key was freed, not left to unique_for)
    assert ping.delay("a").id != first.id


def test_a_unique_send_too_large_to_send_claims_nothing(make_app: AppFactory) -> None:
    # Given a unique task and a small message size limit
    app = make_app(max_message_size=2_000)

    @app.task(unique_key=lambda args, kwargs: kwargs["user"])
    def sync_user(*, user: int, blob: str = "") -> None: ...

    # When a send is refused as too large
    with pytest.raises(MessageTooLarge):
        sync_user.delay(user=7, blob="x" * 5_000)
    # Then the next send of that key is a real job, sent and run
    r = sync_user.delay(user=7)
    assert app.broker.locate(r.id) == "queued"
    drain(app)
    assert r.state == SUCCESS


@pytest.mark.parametrize("is_async", [False, True])
def test_a_unique_send_the_broker_failed_frees_its_key(app: Faena, is_async: bool) -> None:
    # Given a unique task, and a broker that fails the next enqueue (as a Redis timeout does)
    @app.task(unique_key=lambda args, kwargs: kwargs["user"])
    def sync_user(*, user: int) -> None: ...

    real, areal = app.broker.enqueue, app.broker.aenqueue
    failed: list[int] = []

    def enqueue(batch: Any) -> None:
        if not failed:
            failed.append(1)
            raise BrokerUnavailable("the broker did not answer (injected)")
        real(batch)

    async def aenqueue(batch: Any) -> None:
        enqueue([]) if not failed else await areal(batch)

    app.broker.enqueue, app.broker.aenqueue = enqueue, aenqueue  # type: ignore[method-assign]

    def send() -> AsyncResult[None]:
        if is_async:
            return asyncio.run(sync_user.adelay(user=8))
        return sync_user.delay(user=8)

    # When the send fails, Then its error is raised
    with pytest.raises(BrokerUnavailable):
        send()
    # And the same send made again is a real job, not a handle to the one never sent
    r = send()
    assert app.broker.locate(r.id) == "queued"
    drain(app)
    assert r.state == SUCCESS


def test_a_unique_job_the_broker_dead_lettered_is_replaced(app: Faena, clock: FakeClock) -> None:
    # Given a unique job handed out to workers that all died (leases run out) until the
    # broker dead-lettered it, with no record of its end
    @app.task(unique=True)
    def report(day: str) -> str:
        return day

    first = report.delay("mon")

    _lose_every_lease(app, clock)
    assert app.broker.locate(first.id) == "dead"
    # When the same call is sent again, Then it is a new job that runs
    again = report.delay("mon")
    assert again.id != first.id
    drain(app)
    assert again.get(timeout=1) == "mon"


def test_a_unique_job_purged_before_it_ran_is_replaced_after_a_grace(
    app: Faena, clock: FakeClock
) -> None:
    # Given a unique job whose message was purged before any worker ran it
    @app.task(unique=True)
    def report(day: str) -> str:
        return day

    first = report.delay("mon")
    assert asyncio.run(app.broker.purge(["default"])) == 1
    # When the same call is sent again at once, Then it is still the first job (its own
    # sender may be between its claim and its enqueue)
    assert report.delay("mon").id == first.id
    clock.advance(unique.ABSENT_GRACE_S - 1)
    assert report.delay("mon").id == first.id
    # And once it has been missing for the grace period, a new job is sent, and runs
    clock.advance(1)
    again = report.delay("mon")
    assert again.id != first.id
    drain(app)
    assert again.get(timeout=1) == "mon"


def test_enqueue_many_of_a_unique_task_makes_one_job_per_call(app: Faena) -> None:
    ran: list[str] = []

    @app.task(unique=True)
    def report(day: str) -> str:
        ran.append(day)
        return day

    # Given a job already waiting for one call
    earlier = report.delay("mon")
    # When a batch repeats it, and repeats another call within itself
    handles = app.enqueue_many(report, [("mon",), ("tue",), ("tue",)])
    # Then each call has one job: the existing one, or the batch's first
    assert handles[0].id == earlier.id
    assert handles[1].id == handles[2].id != earlier.id
    assert report.delay("tue").id == handles[1].id
    drain(app)
    assert sorted(ran) == ["mon", "tue"]


def test_a_unique_job_that_sends_its_own_call_again_hands_its_key_over(
    app: Faena, clock: FakeClock
) -> None:
    # Given a unique poll that schedules its next round from inside its run, three rounds
    runs: list[str] = []

    @app.task(unique=True, bind=True)
    def poll(self: JobContext, target: str) -> None:
        runs.append(self.request.id)
        if len(runs) < 3:
            poll.apply_async((target,), countdown=10)

    poll.delay("feed")
    for _ in range(3):
        drain(app)
        clock.advance(10)
    # Then each round sent the next (a send from the job itself is a new job, not itself)
    assert len(set(runs)) == 3
    # While a send from outside during a round still gets the job in progress
    outside = poll.delay("feed")
    assert poll.delay("feed").id == outside.id


def test_an_at_most_once_unique_job_missing_from_the_broker_keeps_its_key(
    app: Faena, clock: FakeClock
) -> None:
    # Given an acks_late=False unique job, whose message leaves the broker before it runs
    @app.task(unique=True, acks_late=False)
    def report(day: str) -> str:
        return day

    first = report.delay("mon")
    assert asyncio.run(app.broker.purge(["default"])) == 1
    report.delay("mon")
    clock.advance(unique.ABSENT_GRACE_S + 1)
    # Then missing from the broker is not taken for gone: it may be running
    assert report.delay("mon").id == first.id


def test_a_unique_job_sent_again_with_its_dead_letters_id_holds_its_key(
    app: Faena, clock: FakeClock
) -> None:
    # Given a unique job the broker dead-lettered (no record of its end), sent again with
    # the same id
    @app.task(unique=True)
    def report(day: str) -> str:
        return day

    first = report.delay("mon")

    _lose_every_lease(app, clock)
    again = report.apply_async(("mon",), task_id=first.id)
    assert app.broker.locate(first.id, live_first=True) == "queued"
    # When the same call is sent once more while that one waits
    third = report.delay("mon")
    # Then it is the waiting job (the dead letter beside it is the earlier send's): one runs
    assert third.id == again.id == first.id
    assert drain(app).processed == 1
    assert third.get(timeout=1) == "mon"


def _lose_every_lease(app: Faena, clock: FakeClock) -> None:
    """Hand the first waiting message out to workers that all die (leases run out), until
    the broker dead-letters it."""

    async def lose() -> None:
        consumer = await app.broker.open_consumer(["default"], "dying-worker")
        try:
            for _ in range(app.settings.max_deliveries + 1):
                await consumer.receive(1, 0.01)
                clock.advance(app.settings.lease_s + 1)
        finally:
            await consumer.close()

    asyncio.run(lose())


def test_a_unique_key_that_keeps_changing_hands_is_an_error_not_a_false_claim(
    app: Faena,
) -> None:
    # Given a key that another sender takes, with a job that is already finished, before each
    # of this sender's tries
    @app.task
    def done() -> None: ...

    finished = done.delay()
    drain(app)
    store = app.coordination

    class Racing:
        def __getattr__(self, name: str) -> Any:
            return getattr(store, name)

        def set_if_absent(self, key: str, value: str, ttl_s: float) -> bool:
            store.set_if_absent(key, finished.id, ttl_s)
            return store.set_if_absent(key, value, ttl_s)

    # When this sender claims, Then it says it could not, and does not hold the key
    with pytest.raises(BrokerError, match="changed hands"):
        unique.claim(
            Racing(), app.results, "k", "mine", 60, lambda _: "queued", app.settings.clock.time
        )  # type: ignore[arg-type]
    assert store.get("k") != "mine"


def test_a_job_postponed_by_its_limit_keeps_its_lost_deliveries(
    make_app: AppFactory, clock: FakeClock
) -> None:
    # Given a task run once a minute, and two of its jobs each lost once by a dying worker
    app = make_app(max_deliveries=3)

    @app.task(rate_limit="1/m")
    def call(n: int) -> int:
        return n

    first, second = call.delay(1), call.delay(2)

    async def lose_once() -> None:
        consumer = await app.broker.open_consumer(["default"], "dying-worker")
        try:
            assert len(await consumer.receive(2, 0.01)) == 2
        finally:
            await consumer.close()
        clock.advance(app.settings.lease_s + 1)

    asyncio.run(lose_once())
    # When a worker runs one and postpones the other (over its rate)
    drain(app)
    assert first.get(timeout=1) == 1
    assert queue_stats(app)[0].scheduled == 1
    # Then, when the postponed one runs, its earlier lost delivery is still counted
    for _ in range(10):
        clock.advance(30)
        drain(app)
        if second.ready():
            break
    assert second.get(timeout=1) == 2
    assert second.record is not None
    assert second.record.deliveries == 2

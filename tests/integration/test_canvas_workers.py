"""Chords on real worker processes: a body runs exactly once after 1,000 members, also when a
worker is SIGKILLed mid-way (its members are redelivered and counted twice), and never when a
member fails."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator

import pytest

from faena import ChordError, Faena, chord
from tests.integration import fault_tasks
from tests.integration.conftest import WorkerProcess, ledger_lines, wait_until

MEMBERS = 1000


@pytest.fixture(params=["sqlite", "redis"])
def broker_env(request: pytest.FixtureRequest, env: dict[str, str]) -> Iterator[dict[str, str]]:
    """The workers' environment on SQLite (the tmp file) or on Redis (a fresh prefix)."""
    if request.param == "sqlite":
        yield env
        return
    from tests.services import drop_prefix, redis_url

    url = redis_url()
    yield {**env, "FAENA_BROKER_URL": url}
    drop_prefix(url)


@pytest.fixture
def producer(broker_env: dict[str, str]) -> Iterator[Faena]:
    """The tasks' app, as a producer on the workers' broker."""
    app = Faena("faults", broker=broker_env["FAENA_BROKER_URL"])
    for task in (fault_tasks.work, fault_tasks.noop, fault_tasks.gather):
        app.registry.register(task)
        task.bind_dispatcher(app)
    for task in (fault_tasks.flaky_member, fault_tasks.chord_errback):
        app.registry.register(task)
        task.bind_dispatcher(app)
    yield app
    app.close()


def _lines(env: dict[str, str], kind: str) -> list[list[str]]:
    return [line for line in ledger_lines(env) if line[0] == kind]


@pytest.mark.timeout(180)
def test_a_chord_of_a_thousand_runs_its_body_once(
    producer: Faena, broker_env: dict[str, str], start_worker: Callable[..., WorkerProcess]
) -> None:
    # Given two workers
    for _ in range(2):
        start_worker("-c", "8", **{"FAENA_BROKER_URL": broker_env["FAENA_BROKER_URL"]})
    # When a chord of 1,000 members is sent
    result = chord((fault_tasks.noop.s(i) for i in range(MEMBERS)), fault_tasks.gather.s()).delay()
    # Then the body's result is the sum, and the body ran once
    assert result.get(timeout=120) == sum(range(MEMBERS))
    assert [line[1:3] for line in _lines(broker_env, "body")] == [
        [str(MEMBERS), str(sum(range(MEMBERS)))]
    ]


@pytest.mark.timeout(180)
def test_a_worker_killed_mid_chord_leaves_the_body_running_once(
    producer: Faena, broker_env: dict[str, str], start_worker: Callable[..., WorkerProcess]
) -> None:
    url = broker_env["FAENA_BROKER_URL"]
    # Given a worker with short leases, running members that take a little while
    slow = {"FAENA_BROKER_URL": url, "FAULT_LEASE_S": "2", "FAULT_SLEEP_S": "0.02"}
    doomed = start_worker("-c", "8", **slow)
    result = chord((fault_tasks.work.s(i) for i in range(MEMBERS)), fault_tasks.gather.s()).delay()
    # When it is SIGKILLed part-way through the members
    wait_until(lambda: len(_lines(broker_env, "done")) >= MEMBERS // 4, 60, "a quarter done")
    doomed.signal(signal.SIGKILL)
    doomed.wait(10)
    started = {line[1] for line in _lines(broker_env, "start")}
    done = {line[1] for line in _lines(broker_env, "done")}
    assert len(done) < MEMBERS, "the worker finished before it was killed: nothing was tested"
    assert started - done, "no member was running when the worker was killed"
    # And another worker takes over (the killed worker's leases expire and are redelivered)
    start_worker("-c", "8", **slow)
    # Then the body ran exactly once, with every member's result in order
    assert result.get(timeout=120) == sum(range(MEMBERS))
    runs = [line[1] for line in _lines(broker_env, "start")]
    assert len(runs) > len(set(runs)), "no member was run twice: nothing was redelivered"
    assert [line[1:3] for line in _lines(broker_env, "body")] == [
        [str(MEMBERS), str(sum(range(MEMBERS)))]
    ]


@pytest.mark.timeout(120)
def test_a_failed_member_fails_the_chord_once_and_the_body_never_runs(
    producer: Faena, broker_env: dict[str, str], start_worker: Callable[..., WorkerProcess]
) -> None:
    for _ in range(2):
        start_worker("-c", "4", **{"FAENA_BROKER_URL": broker_env["FAENA_BROKER_URL"]})
    # Given a chord of 50 whose member 13 fails, with an error callback
    result = chord(
        (fault_tasks.flaky_member.s(i) for i in range(50)), fault_tasks.gather.s()
    ).apply_async(link_error=fault_tasks.chord_errback.s())
    # Then get() raises ChordError naming the member, the errback ran once, the body never
    with pytest.raises(ChordError, match="member 13 cannot") as caught:
        result.get(timeout=60)
    wait_until(lambda: bool(_lines(broker_env, "errback")), 30, "the error callback")
    errbacks = _lines(broker_env, "errback")
    assert errbacks == [["errback", str(caught.value.member_id), "ValueError"]]
    assert _lines(broker_env, "body") == []

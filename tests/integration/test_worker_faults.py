"""Real worker processes on a real SQLite file, under the faults the guarantees speak of."""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from pathlib import Path

import pytest

from faena import Faena, TaskFailed
from tests.integration.conftest import ledger_lines, wait_until

TASKS = "tests.integration.fault_tasks"
pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def client(env: dict[str, str]) -> Faena:
    app = Faena("faults-client", broker=env["FAENA_BROKER_URL"])
    yield app
    app.close()


def started(env: dict[str, str], kind: str = "start") -> list[list[str]]:
    return [line for line in ledger_lines(env) if line[0] == kind]


def test_sigkill_of_a_worker_holding_50_leases_loses_nothing(client, env, start_worker):
    # Given a worker holding 50 leased messages, all running long jobs
    results = [client.enqueue(f"{TASKS}.work", i) for i in range(50)]
    first = start_worker(
        "--pool", "threads", "-c", "50", "--prefetch", "0", FAULT_SLEEP_S="600", FAULT_LEASE_S="2"
    )
    wait_until(lambda: len(started(env)) == 50, 30, "50 jobs running on the first worker")

    # When it is killed outright
    first.signal(signal.SIGKILL)
    first.wait(10)

    # Then a second worker completes all 50 once the leases expire, each exactly once
    start_worker("-c", "10", FAULT_SLEEP_S="0", FAULT_LEASE_S="2")
    assert [r.get(timeout=60) for r in results] == list(range(50))
    done = Counter(int(line[1]) for line in started(env, "done"))
    assert done == Counter(range(50))
    # and each duplicate delivery is counted on the job
    assert {r.record.deliveries for r in results} == {2}


def test_child_that_kills_itself_is_retried_then_dead_lettered_as_worker_lost(
    client, env, start_worker, tmp_path: Path
):
    # Given a process-pool worker allowing 3 deliveries
    start_worker("--pool", "processes", "-c", "2", FAULT_MAX_DELIVERIES="3")

    # When a job kills the child running it, every time
    result = client.enqueue(f"{TASKS}.suicide")

    # Then it fails as WorkerLost after the third delivery and sits in the DLQ as worker_lost
    with pytest.raises(TaskFailed) as failure:
        result.get(timeout=60)
    assert failure.value.type_name == "faena.WorkerLost"
    pids = [line[1] for line in started(env, "suicide")]
    assert len(pids) == 3
    assert len(set(pids)) == 3  # a new child each time
    # (the record is written before the message is settled: the letter follows it)
    wait_until(lambda: client.broker.locate(result.id) == "dead", 10, "the message's dead letter")
    dead = asyncio.run(client.broker.dead_letters())
    assert [(d.id, d.reason) for d in dead] == [(result.id, "worker_lost")]
    # and the pool is back to its full size: two jobs can meet inside it at the same time
    meet = tmp_path / "meet"
    meet.mkdir()
    pair = [client.enqueue(f"{TASKS}.rendezvous", n, str(meet), 2) for n in ("a", "b")]
    assert len({r.get(timeout=30) for r in pair}) == 2


def test_hung_task_past_its_time_limit_is_killed_and_the_pool_refilled(
    client, env, start_worker, tmp_path: Path
):
    # Given a process-pool worker and a task that never returns (time_limit=1)
    start_worker("--pool", "processes", "-c", "2")

    # When it runs
    result = client.enqueue(f"{TASKS}.hang")

    # Then it is stopped within the limit + 1 s and recorded as TimeLimitExceeded
    with pytest.raises(TaskFailed) as failure:
        result.get(timeout=30)
    assert failure.value.type_name == "faena.TimeLimitExceeded"
    record = result.record
    assert record is not None
    assert record.finished_at is not None
    assert record.started_at is not None
    assert record.finished_at - record.started_at <= 2.0
    # and the pool is back to full size
    meet = tmp_path / "meet"
    meet.mkdir()
    pair = [client.enqueue(f"{TASKS}.rendezvous", n, str(meet), 2) for n in ("a", "b")]
    assert len({r.get(timeout=30) for r in pair}) == 2


def test_sigterm_finishes_running_jobs_and_hands_back_the_rest_at_once(client, env, start_worker):
    # Given a worker running 20 jobs with 10 more prefetched, and 10 still queued
    results = [client.enqueue(f"{TASKS}.work", i) for i in range(40)]
    worker = start_worker("--pool", "threads", "-c", "20", "--prefetch", "10", FAULT_SLEEP_S="2")
    wait_until(lambda: len(started(env)) == 20, 30, "20 jobs running")
    running = {int(line[1]) for line in started(env)}

    # When it gets SIGTERM
    worker.signal(signal.SIGTERM)

    # Then every message that had not started is claimable again within 1 s
    waiting = [r for i, r in enumerate(results) if i not in running]
    wait_until(
        lambda: all(client.broker.locate(r.id) == "queued" for r in waiting),
        1.0,
        "unstarted messages handed back",
    )
    # and the running jobs finish before it exits 0
    assert worker.wait(30) == 0
    assert all(results[i].get(timeout=1) == i for i in running)
    # and nothing is lost: another worker runs the rest, each job exactly once
    start_worker("-c", "10", FAULT_SLEEP_S="0")
    assert [r.get(timeout=30) for r in results] == list(range(40))
    assert Counter(int(line[1]) for line in started(env, "done")) == Counter(range(40))


@pytest.mark.slow
def test_four_workers_drain_20000_messages_from_one_file(client, env, start_worker):
    # Given 20,000 messages in one SQLite file
    results = client.enqueue_many(f"{TASKS}.noop", [(i,) for i in range(20_000)])

    # When four worker processes drain it
    workers = [start_worker("-c", "8") for _ in range(4)]
    assert results[-1].get(timeout=120) == 19_999
    wait_until(lambda: len(ledger_lines(env)) >= 20_000, 120, "20,000 runs")

    # Then every job ran exactly once, with one delivery, and no worker saw a locked database
    runs = Counter(int(line[1]) for line in ledger_lines(env))
    assert runs == Counter(range(20_000))
    assert all(r.get(timeout=10) == i for i, r in enumerate(results))
    records = asyncio.run(client.results.fetch_many([r.id for r in results]))
    assert {rec.deliveries for rec in records.values()} == {1}
    assert len({line[2] for line in ledger_lines(env)}) == 4  # all four took part
    for worker in workers:
        worker.signal(signal.SIGTERM)
    for worker in workers:
        assert worker.wait(30) == 0
        assert "locked" not in worker.output().lower()


def test_a_job_longer_than_its_lease_is_never_handed_out_twice(client, env, start_worker):
    # Given two workers with 1-second leases, and one job that runs for 3 seconds
    result = client.enqueue(f"{TASKS}.work", 7)
    for _ in range(2):
        start_worker("-c", "1", "--prefetch", "0", FAULT_SLEEP_S="3", FAULT_LEASE_S="1")

    # When one runs it while the other sits idle, polling (it would take the message the
    # moment a lease ran out)
    assert result.get(timeout=60) == 7

    # Then the running worker's heartbeats kept the lease: one start, one delivery
    assert [int(line[1]) for line in started(env)] == [7]
    record = result.record
    assert record is not None
    assert record.deliveries == 1


@pytest.mark.parametrize("pool", ["async", "threads"])
def test_a_task_that_terminates_a_child_it_forked_does_not_stop_the_worker(
    client, env, start_worker, pool
):
    # Given a worker whose task forks a child (multiprocessing's fork) and terminates it
    worker = start_worker("--pool", pool, "-c", "2")
    # When the task runs
    alive, exitcode = client.enqueue(f"{TASKS}.fork_and_terminate").get(timeout=30)
    # Then the child ended by SIGTERM, and the worker, which shares no signal with it, runs on
    assert (alive, exitcode) == (False, -signal.SIGTERM)
    assert client.enqueue(f"{TASKS}.work", 7).get(timeout=30) == 7
    assert worker.proc.poll() is None
    assert "shutdown" not in worker.output()


def test_a_worker_exits_after_abandoning_an_async_job_that_ignores_cancellation(
    client, env, start_worker
):
    # Given an async def job that ignores cancellation, abandoned at its hard time limit
    worker = start_worker("--pool", "async")
    result = client.enqueue(f"{TASKS}.stubborn", 1)
    with pytest.raises(TaskFailed, match="time limit"):
        result.get(timeout=30)
    # When the worker is asked to stop
    worker.signal(signal.SIGTERM)
    # Then it exits 0 without waiting for that coroutine, saying so
    assert worker.wait(15) == 0
    assert "1 job(s) never returned" in worker.output()


def test_a_cold_stop_hands_back_an_async_job_that_ignores_cancellation_and_exits(
    client, env, start_worker
):
    # Given a running async def job, without a time limit, that ignores cancellation
    worker = start_worker("--pool", "async", "--grace", "0.5")
    result = client.enqueue(f"{TASKS}.stubborn_forever", 2)
    wait_until(lambda: len(started(env)) == 1, 30, "the job running")
    # When the worker is stopped and its grace runs out
    worker.signal(signal.SIGTERM)
    # Then it hands the job's message back and exits 3, without waiting for the job
    assert worker.wait(15) == 3
    assert "ignores cancellation: handing its message back" in worker.output()
    assert result.state == "QUEUED"


def test_a_cold_stop_ends_an_early_acked_job_that_ignores_cancellation_as_interrupted(
    client, env, start_worker
):
    # Given a running acks_late=False async def job that ignores cancellation
    worker = start_worker("--pool", "async", "--grace", "0.5")
    result = client.enqueue(f"{TASKS}.stubborn_early", 3)
    wait_until(lambda: len(started(env)) == 1, 30, "the job running")
    # When the worker is stopped and its grace runs out
    worker.signal(signal.SIGTERM)
    # Then its message being gone, the job ends for good, recorded as interrupted
    assert worker.wait(15) == 3
    assert result.state == "FAILURE"
    assert result.record is not None
    assert result.record.reason == "interrupted"


def test_a_pool_child_dies_with_its_worker(client, env, start_worker):
    # Given a process-pool worker whose child runs a long job
    worker = start_worker("--pool", "processes", "-c", "1", FAULT_SLEEP_S="600")
    client.enqueue(f"{TASKS}.work", 1)
    wait_until(lambda: len(started(env)) == 1, 30, "the job running in a child")
    child = int(started(env)[0][2])
    # When the worker is killed outright (the OOM killer, a supervisor's last SIGKILL)
    worker.signal(signal.SIGKILL)
    worker.wait(10)

    # Then the child does not run on without the worker that enforces its limits
    def gone() -> bool:
        try:
            with open(f"/proc/{child}/stat") as f:  # a zombie runs nothing either
                return f.read().rsplit(")", 1)[1].split()[0] == "Z"
        except (FileNotFoundError, ProcessLookupError):
            return True

    wait_until(gone, 5, "the child to end with its worker")

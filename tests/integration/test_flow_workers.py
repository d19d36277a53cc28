"""Flow control with real worker processes on SQLite and Redis: a global rate limit across
four workers, a concurrency limit across four workers (and a SIGKILLed holder), unique jobs
from 100 concurrent senders, durable revoke, and terminate on the process pool."""

from __future__ import annotations

import concurrent.futures
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from faena import REVOKED, Faena, TaskFailed, signature
from tests.integration.conftest import ROOT, WorkerProcess, wait_until
from tests.services import drop_prefix, redis_url

TASKS = "tests.integration.flow_tasks"
BACKENDS = ["sqlite", "redis"]


@pytest.fixture(params=BACKENDS)
def flow_env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    url = f"sqlite:///{tmp_path / 'flow.sqlite3'}" if request.param == "sqlite" else redis_url()
    yield {
        **os.environ,
        "FAENA_BROKER_URL": url,
        "FLOW_LEDGER": str(tmp_path / "ledger.txt"),
        "FLOW_LEASE_S": "30",
        "PYTHONPATH": str(ROOT),
    }
    if request.param == "redis":
        drop_prefix(url)


@pytest.fixture
def client(flow_env: dict[str, str]) -> Iterator[Faena]:
    app = Faena("flow-client", broker=flow_env["FAENA_BROKER_URL"])
    yield app
    app.close()


@pytest.fixture
def start(tmp_path: Path, flow_env: dict[str, str]) -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []

    def run(*args: str, **overrides: str) -> WorkerProcess:
        log = tmp_path / f"worker-{len(started)}.log"
        worker = WorkerProcess(["-A", TASKS, *args], {**flow_env, **overrides}, log)
        started.append(worker)
        return worker

    yield run
    for worker in started:
        worker.stop()


def ledger(env: dict[str, str], kind: str | None = None) -> list[list[str]]:
    path = Path(env["FLOW_LEDGER"])
    lines = [line.split() for line in path.read_text().splitlines()] if path.exists() else []
    return [line for line in lines if kind is None or line[0] == kind]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_four_workers_keep_a_global_rate_and_unrelated_jobs_keep_flowing(
    client: Faena, flow_env: dict[str, str], start: Callable[..., WorkerProcess]
) -> None:
    # Given 200 jobs of a task limited to 20/s and 200 unlimited jobs on the same queue
    client.enqueue_many(f"{TASKS}.limited", [(i,) for i in range(200)])
    client.enqueue_many(f"{TASKS}.free", [(i,) for i in range(200)])
    # When four workers run them (about 10 s at the limit); one job at a time each, so a
    # loaded machine delays a job's first line after its use was taken as little as it can
    for _ in range(4):
        start("-c", "1")
    wait_until(lambda: len(ledger(flow_env, "free")) == 200, 60, "the unlimited jobs")
    # Then the unlimited jobs were not held up behind the limited ones: all 200 ran while
    # fewer than half of the limited ones had (those need 5 s at least)
    assert len(ledger(flow_env, "limited")) < 100
    wait_until(lambda: len(ledger(flow_env, "limited")) == 200, 90, "the limited jobs")
    # And no 1-second window by the store's clock holds more than 20 + 1 executions
    times = sorted(float(line[2]) for line in ledger(flow_env, "limited"))
    crowded = [(a, b) for a, b in zip(times, times[21:], strict=False) if b - a < 1.0]
    assert crowded == []
    # And each ran once
    assert sorted(int(line[1]) for line in ledger(flow_env, "limited")) == list(range(200))


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_concurrency_limit_of_two_across_four_workers(
    client: Faena, flow_env: dict[str, str], start: Callable[..., WorkerProcess]
) -> None:
    # Given 16 jobs limited to 2 at once, and four workers with 4 slots each
    client.enqueue_many(f"{TASKS}.slot", [(i,) for i in range(16)])
    for _ in range(4):
        start("-c", "4", "--pool", "threads", FLOW_SLEEP_S="0.2")
    wait_until(lambda: len(ledger(flow_env, "out")) == 16, 90, "all 16 jobs")
    # Then, replaying the ledger (in before the slot is given back, out before), never more
    # than two were inside at once, and they did overlap (the limit is 2, not 1)
    inside: set[str] = set()
    most = 0
    for kind, i, _pid in ledger(flow_env):
        if kind == "in":
            inside.add(i)
            most = max(most, len(inside))
        else:
            inside.discard(i)
    assert most == 2


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_sigkilled_holder_frees_its_slot_after_the_lease(
    client: Faena, flow_env: dict[str, str], start: Callable[..., WorkerProcess]
) -> None:
    # Given a worker running the only slot's holder, with a 2 s lease
    first = start("-c", "2", "--pool", "threads", FLOW_LEASE_S="2")
    client.enqueue(f"{TASKS}.holder", 0)
    wait_until(lambda: len(ledger(flow_env, "holding")) == 1, 30, "the holder to start")
    client.enqueue(f"{TASKS}.holder", 1)
    # When that worker is SIGKILLed, and another worker starts
    first.signal(signal.SIGKILL)
    first.wait(10)
    start("-c", "2", "--pool", "threads", FLOW_LEASE_S="2")
    # Then once the lease (and the slot with it) has expired, both jobs run there
    wait_until(lambda: len(ledger(flow_env, "holding")) == 3, 60, "the slot to be freed")
    runs = ledger(flow_env, "holding")
    assert sorted(line[1] for line in runs[1:]) == ["0", "1"]
    assert {line[2] for line in runs[1:]} != {str(first.pid)}


@pytest.mark.timeout(60)
def test_100_concurrent_sends_of_a_unique_job_make_one_job(client: Faena) -> None:
    @client.task(name=f"{TASKS}.marker", unique_key=lambda args, kwargs: "nightly")
    def marker(i: int) -> None: ...

    # When 100 threads send it at once
    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        handles = list(pool.map(marker.delay, range(100)))
    # Then there is one job, and 100 handles to it
    assert len({h.id for h in handles}) == 1
    assert client.broker.locate(handles[0].id) == "queued"


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_a_revoked_job_never_runs_even_on_a_worker_started_later(
    client: Faena, flow_env: dict[str, str], start: Callable[..., WorkerProcess]
) -> None:
    # Given a queued job revoked before any worker runs, and an id revoked before it is sent
    queued = client.enqueue(f"{TASKS}.marker", 1)
    assert queued.revoke(reason="sent twice", by="ops@example") is True
    client.AsyncResult("late-id").revoke(reason="cancelled early")
    client.enqueue(f"{TASKS}.marker", 2, task_id="late-id")
    client.enqueue(f"{TASKS}.marker", 3)
    # When a worker starts afterwards and drains the queue
    start("-c", "2")
    wait_until(lambda: len(ledger(flow_env, "marker")) == 1, 30, "the unrevoked job")
    for other in range(2):  # a sentinel after them proves the worker has passed them
        client.enqueue(f"{TASKS}.marker", 10 + other)
    wait_until(lambda: len(ledger(flow_env, "marker")) == 3, 30, "the sentinels")
    # Then neither revoked job ran, and the revoke says who, when and why
    assert sorted(int(line[1]) for line in ledger(flow_env, "marker")) == [3, 10, 11]
    record = client.results.fetch(queued.id)
    assert record is not None
    assert (record.state, record.revoked_by, record.reason) == (
        REVOKED,
        "ops@example",
        "sent twice",
    )
    assert record.finished_at is not None
    assert client.AsyncResult("late-id").state == REVOKED


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_terminate_stops_a_running_process_pool_job_within_a_second(
    client: Faena, flow_env: dict[str, str], start: Callable[..., WorkerProcess]
) -> None:
    # Given a job running in a process-pool child
    start("-c", "1", "--pool", "processes")
    job = client.enqueue(f"{TASKS}.sleeper", 1)
    wait_until(lambda: len(ledger(flow_env, "sleeping")) == 1, 30, "the job to start")
    child = int(ledger(flow_env, "sleeping")[0][2])
    # When it is revoked with terminate
    job.revoke(terminate=True)

    def child_gone() -> bool:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return True
        try:
            with open(f"/proc/{child}/stat") as f:  # a zombie is gone too: it runs nothing
                return f.read().split()[2] == "Z"
        except (FileNotFoundError, ProcessLookupError):
            return True  # reaped between the two looks

    # Then its child process is stopped within a second, and the job reads REVOKED
    wait_until(child_gone, 1.0, "the child to be killed")
    assert job.state == REVOKED


@pytest.mark.timeout(60)
def test_a_chain_step_lost_after_its_early_ack_ends_the_chain(
    client: Faena, flow_env: dict[str, str], start: Callable[..., WorkerProcess]
) -> None:
    # Given a chain whose first step (acks_late=False) kills the process-pool child running it
    start("-c", "1", "--pool", "processes")
    first = signature(f"{TASKS}.dies_early_acked", (1,), app=client)
    then = signature(f"{TASKS}.free", app=client)
    result = (first | then).apply_async(link_error=signature(f"{TASKS}.errback", app=client))
    # Then the chain fails as WorkerLost (nothing will run the step again), and the error
    # callback runs once
    with pytest.raises(TaskFailed, match=r"WorkerLost|died"):
        result.get(timeout=30)
    wait_until(lambda: len(ledger(flow_env, "errback")) == 1, 30, "the error callback")
    assert ledger(flow_env, "errback")[0][2] == "faena.WorkerLost"
    assert ledger(flow_env, "free") == []

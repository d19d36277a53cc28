"""The ``faena`` command line, run as a user runs it: ``python -m faena ...`` in a subprocess.

Each test gets a SQLite file in its own directory (``FAENA_BROKER_URL``) and a small ``tasks``
module there; the CLI runs with that directory as its working directory, so ``-A tasks``
imports it, and the test process imports the same module to send jobs and read results.
Synchronisation is always on a real event: a result (``get(timeout=...)``), a process exit,
or polling ``faena status`` until a condition holds, with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import redis

from faena import Faena
from faena.backends.redis.broker import RedisBroker
from faena.contracts.broker import BrokerConfig, Settlement
from faena.testing.conformance import out
from tests.services import drop_prefix, redis_url, require

REPO = Path(__file__).resolve().parents[2]
DEADLINE_S = 30.0

TASKS = textwrap.dedent(
    """
    import asyncio

    from faena import Faena

    app = Faena("acceptance", lease_s=5.0, heartbeat_s=0.5, shutdown_grace_s=5.0)


    @app.task
    def add(x, y):
        return x + y


    @app.task
    async def shout(word):
        await asyncio.sleep(0.01)
        return word.upper()
    """
)


class Cli:
    """Runs ``python -m faena`` in ``cwd`` with the test's environment."""

    def __init__(self, cwd: Path, env: dict[str, str]) -> None:
        self.cwd = cwd
        self.env = env
        self.started: list[subprocess.Popen[str]] = []

    def run(
        self, *args: str, input: str | None = None, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "faena", *args],
            cwd=self.cwd,
            env={**self.env, **(env or {})},
            input=input,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def start(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            [sys.executable, "-m", "faena", *args],
            cwd=self.cwd,
            env={**self.env, **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.started.append(process)
        return process

    def stop_all(self) -> None:
        for process in self.started:
            if process.poll() is None:
                process.kill()
            process.communicate(timeout=10)

    def status(self) -> dict[str, Any]:
        result = self.run("status", "-A", "tasks", "--json")
        assert result.returncode == 0, result.stderr
        data: dict[str, Any] = json.loads(result.stdout)
        return data

    def wait_for(self, condition: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
        """Poll ``faena status --json`` until ``condition`` holds, or fail at the deadline."""
        deadline = time.monotonic() + DEADLINE_S
        while True:
            data = self.status()
            if condition(data):
                return data
            if time.monotonic() > deadline:
                pytest.fail(f"timed out waiting for {what}; last status: {data}")


def queue_row(data: dict[str, Any], queue: str) -> dict[str, Any]:
    for row in data["queues"]:
        if row["queue"] == queue:
            return dict(row)
    return {"queue": queue, "ready": 0, "scheduled": 0, "leased": 0, "dead": 0}


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Cli, ModuleType]]:
    """A tasks module on a fresh SQLite file; the CLI and this process both use it."""
    (tmp_path / "tasks.py").write_text(TASKS)
    url = f"sqlite:///{tmp_path / 'faena.sqlite3'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAENA_")}
    env.update(
        FAENA_BROKER_URL=url,
        PYTHONPATH=os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p),
        COLUMNS="200",
    )
    for name in [k for k in os.environ if k.startswith("FAENA_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("FAENA_BROKER_URL", url)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("tasks", None)
    tasks = importlib.import_module("tasks")
    cli = Cli(tmp_path, env)
    try:
        yield cli, tasks
    finally:
        cli.stop_all()
        tasks.app.close()
        sys.modules.pop("tasks", None)


def stop(process: subprocess.Popen[str]) -> tuple[int, str]:
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=DEADLINE_S)
    return process.returncode, output


def worker_row(cli: Cli, worker_id: str, processed: int) -> dict[str, Any]:
    """The worker's row in `faena status --json`, once it reports ``processed`` jobs."""
    data = cli.wait_for(
        lambda d: any(w["id"] == worker_id and w["processed"] >= processed for w in d["workers"]),
        f"worker {worker_id} to report {processed} processed jobs",
    )
    (row,) = [w for w in data["workers"] if w["id"] == worker_id]
    return row


@pytest.mark.timeout(90)
def test_worker_runs_jobs_shows_in_status_and_stops_cleanly_on_sigterm(
    project: tuple[Cli, ModuleType],
) -> None:
    cli, tasks = project
    # Given a worker process
    worker = cli.start("worker", "-A", "tasks", "-c", "2", "--worker-id", "acc-1")

    # When jobs are sent to it, sync and async
    # Then they run
    assert tasks.add.delay(2, 3).get(timeout=DEADLINE_S) == 5
    assert tasks.shout.delay("hi").get(timeout=DEADLINE_S) == "HI"

    # And `faena status` lists the worker with what it has done
    row = worker_row(cli, "acc-1", processed=2)
    assert row["pool"] == "async"
    assert row["concurrency"] == 2
    assert row["queues"] == ["default"]
    table = cli.run("status", "-A", "tasks")
    assert table.returncode == 0
    assert "acc-1" in table.stdout
    assert "Workers" in table.stdout

    # When it gets SIGTERM, it stops with exit code 0
    code, output = stop(worker)
    assert code == 0, output
    assert "stopped" in output


@pytest.mark.timeout(90)
def test_worker_takes_celerys_short_flags_for_pool_and_log_level(
    project: tuple[Cli, ModuleType],
) -> None:
    cli, tasks = project
    # Given a worker started the way a Celery user starts one: -P for the pool, -l for the level
    worker = cli.start(
        "worker", "-A", "tasks", "-P", "threads", "-c", "3", "-l", "warning", "--worker-id", "acc-2"
    )

    # When a job is sent to it, it runs
    assert tasks.add.delay(4, 5).get(timeout=DEADLINE_S) == 9

    # And the worker runs the pool -P named
    row = worker_row(cli, "acc-2", processed=1)
    assert row["pool"] == "threads"
    assert row["concurrency"] == 3

    # And at -l warning it logs nothing at INFO, not even its own stop
    code, output = stop(worker)
    assert code == 0, output
    assert "succeeded" not in output
    assert "stopped" not in output

    # And Celery's long spelling --loglevel is the same option
    done = cli.run("worker", "-A", "tasks", "--burst", "--loglevel", "INFO", "-P", "solo")
    assert done.returncode == 0, done.stderr
    assert "burst worker stopping" in done.stdout + done.stderr


@pytest.mark.timeout(60)
def test_status_shows_ready_counts_per_queue(project: tuple[Cli, ModuleType]) -> None:
    cli, tasks = project
    # Given 3 jobs sent and no worker running
    for i in range(3):
        tasks.add.delay(i, i)
    tasks.add.apply_async((1, 1), queue="reports", countdown=600)

    # When `faena status` runs without -A (the broker from FAENA_BROKER_URL)
    result = cli.run("status")

    # Then the table shows 3 ready in default, 1 scheduled in reports
    assert result.returncode == 0, result.stderr
    rows = {line.split("│")[1].strip(): line for line in result.stdout.splitlines() if "│" in line}
    cells = [c.strip() for c in rows["default"].split("│")[1:-1]]
    assert cells == ["default", "3", "0", "0", "0"]
    cells = [c.strip() for c in rows["reports"].split("│")[1:-1]]
    assert cells == ["reports", "0", "1", "0", "0"]
    assert "No live workers." in result.stdout


@pytest.mark.timeout(60)
def test_purge_asks_then_deletes_ready_and_scheduled(project: tuple[Cli, ModuleType]) -> None:
    cli, tasks = project
    # Given 2 ready and 1 scheduled job in default, and one in another queue
    tasks.add.delay(1, 1)
    tasks.add.delay(2, 2)
    tasks.add.apply_async((3, 3), countdown=600)
    tasks.add.apply_async((4, 4), queue="keep")

    # When the user declines at the prompt, nothing is deleted
    declined = cli.run("purge", "-Q", "default", input="n\n")
    assert declined.returncode == 1
    assert queue_row(cli.status(), "default")["ready"] == 2

    # When --yes is given, the ready and scheduled messages of that queue go
    result = cli.run("purge", "-Q", "default", "--yes")
    assert result.returncode == 0, result.stderr
    assert "Purged 3 message(s) from default." in result.stdout
    data = cli.status()
    assert queue_row(data, "default")["ready"] == 0
    assert queue_row(data, "default")["scheduled"] == 0
    assert queue_row(data, "keep")["ready"] == 1


@pytest.mark.timeout(90)
def test_dead_letters_list_retry_purge(project: tuple[Cli, ModuleType]) -> None:
    cli, tasks = project
    # Given a job for a task no worker knows, and a burst worker that has seen it
    job = tasks.app.enqueue("billing.charge", 10)
    burst = cli.run("worker", "-A", "tasks", "--burst")
    assert burst.returncode == 0, burst.stderr

    # When the dead letters are listed
    listed = cli.run("dlq", "list")

    # Then the message is there with its task and the reason
    assert listed.returncode == 0, listed.stderr
    (line,) = [ln for ln in listed.stdout.splitlines() if job.id in ln]
    assert "billing.charge" in line
    assert "unknown_task" in line
    assert "default" in line
    as_json = json.loads(cli.run("dlq", "list", "--json").stdout)
    assert [d["id"] for d in as_json["dead_letters"]] == [job.id]

    # When it is retried, it is back in its queue
    retried = cli.run("dlq", "retry", job.id)
    assert retried.returncode == 0, retried.stderr
    assert "Requeued 1 dead letter(s)." in retried.stdout
    data = cli.status()
    assert queue_row(data, "default")["ready"] == 1
    assert queue_row(data, "default")["dead"] == 0

    # And an unknown id is an error naming it
    missing = cli.run("dlq", "retry", "no-such-id")
    assert missing.returncode == 1
    assert "no-such-id" in missing.stderr

    # When a worker dead-letters it again and it is purged, it is gone for good
    assert cli.run("worker", "-A", "tasks", "--burst").returncode == 0
    assert queue_row(cli.status(), "default")["dead"] == 1
    # And while a message with its id is waiting again, retrying it says so (nothing moved)
    tasks.app.enqueue("billing.charge", 11, task_id=job.id)
    in_use = cli.run("dlq", "retry", job.id)
    assert in_use.returncode == 1
    assert "Requeued 0 dead letter(s)." in in_use.stdout
    assert f"waiting or running again: {job.id}" in in_use.stderr
    assert "not in the dead-letter queue" not in in_use.stderr
    assert "1 dead letter(s) left" in cli.run("dlq", "retry", "--all").stdout
    assert cli.run("purge", "-Q", "default", "--yes").returncode == 0
    purged = cli.run("dlq", "purge", job.id, "--yes")
    assert purged.returncode == 0, purged.stderr
    assert "Deleted 1 dead letter(s)." in purged.stdout
    assert "No dead letters." in cli.run("dlq", "list").stdout

    # And neither ids nor --all is a usage error
    assert cli.run("dlq", "purge").returncode == 2


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["worker", "-A", "no_such_module"], "cannot import app module 'no_such_module'"),
        (["worker", "-A", "tasks:nothing"], "'tasks:nothing': tasks has no attribute 'nothing'"),
        (["worker", "-A", "tasks:add"], "'tasks:add' is not a Faena app (found Task)"),
        (["worker", "-A", "tasks.py"], "-A takes a module name, not a file: -A tasks,"),
        (["worker", "-A", "tasks", "-Q", ""], "names no queue"),
        (["worker", "-A", "tasks", "--worker-id", " "], "--worker-id ' '"),
        (["worker", "-A", "tasks", "--pool", "solo", "-c", "5"], "--pool solo runs one job"),
        (["worker", "-A", "in_memory"], "memory:// is for tests"),
        (["worker", "-A", "results_in_memory"], "uses the result store memory://"),
        (["status", "-A", "broken"], "NameError"),
        (["worker"], "FAENA_APP"),
        (["worker", "-A", "tasks", "-Q", "no spaces"], "invalid queue name"),
    ],
)
def test_bad_app_or_flags_exit_2_with_one_clear_line(
    project: tuple[Cli, ModuleType], args: list[str], expected: str
) -> None:
    cli, _ = project
    (cli.cwd / "broken.py").write_text("x = undefined_name\n")
    (cli.cwd / "in_memory.py").write_text(
        "from faena import Faena\napp = Faena('mem', broker='memory://')\n"
    )
    (cli.cwd / "results_in_memory.py").write_text(
        "from tasks import app as tasks_app\nfrom faena import Faena\n"
        "app = Faena('memres', broker=tasks_app.broker_url, results='memory://')\n"
    )
    result = cli.run(*args)
    assert result.returncode == 2
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("Error: ")


@pytest.mark.timeout(60)
def test_admin_commands_do_not_create_a_database_where_none_is(
    project: tuple[Cli, ModuleType],
) -> None:
    cli, _ = project
    # Given a mistyped broker path
    # When an admin command runs on it
    result = cli.run("status", "--broker", "sqlite:///typo.sqlite3")
    # Then it says so, and no empty database appears
    assert result.returncode == 1
    assert "no faena database at" in result.stderr
    assert not (cli.cwd / "typo.sqlite3").exists()


@pytest.mark.timeout(60)
def test_environment_fallbacks_name_the_app_and_queues(project: tuple[Cli, ModuleType]) -> None:
    cli, tasks = project
    # Given one job in "urgent" and one in "default"
    urgent = tasks.add.apply_async((1, 2), queue="urgent")
    normal = tasks.add.delay(3, 4)

    # When a burst worker runs with FAENA_APP and FAENA_QUEUES instead of flags
    result = cli.run("worker", "--burst", env={"FAENA_APP": "tasks", "FAENA_QUEUES": "urgent"})

    # Then it consumed "urgent" only
    assert result.returncode == 0, result.stderr
    assert urgent.get(timeout=DEADLINE_S) == 3
    assert normal.state == "QUEUED"
    # And the flag wins over the environment
    again = cli.run("worker", "--burst", "-Q", "default", env={"FAENA_QUEUES": "urgent"})
    assert again.returncode == 2  # no -A and no FAENA_APP
    again = cli.run("worker", "-A", "tasks", "--burst", "-Q", "default", env={"FAENA_QUEUES": "x"})
    assert again.returncode == 0, again.stderr
    assert normal.get(timeout=DEADLINE_S) == 7


@pytest.mark.timeout(60)
def test_control_revoke_records_who_and_why_and_the_job_never_runs(
    project: tuple[Cli, ModuleType],
) -> None:
    cli, tasks = project
    # Given a queued job
    job = tasks.add.delay(1, 2)
    # When it is revoked from the command line
    result = cli.run("control", "revoke", job.id, "--reason", "sent twice", "--by", "ops")
    # Then the command says so, and the record keeps who and why
    assert result.returncode == 0, result.stderr
    assert f"{job.id}: revoked; its message was removed from the queue" in result.stdout
    record = tasks.app.results.fetch(job.id)
    assert (record.state, record.reason, record.revoked_by) == ("REVOKED", "sent twice", "ops")
    # And revoking a job id that is not known records the revoke for when it arrives, saying
    # that nothing had that id
    later = cli.run("control", "revoke", "not-sent-yet")
    assert "not-sent-yet: revoked; no job with this id is known yet" in later.stdout
    assert tasks.app.results.fetch("not-sent-yet").state == "REVOKED"
    # And with no id, or an empty one, the command explains what it needs, in one line
    assert cli.run("control", "revoke").returncode == 2
    empty = cli.run("control", "revoke", "")
    assert empty.returncode == 2
    assert "Traceback" not in empty.stderr
    assert "a job id is a non-empty str" in empty.stderr


@pytest.mark.timeout(60)
def test_control_revoke_without_an_app_writes_to_the_result_store_it_is_given(
    tmp_path: Path, project: tuple[Cli, ModuleType]
) -> None:
    cli, _ = project
    # Given an app whose results live apart from its broker, with a job waiting
    broker = f"sqlite:///{tmp_path / 'queue.sqlite3'}"
    results = f"sqlite:///{tmp_path / 'results.sqlite3'}"
    with Faena("split", broker=broker, results=results) as app:

        @app.task
        def add(a: int, b: int) -> int:
            return a + b

        job = add.delay(1, 2)
        env = {"FAENA_BROKER_URL": broker}
        # When it is revoked without -A, naming the result store
        revoked = cli.run("control", "revoke", "--results", results, job.id, env=env)
        # Then the revoke is in the app's own store: its callers see REVOKED
        assert revoked.returncode == 0, revoked.stderr
        assert app.AsyncResult(job.id).state == "REVOKED"
        # And FAENA_RESULTS_URL does the same for a job id not sent yet
        env["FAENA_RESULTS_URL"] = results
        assert cli.run("control", "revoke", "later", env=env).returncode == 0
        assert app.results.fetch("later").state == "REVOKED"
    # And --results that contradicts the app of -A is refused
    clash = cli.run("control", "revoke", "-A", "tasks", "--results", results, "x")
    assert clash.returncode == 2
    assert "--results" in clash.stderr
    # And so is one with a password, which the message does not show
    secret = cli.run("control", "revoke", "-A", "tasks", "--results", "redis://:s3cret@h/0", "x")
    assert secret.returncode == 2
    assert "s3cret" not in secret.stderr
    assert "redis://:***@h/0" in secret.stderr


@pytest.mark.timeout(60)
def test_a_worker_whose_sqlite_file_is_deleted_stops_so_it_can_be_restarted(
    project: tuple[Cli, ModuleType],
) -> None:
    cli, tasks = project
    # Given a running worker that has run a job
    worker = cli.start("worker", "-A", "tasks", "-c", "2")
    assert tasks.add.delay(1, 1).get(timeout=DEADLINE_S) == 2
    # When its SQLite file is deleted under it
    path = Path(tasks.app.broker_url.removeprefix("sqlite:///"))
    tasks.app.close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    # Then it stops by itself with status 1, saying why, instead of failing every fetch for ever
    output, _ = worker.communicate(timeout=30)
    assert worker.returncode == 1, output
    assert "was deleted or replaced while in use" in output
    assert "the worker stops, exiting 1" in output


LINGERING = textwrap.dedent(
    """
    import threading

    from tasks import app

    forever = threading.Event()


    @app.task
    def start_flusher():
        # A library's background thread, not a daemon, that nobody stops
        threading.Thread(target=forever.wait, name="flusher", daemon=False).start()
        return "started"
    """
)


POOLED = textwrap.dedent(
    """
    import atexit
    import concurrent.futures
    import pathlib

    from tasks import app

    executor = concurrent.futures.ThreadPoolExecutor(2)  # idle threads once the job is done
    # next to this module: the test process imports it too, and runs the handler at its exit
    atexit.register(lambda: pathlib.Path(__file__).with_name("atexit-ran").write_text("yes"))


    @app.task
    async def square(x):
        return executor.submit(pow, x, 2).result()
    """
)


@pytest.mark.timeout(60)
def test_a_worker_exits_normally_and_runs_the_apps_atexit_handlers(
    project: tuple[Cli, ModuleType],
) -> None:
    cli, _ = project
    (cli.cwd / "pooled.py").write_text(POOLED)
    sys.modules.pop("pooled", None)
    pooled = importlib.import_module("pooled")
    try:
        job = pooled.square.delay(7)
        # When a burst worker runs a task that used an executor, leaving its idle threads
        done = cli.run("worker", "-A", "pooled", "--burst")
        # Then it exits as a Python program does: the app's atexit handlers ran, no warning
        assert done.returncode == 0, done.stderr
        assert job.get(timeout=5) == 49
        assert (cli.cwd / "atexit-ran").read_text() == "yes"
        assert "leaving" not in done.stderr
    finally:
        sys.modules.pop("pooled", None)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("pool", ["async", "threads"])
def test_a_thread_a_task_left_running_does_not_keep_the_worker_alive(
    project: tuple[Cli, ModuleType], pool: str
) -> None:
    cli, _ = project
    (cli.cwd / "lingering.py").write_text(LINGERING)
    sys.modules.pop("lingering", None)
    lingering = importlib.import_module("lingering")
    try:
        job = lingering.start_flusher.delay()
        # When a burst worker runs the task, which leaves a non-daemon thread behind
        done = cli.run("worker", "-A", "lingering", "--burst", "--pool", pool)
        # Then the worker still exits, with its status, naming the thread it left
        assert done.returncode == 0, done.stderr
        assert "leaving 1 thread(s) that tasks started and did not end: flusher" in done.stderr
        assert job.get(timeout=5) == "started"
    finally:
        sys.modules.pop("lingering", None)


@pytest.mark.timeout(30)
def test_help_documents_every_environment_variable(project: tuple[Cli, ModuleType]) -> None:
    cli, _ = project
    text = cli.run("worker", "--help").stdout
    for name in (
        "FAENA_APP",
        "FAENA_QUEUES",
        "FAENA_CONCURRENCY",
        "FAENA_POOL",
        "FAENA_PREFETCH",
        "FAENA_MAX_TASKS_PER_CHILD",
        "FAENA_MAX_MEMORY_PER_CHILD",
        "FAENA_GRACE",
        "FAENA_BURST",
        "FAENA_WORKER_ID",
        "FAENA_LOG_LEVEL",
        "FAENA_LOG_FORMAT",
    ):
        assert name in text
    assert "--autoscale" not in text
    assert "FAENA_BROKER_URL" in cli.run("status", "--help").stdout


@pytest.mark.timeout(90)
def test_demo_runs_a_real_worker_and_exits_0(project: tuple[Cli, ModuleType]) -> None:
    cli, _ = project
    result = cli.run("demo", "--jobs", "5")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Summary" in result.stdout
    assert "All 5 jobs succeeded" in result.stdout
    for task in ("add", "flaky_fetch", "send_reminder", "fetch_price", "resize_images"):
        assert task in result.stdout
    summary = result.stdout.split("Summary", 1)[1]
    (flaky,) = [line for line in summary.splitlines() if "flaky_fetch" in line]
    assert [c.strip() for c in flaky.split("│")][3:6:2] == ["SUCCESS", "2"]  # state, attempts
    assert not list(cli.cwd.glob("faena-demo.sqlite3"))  # nothing left behind without --keep


async def bury_all(broker: RedisBroker, queues: list[str], count: int) -> None:
    """Take ``count`` messages from ``queues`` and dead-letter them."""
    consumer = await broker.open_consumer(queues, "w1")
    try:
        got = await consumer.receive(count, 0)
        dead = [Settlement(delivery=d, action="dead", reason="rejected") for d in got]
        assert await consumer.settle(dead) == [True] * count
    finally:
        await consumer.close()


@pytest.fixture
def on_redis() -> Iterator[tuple[str, RedisBroker]]:
    """A broker on the local Redis under a prefix of its own, dropped afterwards."""
    require("redis", "127.0.0.1", 6379)
    url = redis_url()
    broker = RedisBroker(url, BrokerConfig())
    try:
        yield url, broker
    finally:
        broker.close()
        drop_prefix(url)


@pytest.mark.timeout(60)
def test_dlq_counts_every_letter_of_an_id_dead_in_two_redis_queues(
    project: tuple[Cli, ModuleType], on_redis: tuple[str, RedisBroker]
) -> None:
    # Given one id dead-lettered in two queues of a Redis broker (two messages there)
    cli, _ = project
    url, broker = on_redis
    broker.enqueue([out("dup", "a"), out("dup", "b")])
    asyncio.run(bury_all(broker, ["a", "b"], 2))
    # When the id is retried, Then both letters are requeued, and counted
    retried = cli.run("dlq", "retry", "dup", "--broker", url)
    assert retried.returncode == 0, retried.stderr
    assert "Requeued 2 dead letter(s)." in retried.stdout
    assert broker.locate("dup") == "queued"
    # When it dies in both again, and is sent anew to one queue, Then a retry requeues the
    # other letter, and names the one it left
    asyncio.run(bury_all(broker, ["a", "b"], 2))
    broker.enqueue([out("dup", "a")])
    partly = cli.run("dlq", "retry", "dup", "--broker", url)
    assert partly.returncode == 1
    assert "Requeued 1 dead letter(s)." in partly.stdout
    assert "waiting or running again: dup" in partly.stderr


@pytest.mark.timeout(60)
def test_dlq_retry_of_ids_goes_on_past_a_queue_redis_refuses(
    project: tuple[Cli, ModuleType], on_redis: tuple[str, RedisBroker]
) -> None:
    cli, _ = project
    url, broker = on_redis
    broker.enqueue([out("a0", "a"), out("a1", "a"), out("b0", "b")])
    # Given dead letters in two queues, the second under another program's value
    asyncio.run(bury_all(broker, ["a", "b"], 3))
    prefix = url.rsplit("prefix=", 1)[1]
    with contextlib.closing(redis.Redis.from_url(url.split("?")[0])) as raw:
        raw.delete(f"{prefix}:{{b}}:body")
        raw.rpush(f"{prefix}:{{b}}:body", "not ours")
        # When two ids of the healthy queue are retried
        retried = cli.run("dlq", "retry", "a0", "a1", "--broker", url)
        raw.delete(f"{prefix}:{{b}}:body")
    # Then both are requeued, and the command fails naming the refusal for each
    assert retried.returncode == 1
    assert (broker.locate("a0"), broker.locate("a1")) == ("queued", "queued")
    assert "Requeued 0 dead letter(s), besides what the errors below say of 2 id(s)" in (
        retried.stdout
    )
    assert "a0, a1: Redis at" in retried.stderr  # (the same refusal, said once)
    assert retried.stderr.count("queue b: WRONGTYPE") == 1
    assert "in the other queues, 1 requeued" in retried.stderr

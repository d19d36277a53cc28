"""The conformance suites against the SQLite backend, plus what only SQLite promises."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from faena.backends.sqlite import SQLiteBroker, SQLiteCoordinationStore, SQLiteResultStore
from faena.backends.sqlite import _claims as claims
from faena.backends.sqlite import _connection as sqlite_connection
from faena.contracts.broker import Broker, BrokerConfig, Settlement
from faena.contracts.coordination import CoordinationStore
from faena.contracts.results import ResultStore
from faena.foundation.clock import SYSTEM_CLOCK, Clock, FakeClock
from faena.foundation.exceptions import BrokerError, ConfigurationError
from faena.model.outcome import encode_record
from faena.model.states import SUCCESS
from faena.testing.conformance import (
    PROMPT_S,
    BrokerConformance,
    CoordinationConformance,
    ResultStoreConformance,
    async_test,
    out,
    record,
)


class _OnAFile:
    path: Path

    @pytest.fixture(autouse=True)
    def _database_file(self, tmp_path: Path) -> None:
        self.path = tmp_path / "faena.sqlite3"

    @property
    def url(self) -> str:
        return f"sqlite:///{self.path}"


class TestSQLiteBroker(_OnAFile, BrokerConformance):
    def make_broker(self, config: BrokerConfig) -> Broker:
        return SQLiteBroker(self.url, config)


class TestSQLiteResultStore(_OnAFile, ResultStoreConformance):
    def make_result_store(self, clock: Clock) -> ResultStore:
        return SQLiteResultStore(self.url, clock)


class TestSQLiteCoordinationStore(_OnAFile, CoordinationConformance):
    def make_coordination_store(self, clock: Clock) -> CoordinationStore:
        return SQLiteCoordinationStore(self.url, clock)


def _answer_of(pid: int, read_end: int, within_s: float) -> str:
    """What a forked child wrote to its pipe; ``"stuck"`` (and the child killed) if it has not
    ended within ``within_s``."""
    deadline = SYSTEM_CLOCK.monotonic() + within_s
    while os.waitpid(pid, os.WNOHANG) == (0, 0):
        if SYSTEM_CLOCK.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(read_end)
            return "stuck"
        time.sleep(0.01)  # polling a child's exit: there is nothing to wait on
    with os.fdopen(read_end, "rb") as answer:
        return answer.read().decode()


class TestSQLiteOnly(_OnAFile):
    def test_urls_name_relative_and_absolute_files(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.chdir(tmp_path)
        relative = SQLiteBroker("sqlite:///sub.sqlite3", BrokerConfig())
        relative.close()
        assert (tmp_path / "sub.sqlite3").exists()
        absolute = SQLiteResultStore(f"sqlite:///{tmp_path / 'abs.sqlite3'}")
        absolute.close()
        assert (tmp_path / "abs.sqlite3").exists()

    @pytest.mark.parametrize("url", ["sqlite://", "sqlite:///", "redis://x", "sqlite:///:memory:"])
    def test_bad_urls_are_configuration_errors(self, url: str) -> None:
        with pytest.raises(ConfigurationError):
            SQLiteBroker(url, BrokerConfig())

    def test_the_file_is_in_wal_mode_with_the_schema(self) -> None:
        SQLiteBroker(self.url, BrokerConfig()).close()
        conn = sqlite3.connect(self.path)
        try:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        finally:
            conn.close()
        assert {"faena_messages", "faena_dead", "faena_workers", "faena_results"} <= tables

    @async_test
    async def test_broker_and_result_store_share_a_file(self) -> None:
        clock = FakeClock()
        broker = SQLiteBroker(self.url, BrokerConfig(clock=clock))
        store = SQLiteResultStore(self.url, clock)
        try:
            broker.enqueue([out("j1")])
            consumer = await broker.open_consumer(["default"], "w1")
            (d,) = await consumer.receive(1, 0)
            assert await store.store_many([record("j1", SUCCESS, fence=d.fence)]) == [True]
            await consumer.close()
            assert store.fetch("j1") == record("j1", SUCCESS, fence=d.fence)
        finally:
            broker.close()
            store.close()

    @async_test
    async def test_a_claim_judges_deliveries_only_in_its_own_queues(self) -> None:
        # Given two apps on one file: B allows 10 deliveries on its queue, A only 2 on its own
        clock = FakeClock()
        strict = SQLiteBroker(self.url, BrokerConfig(clock=clock, max_deliveries=2, lease_s=1))
        lenient = SQLiteBroker(self.url, BrokerConfig(clock=clock, max_deliveries=10, lease_s=1))
        try:
            lenient.enqueue([out("b-job", "y")])
            b = await lenient.open_consumer(["y"], "wb")
            a = await strict.open_consumer(["x"], "wa")
            # And B's message handed out twice by B, its leases lost
            for _ in range(2):
                assert [d.id for d in await b.receive(1, 0)] == ["b-job"]
                clock.advance(2)
            # When A claims from its queue
            assert await a.receive(1, 0) == []
            # Then B's message is not A's to bury: B hands it out a third time
            assert [(d.id, d.deliveries) for d in await b.receive(1, 0)] == [("b-job", 3)]
            await a.close()
            await b.close()
        finally:
            strict.close()
            lenient.close()

    def test_a_child_forked_while_this_process_writes_can_write(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # Given a process whose executor thread keeps writing (a worker claiming and acking)
        monkeypatch.setattr(sqlite_connection, "GIVE_UP_S", 5.0)  # a stuck child fails fast
        broker = SQLiteBroker(self.url, BrokerConfig())
        stop = threading.Event()

        async def keep_writing() -> None:
            consumer = await broker.open_consumer(["q"], "w")
            n = 0
            while not stop.is_set():
                n += 1
                await broker.aenqueue([out(f"x{n}", "q")])
                got = await consumer.receive(5, 0)
                await consumer.settle([Settlement(delivery=d, action="ack") for d in got])
            await consumer.close()

        writer = threading.Thread(target=asyncio.run, args=(keep_writing(),))
        writer.start()
        outcomes: list[str] = []
        try:
            # When it forks again and again, and each child sends a message
            for k in range(20):
                read_end, write_end = os.pipe()
                pid = os.fork()
                if pid == 0:  # the child
                    os.close(read_end)
                    try:
                        broker.enqueue([out(f"child{k}", "q")])
                        said = b"ok"
                    except BaseException as exc:
                        said = repr(exc).encode()[:200]
                    os.write(write_end, said)
                    os._exit(0)
                os.close(write_end)
                outcomes.append(_answer_of(pid, read_end, within_s=20.0))
        finally:
            stop.set()
            writer.join(10)
            broker.close()
        # Then every child could write (none met a lock its parent held as it forked)
        assert outcomes == ["ok"] * 20

    @async_test
    async def test_a_lease_that_ran_out_while_a_claim_waited_for_the_lock_is_not_taken(
        self,
    ) -> None:
        # Given a message leased for 1 s
        clock = FakeClock()
        broker = SQLiteBroker(self.url, BrokerConfig(clock=clock, lease_s=1))
        try:
            broker.enqueue([out("long", "q")])
            holder = await broker.open_consumer(["q"], "w1")
            (held,) = await holder.receive(1, 0)
            asked = clock.time() + 0.5
            clock.advance(2)
            # When a claim asked for before the lease ran out gets the file only afterwards
            # (another program held the write lock), Then it leaves the lease to its holder
            conn = sqlite3.connect(self.path, isolation_level=None)
            try:
                claimed = sqlite_connection.write(
                    conn,
                    lambda c: claims.claim(c, ["q"], 1, "w2", clock.time(), 1, 5, expired_by=asked),
                    "claim",
                )
            finally:
                conn.close()
            assert claimed.deliveries == []
            assert await holder.extend([held], 1) == set()
            await holder.close()
        finally:
            broker.close()

    @async_test
    async def test_a_waiting_consumer_notices_its_file_was_deleted(self) -> None:
        # Given a consumer of a file, and the file deleted under it (a documented mistake)
        broker = SQLiteBroker(self.url, BrokerConfig())
        try:
            consumer = await broker.open_consumer(["q"], "w1")
            assert await consumer.receive(1, 0) == []
            for suffix in ("", "-wal", "-shm"):
                Path(str(self.path) + suffix).unlink(missing_ok=True)
            # When it waits for messages, Then it says so instead of waiting on the old file
            with pytest.raises(BrokerError, match="was deleted or replaced while in use"):
                await consumer.receive(1, 1.0)
            await consumer.close()
        finally:
            broker.close()

    def test_messages_survive_a_reopen(self) -> None:
        first = SQLiteBroker(self.url, BrokerConfig())
        first.enqueue([out("m1")])
        first.close()
        again = SQLiteBroker(self.url, BrokerConfig())
        try:
            assert again.locate("m1") == "queued"
        finally:
            again.close()

    @async_test
    async def test_an_enqueue_in_this_process_wakes_a_receive_without_polling(self) -> None:
        # Given a consumer that would poll the file only every 60 s
        config = BrokerConfig(poll_interval_s=60.0, clock=SYSTEM_CLOCK)
        worker_side = SQLiteBroker(self.url, config)
        producer_side = SQLiteBroker(self.url, config)
        try:
            consumer = await worker_side.open_consumer(["default"], "w1")
            waiting = asyncio.create_task(consumer.receive(1, 5.0))
            # When another broker on the same file enqueues from another thread
            producer = threading.Timer(0.05, producer_side.enqueue, ([out("m1")],))
            started = SYSTEM_CLOCK.monotonic()
            producer.start()
            try:
                got = await waiting
            finally:
                producer.join()
            await consumer.close()
            # Then the notifier woke the receive at once
            assert [d.id for d in got] == ["m1"]
            assert SYSTEM_CLOCK.monotonic() - started < PROMPT_S
        finally:
            worker_side.close()
            producer_side.close()

    @async_test
    async def test_a_receive_waits_only_until_the_next_due_time(self) -> None:
        broker = SQLiteBroker(self.url, BrokerConfig(poll_interval_s=60.0, clock=SYSTEM_CLOCK))
        try:
            broker.enqueue([out("soon", due=SYSTEM_CLOCK.time() + 0.2)])
            consumer = await broker.open_consumer(["default"], "w1")
            got = await consumer.receive(1, 5.0)
            await consumer.close()
            assert [d.id for d in got] == ["soon"]
        finally:
            broker.close()

    @async_test
    async def test_a_cancelled_receive_loses_no_message(self) -> None:
        broker = SQLiteBroker(self.url, BrokerConfig(clock=SYSTEM_CLOCK))
        try:
            broker.enqueue([out("m1")])
            first = await broker.open_consumer(["default"], "w1")
            second = await broker.open_consumer(["default"], "w2")
            # Given a receive cancelled while its claim may be running in the SQLite thread
            doomed = asyncio.create_task(first.receive(1, 5.0))
            await asyncio.sleep(0)  # a yield, not a delay: lets the claim start
            doomed.cancel()
            with pytest.raises(asyncio.CancelledError):
                await doomed
            # Then the message is handed back uncounted, not left leased until expiry
            (d,) = await second.receive(1, 2.0)
            assert (d.id, d.deliveries) == ("m1", 1)
            await first.close()
            await second.close()
        finally:
            broker.close()

    def _write_behind_faena(self, sql: str, params: tuple[object, ...]) -> None:
        """Commit through a plain connection, as another process would: no notifier."""
        conn = sqlite3.connect(self.path, timeout=5)
        try:
            with conn:
                conn.execute(sql, params)
        finally:
            conn.close()

    def test_wait_notices_a_commit_from_another_connection(self) -> None:
        store = SQLiteResultStore(self.url, SYSTEM_CLOCK, poll_interval_s=0.005)
        try:
            # Given a commit that only PRAGMA data_version can reveal
            sql = "INSERT INTO faena_results (id, fence, expires_at, data) VALUES (?, ?, ?, ?)"
            row = ("j1", 1, None, encode_record(record("j1", SUCCESS)))
            writer = threading.Timer(0.05, self._write_behind_faena, (sql, row))
            started = SYSTEM_CLOCK.monotonic()
            writer.start()
            try:
                got = store.wait("j1", 5.0)
            finally:
                writer.join()
            # Then the polling waiter sees it promptly
            assert got == record("j1", SUCCESS)
            assert SYSTEM_CLOCK.monotonic() - started < PROMPT_S
        finally:
            store.close()

    @async_test
    async def test_receive_notices_a_commit_from_another_connection(self) -> None:
        broker = SQLiteBroker(self.url, BrokerConfig(clock=SYSTEM_CLOCK, poll_interval_s=0.005))
        try:
            consumer = await broker.open_consumer(["default"], "w1")
            sql = (
                "INSERT INTO faena_messages (id, queue, priority, seq, state, due, enqueued_at, "
                "body) VALUES ('m1', 'default', 0, 1000000, 0, 0, 0, x'00')"
            )
            writer = threading.Timer(0.05, self._write_behind_faena, (sql, ()))
            started = SYSTEM_CLOCK.monotonic()
            writer.start()
            try:
                got = await consumer.receive(1, 5.0)
            finally:
                writer.join()
            await consumer.close()
            assert [d.id for d in got] == ["m1"]
            assert SYSTEM_CLOCK.monotonic() - started < PROMPT_S
        finally:
            broker.close()

    def test_using_a_closed_broker_is_a_broker_error(self) -> None:
        broker = SQLiteBroker(self.url, BrokerConfig())
        broker.close()
        with pytest.raises(BrokerError, match="closed"):
            broker.enqueue([out("m1")])

    def test_a_file_that_cannot_be_opened_is_a_broker_error(self, tmp_path: Path) -> None:
        missing_folder = tmp_path / "no" / "such" / "folder" / "faena.sqlite3"
        with pytest.raises(BrokerError, match="is its folder writable"):
            SQLiteBroker(f"sqlite:///{missing_folder}", BrokerConfig())


class TestSQLiteCoordinationOnly(_OnAFile):
    def test_a_file_from_before_the_coordination_store_gains_its_tables(self) -> None:
        # Given a file whose schema has no coordination tables (an earlier release's)
        SQLiteBroker(self.url, BrokerConfig()).close()
        conn = sqlite3.connect(self.path)
        try:
            conn.executescript("DROP TABLE faena_keys; DROP TABLE faena_tokens;")
        finally:
            conn.close()
        # When a coordination store opens it, Then the tables are created and work
        store = SQLiteCoordinationStore(self.url)
        try:
            assert store.set_if_absent("k", "v", 10) is True
            assert store.next_token("t") == 1
        finally:
            store.close()

    def test_keys_and_tokens_survive_a_reopen(self) -> None:
        first = SQLiteCoordinationStore(self.url)
        first.set_if_absent("lock", "owner", 60)
        first.incr("n", 3)
        first.next_token("t")
        first.close()
        again = SQLiteCoordinationStore(self.url)
        try:
            assert (again.get("lock"), again.get("n"), again.next_token("t")) == ("owner", "3", 2)
        finally:
            again.close()

    @async_test
    async def test_the_stores_on_one_file_share_one_executor_thread(self) -> None:
        broker = SQLiteBroker(self.url, BrokerConfig())
        results = SQLiteResultStore(self.url)
        store = SQLiteCoordinationStore(self.url)
        try:
            # When all three do async work on the file
            await broker.aenqueue([out("m1")])
            await results.store_many([record("j1")])
            assert await store.aincr("n") == 1
            # Then their writes queued on one thread, not three competing writers
            name = f"faena-sqlite-{self.path.name}"
            assert sum(t.name.startswith(name) for t in threading.enumerate()) == 1
        finally:
            store.close()
            results.close()
            broker.close()

    def test_using_a_closed_store_is_a_broker_error(self) -> None:
        store = SQLiteCoordinationStore(self.url)
        store.close()
        with pytest.raises(BrokerError, match="closed"):
            store.set_if_absent("k", "v", 10)

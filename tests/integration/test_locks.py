"""Distributed locks on memory, SQLite and Redis: behaviour on a fake clock, then real
processes contending, and a stalled holder overtaken and fenced off."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from faena import (
    BrokerUnavailable,
    ConfigurationError,
    Faena,
    FakeClock,
    Lock,
    LockError,
    LockLost,
    LockNotAcquired,
)
from faena.app.lookup import make_coordination_store
from faena.contracts.coordination import CoordinationStore
from faena.features.lock import MIN_TTL_S
from faena.foundation.clock import SYSTEM_CLOCK
from tests.integration.fenced import fenced_read, fenced_write
from tests.services import drop_prefix, redis_url, require

ROOT = Path(__file__).resolve().parents[2]
BACKENDS = ["memory", "sqlite", "redis"]


def _url(kind: str, tmp_path: Path) -> str:
    if kind == "memory":
        return "memory://"
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'locks.sqlite3'}"
    require("redis", "127.0.0.1", 6379)
    return redis_url()


@pytest.fixture(params=BACKENDS)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    value = _url(request.param, tmp_path)
    yield value
    if request.param == "redis":
        drop_prefix(value)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(url: str, clock: FakeClock) -> Iterator[CoordinationStore]:
    value = make_coordination_store(url, clock)
    yield value
    value.close()


def test_tokens_strictly_increase_and_only_the_holder_releases(store: CoordinationStore) -> None:
    # Given a lock taken and released twice
    tokens = []
    for _ in range(3):
        with Lock(store, "report", ttl=10) as lock:
            assert lock.owned()
            tokens.append(lock.token)
    # Then each hold had a higher token than the one before
    assert tokens == sorted(set(tokens))
    assert len(tokens) == 3
    # And a contender cannot take or release a held lock
    holder = Lock(store, "report", ttl=10)
    assert holder.acquire()
    other = Lock(store, "report", ttl=10, blocking=False)
    assert other.acquire() is False
    with pytest.raises(LockLost, match="not held"):
        other.release()
    with pytest.raises(LockNotAcquired, match="held by another owner"), other:
        pass
    holder.release()
    assert other.acquire() is True
    other.release()


def test_a_dead_holder_loses_the_lock_after_its_ttl(
    store: CoordinationStore, clock: FakeClock
) -> None:
    # Given a holder that stops renewing (it died, or stalled)
    stalled = Lock(store, "job", ttl=5)
    assert stalled.acquire()
    contender = Lock(store, "job", ttl=5, blocking=False)
    clock.advance(4.9)
    assert contender.acquire() is False
    # When its TTL has passed, Then another takes it, with a higher token
    clock.advance(0.1)
    assert contender.acquire() is True
    assert (contender.token or 0) > (stalled.token or 0)
    # And the stalled holder can neither extend nor release it
    with pytest.raises(LockLost, match="expired before it was extended"):
        stalled.extend()
    with pytest.raises(LockLost, match="had expired before release"):
        stalled.release()
    assert contender.owned()


def test_a_block_that_raises_keeps_its_error_when_the_lock_was_lost(
    store: CoordinationStore, clock: FakeClock
) -> None:
    # Given a block that outlives its lock's ttl and then fails
    def body() -> None:
        with Lock(store, "job", ttl=5):
            clock.advance(6)
            raise ValueError("the work failed")

    # Then the caller sees the block's own error (its handlers match), the lost lock noted
    with pytest.raises(ValueError, match="the work failed") as caught:
        body()
    assert any("had expired before release" in n for n in caught.value.__notes__)

    async def abody() -> None:
        async with Lock(store, "job", ttl=5):
            clock.advance(6)
            raise ValueError("the async work failed")

    with pytest.raises(ValueError, match="the async work failed"):
        asyncio.run(abody())
    # While a block that ends well still hears of the lost lock
    with pytest.raises(LockLost), Lock(store, "job", ttl=5):
        clock.advance(6)


def test_extend_keeps_the_lock_past_its_first_ttl(
    store: CoordinationStore, clock: FakeClock
) -> None:
    lock = Lock(store, "long", ttl=5)
    assert lock.acquire()
    clock.advance(4)
    lock.extend(10)
    clock.advance(9)
    # Then it is still held 13 s after it was taken with a 5 s TTL
    assert lock.owned()
    assert Lock(store, "long", blocking=False).acquire() is False
    lock.release()


def test_a_lock_of_the_shortest_ttl_can_be_taken(store: CoordinationStore) -> None:
    lock = Lock(store, "brief", ttl=MIN_TTL_S)
    assert lock.acquire(blocking=False)
    lock.release()


def test_reusing_a_held_lock_object_is_an_error(store: CoordinationStore) -> None:
    lock = Lock(store, "x")
    assert lock.acquire()
    with pytest.raises(LockError, match="already held by this Lock object"):
        lock.acquire()
    lock.release()


def test_async_with_and_decorators(store: CoordinationStore) -> None:
    seen: list[int | None] = []
    lock = Lock(store, "deco", ttl=10, blocking_timeout=0)

    @lock
    def sync_work(n: int) -> int:
        # Then inside, the lock is held by someone: another contender cannot take it
        assert Lock(store, "deco", blocking=False).acquire() is False
        return n * 2

    @lock
    async def async_work(n: int) -> int:
        return n * 3

    async def use_async_with() -> None:
        async with Lock(store, "deco", ttl=10) as held:
            seen.append(held.token)
            await held.aextend(20)
            assert held.owned()

    assert sync_work(2) == 4
    assert asyncio.run(async_work(2)) == 6
    asyncio.run(use_async_with())
    assert seen[0] is not None
    assert Lock(store, "deco", blocking=False).acquire()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"ttl": 0}, "ttl"),
        ({"ttl": -1}, "ttl"),
        ({"ttl": 0.001}, "at least 0.1 s"),
        ({"blocking_timeout": -1}, "blocking_timeout"),
    ],
)
def test_bad_lock_settings_are_clear_errors(kwargs: dict[str, float], match: str) -> None:
    with Faena("x", broker="memory://") as app, pytest.raises(ConfigurationError, match=match):
        app.lock("n", **kwargs)  # type: ignore[arg-type]


def test_a_function_decorated_with_an_app_lock_outlives_app_close(url: str) -> None:
    # Given a function decorated at import time with the app's lock
    app = Faena("x", broker=url)
    calls: list[int] = []

    @app.lock("rebuild", ttl=10)
    def rebuild() -> None:
        calls.append(len(calls))

    rebuild()
    # When the app is closed (as after a request, or a test) and the function called again
    app.close()
    try:
        rebuild()
    finally:
        app.close()
    # Then it runs under the lock on the app's store, made afresh
    assert calls == [0, 1]


def test_auto_renew_keeps_a_lock_held_past_its_ttl_on_the_real_clock(tmp_path: Path) -> None:
    # Given a lock with a 1 s TTL renewed automatically
    store = make_coordination_store(f"sqlite:///{tmp_path / 'renew.sqlite3'}", SYSTEM_CLOCK)
    try:
        lock = Lock(store, "renewed", ttl=1.0, auto_renew=True)
        assert lock.acquire()
        done = threading.Event()
        # When it is held for 3 TTLs, Then it is owned throughout
        deadline = SYSTEM_CLOCK.monotonic() + 3.0
        while SYSTEM_CLOCK.monotonic() < deadline:
            assert lock.owned()
            done.wait(0.1)
        lock.release()
        assert store.get("faena:lock:renewed") is None
    finally:
        store.close()


# -- real processes -------------------------------------------------------------------------
PROCESS_BACKENDS = ["sqlite", "redis"]


@pytest.fixture(params=PROCESS_BACKENDS)
def shared_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    value = _url(request.param, tmp_path)
    yield value
    if request.param == "redis":
        drop_prefix(value)


def _contender(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.integration.lock_contender", *args],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_two_processes_contend_a_thousand_times(shared_url: str, tmp_path: Path) -> None:
    # Given two processes each taking the same lock 500 times, logging in/out to a ledger
    ledger = tmp_path / "ledger.txt"
    procs = [_contender("contend", shared_url, "shared", str(ledger), "500") for _ in range(2)]
    for proc in procs:
        proc.communicate(timeout=170)  # waits, and closes the pipes
        assert proc.returncode == 0
    lines = [line.split() for line in ledger.read_text().splitlines()]
    # Then the ledger is 1,000 in/out pairs by the same holder: never both inside
    assert len(lines) == 2000
    for enter, leave in zip(lines[::2], lines[1::2], strict=True):
        assert enter[0] == "in"
        assert leave[0] == "out"
        assert enter[1:] == leave[1:]
    # And tokens strictly increase from one hold to the next
    tokens = [int(enter[2]) for enter in lines[::2]]
    assert all(a < b for a, b in itertools.pairwise(tokens))
    assert {enter[1] for enter in lines[::2]} == {str(p.pid) for p in procs}


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_a_stopped_holder_is_overtaken_and_its_late_write_is_stale(
    shared_url: str, tmp_path: Path
) -> None:
    storage = str(tmp_path / "fenced.txt")
    # Given a process holding the lock with a 1 s TTL
    holder = _contender("hold", shared_url, "fenced", storage, "1.0")
    try:
        assert holder.stdout is not None
        assert holder.stdin is not None
        first = holder.stdout.readline().split()
        assert first[0] == "token", first
        stale_token = int(first[1])
        # When it is stopped past its TTL
        os.kill(holder.pid, signal.SIGSTOP)
        store = make_coordination_store(shared_url, SYSTEM_CLOCK)
        try:
            with Lock(store, "fenced", ttl=30, blocking_timeout=20) as lock:
                # Then another process takes it over, with a higher token, and writes
                assert (lock.token or 0) > stale_token
                assert fenced_write(storage, lock.token or 0, "fresh write")
                os.kill(holder.pid, signal.SIGCONT)
                holder.stdin.write("go\n")
                holder.stdin.flush()
                # And the resumed holder's late write is refused as stale
                assert holder.stdout.readline().strip() == "write stale"
                assert holder.stdout.readline().strip() == "release lost"
                assert fenced_read(storage) == (lock.token, "fresh write")
        finally:
            store.close()
        holder.communicate(timeout=20)
        assert holder.returncode == 0
    finally:
        if holder.poll() is None:
            os.kill(holder.pid, signal.SIGCONT)
            holder.kill()
            holder.communicate(timeout=10)


# -- the store failing for a moment ---------------------------------------------------------
class Flaky:
    """``store`` whose ``method`` (and its async twin) raises BrokerUnavailable, as a Redis
    timeout or failover does, on the calls numbered in ``fail`` (from 1); ``answered`` is set
    once ``wanted`` calls after the last of those were answered."""

    def __init__(
        self,
        store: CoordinationStore,
        method: str,
        fail: tuple[int, ...] = (1,),
        wanted: int = 0,
        applied: bool = False,
    ) -> None:
        self._store = store
        self._method = method
        self._fail = fail
        self._applied = applied  # the failing call takes effect, only its reply is lost
        self._wanted = wanted
        self.calls = 0
        self.answered = threading.Event()

    def _next(self, real: Callable[[], object] | None = None) -> None:
        self.calls += 1
        if self.calls in self._fail:
            if self._applied and real is not None:
                real()
            raise BrokerUnavailable(f"{self._method}: the store did not answer (injected)")

    def _done(self) -> None:
        if self.calls - max(self._fail) >= self._wanted:
            self.answered.set()

    def __getattr__(self, name: str) -> object:
        real = getattr(self._store, name)
        if name == self._method:

            def call(*args: object) -> object:
                self._next(lambda: real(*args))
                value = real(*args)
                self._done()
                return value

            return call
        if name == "a" + self._method:

            async def acall(*args: object) -> object:
                self._next()
                value = await real(*args)
                self._done()
                return value

            return acall
        return real


def test_auto_renew_goes_on_after_a_renewal_the_store_did_not_answer(
    store: CoordinationStore,
) -> None:
    # Given a lock renewed automatically (call 1 confirms the hold), whose first renewal
    # (call 2) the store does not answer
    flaky = Flaky(store, "compare_and_expire", fail=(2,), wanted=2)
    lock = Lock(flaky, "renew-fault", ttl=0.6, auto_renew=True)  # type: ignore[arg-type]
    assert lock.acquire()
    try:
        # When the renewals go on, Then two more renewals are answered after the failed one
        assert flaky.answered.wait(10), "renewal stopped after one failed call"
        # And the lock is still this holder's alone
        assert lock.owned()
        assert not Lock(store, "renew-fault", blocking=False).acquire()
    finally:
        lock.release()
    assert store.get("faena:lock:renew-fault") is None


def test_async_auto_renew_goes_on_after_a_renewal_the_store_did_not_answer(
    store: CoordinationStore,
) -> None:
    # Given the same under `async with`
    flaky = Flaky(store, "compare_and_expire", fail=(2,), wanted=2)

    async def scenario() -> tuple[bool, bool, bool]:
        lock = Lock(flaky, "arenew-fault", ttl=0.6, auto_renew=True)  # type: ignore[arg-type]
        async with lock:
            renewed = await asyncio.to_thread(flaky.answered.wait, 10)
            owned = await asyncio.to_thread(lock.owned)
            other = await Lock(store, "arenew-fault", blocking=False).aacquire()
        return renewed, owned, other

    # Then the renewer outlived the failure, and nobody else could take the lock meanwhile
    assert asyncio.run(scenario()) == (True, True, False)
    assert store.get("faena:lock:arenew-fault") is None


@pytest.mark.parametrize(
    ("method", "applied"), [("next_token", False), ("set_if_absent", True)], ids=["token", "create"]
)
def test_an_acquisition_the_store_broke_off_gives_the_key_back(
    store: CoordinationStore, method: str, applied: bool
) -> None:
    # Given a store that fails while a lock is being acquired, after the key was created (or
    # as it was: the creation applied but its reply was lost)
    flaky = Flaky(store, method, applied=applied)
    lock = Lock(flaky, "acquire-fault", ttl=30)  # type: ignore[arg-type]
    # When the acquisition fails, Then its error is raised
    with pytest.raises(BrokerUnavailable):
        lock.acquire()
    # And the key is not left held by nobody: another owner takes the lock at once
    assert lock.token is None
    other = Lock(store, "acquire-fault", blocking=False)
    assert other.acquire()
    other.release()


def test_an_auto_renewed_lock_whose_release_failed_is_still_renewed(
    store: CoordinationStore,
) -> None:
    # Given an auto-renewed lock whose first release the store does not answer
    renewed = threading.Event()

    class Watched(Flaky):
        def compare_and_expire(self, key: str, expected: str, ttl_s: float) -> bool:
            renewed.set()
            return store.compare_and_expire(key, expected, ttl_s)

    watched = Watched(store, "compare_and_delete")
    lock = Lock(watched, "renewed", ttl=0.3, auto_renew=True)  # type: ignore[arg-type]
    assert lock.acquire()
    with pytest.raises(BrokerUnavailable):
        lock.release()
    # Then, the lock still being this object's, it goes on being renewed until released
    renewed.clear()
    assert renewed.wait(5)
    lock.release()
    assert lock.token is None


def test_a_release_the_store_did_not_answer_can_be_tried_again(store: CoordinationStore) -> None:
    # Given a held lock whose first release the store does not answer
    lock = Lock(Flaky(store, "compare_and_delete"), "release-fault", ttl=30)  # type: ignore[arg-type]
    assert lock.acquire()
    with pytest.raises(BrokerUnavailable):
        lock.release()
    # When it is released again, Then the lock is free
    assert lock.token is not None
    lock.release()
    assert lock.token is None
    assert store.get("faena:lock:release-fault") is None

"""Retries: explicit (``self.retry``), automatic (``retry_for``), the limit, and the back-off
policy as a pure function."""

from __future__ import annotations

import copy
import datetime as dt
import pickle
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest

from faena import (
    FAILURE,
    RETRY,
    SUCCESS,
    ConfigurationError,
    Faena,
    FakeClock,
    JobContext,
    MaxRetriesExceeded,
    Retry,
    TaskFailed,
)
from faena.model.options import build_options
from faena.model.retry import may_retry, retry_delay

from .support import dead_letters, drain

# -- the policy -----------------------------------------------------------------------------


def _top(low: float, high: float) -> float:
    """A "random" draw that always picks the top of the range."""
    return high


def test_explicit_countdown_wins() -> None:
    # Given back-off on
    options = build_options(retry_backoff=True, default_retry_delay=99)
    # When a countdown is given, Then it is the delay (never negative)
    assert retry_delay(options, 5, countdown=7, uniform=_top) == 7.0
    assert retry_delay(options, 5, countdown=-3, uniform=_top) == 0.0


def test_without_backoff_the_default_delay_is_used() -> None:
    # Given no back-off
    options = build_options(default_retry_delay=42)
    # When delays are computed, Then each is the default delay
    assert [retry_delay(options, n, uniform=_top) for n in range(3)] == [42.0, 42.0, 42.0]


def test_backoff_is_exponential_and_capped() -> None:
    # Given back-off without jitter, capped at 100 s
    options = build_options(retry_backoff=True, retry_backoff_max=100, retry_jitter=False)
    # When delays are computed for successive retries
    delays = [retry_delay(options, n) for n in range(9)]
    # Then they double up to the cap
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 100.0, 100.0]


def test_backoff_factor_scales_the_delays() -> None:
    # Given back-off with a factor of 3
    options = build_options(retry_backoff=3, retry_jitter=False)
    # When delays are computed, Then they are 3 * 2**n
    assert [retry_delay(options, n) for n in range(4)] == [3.0, 6.0, 12.0, 24.0]


def test_full_jitter_draws_between_zero_and_the_capped_delay() -> None:
    # Given back-off with jitter (the default)
    options = build_options(retry_backoff=2, retry_backoff_max=50)
    draws: list[tuple[float, float]] = []

    def uniform(low: float, high: float) -> float:
        draws.append((low, high))
        return (low + high) / 2

    # When delays are computed for successive retries
    delays = [retry_delay(options, n, uniform=uniform) for n in range(6)]
    # Then each is a draw from [0, min(factor * 2**n, max)]
    assert draws == [(0.0, 2.0), (0.0, 4.0), (0.0, 8.0), (0.0, 16.0), (0.0, 32.0), (0.0, 50.0)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 25.0]


def test_huge_retry_counts_do_not_overflow() -> None:
    # Given capped back-off
    options = build_options(retry_backoff=True, retry_backoff_max=600, retry_jitter=False)
    # When the retry count is huge, Then the delay is the cap (no overflow)
    assert retry_delay(options, 10_000) == 600.0


def test_may_retry_counts_against_the_limit() -> None:
    # Given a limit of two retries
    options = build_options(max_retries=2)
    # When asked after n retries, Then only 0 and 1 may retry again
    assert [may_retry(options, n) for n in range(4)] == [True, True, False, False]
    assert may_retry(options, 5, max_retries=10)  # a per-call override
    assert may_retry(build_options(max_retries=None), 10_000)  # no limit


# -- on a worker ----------------------------------------------------------------------------


def test_self_retry_with_countdown_runs_again_when_due(app: Faena, clock: FakeClock) -> None:
    # Given a task that asks to be retried in 30 s on its first attempt
    attempts: list[int] = []

    @app.task(bind=True)
    def flaky(self: JobContext, x: int) -> int:
        attempts.append(self.request.retries)
        if self.request.retries == 0:
            raise self.retry(countdown=30)
        return x

    r = flaky.delay(5)
    # When a worker runs it
    drain(app)
    # Then it is waiting to retry, due in 30 s, and not run early
    assert r.state == RETRY
    record = r.record
    assert record is not None
    assert record.next_run_at == clock.time() + 30
    clock.advance(29)
    assert drain(app).processed == 0
    # When the countdown passes, Then the second attempt runs and succeeds
    clock.advance(1)
    drain(app)
    assert attempts == [0, 1]
    assert r.get(timeout=5) == 5


def test_self_retry_with_eta(app: Faena, clock: FakeClock) -> None:
    # Given a task that asks to run again at a given time
    attempts: list[int] = []

    @app.task(bind=True)
    def later(self: JobContext) -> None:
        attempts.append(self.request.attempt)
        if self.request.attempt == 1:
            raise self.retry(eta=dt.datetime.fromtimestamp(clock.time() + 100, dt.UTC))

    # When it runs
    r = later.delay()
    drain(app)
    # Then the retry does not run before that time
    clock.advance(99)
    drain(app)
    assert attempts == [1]
    # When the time comes, Then it runs
    clock.advance(1)
    drain(app)
    assert attempts == [1, 2]
    assert r.state == SUCCESS


def test_retry_for_retries_listed_exceptions_until_the_limit(app: Faena, clock: FakeClock) -> None:
    # Given a task that retries ConnectionError twice, 10 s apart
    attempts: list[int] = []

    @app.task(retry_for=(ConnectionError,), max_retries=2, default_retry_delay=10)
    def fetch() -> None:
        attempts.append(len(attempts))
        raise ConnectionError("refused")

    r = fetch.delay()
    # When it keeps failing
    for _ in range(3):
        drain(app)
        clock.advance(10)
    # Then it ran three times (the first run and two retries), then failed for good
    assert attempts == [0, 1, 2]
    assert r.state == FAILURE
    with pytest.raises(TaskFailed) as caught:
        r.get(timeout=5)
    assert caught.value.type_name == "ConnectionError"
    # And its message is in the dead-letter queue with reason "failed"
    assert dead_letters(app)[r.id].reason == "failed"


def test_exceptions_not_in_retry_for_fail_at_once(app: Faena) -> None:
    # Given a task retrying ConnectionError only
    attempts: list[int] = []

    @app.task(retry_for=(ConnectionError,), max_retries=5)
    def parse() -> None:
        attempts.append(1)
        raise ValueError("bad data")

    # When it raises something else
    r = parse.delay()
    drain(app)
    # Then it fails at once, without retrying
    assert attempts == [1]
    assert r.state == FAILURE


def test_self_retry_with_no_retries_left_raises_max_retries_exceeded(
    app: Faena, clock: FakeClock
) -> None:
    # Given a task allowed one retry that always asks for another
    @app.task(bind=True, max_retries=1)
    def stubborn(self: JobContext) -> None:
        raise self.retry(countdown=1)

    r = stubborn.delay()
    drain(app)
    clock.advance(1)
    drain(app)
    # Then the second request fails it with MaxRetriesExceeded, dead-lettered as "failed"
    assert r.state == FAILURE
    failed = r.get(timeout=5, propagate=False)
    assert isinstance(failed, TaskFailed)
    assert failed.type_name.endswith("MaxRetriesExceeded")
    assert dead_letters(app)[r.id].reason == "failed"


def test_self_retry_with_exc_and_no_retries_left_raises_that_exception(app: Faena) -> None:
    # Given a task with no retries that asks to retry with a cause
    @app.task(bind=True, max_retries=0)
    def once(self: JobContext) -> None:
        raise self.retry(exc=LookupError("no such row"))

    # When it runs
    r = once.delay()
    drain(app)
    # Then the job fails with the cause, not MaxRetriesExceeded
    failed = r.get(timeout=5, propagate=False)
    assert isinstance(failed, TaskFailed)
    assert (failed.type_name, failed.error_message) == ("LookupError", "no such row")


def test_retry_record_keeps_the_cause(app: Faena) -> None:
    # Given a task that retries with a cause
    @app.task(bind=True, max_retries=3)
    def flaky(self: JobContext) -> None:
        raise self.retry(exc=TimeoutError("slow upstream"), countdown=5)

    # When it runs
    r = flaky.delay()
    drain(app)
    # Then its RETRY record holds the cause
    record = r.record
    assert record is not None
    assert record.state == RETRY
    assert record.error is not None
    assert record.error.message == "slow upstream"


def test_retry_raised_directly_uses_the_task_policy(app: Faena, clock: FakeClock) -> None:
    # Given a task that raises Retry itself, with back-off off and a 60 s default delay
    @app.task(default_retry_delay=60)
    def poll() -> None:
        raise Retry()

    # When it runs
    r = poll.delay()
    drain(app)
    # Then the next attempt is due after the task's default delay
    record = r.record
    assert record is not None
    assert record.next_run_at == clock.time() + 60


def test_retry_raised_directly_with_a_datetime_eta_runs_once_at_that_time(
    app: Faena, clock: FakeClock
) -> None:
    # Given a task that raises Retry itself with a datetime, as self.retry() accepts
    attempts: list[int] = []

    @app.task(bind=True)
    def later(self: JobContext) -> None:
        attempts.append(self.request.attempt)
        if self.request.attempt == 1:
            raise Retry(eta=dt.datetime.fromtimestamp(clock.time() + 60, dt.UTC))

    # When it runs
    r = later.delay()
    drain(app)
    # Then it ran once, and its next attempt is due at that time (not handed back at once)
    assert attempts == [1]
    record = r.record
    assert record is not None
    assert record.state == RETRY
    assert record.next_run_at == pytest.approx(clock.time() + 60)
    assert dead_letters(app) == {}
    # When the time comes, Then it runs again
    clock.advance(60)
    drain(app)
    assert attempts == [1, 2]
    assert r.state == SUCCESS


@pytest.mark.parametrize(
    "when",
    [
        {"countdown": float("inf")},
        {"countdown": float("nan")},
        {"countdown": "10"},
        {"eta": float("inf")},
        {"eta": float("nan")},
        {"eta": "2030-01-01"},
        {"countdown": True},
    ],
)
def test_a_retry_time_that_is_not_a_finite_time_is_refused(when: dict[str, Any]) -> None:
    # Given a retry time that no broker can hold, When a Retry is made, Then it is refused
    with pytest.raises(ConfigurationError, match=r"must be .*a finite number of seconds"):
        Retry(**when)


@pytest.mark.parametrize("limit", ["5", -1, 2.0, True])
def test_a_retry_limit_that_is_not_a_count_is_refused(limit: Any) -> None:
    with pytest.raises(ConfigurationError, match="max_retries must be an int >= 0 or None"):
        Retry(max_retries=limit)


def test_a_retry_takes_a_countdown_or_an_eta_not_both() -> None:
    with pytest.raises(ConfigurationError, match="countdown or eta, not both"):
        Retry(countdown=5, eta=1000)


def test_a_retry_cause_is_an_exception_or_its_class() -> None:
    assert isinstance(Retry(exc=ConnectionError).exc, ConnectionError)
    assert "ConnectionError" in str(Retry(exc=ConnectionError))
    with pytest.raises(ConfigurationError, match="retry exc must be an exception"):
        Retry(exc="boom")  # type: ignore[arg-type]


def test_a_retry_with_an_exception_class_retries(app: Faena, clock: FakeClock) -> None:
    # Given a task that asks for a retry naming the exception class as its cause
    runs: list[int] = []

    @app.task(bind=True, default_retry_delay=1)
    def flaky(self: JobContext) -> int:
        runs.append(1)
        if len(runs) == 1:
            raise self.retry(exc=ConnectionError)  # type: ignore[arg-type]
        return len(runs)

    r = flaky.delay()
    drain(app)
    clock.advance(1)
    drain(app)
    # Then it was retried (not failed with an unrelated error)
    assert r.get(timeout=1) == 2


def test_a_task_asking_for_a_bad_retry_limit_fails_once_with_that_error(app: Faena) -> None:
    # Given a task that retries with a retry limit that is not a number
    runs: list[int] = []

    @app.task(bind=True)
    def poller(self: JobContext) -> None:
        runs.append(1)
        raise self.retry(max_retries="5")  # type: ignore[arg-type]

    # When it runs
    r = poller.delay()
    drain(app)
    # Then it ran once and failed with a clear error (not handed back to run again)
    assert runs == [1]
    with pytest.raises(TaskFailed, match="max_retries must be an int >= 0"):
        r.get(timeout=5)
    assert set(dead_letters(app)) == {r.id}


def test_a_task_asking_for_an_impossible_retry_time_fails_with_that_error(
    app: Faena,
) -> None:
    # Given a task that asks to retry "never soon" with an infinite countdown
    @app.task(bind=True)
    def poller(self: JobContext) -> None:
        raise self.retry(countdown=float("inf"))

    @app.task
    def after(i: int) -> int:
        return i

    # When it runs beside another job
    r = poller.delay()
    other = after.delay(7)
    drain(app)
    # Then the job fails with a clear error (its message kept in the dead-letter queue, as for
    # any failure), and the other job completes
    with pytest.raises(TaskFailed, match="retry countdown must be a finite number"):
        r.get(timeout=5)
    assert other.get(timeout=5) == 7
    assert set(dead_letters(app)) == {r.id}


def test_retry_backoff_on_a_worker_stays_within_the_cap(app: Faena, clock: FakeClock) -> None:
    # Given a task retried with jittered back-off capped at 4 s
    @app.task(retry_for=(OSError,), retry_backoff=True, retry_backoff_max=4, max_retries=None)
    def flaky() -> None:
        raise OSError("again")

    # When it fails again and again
    r = flaky.delay()
    nows: list[tuple[float, Any]] = []
    for _ in range(3):
        drain(app)
        record = r.record
        assert record is not None
        nows.append((clock.time(), record.next_run_at))
        clock.advance(4)
    # Each retry is due within [now, now + min(2**n, 4)]
    # Then each retry is due within [now, now + min(2**n, 4)]
    for n, (now, due) in enumerate(nows):
        assert now <= due <= now + min(2**n, 4)


def test_max_retries_override_per_call(app: Faena, clock: FakeClock) -> None:
    # Given a task with no retries that raises its limit when asking to retry
    attempts: list[int] = []

    @app.task(bind=True, max_retries=0)
    def f(self: JobContext) -> None:
        attempts.append(self.request.retries)
        if self.request.retries < 2:
            raise self.retry(countdown=1, max_retries=5)

    # When it runs until it stops asking
    r = f.delay()
    for _ in range(3):
        drain(app)
        clock.advance(1)
    # Then the per-call limit applied
    assert attempts == [0, 1, 2]
    assert r.state == SUCCESS


def test_max_retries_exceeded_is_a_task_control_error() -> None:
    from faena import TaskControlError

    # Then running out of retries is a task-control error, and Retry is a signal
    assert issubclass(MaxRetriesExceeded, TaskControlError)
    assert not issubclass(Retry, Exception)  # `except Exception` in a task cannot swallow it


@pytest.mark.parametrize("countdown", [Decimal("2.5"), Fraction(5, 2), 2.5, 2])
def test_a_retry_time_may_be_any_real_number(countdown: Any) -> None:
    # Given a countdown of any real number type, When a Retry is made, Then it is seconds
    assert Retry(countdown=countdown).countdown == float(countdown)
    assert Retry(eta=Decimal("1795780000.5")).eta == 1795780000.5


def test_a_retry_survives_pickling_and_copying() -> None:
    # Given a retry (raised in a helper process and sent back, or copied by a framework)
    original = Retry(countdown=5, exc=ValueError("slow upstream"), max_retries=3)
    # When it is pickled or copied, Then it is the same retry
    for again in (pickle.loads(pickle.dumps(original)), copy.copy(original)):
        assert isinstance(again, Retry)
        assert (again.countdown, again.eta, again.max_retries) == (5.0, None, 3)
        assert str(again.exc) == "slow upstream"
        assert str(again) == str(original)

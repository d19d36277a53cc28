"""Every error faena raises, and the control-flow signals a task may raise.

The tree::

    FaenaError
    ├── ConfigurationError          bad settings, options, URLs, app specs
    │   └── UnknownTaskError        a task name that is not registered
    ├── BrokerError                 the broker could not do what was asked
    │   ├── BrokerUnavailable       the server did not answer within the configured timeout
    │   └── MessageTooLarge         an encoded message over ``max_message_size``
    ├── SerializationError          arguments or results that cannot be encoded or decoded
    ├── ResultError                 problems reading a job's outcome
    │   ├── TimeoutError            ``AsyncResult.get(timeout=...)`` ran out of time
    │   ├── TaskFailed              the job failed; carries the remote type, message, traceback
    │   │   └── ChordError          a chord member failed, so the body never ran
    │   └── TaskRevoked             the job was revoked or expired before it could finish
    ├── TaskControlError            misuse of task control (``retry`` outside a worker, ...)
    │   └── MaxRetriesExceeded      ``self.retry()`` called with no retries left
    └── LockError                   a distributed lock could not do what was asked
        ├── LockNotAcquired         another holder kept it past ``blocking_timeout``
        └── LockLost                its TTL ran out (or it was never held) before release/extend

    Signals (not failures; a task raises them to steer its own job):
    TaskSignal (BaseException)
    ├── Retry                       run again later
    └── Reject                      dead-letter the message now, with a reason

    Limits raised inside a running task:
    SoftTimeLimitExceeded (Exception)   the soft limit passed; clean up and return
    TimeLimitExceeded (BaseException)   the hard limit passed; the job is being stopped
    WorkerLost (Exception)              the process running the job died
"""

from __future__ import annotations

import builtins
import contextlib
import decimal
import math
import numbers
from datetime import datetime

from faena.foundation.util import utf8_safe


class FaenaError(Exception):
    """Something went wrong in faena."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or type(self).__name__).strip())


class ConfigurationError(FaenaError):
    """The configuration is not valid."""


class UnknownTaskError(ConfigurationError):
    """No task is registered under that name."""


class BrokerError(FaenaError):
    """The broker could not complete the operation."""


class BrokerGone(BrokerError):
    """The broker this process opened is no longer there for it (its SQLite file was deleted or
    replaced): waiting does not help, only a restart does. A worker stops, exiting 1."""


class BrokerUnavailable(BrokerError):
    """The broker's server did not answer within the configured timeout.

    A write that failed this way may or may not have reached the server: enqueue again with the
    same ``task_id`` to be safe (a broker holds at most one message per id).
    """


class RecordRefused(BrokerError):
    """The result store cannot hold this job's record, whatever is tried later: another
    program's value sits where the store keeps it."""


class SettlementsRefused(BrokerError):
    """Some settlements of one ``settle`` call were refused for good as things stand (another
    program's value under a queue's keys) and changed nothing; the others were applied.

    ``applied`` has one entry per settlement, in order: what ``settle`` would have returned
    for it (``True``, or ``False`` when the lease was no longer held), or ``None`` when it was
    refused and may be sent again later.
    """

    def __init__(self, message: str, applied: list[bool | None]) -> None:
        super().__init__(message)
        self.applied = applied

    def __reduce__(self) -> tuple[type[SettlementsRefused], tuple[str, list[bool | None]]]:
        return (type(self), (str(self), self.applied))


class MessageTooLarge(BrokerError):
    """The encoded message is larger than ``max_message_size``."""


class SerializationError(FaenaError):
    """A value could not be serialized or deserialized."""


class ResultError(FaenaError):
    """The job's result could not be read."""


class TimeoutError(ResultError, builtins.TimeoutError):
    """The job did not finish within the timeout."""


class TaskFailed(ResultError):
    """The job failed on the worker.

    Attributes:
        job_id: the failed job.
        type_name: the exception's qualified type name on the worker, e.g. ``"ValueError"``.
        error_message: ``str()`` of the remote exception.
        remote_traceback: the formatted traceback text from the worker.
    """

    def __init__(
        self, job_id: str, type_name: str, error_message: str, remote_traceback: str = ""
    ) -> None:
        self.job_id = job_id
        self.type_name = type_name
        self.error_message = error_message
        self.remote_traceback = remote_traceback
        super().__init__(f"job {job_id} failed: {type_name}: {error_message}")


class ChordError(TaskFailed):
    """A member of the chord failed, so its body never ran.

    Attributes:
        member_id: the failed member's job id (its own error is in the message).
    """

    def __init__(
        self,
        job_id: str,
        type_name: str,
        error_message: str,
        remote_traceback: str = "",
        member_id: str | None = None,
    ) -> None:
        super().__init__(job_id, type_name, error_message, remote_traceback)
        self.member_id = member_id


class TaskRevoked(ResultError):
    """The job was revoked or expired before it could finish."""

    def __init__(self, job_id: str, reason: str | None = None) -> None:
        self.job_id = job_id
        self.reason = reason
        super().__init__(f"job {job_id} was revoked" + (f": {reason}" if reason else ""))


class TaskControlError(FaenaError):
    """Task control was used where it has no meaning."""


class MaxRetriesExceeded(TaskControlError):
    """The task has no retries left."""


class LockError(FaenaError):
    """A distributed lock could not do what was asked."""


class LockNotAcquired(LockError):
    """The lock is held by another owner and was not released in time."""


class LockLost(LockError):
    """The lock is no longer held by this owner: its TTL ran out and another may hold it.

    Work done under the lock after its TTL ran out was not protected; write with the lock's
    fencing token so the storage can refuse late writes.
    """


class TaskSignal(BaseException):
    """Base of the control-flow signals a task raises to steer its own job."""


class Retry(TaskSignal):
    """Run this job again later.

    Raised by ``self.retry()``; a task may also raise it directly.
    """

    def __init__(
        self,
        countdown: float | None = None,
        eta: datetime | float | None = None,
        exc: BaseException | type[BaseException] | None = None,
        max_retries: int | None = None,
    ) -> None:
        """``countdown`` is seconds from now, ``eta`` a ``datetime`` or Unix seconds.

        ``exc`` is the exception that caused the retry (an exception class is taken as its
        instance without arguments).

        Raises:
            ConfigurationError: ``countdown`` or ``eta`` is not a finite time (``inf``,
                ``nan``, a string), ``max_retries`` is not an int >= 0 (or ``None``), or
                ``exc`` is not an exception; raised in the task, the job fails with it.
        """
        if max_retries is not None and (type(max_retries) is not int or max_retries < 0):
            raise ConfigurationError(
                f"retry max_retries must be an int >= 0 or None (the task's own), got "
                f"{max_retries!r}"
            )
        if countdown is not None and eta is not None:
            raise ConfigurationError("give a retry countdown or eta, not both")
        given: object = exc
        if isinstance(given, type) and issubclass(given, BaseException):
            given = given()  # raise Retry(exc=ConnectionError) reads as the class's instance
        if given is not None and not isinstance(given, BaseException):
            raise ConfigurationError(f"retry exc must be an exception (or None), got {exc!r}")
        self.countdown = finite_seconds("retry countdown", countdown)
        self.eta = finite_seconds(
            "retry eta", eta.timestamp() if isinstance(eta, datetime) else eta, "a datetime or "
        )
        self.exc: BaseException | None = given
        self.max_retries = max_retries
        reason = f" ({type(given).__name__}: {given})" if given is not None else ""
        super().__init__(f"retry requested{reason}")

    def __reduce__(self) -> tuple[type[Retry], tuple[object, ...]]:
        # Rebuilt from its own fields (pickled to another process, copied), not from its
        # message, which the constructor would take for a countdown.
        return (type(self), (self.countdown, self.eta, self.exc, self.max_retries))


def finite_seconds(what: str, value: object, other: str = "") -> float | None:
    """``value`` as a float of seconds (``None`` stays ``None``).

    Raises:
        ConfigurationError: not a number (a bool counts as none), or not finite.
    """
    if value is None:
        return None
    # Any real number (Decimal, Fraction, a numpy scalar) counts, not a bool.
    seconds = math.nan
    if not isinstance(value, bool) and isinstance(value, numbers.Real | decimal.Decimal):
        with contextlib.suppress(OverflowError, ValueError):
            seconds = float(value)
    if not math.isfinite(seconds):
        raise ConfigurationError(f"{what} must be {other}a finite number of seconds, got {value!r}")
    return seconds


class Reject(TaskSignal):
    """Send this message to the dead-letter queue now, without retrying."""

    def __init__(self, reason: str = "rejected") -> None:
        if not isinstance(reason, str):
            raise TypeError(f"a rejection's reason is text (str), got {type(reason).__name__}")
        self.reason = utf8_safe(reason)  # it is stored with the dead letter
        super().__init__(self.reason)


def _default_message(exc: BaseException, message: str | None) -> str:
    """The message given, else the first line of the class docstring."""
    return message or (type(exc).__doc__ or type(exc).__name__).strip().splitlines()[0]


class SoftTimeLimitExceeded(Exception):
    """The task's soft time limit passed; clean up and return or raise."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(_default_message(self, message))


class TimeLimitExceeded(BaseException):
    """The task's hard time limit passed; the job is being stopped.

    A ``BaseException`` so that a task's ``except Exception`` cannot swallow it.
    """

    def __init__(self, message: str | None = None) -> None:
        super().__init__(_default_message(self, message))


class WorkerLost(Exception):
    """The process running the job died before the job finished."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(_default_message(self, message))

"""``AsyncResult``: the handle a caller holds on one job."""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import Generator
from typing import TYPE_CHECKING, Any, Generic, Literal, NamedTuple, TypeVar, cast, overload

from faena.foundation.clock import SYSTEM_CLOCK
from faena.foundation.exceptions import (
    BrokerError,
    BrokerUnavailable,
    ChordError,
    ResultError,
    SerializationError,
    TaskFailed,
    TaskRevoked,
    TimeoutError,
    finite_seconds,
)
from faena.foundation.util import revoker_identity, utf8_safe
from faena.model import states
from faena.model.outcome import FINAL_FENCE, JobRecord
from faena.model.serialization import loads_json, loads_pickle
from faena.model.task import WORKER_LOOPS, current_context

if TYPE_CHECKING:
    from faena.app.core import Faena
    from faena.contracts.broker import Location

R = TypeVar("R")


_LOOK_S = 1.0
"""How often a waiting ``get()`` also asks the broker whether the message died unrecorded."""


def _slice(deadline: float | None) -> float:
    if deadline is None:
        return _LOOK_S
    return max(0.0, min(_LOOK_S, deadline - SYSTEM_CLOCK.monotonic()))


def _refuse_blocking_in_async_job(app: Faena) -> None:
    """A blocking wait in an ``async def`` job would hold the worker's event loop: every other
    job of the worker, and the renewal of its leases, would wait with it."""
    if app.settings.eager or current_context() is None:
        return
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return  # a sync task, in a thread of its own: it may wait
    if loop not in WORKER_LOOPS:
        return  # a job on an event loop of its own (threads, solo, processes pools)
    raise RuntimeError(
        "get() would block the worker's event loop in an async def task; use `await result` "
        "or `await result.aget(timeout=...)` (and for a group, `await group_result`)"
    )


def _end_workflow(app: Faena, body: bytes, reason: str) -> None:
    """A revoked message removed from the broker will reach no worker: when it was part of a
    workflow, carry out the failure rules here, as a worker does for a part that ends without
    running (its chain stops, its chord fails, the error callbacks are sent)."""
    from faena.app.producer_flow import end_revoked  # workflows only

    end_revoked(app, body, reason)


def wait_deadline(timeout: float | None) -> float | None:
    """When a wait of ``timeout`` seconds ends (``None`` or ``inf``: never).

    Raises:
        ConfigurationError: ``timeout`` is not a number of seconds (``nan``, a string).
    """
    if timeout is None or (type(timeout) in (int, float) and timeout == math.inf):
        return None
    return SYSTEM_CLOCK.monotonic() + (finite_seconds("a get() timeout", timeout) or 0.0)


def _past(deadline: float | None) -> bool:
    return deadline is not None and SYSTEM_CLOCK.monotonic() >= deadline


def _ready(record: JobRecord | None) -> bool:
    return record is not None and record.state in states.READY_STATES


def _state_of(record: JobRecord | None, where: Location | None) -> str:
    """A job's state from a record that is not ready (or none) and where its message is."""
    if record is not None:
        # A message whose worker died on its last allowed delivery is dead-lettered by the
        # broker itself; its record still says how far it got.
        return states.FAILURE if where == "dead" else record.state
    if where == "queued":
        return states.QUEUED
    if where == "scheduled":
        return states.SCHEDULED
    if where == "leased":
        return states.STARTED
    if where == "dead":
        return states.FAILURE
    return states.PENDING


class Progress(NamedTuple):
    """How far a running job says it is."""

    fraction: float
    message: str | None


class AsyncResult(Generic[R]):
    """A job's state and outcome, by id.

    Example:
        >>> r = add.delay(2, 3)
        >>> r.get(timeout=5)
        5
        >>> r.state
        'SUCCESS'
    """

    def __init__(self, job_id: str | uuid.UUID, app: Faena) -> None:
        given: object = job_id
        if isinstance(given, uuid.UUID):
            given = str(given)  # the form every id is sent in
        if not isinstance(given, str) or not given:
            raise TypeError(f"a job id is a non-empty str (or a UUID), got {job_id!r}")
        self.id: str = given
        self.app = app

    def __repr__(self) -> str:
        return f"<AsyncResult {self.id}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AsyncResult) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    # -- reading ------------------------------------------------------------------------------
    @property
    def record(self) -> JobRecord | None:
        """The stored record, or ``None`` if the result store has none."""
        return self.app.results.fetch(self.id)

    @property
    def state(self) -> str:
        """``PENDING`` (unknown id), ``QUEUED``, ``SCHEDULED``, ``STARTED``, ``RETRY``,
        ``SUCCESS``, ``FAILURE`` or ``REVOKED``."""
        record = self.record
        if record is not None and record.state in states.READY_STATES:
            return record.state
        return _state_of(record, self.app.broker.locate(self.id, live_first=True))

    status = state

    def ready(self) -> bool:
        """Whether the job has finished (success, failure or revoked)."""
        return self.state in states.READY_STATES

    def successful(self) -> bool:
        return self.state == states.SUCCESS

    def failed(self) -> bool:
        return self.state == states.FAILURE

    @property
    def result(self) -> R | BaseException | None:
        """The value if it succeeded, the error (as ``TaskFailed``) if it failed, else ``None``."""
        record = self.record
        if record is None:
            return None
        if record.state == states.SUCCESS:
            return cast(R, self._value(record))
        if record.state == states.FAILURE:
            return self._failure(record)
        return None

    @property
    def traceback(self) -> str | None:
        """The remote traceback text of a failure."""
        record = self.record
        return record.error.traceback if record and record.error else None

    @property
    def progress(self) -> Progress | None:
        """The last progress the job reported, if any."""
        record = self.record
        if record is None or record.progress is None:
            return None
        return Progress(record.progress, record.progress_message)

    # -- waiting ------------------------------------------------------------------------------
    @overload
    def get(self, timeout: float | None = None, propagate: Literal[True] = True) -> R: ...
    @overload
    def get(
        self, timeout: float | None = None, *, propagate: Literal[False]
    ) -> R | ResultError: ...
    @overload
    def get(self, timeout: float | None, propagate: Literal[False]) -> R | ResultError: ...

    def get(self, timeout: float | None = None, propagate: bool = True) -> R | ResultError:
        """Wait for the job and return its value.

        Raises:
            faena.TimeoutError: not finished within ``timeout`` seconds.
            faena.TaskFailed: it failed (with ``propagate``; else the error is returned).
            faena.TaskRevoked: it was revoked or expired (with ``propagate``).
            RuntimeError: called by an ``async def`` task on its worker's event loop, which it
                would block (use ``await result``).
        """
        _refuse_blocking_in_async_job(self.app)
        deadline = wait_deadline(timeout)
        while True:
            record = self.app.results.wait(self.id, _slice(deadline))
            if _ready(record):
                return self._outcome(record, None, timeout, propagate)
            where = self.app.broker.locate(self.id, live_first=True)
            if where == "dead" or _past(deadline):
                return self._outcome(record, where, timeout, propagate)

    @overload
    async def aget(self, timeout: float | None = None, propagate: Literal[True] = True) -> R: ...
    @overload
    async def aget(
        self, timeout: float | None = None, *, propagate: Literal[False]
    ) -> R | ResultError: ...
    @overload
    async def aget(self, timeout: float | None, propagate: Literal[False]) -> R | ResultError: ...

    async def aget(self, timeout: float | None = None, propagate: bool = True) -> R | ResultError:
        """``get`` for async callers."""
        deadline = wait_deadline(timeout)
        while True:
            record = await self.app.results.await_ready(self.id, _slice(deadline))
            if _ready(record):
                return self._outcome(record, None, timeout, propagate)
            where = await self.app.broker.alocate(self.id, live_first=True)
            if where == "dead" or _past(deadline):
                return self._outcome(record, where, timeout, propagate)

    def __await__(self) -> Generator[Any, None, R]:
        return self.aget().__await__()

    def _outcome(
        self,
        record: JobRecord | None,
        where: Location | None,
        timeout: float | None,
        propagate: bool,
    ) -> R | ResultError:
        """What waiting ends with: ``record`` is ready, or the message is where ``where``
        says (read after the record) and time is up or the message died."""
        if record is None or record.state not in states.READY_STATES:
            if where == "dead":
                # Its worker died on the last delivery allowed: the broker dead-lettered it.
                dead = TaskFailed(
                    self.id,
                    "faena.DeadLettered",
                    "the message is in the dead-letter queue; `faena dlq list` says why",
                )
                if propagate:
                    raise dead
                return dead
            raise TimeoutError(
                f"job {self.id} did not finish within {timeout} s (state "
                f"{_state_of(record, where)}); is a worker consuming its queue? `faena status` "
                "shows queues and workers"
            )
        if record.state == states.SUCCESS:
            return cast(R, self._value(record))
        error: ResultError = (
            self._failure(record)
            if record.state == states.FAILURE
            else TaskRevoked(self.id, record.reason)
        )
        if propagate:
            raise error
        return error

    def _value(self, record: JobRecord) -> Any:
        if record.value is None:
            return None
        if record.serializer == "pickle":
            if "pickle" not in self.app.settings.accept:
                raise SerializationError(
                    f"job {self.id} returned a pickled value, and this app does not accept "
                    "pickle; add accept=['json', 'pickle'] if you trust the workers"
                )
            return loads_pickle(record.value)
        return loads_json(record.value)

    def _failure(self, record: JobRecord) -> TaskFailed:
        error = record.error
        if error is None:
            return TaskFailed(self.id, "UnknownError", record.reason or "no error recorded")
        if error.type == "faena.ChordError":
            return ChordError(
                self.id, error.type, error.message, error.traceback, member_id=record.parent_id
            )
        return TaskFailed(self.id, error.type, error.message, error.traceback)

    # -- lineage ------------------------------------------------------------------------------
    @property
    def parent(self) -> AsyncResult[Any] | None:
        """The job that sent this one (previous chain step, chord member, failed job for an
        error callback), or ``None`` for a job sent by a producer or not recorded yet."""
        record = self.record
        parent_id = record.parent_id if record else None
        return AsyncResult(parent_id, self.app) if parent_id else None

    @property
    def children(self) -> list[AsyncResult[Any]]:
        """The jobs this workflow job sends when it ends (next steps, callbacks, chord body)."""
        record = self.record
        return [AsyncResult(i, self.app) for i in (record.children if record else [])]

    # -- control ------------------------------------------------------------------------------
    def forget(self) -> None:
        """Delete the stored result."""
        self.app.results.forget(self.id)

    def revoke(
        self, terminate: bool = False, reason: str = "revoked", by: str | None = None
    ) -> bool:
        """Make sure the job never runs; with ``terminate``, also stop it if it is running.

        The record keeps who (``by``, default ``user@host pid N``), when (``finished_at``) and
        why (``reason``); it expires with the result TTL, and so does the revoke.

        A queued or scheduled message is removed from the broker; the job's record becomes
        ``REVOKED`` for good (no worker write can overwrite it), so a worker that receives it
        later skips it, and a worker that already fetched it skips it within its
        ``revoke_check_s`` unless the job started meanwhile. A running job is stopped with
        ``terminate=True`` within its worker's ``revoke_check_s`` (process pool: the child is
        killed; async tasks: cancelled; threads: see ``docs/workers.md``). Returns ``True`` if
        the message was still waiting and is now gone.

        The record is written before the message is removed, so a worker that takes the
        message in between skips the job. A job that already has a stored outcome and was sent
        again with the same id is the exception: the old outcome stands until the message is
        removed, and a worker that takes the message before that runs the job.

        Errors: a broker that refuses one of its queues (Redis, another program's value under
        its keys) raises :class:`BrokerError` once the record is written: the job is revoked
        all the same, and its message is removed from every queue the broker took. A broker
        that does not answer raises :class:`BrokerUnavailable` once the record is written: the
        message may still be queued, and a worker that takes it skips the job. A result store
        that fails to write the record has its error raised after the message is removed: the
        job does not run, but its record does not read ``REVOKED``; if the broker failed too,
        the error's notes say so, and the message may still be queued and run.

        A part of a workflow (a chain step, a group or chord member) removed from the broker
        here ends its workflow as a part that ends without running does: its chain stops, its
        chord fails and the error callbacks are sent (see ``docs/canvas.md``).
        """
        return self._revoke(terminate, reason, by, end_workflow=True)

    def _revoke(self, terminate: bool, reason: str, by: str | None, *, end_workflow: bool) -> bool:
        """:meth:`revoke`; ``end_workflow=False`` when the whole workflow is being revoked."""
        for name, value in (("reason", reason), ("by", by)):
            if value is not None and not isinstance(value, str):
                raise TypeError(f"a revoke's {name} is text (str), got {value!r}")
        reason, by = utf8_safe(reason), None if by is None else utf8_safe(by)
        now = self.app.settings.clock.time()
        revoked = JobRecord(
            id=self.id,
            state=states.REVOKED,
            reason=reason,
            terminate=terminate,
            revoked_by=by if by is not None else revoker_identity(),
            updated_at=now,
            finished_at=now,
            fence=FINAL_FENCE,
            expires_at=now + self.app.settings.result_ttl,
        )
        # The record goes first: a worker that claims the message between the two steps reads
        # REVOKED and skips the job. An outcome already stored stands (a job that finished a
        # moment ago), so the check is part of the write; but when the message was waiting
        # after all (a send again after an earlier run), the revoke replaces that outcome.
        written = False
        failed: Exception | None = None
        try:
            written = self.app.results.store(revoked, unless_ready=True)
        except Exception as error:  # the message must go all the same: the job never runs
            failed = error
        refused: BrokerError | None = None
        body: bytes | None = None
        try:
            body = self.app.broker.take(self.id)
        except BrokerError as error:  # BrokerUnavailable included
            if failed is None and isinstance(error, BrokerUnavailable):
                raise  # the record is written: a worker that takes the message skips it
            refused = error
        removed = body is not None
        if failed is not None:
            if refused is not None:
                failed.add_note(
                    f"Removing its message failed as well, so it may still be queued: {refused}"
                )
            raise failed
        if removed and not written:
            self.app.results.store(revoked)
        if body and end_workflow:
            _end_workflow(self.app, body, reason)
        if refused is not None:
            raise refused
        return removed

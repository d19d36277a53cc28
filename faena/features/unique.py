"""Unique jobs: one queued-or-running job per key, claimed in the coordination store.

Sending a task declared ``unique=True`` (or with ``unique_key=fn``) first claims the key
``faena:unique:<task>|<key>`` with ``set_if_absent``, holding the new job's id for
``unique_for`` seconds. If the key is taken by a job that has not finished, the send returns
that job's id instead of sending a duplicate. The worker frees the key when the job ends for
good (success, or a failure with no retry left); a key whose job has finished anyway (its
result says SUCCESS, FAILURE or REVOKED: a revoke, or a worker that could not free it; or the
broker holds it as a dead letter: handed out too often to workers that died) is replaced by the
new job; so is one whose message the broker does not hold at all and that has no record (it
was purged before it ran), once senders have found it so for ``ABSENT_GRACE_S``. A send that
fails after its claim (the broker refused or did not answer) frees the key again.
``unique_for`` bounds the claim in every other case.

The default key is a hash of the call's encoded arguments: the same arguments, the same job.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from typing import Any

import msgspec

from faena.contracts.broker import Location
from faena.contracts.coordination import CoordinationStore
from faena.contracts.results import ResultStore
from faena.foundation.exceptions import BrokerError
from faena.model import states
from faena.model.limits import DEFAULT_UNIQUE_FOR_S
from faena.model.message import Message
from faena.model.options import TaskOptions

log = logging.getLogger("faena.unique")

_CLAIM_TRIES = 5
"""A finished holder is replaced; racing replacers retry, a few times at most."""
ABSENT_GRACE_S = 120.0
"""How long a holder that the broker does not hold and that has no record (its message was
purged before it ran) keeps its key after a sender first saw it so: longer than a send's
enqueue may take (the holder's own sender may be between its claim and its enqueue)."""


def is_unique(options: TaskOptions | None) -> bool:
    return options is not None and (options.unique or options.unique_key is not None)


def unique_key(
    options: TaskOptions, message: Message, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> str:
    """The coordination key the call claims."""
    if options.unique_key is not None:
        key = str(options.unique_key(args, kwargs))
    else:
        # Keys sorted: the same keyword arguments in another order are the same call.
        packed = msgspec.json.encode([message.args, message.kwargs, message.body], order="sorted")
        key = hashlib.sha256(packed).hexdigest()
    return f"faena:unique:{message.task}|{key}"


def claim(
    store: CoordinationStore,
    results: ResultStore,
    key: str,
    job_id: str,
    ttl_s: float | None,
    where: Callable[[str], Location | None],
    now: Callable[[], float],
    sender: str | None = None,
) -> str | None:
    """Claim ``key`` for ``job_id``; ``None`` if claimed, else the id of the job holding it.

    ``where(id)``: where the broker holds that job's message (live first), ``None`` for
    nowhere. A holder held nowhere and without a record (purged before it ran) is replaced
    once it has been seen so for :data:`ABSENT_GRACE_S` (``now``: the app's clock).
    ``sender``: the job sending, when a job sends; a job that sends its own call again (a
    poll that schedules its next round) hands its key over to the new job.

    Raises:
        BrokerError: the key changed hands on every try (finished holders replaced by racing
            senders); nothing was claimed, and the send may be made again.
    """
    ttl = ttl_s if ttl_s is not None else DEFAULT_UNIQUE_FOR_S
    for _ in range(_CLAIM_TRIES):
        if store.set_if_absent(key, job_id, ttl):
            return None
        holder = store.get(key)
        if holder is None:
            continue  # it expired or was released just now: try again
        if holder != sender:  # (a job sending its own call again hands the key over)
            record = results.fetch(holder)
            if record is None or record.state not in states.READY_STATES:
                place = where(holder)
                if place != "dead" and not (
                    place is None and record is None and _gone(store, key, holder, ttl, now())
                ):
                    return holder  # queued, scheduled, running or retrying: that is the job
        store.compare_and_delete(key, holder)  # finished: the key is free for a new job
    raise BrokerError(
        f"could not claim unique key {key!r}: it changed hands {_CLAIM_TRIES} times while "
        "this send tried; nothing was sent, send again"
    )


def _gone(store: CoordinationStore, key: str, holder: str, ttl: float, now: float) -> bool:
    """Whether ``holder``, just found nowhere, was already found so :data:`ABSENT_GRACE_S`
    ago; the first sender to find it so notes when."""
    marker = f"{key}|absent"
    seen = store.get(marker)
    if seen is not None:
        noted, _, at = seen.rpartition("|")
        if noted == holder:
            return now - float(at) >= ABSENT_GRACE_S
        store.compare_and_delete(marker, seen)  # about an earlier holder
    store.set_if_absent(marker, f"{holder}|{now!r}", ttl)
    return False


def release(store: CoordinationStore, key: str, job_id: str) -> None:
    """Free ``key`` if ``job_id`` still holds it (its send failed); errors are logged: the
    claim then lasts until ``unique_for``."""
    try:
        store.compare_and_delete(key, job_id)
    except Exception:
        log.exception("could not free unique key %r after a failed send", key)

"""Unique jobs: one queued-or-running job per key, claimed in the coordination store.

Sending a task declared ``unique=True`` (or with ``unique_key=fn``) first claims the key
``faena:unique:<task>|<key>`` with ``set_if_absent``, holding the new job's id for
``unique_for`` seconds. If the key is taken by a job that has not finished, the send returns
that job's id instead of sending a duplicate. The worker frees the key when the job ends for
good (success, or a failure with no retry left); a key whose job has finished anyway (its
result says SUCCESS, FAILURE or REVOKED: a revoke, or a worker that could not free it) is
replaced by the new job. ``unique_for`` bounds the claim in every other case.

The default key is a hash of the call's encoded arguments: the same arguments, the same job.
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec

from faena.contracts.coordination import CoordinationStore
from faena.contracts.results import ResultStore
from faena.model import states
from faena.model.limits import DEFAULT_UNIQUE_FOR_S
from faena.model.message import Message
from faena.model.options import TaskOptions

_CLAIM_TRIES = 5
"""A finished holder is replaced; racing replacers retry, a few times at most."""


def is_unique(options: TaskOptions | None) -> bool:
    return options is not None and (options.unique or options.unique_key is not None)


def unique_key(
    options: TaskOptions, message: Message, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> str:
    """The coordination key the call claims."""
    if options.unique_key is not None:
        key = str(options.unique_key(args, kwargs))
    else:
        packed = msgspec.json.encode([message.args, message.kwargs, message.body])
        key = hashlib.sha256(packed).hexdigest()
    return f"faena:unique:{message.task}|{key}"


def claim(
    store: CoordinationStore,
    results: ResultStore,
    key: str,
    job_id: str,
    ttl_s: float | None,
) -> str | None:
    """Claim ``key`` for ``job_id``; ``None`` if claimed, else the id of the job holding it."""
    ttl = ttl_s if ttl_s is not None else DEFAULT_UNIQUE_FOR_S
    for _ in range(_CLAIM_TRIES):
        if store.set_if_absent(key, job_id, ttl):
            return None
        holder = store.get(key)
        if holder is None:
            continue  # it expired or was released just now: try again
        record = results.fetch(holder)
        if record is None or record.state not in states.READY_STATES:
            return holder  # queued, scheduled, running or retrying: that is the job
        store.compare_and_delete(key, holder)  # finished: the key is free for a new job
    return store.get(key)

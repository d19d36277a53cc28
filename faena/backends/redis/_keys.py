"""The broker's key names, its scripts, and one way to run them (single call or pipelined).

Every key of queue ``q`` is ``<prefix>:{q}:<name>`` (one cluster slot per queue); the names
and what they hold are listed at the top of ``lua/_queue.lua``. Two keys are not tied to a
queue: ``<prefix>:queues`` (a set of every queue ever sent to, for ``stats``, ``locate`` and
administration) and ``<prefix>:workers`` (a hash of live workers).

Scripts run by ``EVALSHA``; a server that does not know one (a restart, ``SCRIPT FLUSH``, a
failover) answers ``NOSCRIPT`` and gets the same call as ``EVAL``, which also caches the
script. redis-py's script objects would instead ask ``SCRIPT EXISTS`` before every pipeline,
an extra round trip on every batch.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import redis.cluster
import redis.exceptions

from faena.backends.redis._client import AsyncSender, SyncSender, Target, load_script, refusal
from faena.model.options import validate_queue

QUEUE_KEY_NAMES: Final = (
    "ready",
    "scheduled",
    "leased",
    "state",
    "body",
    "dead",
    "dead:state",
    "dead:body",
    "seq",
    "wake",
)
"""The order of a queue's keys in every script's KEYS (see ``lua/_queue.lua``)."""
WAKE: Final = QUEUE_KEY_NAMES.index("wake")


def ms(seconds: float) -> int:
    """Seconds as whole milliseconds, the unit of every time in the scripts."""
    return round(seconds * 1000)


class Keys:
    """Key names of one prefix; a queue's ten are made once and kept."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.queues = target.global_key("queues")
        self.workers = target.global_key("workers")
        self._by_queue: dict[str, tuple[str, ...]] = {}

    def queue(self, name: str) -> tuple[str, ...]:
        """The ten keys of queue ``name``, checking the name the first time it is seen."""
        keys = self._by_queue.get(name)
        if keys is None:
            validate_queue(name)
            keys = tuple(self.target.key(name, what) for what in QUEUE_KEY_NAMES)
            self._by_queue[name] = keys
        return keys


class Script:
    """A broker script of ``lua/``, with the queue helpers of ``lua/_queue.lua``."""

    def __init__(self, name: str, *, queue_helpers: bool = True) -> None:
        self.name = name
        self._helpers = ("_queue",) if queue_helpers else ()

    # Read on first use: a process keeps only the scripts it runs (a worker never purges or
    # lists dead letters). Two threads that race here compute the same value.
    @functools.cached_property
    def source(self) -> str:
        return load_script(self.name, *self._helpers)

    @functools.cached_property
    def sha(self) -> str:
        return hashlib.sha1(self.source.encode(), usedforsecurity=False).hexdigest()


ENQUEUE: Final = Script("enqueue")
CLAIM: Final = Script("claim")
SETTLE: Final = Script("settle")
EXTEND: Final = Script("extend")
LOCATE: Final = Script("locate")
REMOVE: Final = Script("remove")
PURGE: Final = Script("purge")
STATS: Final = Script("stats")
DEAD_LETTERS: Final = Script("dead_letters")
REQUEUE_DEAD: Final = Script("requeue_dead")
PURGE_DEAD: Final = Script("purge_dead")
WORKERS: Final = Script("workers", queue_helpers=False)


@dataclass(frozen=True, slots=True)
class _Op:
    script: Script | None
    args: tuple[Any, ...]
    """``numkeys, *keys, *argv`` for a script; the whole command otherwise."""


@dataclass(slots=True)
class Batch:
    """Commands and script calls sent together: alone as one command, else in one pipeline."""

    ops: list[_Op] = field(default_factory=list)

    def script(self, script: Script, keys: Sequence[str], args: Sequence[Any]) -> None:
        self.ops.append(_Op(script, (len(keys), *keys, *args)))

    def command(self, *args: Any) -> None:
        self.ops.append(_Op(None, args))

    def __len__(self) -> int:
        return len(self.ops)

    def _first_try(self, op: _Op) -> tuple[Any, ...]:
        return ("EVALSHA", op.script.sha, *op.args) if op.script else op.args

    def _second_try(self, op: _Op) -> tuple[Any, ...]:
        assert op.script is not None
        return ("EVAL", op.script.source, *op.args)

    def _sort(
        self, replies: list[Any], ops: list[_Op], keep_errors: bool = False
    ) -> tuple[list[_Op], list[int]]:
        """Raise the first error that is not NOSCRIPT (with ``keep_errors``, leave the server's
        refusals in their places); the ops to send again as EVAL."""
        again: list[int] = []
        for i, reply in enumerate(replies):
            if isinstance(reply, redis.exceptions.NoScriptError):
                again.append(i)
            elif isinstance(reply, Exception) and not (keep_errors and refusal(reply)):
                raise reply
        return [ops[i] for i in again], again

    def run(self, sender: SyncSender, keep_errors: bool = False) -> list[Any]:
        """Send everything (one round trip, two if a script had to be loaded); ``keep_errors``
        as in :meth:`arun`."""
        replies = self._send(sender, [self._first_try(op) for op in self.ops])
        retry, where = self._sort(replies, self.ops, keep_errors)
        if retry:
            again = self._send(sender, [self._second_try(op) for op in retry])
            for i, reply in zip(where, again, strict=True):
                replies[i] = reply
            self._sort(replies, self.ops, keep_errors)
        return replies

    async def arun(self, sender: AsyncSender, keep_errors: bool = False) -> list[Any]:
        """``run`` on an event loop; with ``keep_errors``, a call the server refused leaves its
        error in its place instead of raising, so the others' replies are not lost."""
        replies = await self._asend(sender, [self._first_try(op) for op in self.ops])
        retry, where = self._sort(replies, self.ops, keep_errors)
        if retry:
            again = await self._asend(sender, [self._second_try(op) for op in retry])
            for i, reply in zip(where, again, strict=True):
                replies[i] = reply
            self._sort(replies, self.ops, keep_errors)
        return replies

    @staticmethod
    def _send(sender: SyncSender, commands: list[tuple[Any, ...]]) -> list[Any]:
        client: Any = sender.client  # redis-py's cluster client is not typed
        if len(commands) == 1 or isinstance(client, redis.cluster.RedisCluster):
            # redis-py's sync cluster pipeline asks the server for the keys of every script
            # call (COMMAND GETKEYS, one round trip each) and leaks that connection; plain
            # calls find the slot from the call itself.
            replies: list[Any] = []
            for command in commands:
                try:
                    replies.append(sender.execute(*command))
                except redis.exceptions.ResponseError as exc:
                    replies.append(exc)
            return replies
        pipe = client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        return list(pipe.execute(raise_on_error=False))

    @staticmethod
    async def _asend(sender: AsyncSender, commands: list[tuple[Any, ...]]) -> list[Any]:
        if len(commands) == 1:
            try:
                return [await sender.execute(*commands[0])]
            except redis.exceptions.ResponseError as exc:
                return [exc]
        return await sender.execute_many(commands)

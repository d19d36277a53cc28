"""The Redis broker: producers, administration and worker registration.

Every step that moves a message is one Lua script on the keys of one queue (``lua/*.lua``,
key layout in ``lua/_queue.lua``), so a crash at any point leaves each message queued,
scheduled, leased or dead. Many messages or queues at once are one pipeline: one round trip.
The lease lifecycle (claim, settle, extend, waiting) lives in ``consumer``.

Connections: one pooled, thread-safe sync client, made on first use. ``aenqueue``, the async
producers' hot path, and a worker's calls (registration, heartbeats, the server's settings)
send on an asyncio client of the running loop (one per loop, made on first use and closed with
its loop or the broker, see :class:`~faena.backends.redis._stores.Connections`): a hop to a
thread and back would cost more than the round trip itself, and an idle worker then keeps no
sync client, no connection pool of its own and no executor thread. The other async methods
(administration) hand the sync calls to a thread of the running loop's default executor.
Consumers, which live on one loop, have asyncio clients of their own.

Time: every due time, lease and heartbeat is compared with the server's clock (``TIME`` in the
script), or with ``config.clock`` when it is a test clock, so skewed machines agree.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import msgspec

from faena.backends.redis import _keys
from faena.backends.redis._client import (
    SyncSender,
    checked_refusal,
    now_arg,
    parse_url,
    script_error,
    sync_client,
    translated,
)
from faena.backends.redis._health import server_warnings
from faena.backends.redis._keys import Batch, Keys, ms
from faena.backends.redis._stores import Connections
from faena.backends.redis.consumer import RedisConsumer
from faena.backends.redis.results import RedisResultStore
from faena.contracts.broker import (
    Broker,
    BrokerConfig,
    Capabilities,
    Consumer,
    DeadLetter,
    Location,
    Outgoing,
    QueueStats,
    WorkerInfo,
)
from faena.contracts.results import ResultStore
from faena.foundation.exceptions import BrokerError, ConfigurationError
from faena.model.options import MAX_PRIORITY, MIN_PRIORITY
from faena.model.outcome import JobRecord

log = logging.getLogger("faena.broker")

T = TypeVar("T")

_REGISTER_S = 60.0
"""How often a broker adds a queue it sends to to the set of known queues again."""

_LOCATIONS: dict[bytes, Location] = {
    b"queued": "queued",
    b"scheduled": "scheduled",
    b"leased": "leased",
    b"dead": "dead",
}


class RedisBroker(Broker):
    """A broker on a Redis server or cluster, shared by any number of machines.

    Example:
        >>> broker = RedisBroker("redis://localhost:6379/0", BrokerConfig())  # doctest: +SKIP
    """

    capabilities = Capabilities()

    def __init__(self, url: str, config: BrokerConfig) -> None:
        super().__init__(url, config)
        self._target = parse_url(url)
        self._keys = Keys(self._target)
        self._lock = threading.Lock()
        self._sync: SyncSender | None = None
        self._async: Connections | None = None
        self._registered: dict[str, float] = {}  # queue -> when this broker last added it
        self._closed = False

    def _client(self) -> SyncSender:
        # Made on first use: a cluster client connects as it is made, and a broker is often
        # built where no call is sent (a web process's settings, a test of a URL).
        with self._lock:
            if self._closed:
                raise BrokerError(f"the Redis broker for {self._target.display} is closed")
            if self._sync is None:
                self._sync = SyncSender(sync_client(self._target, self.url))
            return self._sync

    def _run(self, batch: Batch, doing: str, keep_errors: bool = False) -> list[Any]:
        with translated(self._target, doing):
            return batch.run(self._client(), keep_errors)

    async def _arun(self, call: Callable[[], T]) -> T:
        return await asyncio.to_thread(call)

    # -- producers --------------------------------------------------------------------------
    def enqueue(self, messages: Sequence[Outgoing]) -> None:
        if not messages:
            return
        batch, new, queues = self._enqueue_batch(messages)
        doing = f"enqueueing {len(messages)} message(s)"
        self._sent(queues, new, self._run(batch, doing, keep_errors=True), doing)

    async def aenqueue(self, messages: Sequence[Outgoing]) -> None:
        if not messages:
            return
        batch, new, queues = self._enqueue_batch(messages)
        connections = self._connections()
        doing = f"enqueueing {len(messages)} message(s)"
        async with connections.using(doing) as sender:
            replies = await batch.arun(sender, keep_errors=True)
        self._sent(queues, new, replies, doing)

    def _sent(self, queues: list[str], new: list[str], replies: list[Any], doing: str) -> None:
        """Check an enqueue's replies: a queue Redis refused (another program's value under
        its keys, or past its limit) took nothing, and fails the call, naming the queues that
        took their messages (one script per queue: those are sent)."""
        if new and isinstance(replies[0], Exception):
            # The set of known queues is only a list for `faena status`, `purge`, `dlq` and
            # finding a message by id: the messages were sent all the same (the calls are not
            # a transaction), so the send stands, and the refusal is said once a minute.
            log.error(
                "Redis at %s refused adding queue(s) %s to the set of known queues (%s): is "
                "another program writing under its keys? Their messages are sent, but "
                "`faena status`, `purge`, `dlq` and finding a message by id do not see them",
                self._target.display,
                ", ".join(new),
                script_error(replies[0]),
            )
        answers = replies[1:] if new else replies
        refused = [(q, r) for q, r in zip(queues, answers, strict=True) if isinstance(r, Exception)]
        self._remember(new)
        if not refused:
            return
        reasons = "; ".join(f"queue {q}: {script_error(r)}" for q, r in refused)
        took = [q for q, r in zip(queues, answers, strict=True) if not isinstance(r, Exception)]
        sent = f"; the messages of queue(s) {', '.join(took)} were sent" if took else ""
        raise BrokerError(
            f"Redis at {self._target.display} refused {doing} ({reasons}); nothing was written "
            f"there{sent}"
        )

    def _remember(self, queues: list[str]) -> None:
        moment = self.config.clock.monotonic()
        for q in queues:
            self._registered[q] = moment

    def _connections(self) -> Connections:
        """The async clients' keeper, made on first use (see ``_client``)."""
        with self._lock:
            if self._closed:
                raise BrokerError(f"the Redis broker for {self._target.display} is closed")
            if self._async is None:
                self._async = Connections(self.url, self.config.clock)
            return self._async

    def _enqueue_batch(self, messages: Sequence[Outgoing]) -> tuple[Batch, list[str], list[str]]:
        """The calls that enqueue ``messages``, the queues they make known, and the queues in
        the order of their calls (after the known queues' one, when there is one)."""
        now = now_arg(self.config.clock)
        per_queue: dict[str, list[Any]] = {}
        for m in messages:
            if not MIN_PRIORITY <= m.priority <= MAX_PRIORITY:
                raise ValueError(
                    f"message {m.id!r} has priority {m.priority!r}; expected an integer from "
                    f"{MIN_PRIORITY} to {MAX_PRIORITY}"
                )
            args = per_queue.get(m.queue)
            if args is None:
                args = per_queue[m.queue] = [now]
            args += (m.id, m.body, m.priority, "" if m.due is None else ms(m.due))
        batch = Batch()
        # The set of known queues lives in a slot of its own, so it is written apart from the
        # queue's script, in the same round trip. Once a minute per queue is enough to fill it
        # again if it is lost on the server (a restart without persistence).
        moment = self.config.clock.monotonic()
        new = [
            q for q in per_queue if moment - self._registered.get(q, -_REGISTER_S) >= _REGISTER_S
        ]
        if new:
            batch.command("SADD", self._keys.queues, *new)
        for queue, args in per_queue.items():
            batch.script(_keys.ENQUEUE, self._keys.queue(queue), args)
        return batch, new, list(per_queue)

    def _known_queues(self, doing: str) -> list[str]:
        batch = Batch()
        batch.command("SMEMBERS", self._keys.queues)
        (names,) = self._run(batch, doing)
        return sorted(n.decode() for n in names)

    def _write_queues(
        self,
        script: _keys.Script,
        queues: Sequence[str],
        args: Sequence[Any],
        doing: str,
        done: Callable[[list[Any]], str],
    ) -> list[Any]:
        """A writing ``script`` once per queue, in one pipeline; the replies in the queues'
        order. Every queue Redis accepts is written; a queue it refuses (another program's
        value under one of its keys) then fails the call, named, with what was done in the
        others (``done`` of their replies). The scripts check their keys before they write, so
        a refused queue is left as it was."""
        replies = self._per_queue(script, queues, args, doing)
        refused = [(q, r) for q, r in zip(queues, replies, strict=True) if isinstance(r, Exception)]
        if refused:
            answered = [r for r in replies if not isinstance(r, Exception)]
            reasons = "; ".join(f"queue {q}: {script_error(r)}" for q, r in refused)
            others = f"; in the other queues, {done(answered)}" if answered else ""
            untouched = all(checked_refusal(r) for _, r in refused)
            raise BrokerError(
                f"Redis at {self._target.display} refused {doing} ({reasons}): is another "
                "program writing under its keys? "
                + ("Nothing was changed there" if untouched else "That queue may be part done")
                + others
            )
        return replies

    def _per_queue(
        self, script: _keys.Script, queues: Sequence[str], args: Sequence[Any], doing: str
    ) -> list[Any]:
        """``script`` once per queue, in one pipeline: the replies in the queues' order, a
        lasting refusal as its exception (see ``Batch.run``)."""
        if not queues:
            return []
        batch = Batch()
        for queue in queues:
            batch.script(script, self._keys.queue(queue), args)
        return self._run(batch, doing, keep_errors=True)

    def _read_queues(
        self, script: _keys.Script, queues: Sequence[str], args: Sequence[Any], doing: str
    ) -> list[tuple[str, Any]]:
        """A read-only ``script`` once per queue: the queues that answered, with their reply.
        A queue whose keys Redis refuses (another program's value under one of them) is left
        out with an error in the log, so one such queue cannot hide all the others."""
        replies = self._per_queue(script, queues, args, doing)
        answered = []
        for queue, reply in zip(queues, replies, strict=True):
            if isinstance(reply, Exception):
                log.error(
                    "Redis at %s refused %s in queue %s (%s): is another program writing "
                    "under its keys? It is left out",
                    self._target.display,
                    doing,
                    queue,
                    script_error(reply),
                )
            else:
                answered.append((queue, reply))
        return answered

    def locate(self, message_id: str, *, live_first: bool = False) -> Location | None:
        doing = "locating a message"
        queues = self._known_queues(doing)
        answers = [a for _, a in self._read_queues(_keys.LOCATE, queues, [message_id], doing)]
        # A dead letter answers first (unless live_first), as a newer message with its id may
        # also be live.
        dead = any(d for d, _ in answers)
        live = [_LOCATIONS[a] for _, a in answers if a]
        if dead and not (live_first and live):
            return "dead"
        return live[0] if live else None

    def remove(self, message_id: str) -> bool:
        return self.take(message_id) is not None

    def take(self, message_id: str) -> bytes | None:
        doing = f"removing message {message_id!r}"
        queues = self._known_queues(doing)
        answers = self._write_queues(_keys.REMOVE, queues, [message_id], doing, _removed)
        return next((bytes(a) for a in answers if a is not None), None)

    # -- workers ----------------------------------------------------------------------------
    async def open_consumer(
        self, queues: Sequence[str], worker_id: str, *, records: ResultStore | None = None
    ) -> Consumer:
        if self._closed:
            raise BrokerError(f"the Redis broker for {self._target.display} is closed")
        if not queues:
            raise ConfigurationError("a consumer needs at least one queue to read from")
        return RedisConsumer(
            self.url,
            self._target,
            self._keys,
            self.config,
            list(queues),
            lambda: self._closed,
            self._records(records),
        )

    def _records(
        self, store: ResultStore | None
    ) -> tuple[str, Callable[[bytes], JobRecord | None]] | None:
        """How a claim reads ``store``'s records: only a Redis store on this very server and
        database, and not on a cluster (a claim's script may read there keys it does not
        declare)."""
        if not isinstance(store, RedisResultStore):
            return None
        theirs = store.target
        if self._target.cluster or theirs.cluster or theirs.url != self._target.url:
            return None
        return theirs.prefix, store.decode_stored

    async def _asend(self, batch: Batch, doing: str) -> list[Any]:
        async with self._connections().using(doing) as sender:
            return await batch.arun(sender)

    async def _workers_call(self, args: Sequence[Any], doing: str) -> Any:
        batch = Batch()
        batch.script(_keys.WORKERS, [self._keys.workers], [now_arg(self.config.clock), *args])
        return (await self._asend(batch, doing))[0]

    async def register_worker(self, info: WorkerInfo) -> None:
        args = ["beat", info.id, msgspec.json.encode(info)]
        await self._workers_call(args, "registering a worker")

    async def unregister_worker(self, worker_id: str) -> None:
        batch = Batch()
        batch.command("HDEL", self._keys.workers, worker_id)
        await self._asend(batch, "unregistering a worker")

    async def workers(self) -> list[WorkerInfo]:
        args = ["list", ms(self.config.lease_s)]
        rows = await self._workers_call(args, "listing workers")
        found = [
            dataclasses.replace(
                msgspec.json.decode(rows[i + 2], type=WorkerInfo), heartbeat_at=rows[i + 1] / 1000
            )
            for i in range(0, len(rows), 3)
        ]
        return sorted(found, key=lambda w: w.id)

    # -- administration ---------------------------------------------------------------------
    def _stats(self) -> list[QueueStats]:
        doing = "counting messages"
        queues = self._known_queues(doing)
        rows = self._read_queues(_keys.STATS, queues, [now_arg(self.config.clock)], doing)
        return [
            QueueStats(queue=q, ready=r[0], scheduled=r[1], leased=r[2], dead=r[3])
            for q, r in rows
            if any(r)
        ]

    async def stats(self) -> list[QueueStats]:
        return await self._arun(self._stats)

    async def warnings(self) -> list[str]:
        async with self._connections().using("reading the server's settings") as sender:
            return await server_warnings(sender.client, self._target)

    async def purge(self, queues: Sequence[str]) -> int:
        chosen = list(queues)
        now = [now_arg(self.config.clock)]
        counts = await self._arun(
            lambda: self._write_queues(_keys.PURGE, chosen, now, "purging", _count("deleted"))
        )
        return sum(counts)

    def _dead_letters(self, limit: int, queue: str | None) -> list[DeadLetter]:
        doing = "listing dead letters"
        queues = [queue] if queue is not None else self._known_queues(doing)
        rows = self._read_queues(_keys.DEAD_LETTERS, queues, [limit], doing)
        letters = [
            DeadLetter(
                id=r[i].decode(),
                queue=q,
                reason=r[i + 3].decode(errors="replace"),
                detail=r[i + 4].decode(errors="replace"),
                dead_at=r[i + 1] / 1000,
                deliveries=r[i + 2],
                body=r[i + 5],
            )
            for q, r in rows
            for i in range(0, len(r), 6)
        ]
        letters.sort(key=lambda x: x.dead_at, reverse=True)
        return letters[:limit]

    async def dead_letters(self, limit: int = 100, queue: str | None = None) -> list[DeadLetter]:
        if limit <= 0:
            return []
        return await self._arun(lambda: self._dead_letters(limit, queue))

    def _on_dead(self, script: _keys.Script, head: list[Any], ids: Sequence[str] | None) -> int:
        requeue = script is _keys.REQUEUE_DEAD
        doing = "requeuing dead letters" if requeue else "purging dead letters"
        args = [*head, "all"] if ids is None else [*head, "ids", *ids]
        done = _count("requeued" if requeue else "deleted")
        return sum(self._write_queues(script, self._known_queues(doing), args, doing, done))

    async def requeue_dead(self, ids: Sequence[str] | None = None) -> int:
        if ids is not None and not ids:
            return 0
        now = now_arg(self.config.clock)
        return await self._arun(lambda: self._on_dead(_keys.REQUEUE_DEAD, [now], ids))

    async def purge_dead(self, ids: Sequence[str] | None = None) -> int:
        if ids is not None and not ids:
            return 0
        return await self._arun(lambda: self._on_dead(_keys.PURGE_DEAD, [], ids))

    def close(self) -> None:
        with self._lock:
            client, self._sync = self._sync, None
            connections, self._async = self._async, None
            self._closed = True
        if client is not None:
            client.close()
        if connections is not None:
            connections.close()


def _count(verb: str) -> Callable[[list[Any]], str]:
    return lambda counts: f"{sum(counts)} {verb}"


def _removed(answers: list[Any]) -> str:
    return "it was removed" if any(a is not None for a in answers) else "it was not found"

"""A worker's consumer of the Redis broker: claim, wait for news, settle, extend.

A claim is one script call for all the consumer's queues (one per queue on a cluster, whose
queues live in different slots), starting at the next queue each time: queues are served
round-robin, a batch taking from each queue in that order until it is full.

Waiting: a script that gives an idle consumer something to do (an enqueue, a retry, a
release, a requeue) pushes a token onto the queue's ``wake`` list, trimmed to one. A consumer
whose claim found nothing blocks on its queues' wake lists with ``BLPOP`` on a connection of
its own, for at most :data:`MAX_BLOCK_S` and never past its receive's timeout; it wakes on a
local timer when the next scheduled message falls due or the next lease expires (Redis checks
blocking timeouts only ten times a second). One token wakes one consumer; a claim that leaves
messages behind pushes a token again, so idle consumers wake one after another while there is
work. On a cluster, a consumer of several queues blocks on each queue's list at once, one
connection per queue. A lost token (a consumer closed with one in hand) costs at most one
block period: every idle consumer claims again at least every :data:`MAX_BLOCK_S`.

Off a cluster, the claim that follows a wait is sent with it, in the same write: Redis runs it
on that connection as soon as the ``BLPOP`` returns (with a token, or at the end of the block
period, when the consumer would claim anyway), so a woken consumer does not spend a round trip
between the wake-up and its claim. Such a wait is ended early by ``CLIENT UNBLOCK`` (its
connection's id is the first reply of the write), not by dropping its connection, whose
claim may have run: whatever that claim leased is handed back, uncounted, when nobody is left
to receive it (a closing consumer, a cancelled receive). Only a wait that cannot be ended so
within :data:`UNBLOCK_S` (no id, a server that stopped answering) is cut, as a broken
connection would be: its claim's leases, if any, expire. A broken connection is never sent
again (the claim may have run); the consumer waits alone instead. A wait with a local timer,
or on a server that refuses ``CLIENT ID``, or under a test clock (whose time a claim takes when
it is sent), blocks alone as before.

A claim that got messages but fewer than it asked for emptied every ready queue, and so did
one that found nothing at the end of a receive that timed out: the next receive (with a
timeout, on the system clock) goes straight to the wait instead of claiming first, since
whatever arrives after that claim brings a token, and the claim said when the next scheduled
message or lease falls due. A worker then sends one claim per job, not two, and an idle one
one claim per receive timeout, not two.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final

import redis.exceptions
from msgspec import UNSET, UnsetType

from faena.backends.redis import _keys
from faena.backends.redis._client import (
    AsyncSender,
    Target,
    async_client,
    checked_refusal,
    now_arg,
    script_error,
    translated,
)
from faena.backends.redis._keys import WAKE, Batch, Keys, ms
from faena.contracts.broker import BrokerConfig, Consumer, Delivery, Settlement
from faena.foundation.clock import SYSTEM_CLOCK
from faena.foundation.exceptions import BrokerError, SettlementsRefused
from faena.model.outcome import JobRecord

SET_ASIDE_S: Final = 30.0
"""How long a queue whose keys Redis refused (another program's value under one of them) is
left out of claims and waits before it is tried again; the consumer's other queues are served
meanwhile."""
log = logging.getLogger("faena.broker")

MAX_BLOCK_S: Final = 1.0
"""The longest single ``BLPOP``: an idle consumer claims again (and notices a closed broker)
at least this often."""
_MIN_BLOCK_S: Final = 0.01
"""``BLPOP`` with a timeout of 0 would block for ever."""
_LATE_S: Final = 0.2
"""Redis ends a blocking command up to 100 ms after its timeout: room for that, and for the
claim sent after it, in the wait's read timeout."""
UNBLOCK_S: Final = 0.5
"""How long close() gives a wait sent with its claim to end by ``CLIENT UNBLOCK`` before it
cuts the wait's connection."""


class RedisConsumer(Consumer):
    """Leases messages of ``queues``; see the module docstring.

    Its asyncio clients belong to the event loop that first uses them: open, use and close a
    consumer on one loop.

    With ``records`` (a result store's key prefix, and how to read one of its stored values),
    each claim also reads the result record of every job it leases, and the deliveries carry
    it (see :attr:`~faena.contracts.broker.Delivery.record`).
    """

    def __init__(
        self,
        url: str,
        target: Target,
        keys: Keys,
        config: BrokerConfig,
        queues: list[str],
        broker_closed: Callable[[], bool],
        records: tuple[str, Callable[[bytes], JobRecord | None]] | None = None,
    ) -> None:
        self._target = target
        self._records = records
        self._keys = keys
        self._config = config
        self._queues = queues
        self._queue_keys = [keys.queue(q) for q in queues]
        self._wake_keys = [k[WAKE] for k in self._queue_keys]
        self._broker_closed = broker_closed
        self._sender = AsyncSender(async_client(target, url))
        # A wait's BLPOP may be sent again after a broken connection: a lost token costs a
        # wait (see the module docstring).
        self._blocking = AsyncSender(
            async_client(target, url, blocking_s=MAX_BLOCK_S + _LATE_S, resend=True), resend=2
        )
        self._turn = 0
        self._set_aside: dict[int, float] = {}  # queue index -> until (monotonic)
        self._woken_by: int | None = None
        # Set by a claim that emptied every queue (see the module docstring): when the next
        # scheduled message or lease falls due (monotonic), None for nothing due.
        self._emptied = False
        self._emptied_due_at: float | None = None
        self._closed = False
        self._shut = False
        self._calls = 0
        self._quiet = asyncio.Event()
        self._quiet.set()
        self._waits: set[asyncio.Future[Any]] = set()
        # Waits sent with their claim (see the module docstring): each call, and its
        # connection's id once read.
        self._held: set[tuple[asyncio.Future[list[Any]], asyncio.Future[Any]]] = set()
        self._unblockable = True  # until the server refuses CLIENT ID
        self._background: set[asyncio.Future[Any]] = set()
        self._discovery: asyncio.Future[None] | None = None

    def _stopped(self) -> bool:
        return self._closed or self._broker_closed()

    @contextlib.contextmanager
    def _busy(self) -> Iterator[None]:
        """Count a call in flight, so ``close`` can wait for it to end."""
        self._calls += 1
        self._quiet.clear()
        try:
            yield
        finally:
            self._calls -= 1
            if not self._calls:
                self._quiet.set()

    async def _connected(self) -> None:
        """On a cluster, learn its layout first, to the end even if the caller is cancelled:
        a discovery cut short leaves connections that closing the client does not know of."""
        if not self._target.cluster:
            return
        discovery = self._discovery
        if discovery is None or (discovery.done() and not _succeeded(discovery)):
            discovery = self._discovery = asyncio.ensure_future(self._discover())
        await asyncio.shield(discovery)

    async def _discover(self) -> None:
        with translated(self._target, "connecting to the cluster"):
            for client in (self._sender.client, self._blocking.client):
                await client.initialize()

    async def _run(self, batch: Batch, doing: str, keep_errors: bool = False) -> list[Any]:
        """Send ``batch`` on the command connection; counted so ``close`` can wait for it."""
        if self._shut:
            raise BrokerError(f"the Redis consumer is closed; cannot go on {doing}")
        with self._busy():
            await self._connected()
            with translated(self._target, doing):
                return await batch.arun(self._sender, keep_errors)

    # -- receive ----------------------------------------------------------------------------
    async def receive(self, max_messages: int, timeout_s: float) -> list[Delivery]:
        # A timeout is a real wait; the store's clock (maybe a FakeClock) decides what is due.
        deadline = SYSTEM_CLOCK.monotonic() + timeout_s
        skip, due_in = self._after_emptied(timeout_s)
        early: _Early | None = None  # a claim sent with the last wait
        with self._busy():
            try:
                while not self._stopped() and max_messages > 0:
                    claimed = not skip
                    if skip:
                        skip = False
                    else:
                        found, due_in = await self._claim_safely(max_messages, early)
                        early = None
                        if found:
                            return found
                    remaining = deadline - SYSTEM_CLOCK.monotonic()
                    if remaining <= 0:
                        # A last claim that found nothing, like one that emptied the queues,
                        # lets the next receive wait first (see the module docstring).
                        self._emptied = claimed
                        self._emptied_due_at = (
                            None if due_in is None else SYSTEM_CLOCK.monotonic() + due_in
                        )
                        return []
                    if due_in is None or due_in > 0:
                        early = await self._wait(remaining, due_in, max_messages)
                if early is not None:  # closed during that wait, whose claim ran
                    await self._shielded_give_back(early)
            except BrokerError:
                if self._stopped():  # closed under a waiting receive: nothing came
                    return []
                raise
        return []

    def _after_emptied(self, timeout_s: float) -> tuple[bool, float | None]:
        """Whether this receive may wait before it claims, as the last claim emptied every
        queue; and then how long until something falls due."""
        emptied, self._emptied = self._emptied, False
        if not emptied or timeout_s <= 0 or self._config.clock is not SYSTEM_CLOCK:
            # A test clock moves without real time passing: claim, the script reads it.
            return False, None
        due_at = self._emptied_due_at
        return True, None if due_at is None else due_at - SYSTEM_CLOCK.monotonic()

    async def _claim_safely(
        self, limit: int, early: _Early | None = None
    ) -> tuple[list[Delivery], float | None]:
        claim = asyncio.ensure_future(self._claim(limit, early))
        try:
            return await asyncio.shield(claim)
        except asyncio.CancelledError:
            # The claim may have leased messages already that nobody will receive: hand them
            # back, uncounted, rather than let their leases run out. A tracked task, so that
            # close() waits for it.
            task = asyncio.ensure_future(self._give_back(claim))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
            raise

    async def _give_back(self, claim: asyncio.Future[tuple[list[Delivery], float | None]]) -> None:
        try:
            deliveries = (await claim)[0]
        except (BrokerError, asyncio.CancelledError):
            return  # nothing was leased, or the claim's fate is unknown: leases expire
        if deliveries:
            await self.settle([Settlement(delivery=d, action="release") for d in deliveries])

    def _next_order(self) -> list[int]:
        """The live queues, from the next one in turn on (round-robin between claims)."""
        count = len(self._queues)
        start, self._turn = self._turn, (self._turn + 1) % count
        live = self._live_queues()
        return [q for i in range(count) if (q := (start + i) % count) in live]

    def _claim_args(self, limit: int) -> list[Any]:
        """``ARGV`` of ``lua/claim.lua``."""
        return [
            now_arg(self._config.clock),
            limit,
            ms(self._config.lease_s),
            self._config.max_deliveries,
            self._records[0] if self._records else "",
        ]

    async def _claim(
        self, limit: int, early: _Early | None = None
    ) -> tuple[list[Delivery], float | None]:
        """One claim round from the next queue on; the deliveries, or how long until something
        falls due (``None``: nothing scheduled or leased). ``early``: the reply of a claim
        already run (sent with a wait, off a cluster), taken as this round's."""
        order = early.queues if early is not None else self._next_order()
        fixed = self._claim_args(limit)
        # One call for every queue where Redis allows it; a cluster keeps each queue's keys in
        # a slot of their own, so it gets one call per queue, until the batch is full.
        rounds = [order] if not self._target.cluster else [[i] for i in order]
        found: list[Delivery] = []
        due_in: float | None = None
        visited: set[int] = set()
        refusals: dict[int, str] = {}
        failed = False
        for queues in rounds:
            fixed[1] = limit - len(found)
            try:
                reply, early = await self._claim_round(queues, fixed, early)
            except BrokerError:
                # On a cluster one queue's node may fail while another's answered: what is
                # already leased is handed out rather than left to expire; the failing node
                # raises again on the next call if nothing was found.
                if found:
                    failed = True
                    break
                raise
            visited.update(queues)
            errors = reply[2]
            for k in range(0, len(errors), 2):
                refusals[queues[errors[k]]] = _text(errors[k + 1])
            due_in = _earliest(due_in, self._decode(reply, queues, found))
            if len(found) >= limit:
                break
        if refusals:
            failed = True
            self._refused(refusals)
            if not found and visited <= refusals.keys():
                raise BrokerError(
                    "Redis refused claiming messages: "
                    + "; ".join(f"queue {self._queues[q]}: {e}" for q, e in refusals.items())
                )
        woken_by, self._woken_by = self._woken_by, None
        if woken_by is not None and woken_by not in visited:
            try:
                await self._pass_token(woken_by)
            except BrokerError:
                if not found:
                    raise
                # Only a wake-up is lost: an idle worker of that queue looks again within
                # its block period.
        if found and len(found) < limit and not failed:  # every queue visited and emptied
            self._emptied = True
            self._emptied_due_at = None if due_in is None else SYSTEM_CLOCK.monotonic() + due_in
        return found, None if found else due_in

    async def _claim_round(
        self, queues: list[int], args: list[Any], early: _Early | None
    ) -> tuple[Any, None]:
        """The claim reply of ``queues``: ``early``'s, else from a claim sent now."""
        if early is not None:
            return early.reply, None
        batch = Batch()
        batch.script(_keys.CLAIM, [k for i in queues for k in self._queue_keys[i]], args)
        (reply,) = await self._run(batch, "claiming messages")
        return reply, None

    def _live_queues(self) -> set[int]:
        """The queues not set aside (see :data:`SET_ASIDE_S`); all of them if every one is."""
        now = SYSTEM_CLOCK.monotonic()
        for q, until in list(self._set_aside.items()):
            if until <= now:
                del self._set_aside[q]
        live = set(range(len(self._queues))) - self._set_aside.keys()
        return live or set(range(len(self._queues)))

    def _refused(self, refusals: dict[int, str], doing: str = "claiming from") -> None:
        """Set aside the queues whose keys Redis refused, and say so (once per period)."""
        until = SYSTEM_CLOCK.monotonic() + SET_ASIDE_S
        for q, error in refusals.items():
            if q not in self._set_aside:
                log.error(
                    "Redis at %s refused %s queue %s (%s): is another program writing under "
                    "its keys? It is left out of claims for %gs, and the other queues are "
                    "served meanwhile",
                    self._target.display,
                    doing,
                    self._queues[q],
                    error,
                    SET_ASIDE_S,
                )
            self._set_aside[q] = until

    def _decode(self, reply: list[Any], queues: list[int], into: list[Delivery]) -> float | None:
        """Append the claimed deliveries to ``into``; seconds until the next due time."""
        names = self._queues
        records = reply[3]
        for n, j in enumerate(range(4, len(reply), 4)):
            # The state after the lease: L<fence>|<deliveries>|<priority>|<seq>|<ms>|<reason>
            fence, deliveries, priority, _, enqueued, reason = reply[j + 2][1:].split(b"|", 5)
            delivery = Delivery(
                id=reply[j].decode(),
                queue=names[queues[reply[j + 1]]],
                body=reply[j + 3] or b"",
                priority=int(priority),
                deliveries=int(deliveries),
                fence=int(fence),
                enqueued_at=int(enqueued) / 1000,
                last_reason=reason.decode() if reason else None,
            )
            if records:
                delivery.record = self._record(records[n])
            into.append(delivery)
        now, next_due = reply[0], reply[1]
        return None if next_due < 0 else max(0.0, (next_due - now) / 1000)

    def _record(self, value: bytes | int | None) -> JobRecord | UnsetType | None:
        """A record read with the claim: ``None`` for none, ``UNSET`` when it cannot be told
        here (Redis refused the read, or the value is not a record: the worker's own look-up
        then reports it)."""
        assert self._records is not None
        if value is None:
            return None
        if isinstance(value, int):
            return UNSET
        try:
            return self._records[1](value)
        except BrokerError:
            return UNSET

    async def _pass_token(self, queue: int) -> None:
        """Give back a wake token of a queue this round did not visit (batch full first)."""
        batch = Batch()
        batch.command("LPUSH", self._wake_keys[queue], "1")
        batch.command("LTRIM", self._wake_keys[queue], 0, 0)  # at most one token, as ever
        await self._run(batch, "passing a wake-up on")

    # -- waiting ----------------------------------------------------------------------------
    async def _wait(self, remaining: float, due_in: float | None, limit: int) -> _Early | None:
        """Block until a wake token, the next due time, or the end of the block period; the
        claim sent with the wait, if it was (see the module docstring)."""
        block = max(min(remaining, MAX_BLOCK_S), _MIN_BLOCK_S)
        # Redis ends a blocking command up to 100 ms late (it checks ten times a second): a
        # due time within the block is kept on a local timer instead.
        timer = due_in if due_in is not None and due_in < block else None
        if timer is not None and timer < _MIN_BLOCK_S:
            await asyncio.sleep(timer)  # too close to be worth a blocking call
            return None
        await self._connected()
        if self._closed:
            return None  # close() cancels the waits it knows of: start none after it
        keys = [self._wake_keys[q] for q in sorted(self._live_queues())]
        if (
            timer is None
            and not self._target.cluster
            and self._unblockable
            and self._config.clock is SYSTEM_CLOCK  # a test clock's time is read at the claim
            and self._blocking.has_line()  # never through redis-py, which may send it twice
        ):
            return await self._wait_and_claim(keys, block, limit)
        await self._wait_alone(keys, block, timer)
        return None

    async def _wait_alone(self, keys: list[str], block: float, timer: float | None) -> None:
        """``BLPOP`` on ``keys`` (on a cluster, on each queue's list at once), ended early by a
        local ``timer`` or by close(), which cuts it."""
        groups = [[k] for k in keys] if self._target.cluster and len(keys) > 1 else [keys]
        waits = [asyncio.ensure_future(self._blocking.execute("BLPOP", *k, block)) for k in groups]
        self._waits.update(waits)
        until = None if timer is None else SYSTEM_CLOCK.monotonic() + timer
        try:
            pending: set[asyncio.Future[Any]] = set(waits)
            while pending:
                left = None if until is None else max(0.0, until - SYSTEM_CLOCK.monotonic())
                done, pending = await asyncio.wait(
                    pending, timeout=left, return_when=asyncio.FIRST_COMPLETED
                )
                if not done or any(self._token(w) for w in done):
                    break
        finally:
            for w in waits:
                w.cancel()
            await asyncio.gather(*waits, return_exceptions=True)
            self._waits.difference_update(waits)

    async def _wait_and_claim(self, keys: list[str], block: float, limit: int) -> _Early | None:
        """``BLPOP`` on ``keys`` and the next claim, in one write (see the module docstring);
        the claim's reply, or ``None`` when it did not run or failed (the caller claims again,
        as after any wait, and meets the failure there)."""
        turn = self._turn
        order = self._next_order()
        claim_keys = [k for q in order for k in self._queue_keys[q]]
        line_id: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def read_id(reply: Any) -> None:
            if not line_id.done():
                line_id.set_result(reply)

        commands = [
            ("CLIENT", "ID"),
            ("BLPOP", *keys, block),
            ("EVALSHA", _keys.CLAIM.sha, len(claim_keys), *claim_keys, *self._claim_args(limit)),
        ]
        ends = SYSTEM_CLOCK.monotonic() + block
        call = asyncio.ensure_future(self._blocking.execute_many(commands, on_first=read_id))
        held = (call, line_id)
        self._held.add(held)
        try:
            replies = await asyncio.shield(call)
        except asyncio.CancelledError:
            me = asyncio.current_task()
            if call.cancelled() and not (me is not None and me.cancelling()):
                self._turn = turn
                return None  # cut by close(), which could not end it in time
            # This receive was cancelled; the wait goes on in Redis, and its claim after it:
            # end it, and give back what the claim leased (close() waits for this).
            self._track(self._abandon(call, line_id, order))
            raise
        except redis.exceptions.ConnectionError:
            # Its claim may have run (what it leased comes back when the leases expire), so
            # it is never sent again: the broken line is made up for by a wait alone, which
            # may be (and which fails, as before, if the server stays out of reach).
            self._turn = turn
            if self._stopped():
                return None
            # Only for what is left of the block: the receive's deadline stays where it was.
            await self._wait_alone(keys, max(ends - SYSTEM_CLOCK.monotonic(), _MIN_BLOCK_S), None)
            return None
        except Exception as exc:
            self._turn = turn
            if self._stopped():
                return None
            with translated(self._target, "waiting for messages"):
                raise exc from None
        finally:
            self._held.discard(held)
        return await self._waited(replies, order, turn)

    async def _waited(self, replies: list[Any], order: list[int], turn: int) -> _Early | None:
        """The outcome of a wait sent with its claim, from its three replies."""
        client_id, popped, claimed = replies
        if isinstance(client_id, Exception):
            self._unblockable = False  # such a wait could not be ended early: wait alone
        early = None if isinstance(claimed, Exception) else _Early(order, claimed)
        if isinstance(popped, Exception):
            if early is not None:
                await self._shielded_give_back(early)
            if self._stopped():
                return None
            self._turn = turn
            with translated(self._target, "waiting for messages"):
                raise popped
        if popped is not None:
            self._woken_by = self._wake_keys.index(popped[0].decode())
        if early is None:
            self._turn = turn  # not run, or refused: the claim that follows meets it again
        return early

    async def _unblock(self, call: asyncio.Future[list[Any]], line_id: asyncio.Future[Any]) -> None:
        """End a wait sent with its claim, as if its block period were over: by its
        connection's id, or, if that cannot be done within :data:`UNBLOCK_S` (no id, a server
        that stopped answering), by cutting its connection."""
        try:
            async with asyncio.timeout(UNBLOCK_S):
                await asyncio.wait({call, line_id}, return_when=asyncio.FIRST_COMPLETED)
                if not call.done() and isinstance(line_id.result(), int):
                    await self._sender.execute("CLIENT", "UNBLOCK", line_id.result())
                await asyncio.wait({call})
        except (TimeoutError, BrokerError, redis.exceptions.RedisError, OSError):
            call.cancel()

    async def _abandon(
        self, call: asyncio.Future[list[Any]], line_id: asyncio.Future[Any], order: list[int]
    ) -> None:
        """A wait sent with its claim whose receive was cancelled: end it and hand back what
        its claim leased."""
        await self._unblock(call, line_id)
        outcome: list[Any] | BaseException = (await asyncio.gather(call, return_exceptions=True))[0]
        if isinstance(outcome, list) and not isinstance(outcome[2], Exception):
            await self._give_back_early(_Early(order, outcome[2]))
        # else it was cut, or its connection broke: what it leased comes back on expiry

    async def _shielded_give_back(self, early: _Early) -> None:
        """``_give_back_early``, carried to its end even if the caller is cancelled."""
        await asyncio.shield(self._track(self._give_back_early(early)))

    async def _give_back_early(self, early: _Early) -> None:
        """Hand back, uncounted, what a claim sent with a wait leased for nobody."""
        found: list[Delivery] = []
        self._decode(early.reply, early.queues, found)
        if found:
            with contextlib.suppress(BrokerError):  # else their leases expire
                await self.settle([Settlement(delivery=d, action="release") for d in found])

    def _track(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run ``work`` as a task close() waits for."""
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    def _token(self, wait: asyncio.Future[Any]) -> bool:
        """Whether a finished ``BLPOP`` brought a token; raises what it failed with."""
        if wait.cancelled():
            return False
        exc = wait.exception()
        if exc is not None:
            if self._stopped():
                return False
            with translated(self._target, "waiting for messages"):
                raise exc
        popped = wait.result()
        if popped is None:
            return False
        self._woken_by = self._wake_keys.index(popped[0].decode())
        return True

    # -- settle and extend ------------------------------------------------------------------
    async def settle(self, settlements: Sequence[Settlement]) -> list[bool]:
        if not settlements:
            return []
        per_queue: dict[str, tuple[list[bytes], list[int]]] = {}
        for position, s in enumerate(settlements):
            group = per_queue.get(s.delivery.queue)
            if group is None:
                group = per_queue[s.delivery.queue] = ([], [])
            group[0].append(_record(s))
            group[1].append(position)
        now = now_arg(self._config.clock)
        batch = Batch()
        for queue, (records, _) in per_queue.items():
            batch.script(_keys.SETTLE, self._keys.queue(queue), [now, b"".join(records)])
        doing = f"settling {len(settlements)} message(s)"
        replies = await self._run(batch, doing, keep_errors=True)
        done: list[bool | None] = [None] * len(settlements)
        refused: list[Exception] = []
        names: list[str] = []
        for (queue, (_, positions)), reply in zip(per_queue.items(), replies, strict=True):
            if isinstance(reply, Exception):
                refused.append(reply)
                names.append(f"queue {queue}: {script_error(reply)}")
                continue
            for position, answer in zip(positions, reply, strict=True):
                done[position] = answer != 0
                if answer == 2:
                    s = settlements[position]
                    log.error(
                        "message %s of queue %s: its state entry in Redis is unreadable (is "
                        "another program writing under faena's keys?); it is dead-lettered "
                        "as corrupt_state instead of the %s asked for",
                        s.delivery.id,
                        queue,
                        s.action,
                    )
        if refused:
            message = (
                f"Redis at {self._target.display} refused {doing} ({'; '.join(names)}): "
                "is another program writing under its keys?"
            )
            if not all(checked_refusal(r) for r in refused):
                # An error past the scripts' own key checks may come after some of a queue's
                # writes: the whole batch is sent again (a settlement that went through is
                # then answered as no longer held).
                raise BrokerError(f"{message} That queue may be part done")
            # The scripts' own key checks refuse before they write: the refused queue was left
            # as it was. The others' settlements were applied, and are reported so they are
            # not sent again.
            raise SettlementsRefused(f"{message} Nothing was changed there", done)
        return [bool(d) for d in done]

    async def extend(self, deliveries: Sequence[Delivery], lease_s: float) -> set[str]:
        if not deliveries:
            return set()
        head = [now_arg(self._config.clock), ms(lease_s)]
        per_queue: dict[str, list[Any]] = {}
        for d in deliveries:
            args = per_queue.get(d.queue)
            if args is None:
                args = per_queue[d.queue] = list(head)
            args += (d.id, d.fence)
        batch = Batch()
        for queue, args in per_queue.items():
            batch.script(_keys.EXTEND, self._keys.queue(queue), args)
        # A queue whose keys Redis refuses costs only itself: the others' renewals stand.
        doing = f"extending {len(deliveries)} lease(s)"
        replies = await self._run(batch, doing, keep_errors=True)
        lost: set[str] = set()
        refused: dict[int, str] = {}
        for queue, reply in zip(per_queue, replies, strict=True):
            if isinstance(reply, Exception):
                if not checked_refusal(reply):
                    # Not another program's value under the queue's keys (what sets a queue
                    # aside): the renewal fails as a whole, and is tried again next beat.
                    raise BrokerError(
                        f"Redis at {self._target.display} refused {doing}: queue {queue}: "
                        f"{script_error(reply)}"
                    )
                refused[self._queues.index(queue)] = str(reply)
            else:
                lost.update(mid.decode() for mid in reply)
        if refused:
            self._refused(refused, "renewing leases in")
            if len(refused) == len(per_queue):
                raise BrokerError(
                    f"Redis at {self._target.display} refused {doing}: "
                    + "; ".join(f"queue {self._queues[q]}: {e}" for q, e in refused.items())
                )
        return lost

    # -- close ------------------------------------------------------------------------------
    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        waits = list(self._waits)
        for w in waits:
            w.cancel()
        # A wait sent with its claim is ended by Redis, never cut: its claim may have run.
        await asyncio.gather(*(self._unblock(*held) for held in self._held), return_exceptions=True)
        # Calls in flight finish first (each within the URL's timeout; a waiting receive ends
        # at once): a claim cut short could lease messages nobody receives, and a command sent
        # after the clients closed would open a connection nobody closes.
        await self._quiet.wait()
        await asyncio.gather(*waits, *self._background, return_exceptions=True)
        if self._discovery is not None:
            await asyncio.gather(self._discovery, return_exceptions=True)
        self._shut = True
        with contextlib.suppress(Exception):
            await self._blocking.aclose()
        with contextlib.suppress(Exception):
            await self._sender.aclose()


@dataclass(frozen=True, slots=True)
class _Early:
    """The reply of a claim sent with a wait, and the queues it was sent for, in order."""

    queues: list[int]
    reply: Any


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _succeeded(future: asyncio.Future[Any]) -> bool:
    return not future.cancelled() and future.exception() is None


def _earliest(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    return a if b is None else min(a, b)


def _field(value: str | bytes) -> bytes:
    data = value.encode() if isinstance(value, str) else value
    return b"%d,%s" % (len(data), data)


def _record(s: Settlement) -> bytes:
    """One settlement in the encoding of ``lua/settle.lua``."""
    d = s.delivery
    action = _ACTIONS.get(s.action)
    if action is None:
        raise ValueError(
            f"unknown settlement action {s.action!r}; expected ack, retry, dead or release"
        )
    head = b"%s%d,%s" % (action, d.fence, _field(d.id))
    if s.action == "ack":
        return head
    if s.action == "release":
        if s.due is not None:  # due later: p (uncounted) or P (counted, with its reason)
            due = _field(b"%d" % ms(s.due))
            if s.reason is None:
                return b"p" + head[1:] + due
            return b"P" + head[1:] + _field(s.reason) + due
        return head if s.reason is None else b"R" + head[1:] + _field(s.reason)
    if s.action == "retry":
        due = _field(b"" if s.due is None else b"%d" % ms(s.due))
        if s.body is None:
            return head + due
        return b"T" + head[1:] + due + _field(s.body)
    return head + _field(s.reason or "rejected") + _field(s.detail)


_ACTIONS: Final = {"ack": b"a", "release": b"r", "retry": b"t", "dead": b"d"}

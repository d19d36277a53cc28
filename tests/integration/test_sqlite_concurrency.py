"""Four worker processes claim and settle on one SQLite file while the parent enqueues.

Proves the file-level guarantees: every message is acknowledged exactly once, leases never
double-hand a message, and lock contention never surfaces as ``sqlite3.OperationalError``.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import queue
import traceback
from collections import Counter
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

import pytest

from faena.backends.sqlite import SQLiteBroker
from faena.contracts.broker import BrokerConfig, Outgoing, Settlement
from faena.foundation.clock import SYSTEM_CLOCK

PROCESSES = 4
MESSAGES = 4_000
RETRIED_EVERY = 10  # one message in ten is retried once before its ack
DEADLINE_S = 20.0


def _settlement_for(delivery: Any) -> Settlement:
    if delivery.body.startswith(b"retry:"):
        return Settlement(delivery=delivery, action="retry", body=b"done:" + delivery.body[6:])
    return Settlement(delivery=delivery, action="ack")


async def _consume(url: str, worker_id: str, acked: Any, stop: Event) -> None:
    broker = SQLiteBroker(url, BrokerConfig(lease_s=30.0, poll_interval_s=0.002))
    try:
        consumer = await broker.open_consumer(["high", "default"], worker_id)
        while not stop.is_set():
            got = await consumer.receive(50, 0.1)
            if not got:
                continue
            settlements = [_settlement_for(d) for d in got]
            done = await consumer.settle(settlements)
            if not all(done):
                raise AssertionError(f"{worker_id} lost a lease it held: {done}")
            acked.put([s.delivery.id for s in settlements if s.action == "ack"])
        await consumer.close()
    finally:
        broker.close()


def _worker(url: str, worker_id: str, acked: Any, errors: Any, stop: Event) -> None:
    """A worker process's body; every failure is reported, never swallowed."""
    try:
        asyncio.run(_consume(url, worker_id, acked, stop))
    except BaseException:
        errors.put(f"{worker_id}: {traceback.format_exc()}")


def _batches() -> list[list[Outgoing]]:
    messages = [
        Outgoing(
            id=f"m{i}",
            queue="high" if i % 3 == 0 else "default",
            body=(b"retry:" if i % RETRIED_EVERY == 0 else b"done:") + str(i).encode(),
            priority=i % 10,
        )
        for i in range(MESSAGES)
    ]
    return [messages[i : i + 250] for i in range(0, MESSAGES, 250)]


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_processes_share_one_file_and_ack_every_message_exactly_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shared.sqlite3'}"
    ctx = multiprocessing.get_context("spawn")
    acked, errors, stop = ctx.Queue(), ctx.Queue(), ctx.Event()
    producer = SQLiteBroker(url, BrokerConfig())
    workers = [
        ctx.Process(target=_worker, args=(url, f"w{n}", acked, errors, stop))
        for n in range(PROCESSES)
    ]
    counts: Counter[str] = Counter()
    failures: list[str] = []
    try:
        # Given four workers consuming while the parent enqueues in batches
        for process in workers:
            process.start()
        for batch in _batches():
            producer.enqueue(batch)
        # When every message has been acknowledged (or time runs out)
        deadline = SYSTEM_CLOCK.monotonic() + DEADLINE_S
        while sum(counts.values()) < MESSAGES and SYSTEM_CLOCK.monotonic() < deadline:
            try:
                counts.update(acked.get(timeout=0.5))
            except queue.Empty:
                if not errors.empty() or not all(p.is_alive() for p in workers):
                    break
        stats = asyncio.run(producer.stats())
    finally:
        stop.set()
        for process in workers:
            process.join(timeout=10)
        while not errors.empty():
            failures.append(errors.get())
        while not acked.empty():
            counts.update(acked.get())
        producer.close()
        for process in workers:
            if process.is_alive():
                process.kill()
                process.join()
    # Then no worker failed, each message was acked once, and nothing is left behind
    assert failures == []
    assert [p.exitcode for p in workers] == [0] * PROCESSES
    assert sum(counts.values()) == MESSAGES
    assert set(counts) == {f"m{i}" for i in range(MESSAGES)}
    assert max(counts.values()) == 1
    assert all(s.ready == s.scheduled == s.leased == s.dead == 0 for s in stats)

"""RQ on the benchmark's Redis: the job functions the workers import, and the producer.

RQ jobs are plain functions referenced by import path. A job whose result is ignored is sent
with ``result_ttl=0`` (RQ deletes it once it has run); the round trip waits with
``Job.latest_result(timeout=...)``, which blocks on the job's result stream (``XREAD BLOCK``),
RQ's own push-style wait. RQ's default serializer (pickle) is kept.

Bulk API: ``Queue.enqueue_many([Queue.prepare_data(...), ...])``, one Redis pipeline.
"""

from __future__ import annotations

import math

import redis
from rq import Queue

from benchmarks.peers.common import Adapter, count_run, redis_url, time_each


def noop(i: int) -> None:
    count_run()


def noop_result(i: int) -> int:
    count_run()
    return 1


class RQAdapter(Adapter):
    bulk_api = "Queue.enqueue_many([Queue.prepare_data(noop, (i,), result_ttl=0), ...])"

    def __init__(self) -> None:
        self.connection = redis.Redis.from_url(redis_url())
        self.queue = Queue("bench", connection=self.connection)

    def enqueue_one_by_one(self, first: int, count: int) -> None:
        enqueue = self.queue.enqueue
        for i in range(first, first + count):
            enqueue(noop, i, result_ttl=0)

    def enqueue_bulk(self, first: int, count: int) -> None:
        prepare = Queue.prepare_data
        self.queue.enqueue_many(
            [prepare(noop, (i,), result_ttl=0) for i in range(first, first + count)]
        )

    def round_trips(self, count: int, timeout_s: float) -> list[float]:
        wait_s = max(1, math.ceil(timeout_s))  # RQ takes whole seconds

        def one(i: int) -> None:
            result = self.queue.enqueue(noop_result, i).latest_result(timeout=wait_s)
            if result is None or result.return_value != 1:
                raise RuntimeError(f"RQ job {i} gave no result within {wait_s} s: {result!r}")

        return time_each(count, one)

    def close(self) -> None:
        self.connection.close()


def adapter(system: str) -> Adapter:
    return RQAdapter()

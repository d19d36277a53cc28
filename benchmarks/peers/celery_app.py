"""Celery on the benchmark's Redis: the app the workers load (`celery -A ...`) and the producer.

Configured as a user after speed would: JSON (the default serializer, as faena's), task events
off (the default), no result backend unless the metric needs results (then the Redis backend,
whose ``get`` waits on pub/sub), ``ignore_result`` on the drain task, and worker chatter
(heartbeat, gossip, mingle) off on the command line (see :mod:`benchmarks.peers.specs`).
``BENCH_CELERY_ACKS_LATE=1`` turns on late acks (at-least-once) for the drain variants that
measure them.

Bulk API: ``group(noop.s(i) for i in ...).apply_async()``, which publishes the messages on one
producer connection (``chunks`` would pack many calls into one message, a different job shape).
"""

from __future__ import annotations

import os

from celery import Celery, chord, group

from benchmarks.peers.common import Adapter, count_run, redis_url, results_enabled, time_each

app = Celery("bench", broker=redis_url())
app.conf.update(
    result_backend=redis_url() if results_enabled() else None,
    task_acks_late=os.environ.get("BENCH_CELERY_ACKS_LATE") == "1",
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    worker_redirect_stdouts=False,
)


@app.task(ignore_result=True)
def noop(i: int) -> None:
    count_run()


@app.task
def noop_result(i: int) -> int:
    count_run()
    return 1


@app.task
def total(values: list[int]) -> int:
    return sum(values)


class CeleryAdapter(Adapter):
    bulk_api = "group(noop.s(i) for i in ...).apply_async()"

    def enqueue_one_by_one(self, first: int, count: int) -> None:
        delay = noop.delay
        for i in range(first, first + count):
            delay(i)

    def enqueue_bulk(self, first: int, count: int) -> None:
        group(noop.s(i) for i in range(first, first + count)).apply_async()

    def round_trips(self, count: int, timeout_s: float) -> list[float]:
        return time_each(count, lambda i: noop_result.delay(i).get(timeout=timeout_s))

    def chord(self, members: int, timeout_s: float) -> int:
        result = chord(noop_result.s(i) for i in range(members))(total.s())
        return int(result.get(timeout=timeout_s))

    def close(self) -> None:
        app.close()


def adapter(system: str) -> Adapter:
    return CeleryAdapter()

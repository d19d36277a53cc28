"""Dramatiq on the benchmark's Redis: the broker and actors the workers load, and the producer.

Dramatiq's default middleware is kept (what a user gets); the Results middleware with its
Redis backend is added only when the metric needs results, and only ``noop_result`` stores
them. ``get_result(block=True)`` waits with ``BRPOPLPUSH`` on the result key. Note that an
idle Dramatiq consumer polls its queue with an exponential back-off of up to
``dramatiq_worker_timeout`` (1 s by default).

Bulk API: Dramatiq has none; ``group(messages).run()`` is its way to send many, and it
enqueues them one by one (one Lua script call each).
"""

from __future__ import annotations

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from benchmarks.peers.common import Adapter, count_run, redis_url, results_enabled, time_each

broker = RedisBroker(url=redis_url())
if results_enabled():
    from dramatiq.results import Results
    from dramatiq.results.backends import RedisBackend

    broker.add_middleware(Results(backend=RedisBackend(url=redis_url())))
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name="bench")
def noop(i: int) -> None:
    count_run()


# store_results is an option of the Results middleware: it exists only when that is installed.
@dramatiq.actor(queue_name="bench", **({"store_results": True} if results_enabled() else {}))
def noop_result(i: int) -> int:
    count_run()
    return 1


class DramatiqAdapter(Adapter):
    bulk_api = "group(noop.message(i) for i in ...).run()  (no bulk API: one enqueue each)"

    def enqueue_one_by_one(self, first: int, count: int) -> None:
        send = noop.send
        for i in range(first, first + count):
            send(i)

    def enqueue_bulk(self, first: int, count: int) -> None:
        message = noop.message
        dramatiq.group(message(i) for i in range(first, first + count)).run()

    def round_trips(self, count: int, timeout_s: float) -> list[float]:
        timeout_ms = int(timeout_s * 1000)

        def one(i: int) -> None:
            value = noop_result.send(i).get_result(block=True, timeout=timeout_ms)
            if value != 1:
                raise RuntimeError(f"Dramatiq job {i} returned {value!r}")

        return time_each(count, one)

    def close(self) -> None:
        broker.close()


def adapter(system: str) -> Adapter:
    return DramatiqAdapter()

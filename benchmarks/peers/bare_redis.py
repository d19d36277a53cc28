"""No queue at all: plain redis-py calls, the floor under every system's figures on this server.

- ``single``: one ``LPUSH`` per call through a ``redis.Redis`` client, the least any producer
  can send for one job (a round trip, nothing stored beside the payload).
- ``rt``: a request and its reply through two lists. The "worker" (``python -m
  benchmarks.peers.bare_redis``) waits with ``BLPOP`` on the request list, runs the same task
  body as every system (one ``INCR``) and pushes the reply; the producer pushes the request and
  waits with ``BLPOP`` on the reply list. Two process wake-ups through Redis and nothing else:
  what a round trip costs on this machine before any queue does any work.

The other metrics do not apply; the report shows ``n/a``.
"""

from __future__ import annotations

import redis

from benchmarks.peers.common import Adapter, Unsupported, count_run, redis_url, time_each

REQUESTS = "bench:bare:requests"
REPLIES = "bench:bare:replies"


class BareAdapter(Adapter):
    def __init__(self) -> None:
        self.client = redis.Redis.from_url(redis_url())

    def enqueue_one_by_one(self, first: int, count: int) -> None:
        push = self.client.lpush
        for i in range(first, first + count):
            push(REQUESTS, i)

    def enqueue_bulk(self, first: int, count: int) -> None:
        raise Unsupported("plain redis-py is not a queue")

    def round_trips(self, count: int, timeout_s: float) -> list[float]:
        client = self.client

        def call(i: int) -> None:
            client.lpush(REQUESTS, i)
            if client.blpop([REPLIES], timeout=timeout_s) is None:
                raise TimeoutError(f"no reply to request {i} within {timeout_s} s")

        return time_each(count, call)

    def close(self) -> None:
        self.client.close()


def adapter(system: str) -> Adapter:
    return BareAdapter()


def serve() -> None:
    """The echo "worker": runs until it is terminated."""
    client = redis.Redis.from_url(redis_url())
    while True:
        item = client.blpop([REQUESTS], timeout=0)
        if item is None:
            continue
        count_run()
        client.lpush(REPLIES, item[1])


if __name__ == "__main__":
    serve()

"""The Redis backend: a broker, a result store and a coordination store on one Redis server
(or a Redis Cluster), through redis-py's clients with hiredis. Installed by ``faena[redis]``.

URLs and key layout: see :mod:`faena.backends.redis._client` and ``docs/brokers/redis.md``.
Every step that moves a message is one Lua script (``lua/*.lua``, the keys it touches listed
at its top), so a crash at any point leaves each message queued, scheduled, leased or dead.
"""

from faena.backends.redis.broker import RedisBroker
from faena.backends.redis.coordination import RedisCoordinationStore
from faena.backends.redis.results import RedisResultStore

__all__ = ["RedisBroker", "RedisCoordinationStore", "RedisResultStore"]

"""Backend lookup by URL scheme. Drivers are imported only when a URL asks for them."""

from __future__ import annotations

from importlib.util import find_spec
from types import ModuleType
from typing import Final
from urllib.parse import urlsplit

from faena.contracts.broker import Broker, BrokerConfig
from faena.contracts.coordination import CoordinationStore
from faena.contracts.results import ResultStore
from faena.foundation.clock import Clock
from faena.foundation.exceptions import ConfigurationError

SUPPORTED: Final = (
    "memory",
    "sqlite",
    "redis",
    "rediss",
    "redis+cluster",
    "rediss+cluster",
    "redis+socket",
)
PLANNED: Final = ("amqp", "amqps", "postgresql", "postgres")
REDIS: Final = frozenset({"redis", "rediss", "redis+cluster", "rediss+cluster", "redis+socket"})


def scheme_of(url: str) -> str:
    if not isinstance(url, str) or "://" not in url:
        raise ConfigurationError(
            f"{url!r} is not a broker URL; expected e.g. 'sqlite:///faena.sqlite3' or 'memory://'"
        )
    scheme = urlsplit(url).scheme.lower()
    if scheme in SUPPORTED:
        return scheme
    if scheme in PLANNED:
        raise ConfigurationError(
            f"the {scheme}:// backend is not part of this faena release; use sqlite:// (one "
            "machine, no server), redis:// (many machines) or memory:// (one process) for now"
        )
    raise ConfigurationError(
        f"unknown URL scheme {scheme!r} in {url!r}; supported: "
        + ", ".join(f"{s}://" for s in SUPPORTED)
    )


def check_url(url: str) -> None:
    """What can be told of ``url`` when an app is made, without importing a driver or
    connecting: a supported scheme, and for Redis that the driver is installed. The rest (a
    Redis URL's parameters, a SQLite path) is checked when the backend is first used."""
    if scheme_of(url) in REDIS and any(find_spec(name) is None for name in _REDIS_DRIVER):
        raise ConfigurationError(_NO_REDIS_DRIVER)


_REDIS_DRIVER: Final = ("redis", "hiredis")
_NO_REDIS_DRIVER: Final = "the redis:// backend needs the Redis driver: pip install 'faena[redis]'"


def _redis_backend() -> ModuleType:
    try:
        import faena.backends.redis as backend
    except ModuleNotFoundError as exc:
        if exc.name not in _REDIS_DRIVER:
            raise
        raise ConfigurationError(_NO_REDIS_DRIVER) from exc
    return backend


def make_broker(url: str, config: BrokerConfig) -> Broker:
    """A broker for ``url``."""
    scheme = scheme_of(url)
    if scheme in REDIS:
        return _redis_backend().RedisBroker(url, config)  # type: ignore[no-any-return]
    if scheme == "memory":
        from faena.backends.memory import MemoryBroker

        return MemoryBroker(url, config)
    from faena.backends.sqlite import SQLiteBroker

    return SQLiteBroker(url, config)


def make_result_store(url: str, clock: Clock, poll_interval_s: float) -> ResultStore:
    """A result store for ``url``."""
    scheme = scheme_of(url)
    if scheme in REDIS:
        return _redis_backend().RedisResultStore(  # type: ignore[no-any-return]
            url, clock, poll_interval_s
        )
    if scheme == "memory":
        from faena.backends.memory import MemoryResultStore

        return MemoryResultStore(url, clock, poll_interval_s)
    from faena.backends.sqlite import SQLiteResultStore

    return SQLiteResultStore(url, clock, poll_interval_s)


def make_coordination_store(url: str, clock: Clock) -> CoordinationStore:
    """A coordination store for ``url``."""
    scheme = scheme_of(url)
    if scheme in REDIS:
        return _redis_backend().RedisCoordinationStore(url, clock)  # type: ignore[no-any-return]
    if scheme == "memory":
        from faena.backends.memory import MemoryCoordinationStore

        return MemoryCoordinationStore(url, clock)
    from faena.backends.sqlite import SQLiteCoordinationStore

    return SQLiteCoordinationStore(url, clock)

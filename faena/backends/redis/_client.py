"""Connections to Redis for the broker, the result store and the coordination store.

URLs:

- ``redis://[[user]:password@]host[:port][/db]`` and ``rediss://`` (TLS; redis-py's
  ``ssl_*`` query parameters pass through, e.g. ``?ssl_cert_reqs=required``);
- ``redis+cluster://host:port[,host:port...]`` and ``rediss+cluster://`` for Redis Cluster (the
  first reachable node tells the client the rest; the database number must be 0);
- ``redis+socket://[[user]:password@]/path/to/redis.sock[?db=N]``: one server on this machine,
  over its Unix socket (Celery's name for the form; redis-py's ``unix://``).

faena's own query parameters, removed before the URL reaches redis-py:

- ``prefix`` (default ``faena``): the first part of every key, so several apps can share one
  server. Letters, digits and ``_.:-`` only.
- ``timeout`` (seconds, default 10): how long a call may wait for the server (connecting,
  reading a reply) before it fails with :class:`~faena.foundation.exceptions.BrokerUnavailable`.

Key names put the queue (or job id) in a hash tag, ``{prefix}:{<queue>}:<what>``, so that every
key one script touches lives in one cluster slot.

Time: a script that needs "now" takes it as an argument when the store runs on a test clock
(:class:`~faena.foundation.clock.FakeClock`) and reads the server's ``TIME`` otherwise, so
machines with skewed clocks still agree on due times and lease expiry.
"""

from __future__ import annotations

import asyncio
import os
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any, Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.asyncio.retry
import redis.cluster
import redis.exceptions
import redis.retry
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff

from faena.foundation.clock import SYSTEM_CLOCK, Clock
from faena.foundation.exceptions import BrokerError, BrokerUnavailable, ConfigurationError
from faena.foundation.util import redacted

_hiredis_pack: Callable[[tuple[Any, ...]], bytes] | None
try:
    from hiredis import pack_command as _hiredis_pack
except ImportError:  # pragma: no cover - faena[redis] installs hiredis
    _hiredis_pack = None

DEFAULT_PREFIX: Final = "faena"
DEFAULT_TIMEOUT_S: Final = 10.0
DEFAULT_MAX_CONNECTIONS: Final = 100
"""Connections per pool (per process, and per event loop for async clients)."""
SCHEMES: Final = ("redis", "rediss", "redis+cluster", "rediss+cluster", "redis+socket")
_PREFIX = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
_DECODING: Final = frozenset({"decode_responses", "encoding", "encoding_errors"})
"""redis-py parameters that would turn replies into ``str``."""
_TAG_ESCAPES: Final = str.maketrans({"%": "%25", "}": "%7D"})

SyncClient = redis.Redis | redis.cluster.RedisCluster
AsyncClient = redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster


@dataclass(frozen=True, slots=True)
class Target:
    """Where and how to connect, parsed from a URL."""

    url: str
    """The URL as redis-py reads it (faena's parameters removed, ``+cluster`` dropped)."""
    cluster: bool
    prefix: str
    timeout_s: float
    display: str
    """``host:port`` (or the socket's path) for messages, without credentials."""

    def key(self, tag: str, name: str) -> str:
        """``prefix:{tag}:name``: keys sharing ``tag`` share a cluster slot.

        Redis takes the hash tag from the first ``{`` to the next ``}``, and hashes the whole
        name when that is empty. A tag that is empty or starts with ``}`` would therefore put
        one job's or key's Redis keys in different slots: such a tag is written
        ``prefix:~{escaped}:name`` instead, ``%`` as ``%25``, ``}`` as ``%7D`` and the empty
        tag as ``%``. Every other tag keeps its plain name.
        """
        if tag and tag[0] != "}":
            return f"{self.prefix}:{{{tag}}}:{name}"
        return f"{self.prefix}:~{{{tag.translate(_TAG_ESCAPES) or '%'}}}:{name}"

    def key_patterns(self, name: str) -> tuple[str, str]:
        """``SCAN`` patterns matching every ``key(<any tag>, name)``, plain and escaped."""
        return f"{self.prefix}:{{*}}:{name}", f"{self.prefix}:~{{*}}:{name}"

    def global_key(self, name: str) -> str:
        """A key of its own slot, for data not tied to one queue or job."""
        return f"{self.prefix}:{name}"


def parse_url(url: str) -> Target:
    """Parse and check a Redis URL; a bad one is a ConfigurationError naming the problem."""
    shown = redacted(url)
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise ConfigurationError(
            f"{shown!r} is not a Redis URL; expected one of "
            + ", ".join(f"{s}://" for s in SCHEMES)
        )
    cluster = scheme.endswith("+cluster")
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    prefix = query.pop("prefix", DEFAULT_PREFIX)
    if not _PREFIX.match(prefix):
        raise ConfigurationError(
            f"invalid key prefix {prefix!r} in {shown!r}: use 1-64 characters from letters, "
            "digits and '_.:-'"
        )
    raw_timeout = query.pop("timeout", str(DEFAULT_TIMEOUT_S))
    try:
        timeout_s = float(raw_timeout)
    except ValueError:
        timeout_s = -1.0
    if not 0 < timeout_s < 3600:
        raise ConfigurationError(
            f"invalid timeout {raw_timeout!r} in {shown!r}: seconds above 0 and below 3600"
        )
    refused = sorted(set(query) & _DECODING)
    if refused:
        raise ConfigurationError(
            f"{shown!r}: remove {', '.join(refused)}: faena's Redis connections read raw bytes "
            "(messages and records are binary); give your own clients that setting instead"
        )
    if scheme == "redis+socket":
        return _socket_target(url, parts.netloc, parts.path, query, prefix, timeout_s)
    base = scheme.removesuffix("+cluster")
    if cluster and parts.path not in ("", "/", "/0"):
        raise ConfigurationError(
            f"{shown!r}: Redis Cluster has only database 0; remove {parts.path!r} from the URL"
        )
    if not cluster and parts.path not in ("", "/") and not parts.path[1:].isdigit():
        raise ConfigurationError(f"{shown!r}: the path must be a database number, e.g. /0")
    netloc = parts.netloc
    if cluster:
        # redis-py takes one seed node in the URL; all of them go in as startup nodes.
        netloc = netloc.split(",", 1)[0]
    try:
        first = urlsplit(f"//{netloc}")
        display = f"{first.hostname or 'localhost'}:{first.port or 6379}"
        if cluster:
            _seed_nodes(url)
    except ValueError as exc:
        raise ConfigurationError(f"{shown!r}: bad host or port ({exc})") from exc
    plain = urlunsplit((base, netloc, parts.path if not cluster else "", urlencode(query), ""))
    if not cluster:
        _check_parameters(shown, plain)
    return Target(url=plain, cluster=cluster, prefix=prefix, timeout_s=timeout_s, display=display)


_UNKNOWN_ARGUMENT = re.compile(r"unexpected keyword argument '([^']+)'")


def _check_parameters(shown: str, plain: str) -> None:
    """Refuse a query parameter neither faena nor redis-py's connection takes (a typo such as
    ``?timout=5``, or a TLS setting on a plain ``redis://`` URL), now rather than at the first
    call. Making a connection object does not connect."""
    try:
        pool = redis.ConnectionPool.from_url(plain)
        pool.make_connection()
        pool.disconnect()
    except (TypeError, ValueError) as exc:
        found = _UNKNOWN_ARGUMENT.search(str(exc))
        if found is None:
            raise ConfigurationError(f"{shown!r}: {exc}") from exc
        raise ConfigurationError(
            f"{shown!r}: unknown query parameter {found.group(1)!r}; faena's own are prefix and "
            "timeout, and redis-py takes its connection settings (e.g. health_check_interval, "
            "max_connections, and ssl_* with rediss://)"
        ) from exc


def _socket_target(
    url: str, netloc: str, path: str, query: dict[str, str], prefix: str, timeout_s: float
) -> Target:
    """A ``redis+socket://`` URL: the socket's absolute path, the database as ``?db=``."""
    shown = redacted(url)
    if netloc.rpartition("@")[2]:
        raise ConfigurationError(
            f"{shown!r}: a socket URL names no host; write redis+socket:///path/to/redis.sock "
            "(three slashes), with a password as redis+socket://:password@/path/to/redis.sock"
        )
    if not path.startswith("/") or path == "/":
        raise ConfigurationError(
            f"{shown!r}: give the socket's absolute path, e.g. redis+socket:///run/redis/redis.sock"
        )
    db = query.get("db", "0")
    if not db.isdigit():
        raise ConfigurationError(f"{shown!r}: db must be a database number, e.g. ?db=0")
    tls = sorted(k for k in query if k.startswith("ssl"))
    if tls:
        raise ConfigurationError(
            f"{shown!r}: a Unix socket takes no TLS settings ({', '.join(tls)}); use rediss:// "
            "to reach Redis over TLS"
        )
    plain = f"unix://{netloc}{path}?{urlencode(query)}"
    _check_parameters(shown, plain)
    return Target(url=plain, cluster=False, prefix=prefix, timeout_s=timeout_s, display=path)


def _seed_nodes(url: str) -> list[redis.cluster.ClusterNode]:
    """Every ``host:port`` of a cluster URL's comma-separated host list."""
    netloc = urlsplit(url).netloc.rsplit("@", 1)[-1]
    nodes = []
    for item in netloc.split(","):
        host, _, port = item.partition(":")
        nodes.append(
            redis.cluster.ClusterNode(host or "localhost", int(port or 6379))  # type: ignore[no-untyped-call]
        )
    return nodes


def _options(target: Target, retry: Any) -> dict[str, Any]:
    # redis-py sends a command again after a connection error by default, and a connection
    # that breaks after the command was sent looks the same as one that never connected: a
    # claim would lease messages nobody receives, an acknowledgement that applied would answer
    # "lease lost", an increment would count twice. So faena's clients never re-send; a failed
    # call raises BrokerUnavailable ("may or may not have taken effect") and the caller decides
    # (a worker tries again with back-off). A pooled connection that the server closed (a
    # restart) is noticed and replaced when it is taken from the pool, before anything is sent.
    return {
        "socket_connect_timeout": target.timeout_s,
        "socket_timeout": target.timeout_s,
        "health_check_interval": 15,
        "retry": retry,
    }


def _pool_options(target: Target) -> dict[str, Any]:
    # A burst of callers beyond the pool's size (threads waiting for results, coroutines
    # counting toward a rate limit) waits up to the timeout for a free connection instead of
    # failing at once. ``?max_connections=`` in the URL overrides the size.
    return {"max_connections": DEFAULT_MAX_CONNECTIONS, "timeout": target.timeout_s}


def _sync_retry() -> Any:
    return redis.retry.Retry(NoBackoff(), 0)


def _async_retry(resend: bool) -> Any:
    if resend:
        # Twice more, on a fresh connection: only for commands a repeat cannot harm.
        return redis.asyncio.retry.Retry(
            ExponentialWithJitterBackoff(cap=0.25, base=0.01),
            2,
            supported_errors=(redis.exceptions.ConnectionError,),
        )
    return redis.asyncio.retry.Retry(NoBackoff(), 0)


def sync_client(target: Target, source_url: str) -> SyncClient:
    """A thread-safe, pooled client for producers and administration."""
    if target.cluster:
        nodes = _seed_nodes(source_url)
        return redis.cluster.RedisCluster.from_url(
            target.url, startup_nodes=nodes, **_options(target, _sync_retry())
        )
    pool = redis.BlockingConnectionPool.from_url(
        target.url, **_pool_options(target), **_options(target, _sync_retry())
    )
    return redis.Redis.from_pool(pool)


def async_client(
    target: Target, source_url: str, *, blocking_s: float = 0.0, resend: bool = False
) -> AsyncClient:
    """A client for one event loop. ``blocking_s``: the longest blocking command it sends,
    added to the read timeout so a blocking wait is not mistaken for a dead server.
    ``resend``: send a command again after a broken connection — only for a client whose
    commands may run twice (a worker's wait for a wake-up token: a lost token costs a wait)."""
    options = _options(target, _async_retry(resend))
    options["socket_timeout"] = target.timeout_s + blocking_s
    if target.cluster:
        nodes = [redis.asyncio.cluster.ClusterNode(n.host, n.port) for n in _seed_nodes(source_url)]
        return redis.asyncio.cluster.RedisCluster.from_url(
            target.url, startup_nodes=nodes, **options
        )
    pool = redis.asyncio.BlockingConnectionPool.from_url(
        target.url, **_pool_options(target), **options
    )
    return redis.asyncio.Redis.from_pool(pool)


class _Lines:
    """A sender's idle connections, of its client's pool's kind, opened on demand up to as
    many as the pool may open (``?max_connections=`` in the URL)."""

    def __init__(self, pool: Any) -> None:
        self.pool = pool
        self.limit = pool.max_connections if pool is not None else 0
        self.idle: list[Any] = []
        self.made = 0

    def take(self) -> Any:
        """An idle line, else a new one (not yet connected); ``None`` past the limit or without
        a pool (a cluster client): the caller then goes through the client."""
        if self.pool is None:
            return None
        if self.idle:
            return self.idle.pop()
        if self.made >= self.limit:
            return None
        self.made += 1
        return self.pool.connection_class(**self.pool.connection_kwargs)


class SyncSender:
    """A sync client, and the lines its single commands travel on.

    redis-py's pool spends more on each call than the round trip itself on a quiet server (a
    lock and a condition, a readiness poll, metrics), which is most of a producer's
    ``delay()``. A single command from a thread here takes a connection of its own from a
    short list instead, sends, reads the reply and puts it back. Pipelines, cluster clients and
    commands beyond the list's size (a burst of more callers than ``max_connections``) go
    through the pooled client as before.

    Like the pool, a line is checked before anything is sent: one the server closed (a
    restart) is reconnected first. A line that fails during a call is closed, never used to
    send the command again (see :func:`_options`).
    """

    def __init__(self, client: SyncClient) -> None:
        self.client = client
        self._pool: Any = client.connection_pool if isinstance(client, redis.Redis) else None
        self._lock = threading.Lock()
        self._lines = _Lines(self._pool)
        self._pid = os.getpid()
        self._closed = False

    def execute(self, *args: Any) -> Any:
        """Send one command and return its raw reply (no redis-py response callbacks)."""
        line = self._take()
        if line is None:
            return self.client.execute_command(*args)  # type: ignore[no-untyped-call]
        try:
            try:
                stale = line.can_read()  # data nobody asked for, or the server hung up
            except (redis.exceptions.ConnectionError, OSError):
                stale = True
            if stale:
                line.disconnect()
            line.send_packed_command([_pack(line, args)])  # connects first if it has to
            reply = line.read_response()
        except redis.exceptions.ResponseError:
            self._give(line)  # the server answered: the line is fine
            raise
        except BaseException:
            line.disconnect()  # half a reply may be waiting on it
            self._give(line)
            raise
        self._give(line)
        return reply

    def _take(self) -> Any:
        with self._lock:
            if os.getpid() != self._pid:  # a forked child: its parent's sockets are not its own
                self._lines, self._pid = _Lines(self._pool), os.getpid()
            return self._lines.take()

    def _give(self, line: Any) -> None:
        with self._lock:
            if os.getpid() == self._pid and not self._closed:
                self._lines.idle.append(line)
                return
        line.disconnect()

    def close(self) -> None:
        with self._lock:
            idle, self._lines.idle, self._closed = self._lines.idle, [], True
        for line in idle:
            line.disconnect()
        close_client(self.client)


class AsyncSender:
    """An asyncio client, and the lines its commands travel on: :class:`SyncSender` for one
    event loop.

    A command, or a batch of them, takes an idle connection of its own (or opens one, up to
    the pool's ``max_connections``), writes the packed commands at once and reads the replies
    from the connection's parser, without redis-py's pool, retry wrapper and per-call
    ``wait_for`` (a task of its own for every write): on a quiet machine those cost more than
    the round trip. Cluster clients and calls beyond the list's size go through the client.

    A line is checked before anything is sent, as redis-py's pool checks its connections: one
    whose hang-up the loop has read (a server restart) is reconnected first. A call that has
    no full answer within the connection's read timeout aborts its line and fails with
    redis-py's ``TimeoutError``. A line whose call fails or is cancelled is dropped: half a
    reply may be on its way. Use a sender on the event loop its client belongs to.
    """

    def __init__(self, client: AsyncClient, *, resend: int = 0) -> None:
        self.client = client
        pool = client.connection_pool if isinstance(client, redis.asyncio.Redis) else None
        self._lines = _Lines(pool)
        self._closed = False
        self._expired: set[Any] = set()
        self._resend = resend

    async def execute(self, *args: Any) -> Any:
        """Send one command and return its raw reply (no redis-py response callbacks).

        With ``resend``, a command whose connection broke is sent again on a fresh line, up
        to that many times, after 10 ms, then 20 ms...: only for a sender whose commands may
        run twice (see :func:`async_client`)."""
        attempt = 0
        while True:
            line = self._take()
            if line is None:
                return await self.client.execute_command(*args)
            try:
                reply = (await self._exchange(line, (args,)))[0]
            except redis.exceptions.ConnectionError as exc:
                if attempt >= self._resend or self._closed or isinstance(exc, _CREDENTIALS):
                    raise
                await asyncio.sleep(0.01 * 2**attempt)
                attempt += 1
                if self._closed:  # closed during the pause: no new connection for it
                    raise
                continue
            if isinstance(reply, redis.exceptions.ResponseError):
                raise reply
            return reply

    def has_line(self) -> bool:
        """Whether the next call goes on a line of this sender's own (an idle one, or one it may
        open), not through the client."""
        lines = self._lines
        return (
            not self._closed
            and lines.pool is not None
            and (bool(lines.idle) or lines.made < lines.limit)
        )

    async def execute_many(
        self,
        commands: Sequence[tuple[Any, ...]],
        *,
        on_first: Callable[[Any], None] | None = None,
    ) -> list[Any]:
        """Send ``commands`` in one write (a pipeline, not a transaction) and return their raw
        replies in order, a command the server refused with its ``ResponseError`` in its
        place. ``on_first`` is called with the first reply as soon as it is read, before the
        others (which may block on the server)."""
        if not commands:
            return []
        line = self._take()
        if line is None:
            pipe = self.client.pipeline(transaction=False)
            for command in commands:
                pipe.execute_command(*command)
            replies = list(await pipe.execute(raise_on_error=False))
            if on_first is not None and replies:
                on_first(replies[0])
            return replies
        return await self._exchange(line, commands, on_first)

    async def _exchange(
        self,
        line: Any,
        commands: Sequence[tuple[Any, ...]],
        on_first: Callable[[Any], None] | None = None,
    ) -> list[Any]:
        try:
            if line.is_connected:
                try:
                    stale = await line.can_read()  # data nobody asked for, or a hang-up
                except (redis.exceptions.ConnectionError, OSError):
                    stale = True
                if stale:
                    await line.disconnect()
            if not line.is_connected:
                await line.connect()
            loop = asyncio.get_running_loop()
            timeout = line.socket_timeout or DEFAULT_TIMEOUT_S
            expiry = loop.call_later(timeout, self._expire, line)
            try:
                line._writer.write(b"".join([_pack(line, c) for c in commands]))
                await line._writer.drain()
                replies = await _read_replies(line._parser, len(commands), on_first)
            finally:
                expiry.cancel()
        except BaseException as exc:
            self._drop(line)
            expired = line in self._expired
            self._expired.discard(line)
            if isinstance(exc, asyncio.CancelledError):
                raise  # a cancel wins over a timeout that came in the same turn
            if expired:
                raise redis.exceptions.TimeoutError(
                    f"Timeout reading from {line._host_error()}"
                ) from exc
            if isinstance(exc, OSError):
                raise redis.exceptions.ConnectionError(
                    f"Error while talking to {line._host_error()}: {exc}"
                ) from exc
            raise
        if line in self._expired:  # the answer came as the line's time ran out
            self._expired.discard(line)
            self._drop(line)
        else:
            self._give(line)
        return replies

    def _expire(self, line: Any) -> None:
        """A call on ``line`` ran out of time: cut the line, so the call fails at once."""
        self._expired.add(line)
        writer = line._writer
        if writer is not None:
            writer.transport.abort()

    def _take(self) -> Any:
        return None if self._closed else self._lines.take()

    def _give(self, line: Any) -> None:
        if self._closed:
            self._drop(line)
        else:
            self._lines.idle.append(line)

    def _drop(self, line: Any) -> None:
        self._lines.made -= 1
        # Closed without waiting: this may run in a task being cancelled.
        line._close()  # redis-py's own close of the transport, without waiting

    async def aclose(self) -> None:
        """Close the idle lines and the client; a line in use closes when its call ends."""
        self._closed = True
        idle, self._lines.idle = self._lines.idle, []
        for line in idle:
            await line.disconnect()
        await self.client.aclose()


async def _read_replies(
    parser: Any, count: int, on_first: Callable[[Any], None] | None
) -> list[Any]:
    replies = [await parser.read_response()]
    if on_first is not None:
        on_first(replies[0])
    for _ in range(count - 1):
        replies.append(await parser.read_response())
    return replies


def _pack(line: Any, command: tuple[Any, ...]) -> bytes:
    """``command`` in Redis's protocol: hiredis's packer where it takes every argument (str,
    bytes, int, float), redis-py's otherwise."""
    name = command[0]
    if _hiredis_pack is not None and isinstance(name, str) and " " not in name:
        try:
            return _hiredis_pack(command)
        except TypeError:
            pass
    return b"".join(line.pack_command(*command))


def close_client(client: SyncClient) -> None:
    """Close ``client`` and every connection it opened."""
    if isinstance(client, redis.cluster.RedisCluster):
        # A cluster client's close() leaves some node connections open (those made while it
        # learned the cluster's layout): disconnect every node's pool as well.
        manager = client.nodes_manager
        nodes = [*manager.nodes_cache.values(), *manager.startup_nodes.values()]
        client.close()
        for node in nodes:
            if node.redis_connection is not None:
                node.redis_connection.connection_pool.disconnect()
        return
    client.close()


_UNREACHABLE: Final = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
# A cluster without a master for some slot, or moving one, is unavailable for a while: the
# call may work again later, as after a connection failure.
_CLUSTER_UNAVAILABLE: Final = (
    redis.exceptions.ClusterDownError,
    redis.exceptions.TryAgainError,
    redis.exceptions.SlotNotCoveredError,
)


def refusal(exc: BaseException) -> bool:
    """Whether ``exc`` is the server refusing a call for good (its keys, its arguments), not a
    server or cluster node that cannot answer now (a failover, a loading replica)."""
    transient = (
        *_CLUSTER_UNAVAILABLE,
        redis.exceptions.ReadOnlyError,
        redis.exceptions.BusyLoadingError,
        redis.exceptions.NoScriptError,
        redis.exceptions.OutOfMemoryError,
        redis.exceptions.MasterDownError,
        redis.exceptions.MovedError,
        redis.exceptions.AskError,
    )
    return (
        isinstance(exc, redis.exceptions.ResponseError)
        and not isinstance(exc, transient)
        and not _server_wide(str(exc))
    )


# Errors of the whole server, for a while, that redis-py has no class for (a long script or
# MULTI holds it: BUSY; its snapshots fail: MISCONF; too few replicas take writes: NOREPLICAS),
# also as a script reports them when one of its calls meets them (`...: BUSY ...`).
_SERVER_WIDE: Final = ("BUSY", "MISCONF", "NOREPLICAS")


def _server_wide(text: str) -> bool:
    return any(text.startswith(code) or f": {code} " in text for code in _SERVER_WIDE)


_SCRIPT_PLACE = re.compile(r"\s*script: [0-9a-f]{40}, on @user_script:\d+\.?$")


def script_error(exc: BaseException) -> str:
    """Redis's message for a script's error, without the script's hash and line."""
    return _SCRIPT_PLACE.sub("", str(exc))


def checked_refusal(exc: BaseException) -> bool:
    """Whether ``exc`` is a queue script's own key check refusing it (another program's value
    under a key, a counter that is not one), which it does before it writes anything; any
    other error of a script may come after some of its writes."""
    text = str(exc)
    return refusal(exc) and (text.startswith("WRONGTYPE") or "is not a counter" in text)


# Redis's own answers that redis-py raises as connection errors: wrong credentials (or a
# disabled user), a user the ACL does not let connect. Faults to fix, not an outage to wait out.
_CREDENTIALS: Final = (
    redis.exceptions.AuthenticationError,
    redis.exceptions.AuthorizationError,
)


def _unreachable(exc: BaseException) -> bool:
    if isinstance(exc, _CREDENTIALS):
        return False
    if isinstance(exc, _UNREACHABLE + _CLUSTER_UNAVAILABLE):
        return True
    # A cluster client that reaches none of its nodes says so with its own exception type,
    # raised from the connection error.
    return isinstance(exc, redis.exceptions.RedisClusterException) and isinstance(
        exc.__cause__, _UNREACHABLE
    )


@contextmanager
def translated(target: Target, doing: str) -> Iterator[None]:
    """Turn redis-py's errors into faena's: unreachable -> BrokerUnavailable, else BrokerError."""
    try:
        yield
    except (redis.exceptions.RedisError, redis.exceptions.RedisClusterException) as exc:
        if _unreachable(exc):
            raise BrokerUnavailable(
                f"Redis at {target.display} did not answer while {doing} (timeout "
                f"{target.timeout_s:g} s): {str(exc).rstrip('.')}. Check that the server runs "
                "and the URL is right; the call may or may not have taken effect"
            ) from exc
        if isinstance(exc, _CREDENTIALS):
            raise BrokerError(
                f"Redis at {target.display} refused the connection's credentials while {doing}:"
                f" {str(exc).rstrip('.')}. Check the user and password in the URL"
            ) from exc
        raise BrokerError(
            f"Redis at {target.display} refused {doing}: {script_error(exc)}"
        ) from exc


def now_arg(clock: Clock) -> str:
    """The ``now`` argument of a script in milliseconds: empty (server ``TIME``) on the
    system clock, the clock's time otherwise."""
    if clock is SYSTEM_CLOCK:
        return ""
    return str(int(clock.time() * 1000))


_COMMON = "_common.lua"


def load_script(name: str, *helpers: str) -> str:
    """The source of ``lua/<name>.lua``, preceded by the helpers in ``lua/_common.lua`` and then
    by those of each ``lua/<helper>.lua`` named in ``helpers`` (e.g. ``"_queue"``)."""
    folder = resources.files("faena.backends.redis").joinpath("lua")
    parts = [_COMMON, *(f"{h}.lua" for h in helpers), f"{name}.lua"]
    return "\n".join(folder.joinpath(part).read_text(encoding="utf-8") for part in parts)

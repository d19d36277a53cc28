"""Connections to one SQLite file: URL parsing, pragmas, the schema, and busy-safe transactions.

Several worker processes share one file, so any statement may meet "database is locked". WAL
lets readers run beside the single writer, ``busy_timeout`` makes SQLite itself wait for the
write lock, and :func:`write` / :func:`read` retry with jittered back-off for the cases SQLite
answers ``SQLITE_BUSY`` at once (lock upgrades, WAL recovery, ``journal_mode`` switches), so a
caller never sees a busy error, only a :class:`BrokerError` if the file stays locked for
``GIVE_UP_S``.
"""

from __future__ import annotations

import importlib.resources
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from faena.foundation.clock import SYSTEM_CLOCK
from faena.foundation.exceptions import BrokerError, ConfigurationError

T = TypeVar("T")

BUSY_TIMEOUT_MS = 2_000
"""How long SQLite's own busy handler waits for a lock before our retry loop takes over."""
GIVE_UP_S = 60.0
"""Past this much lock contention on one transaction the file is stuck, not busy: report it."""
_FIRST_BACKOFF_S = 0.001
_MAX_BACKOFF_S = 0.05
_BUSY_CODES = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})


def path_from_url(url: str) -> str:
    """The file of ``sqlite:///relative/path`` or ``sqlite:////absolute/path``, made absolute.

    Raises:
        ConfigurationError: not a ``sqlite:///`` URL, or no path in it.
    """
    prefix = "sqlite:///"
    if not url.startswith(prefix) or len(url) == len(prefix):
        raise ConfigurationError(
            f"{url!r} is not a SQLite URL; expected 'sqlite:///relative/file.sqlite3' or "
            "'sqlite:////absolute/file.sqlite3'"
        )
    path = url[len(prefix) :].partition("?")[0]
    if path == ":memory:":
        raise ConfigurationError(
            "an in-memory SQLite database cannot be shared between connections; use a file "
            "path, or 'memory://' for an in-process broker"
        )
    return os.path.abspath(path)


class _ForkGate:
    """Keeps ``fork()`` out of this process's SQLite calls.

    SQLite keeps each file's lock state in process memory, where a child inherits it: a child
    forked while one of our connections held a lock would see that (abandoned) connection hold
    it for ever, and every write of its own would wait in vain. Each attempt at a transaction
    or statement goes through the gate; a fork waits at the gate until those in progress end
    (at most one busy wait, ``BUSY_TIMEOUT_MS``), and none starts until it is done. A thread
    that forks from inside a call of its own does not wait for itself.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._inside = 0
        self._forking = False
        self._mine = threading.local()

    @contextmanager
    def passage(self) -> Iterator[None]:
        depth = getattr(self._mine, "depth", 0)
        with self._cond:
            while self._forking and depth == 0:
                self._cond.wait()
            self._inside += 1
        self._mine.depth = depth + 1
        try:
            yield
        finally:
            self._mine.depth = depth
            with self._cond:
                self._inside -= 1
                if self._forking:
                    self._cond.notify_all()

    def before_fork(self) -> None:
        self._cond.acquire()
        self._forking = True
        own = getattr(self._mine, "depth", 0)
        while self._inside > own:
            self._cond.wait()

    def after_fork_in_parent(self) -> None:
        self._forking = False
        self._cond.notify_all()
        self._cond.release()

    def after_fork_in_child(self) -> None:
        self.__init__()  # type: ignore[misc]  # the only thread left: a gate as new


_GATE = _ForkGate()
os.register_at_fork(
    before=_GATE.before_fork,
    after_in_parent=_GATE.after_fork_in_parent,
    after_in_child=_GATE.after_fork_in_child,
)


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return (code & 0xFF) in _BUSY_CODES
    text = str(exc).lower()
    return "locked" in text or "busy" in text


def _retrying(attempt: Callable[[], T], what: str) -> T:
    """Run ``attempt`` until it does not fail with a busy/locked error.

    Other failures of the file itself (cannot open, disk full, not a database) become a
    :class:`BrokerError` saying what we were doing; programming errors stay as they are.
    """
    delay = _FIRST_BACKOFF_S
    give_up_at = SYSTEM_CLOCK.monotonic() + GIVE_UP_S
    while True:
        try:
            with _GATE.passage():
                return attempt()
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc):
                raise BrokerError(f"SQLite failed to {what}: {exc}") from exc
            if SYSTEM_CLOCK.monotonic() >= give_up_at:
                raise BrokerError(
                    f"the SQLite file stayed locked for {GIVE_UP_S:.0f} s while trying to "
                    f"{what}; another process holds a write transaction open — stop it, or "
                    "move busy workloads to a server broker"
                ) from exc
        except sqlite3.DatabaseError as exc:
            if type(exc) is not sqlite3.DatabaseError:  # integrity/programming: a bug, not I/O
                raise
            raise BrokerError(f"SQLite failed to {what}: {exc}") from exc
        # Jitter keeps processes that collided from colliding again in lockstep.
        time.sleep(delay * random.uniform(0.5, 1.5))
        delay = min(delay * 2, _MAX_BACKOFF_S)


def write(conn: sqlite3.Connection, body: Callable[[sqlite3.Connection], T], what: str) -> T:
    """Run ``body`` in one ``BEGIN IMMEDIATE`` transaction, retried as a whole while busy.

    ``BEGIN IMMEDIATE`` takes the write lock up front: a deferred transaction that reads first
    and writes later can fail with ``SQLITE_BUSY_SNAPSHOT``, which no busy handler can wait out.
    ``body`` must therefore be safe to run again (it reads "now" and counters inside).
    """

    def attempt() -> T:
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = body(conn)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return result

    return _retrying(attempt, what)


def read(conn: sqlite3.Connection, body: Callable[[sqlite3.Connection], T], what: str) -> T:
    """Run read-only ``body`` (each statement its own snapshot), retried while busy."""
    return _retrying(lambda: body(conn), what)


def _schema_sql() -> str:
    return importlib.resources.files(__package__).joinpath("schema.sql").read_text("utf-8")


_TABLES = (
    "faena_meta",
    "faena_messages",
    "faena_dead",
    "faena_workers",
    "faena_results",
    "faena_keys",
    "faena_key_members",
    "faena_tokens",
    "faena_window_uses",
)
"""Every table schema.sql creates: a file missing any (an older release's) runs it again."""


def _ensure_schema(conn: sqlite3.Connection) -> None:
    marks = ", ".join("?" * len(_TABLES))
    found = conn.execute(
        f"SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN ({marks})", _TABLES
    ).fetchone()[0]
    if found == len(_TABLES):
        return
    try:
        conn.executescript(f"BEGIN IMMEDIATE;\n{_schema_sql()}\nCOMMIT;")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _prepare(conn: sqlite3.Connection, path: str) -> None:
    """Pragmas and schema; every step is idempotent, so a busy failure just runs it again."""
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    # Switching to WAL needs an exclusive lock once per file; it persists in the file.
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise BrokerError(f"SQLite refused WAL mode for {path!r} (got {mode!r})")
    # NORMAL is durable across process crashes in WAL mode; only a power loss may drop the
    # last transactions, which at-least-once delivery tolerates.
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA temp_store = MEMORY")
    _ensure_schema(conn)


def connect(path: str) -> sqlite3.Connection:
    """A new connection in WAL mode with the schema in place.

    ``check_same_thread=False`` because connections move between threads (a pool, an
    executor) — never used by two threads at once.
    """

    def attempt() -> sqlite3.Connection:
        conn = sqlite3.connect(
            path,
            timeout=BUSY_TIMEOUT_MS / 1000,
            isolation_level=None,
            check_same_thread=False,
            cached_statements=256,
        )
        try:
            _prepare(conn, path)
        except BaseException:
            conn.close()
            raise
        return conn

    return _retrying(attempt, f"open {path!r} (is its folder writable?)")


def data_version(conn: sqlite3.Connection) -> int:
    """A number that changes when another connection commits to the file."""
    return int(read(conn, lambda c: c.execute("PRAGMA data_version").fetchone()[0], "poll"))

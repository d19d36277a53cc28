"""The connections one broker or result store holds to its file, and their lifetime.

Two kinds of callers, two kinds of connection:

- sync callers (a web request enqueuing, ``AsyncResult.get``) borrow a connection from a small
  pool, so concurrent threads never share one and a thread that comes and goes (a dev server's
  thread per request) leaves nothing behind;
- async callers (the worker's event loop) hand their blocking SQLite work to one dedicated
  thread with its own connection, so the loop never blocks on the file and
  ``PRAGMA data_version`` is always read on the same connection.

A connection must not cross ``fork()``: a child that finds the parent's connections abandons them
(never closing them, which could drop the parent's locks) and opens its own.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import sqlite3
import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from faena.backends.sqlite._connection import connect, path_from_url
from faena.backends.sqlite._notify import Notifier, notifier_for
from faena.foundation.exceptions import BrokerError, BrokerGone

T = TypeVar("T")

_MAX_IDLE = 8
"""Idle pooled connections kept; more are closed on return (a burst of threads)."""
_inherited: list[object] = []
"""Connections and executors inherited through fork: kept alive, never closed, never used."""


def _identity(path: str) -> tuple[int, int] | None:
    """The file's device and inode, ``None`` if there is none at ``path``."""
    try:
        found = os.stat(path)
    except OSError:
        return None
    return found.st_dev, found.st_ino


class Database:
    """The pool, the executor thread and the notifier of one owner on one file."""

    def __init__(self, url: str) -> None:
        self.path = path_from_url(url)
        self.notifier: Notifier = notifier_for(self.path)
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._idle: list[sqlite3.Connection] = []
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._executor_conn: sqlite3.Connection | None = None
        self._closed = False
        _databases.add(self)
        # Open one connection now: a bad path or a broken file fails at construction, and the
        # schema exists before anyone waits on it.
        with self.connection():
            pass
        self._identity = _identity(self.path)

    def check_same_file(self) -> None:
        """Raise if the file was deleted or replaced since it was opened: connections stay on
        the old one, so this process would no longer see what others send, nor they it."""
        if _identity(self.path) != self._identity:
            raise BrokerGone(
                f"the SQLite file {self.path!r} was deleted or replaced while in use; this "
                "process's connections still point to the old one, so it no longer shares "
                "messages with the others: restart it"
            )

    @property
    def closed(self) -> bool:
        return self._closed

    def _drop_inherited(self) -> None:
        """In a forked child, set the parent's connections aside. Call with the lock held."""
        if os.getpid() != self._pid:
            _inherited.extend([*self._idle, self._executor, self._executor_conn])
            self._idle = []
            self._executor = None
            self._executor_conn = None
            self._pid = os.getpid()

    def _check_open(self) -> None:
        """Raise if closed; after a fork, start afresh. Call with the lock held."""
        if self._closed:
            raise BrokerError(f"the SQLite backend on {self.path!r} is closed")
        self._drop_inherited()

    @contextmanager
    def connection(self) -> Iterator[sqlite3.Connection]:
        """Borrow a pooled connection for a sync caller."""
        with self._lock:
            self._check_open()
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            conn = connect(self.path)
        try:
            yield conn
        finally:
            with self._lock:
                keep = not self._closed and len(self._idle) < _MAX_IDLE
                if keep:
                    self._idle.append(conn)
            if not keep:
                conn.close()

    def submit(self, fn: Callable[[sqlite3.Connection], T]) -> concurrent.futures.Future[T]:
        """Run ``fn`` with the executor thread's connection; the future of its result."""
        with self._lock:
            self._check_open()
            if self._executor is None:
                self._executor = concurrent.futures.ThreadPoolExecutor(
                    max_workers=1, thread_name_prefix=f"faena-sqlite-{os.path.basename(self.path)}"
                )
            executor = self._executor
        return executor.submit(self._on_executor, fn)

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``fn`` on the executor thread, awaited without blocking the event loop."""
        return await asyncio.wrap_future(self.submit(fn))

    def _on_executor(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        # Only the executor thread touches _executor_conn, so no lock is needed here.
        if self._executor_conn is None:
            self._executor_conn = connect(self.path)
        return fn(self._executor_conn)

    def _close_executor_conn(self) -> None:
        if self._executor_conn is not None:
            self._executor_conn.close()
            self._executor_conn = None

    def close(self) -> None:
        """Close every connection and stop the executor thread. Safe to call twice."""
        with self._lock:
            if self._closed:
                return
            self._drop_inherited()
            self._closed = True
            executor, self._executor = self._executor, None
            idle, self._idle = self._idle, []
        if executor is not None:
            # Queued after any work in flight, so the connection closes on its own thread last.
            executor.submit(self._close_executor_conn)
            executor.shutdown(wait=True)
        for conn in idle:
            conn.close()
        self.notifier.notify()


# -- sharing --------------------------------------------------------------------------------
# A broker and a result store on the same file, in the same process, must not be two writers:
# SQLite would make one wait on the other's write lock in its busy handler, which sleeps in
# steps of milliseconds. They share one Database (one executor thread, one connection pool),
# so their writes queue up behind each other instead.

_shared: dict[str, tuple[Database, int]] = {}
_shared_lock = threading.Lock()
_databases: weakref.WeakSet[Database] = weakref.WeakSet()


def _fresh_locks_in_child() -> None:
    # A fork while another thread held one of these would leave the child a lock no thread of
    # its own can release (its first SQLite call would hang).
    global _shared_lock
    _shared_lock = threading.Lock()
    for db in list(_databases):
        db._lock = threading.Lock()


os.register_at_fork(after_in_child=_fresh_locks_in_child)


class SharedDatabase:
    """One owner's handle on the Database shared by every owner of one file in this process."""

    def __init__(self, url: str) -> None:
        path = path_from_url(url)
        with _shared_lock:
            db, users = _shared.get(path, (None, 0))
            if db is None or db.closed:
                db, users = Database(url), 0
            _shared[path] = (db, users + 1)
        self._db = db
        self._closed = False
        self.path = db.path
        self.notifier = db.notifier

    @property
    def closed(self) -> bool:
        return self._closed or self._db.closed

    def _check(self) -> None:
        if self._closed:
            raise BrokerError(f"the SQLite backend on {self.path!r} is closed")

    @contextmanager
    def connection(self) -> Iterator[sqlite3.Connection]:
        self._check()
        with self._db.connection() as conn:
            yield conn

    def submit(self, fn: Callable[[sqlite3.Connection], T]) -> concurrent.futures.Future[T]:
        self._check()
        return self._db.submit(fn)

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        self._check()
        return await self._db.run(fn)

    def check_same_file(self) -> None:
        self._db.check_same_file()

    def close(self) -> None:
        """Let go of the shared Database; the last owner closes it. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        with _shared_lock:
            db, users = _shared.get(self.path, (None, 0))
            if db is not self._db:
                last = True  # replaced after it was closed elsewhere: ours is ours alone
            else:
                last = users <= 1
                if last:
                    del _shared[self.path]
                else:
                    _shared[self.path] = (db, users - 1)
        if last:
            self._db.close()

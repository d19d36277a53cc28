"""A process that contends for a lock, for ``test_locks.py``.

``python -m tests.integration.lock_contender contend URL NAME LEDGER ROUNDS``: take the lock
ROUNDS times, writing ``in <pid> <token>`` after acquiring and ``out <pid> <token>`` before
releasing to the ledger (one ``O_APPEND`` write per line, so lines never interleave).

``python -m tests.integration.lock_contender hold URL NAME STORAGE TTL``: take the lock,
print its token, wait for a line on stdin (the test SIGSTOPs it meanwhile), then try a fenced
write to STORAGE with that token and release; print what happened to each.
"""

from __future__ import annotations

import os
import sys

from faena.app.lookup import make_coordination_store
from faena.features.lock import Lock
from faena.foundation.clock import SYSTEM_CLOCK
from faena.foundation.exceptions import LockLost
from tests.integration.fenced import fenced_write


def _line(fd: int, text: str) -> None:
    os.write(fd, (text + "\n").encode())


def contend(url: str, name: str, ledger: str, rounds: int) -> None:
    store = make_coordination_store(url, SYSTEM_CLOCK)
    fd = os.open(ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    pid = os.getpid()
    try:
        for _ in range(rounds):
            with Lock(store, name, ttl=30, blocking_timeout=60) as lock:
                _line(fd, f"in {pid} {lock.token}")
                _line(fd, f"out {pid} {lock.token}")
    finally:
        os.close(fd)
        store.close()


def hold(url: str, name: str, storage: str, ttl: float) -> None:
    store = make_coordination_store(url, SYSTEM_CLOCK)
    lock = Lock(store, name, ttl=ttl, blocking=False)
    assert lock.acquire(), "the lock was free"
    print(f"token {lock.token}", flush=True)
    sys.stdin.readline()  # the test stops this process here, past the lock's TTL
    accepted = fenced_write(storage, lock.token or 0, f"late write by {os.getpid()}")
    print(f"write {'accepted' if accepted else 'stale'}", flush=True)
    try:
        lock.release()
        print("release ok", flush=True)
    except LockLost:
        print("release lost", flush=True)
    store.close()


if __name__ == "__main__":
    mode, url, name, path, extra = sys.argv[1:6]
    if mode == "contend":
        contend(url, name, path, int(extra))
    else:
        hold(url, name, path, float(extra))

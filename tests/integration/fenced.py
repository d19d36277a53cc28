"""A storage that refuses writes with a stale fencing token: what a lock's token protects.

The file holds ``<highest token seen> <value>``; a write with a lower token is refused. A real
system does the same in its database (``UPDATE ... WHERE fence < :token``).
"""

from __future__ import annotations

import fcntl
import os


def fenced_write(path: str, token: int, value: str) -> bool:
    """Write ``value`` if ``token`` is at least the highest seen; ``False`` if stale."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        current = os.read(fd, 4096).decode()
        highest = int(current.split(" ", 1)[0]) if current else 0
        if token < highest:
            return False
        os.lseek(fd, 0, os.SEEK_SET)
        os.ftruncate(fd, 0)
        os.write(fd, f"{token} {value}".encode())
        return True
    finally:
        os.close(fd)


def fenced_read(path: str) -> tuple[int, str]:
    with open(path) as f:
        token, _, value = f.read().partition(" ")
    return int(token), value

"""Real services for the tests: reachable, or skipped locally and failed in CI.

A test that needs the shared Redis asks for :func:`redis_url`; every call gives a fresh key
prefix, so tests (and test runs) sharing the server never see each other's keys, and
:func:`drop_prefix` deletes what a test left behind.
"""

from __future__ import annotations

import os
import socket
import uuid

import pytest

REDIS_HOST = os.environ.get("FAENA_TEST_REDIS_HOST", "127.0.0.1")
REDIS_PORT = int(os.environ.get("FAENA_TEST_REDIS_PORT", "6379"))


def reachable(host: str, port: int, timeout_s: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def require(service: str, host: str, port: int) -> None:
    """Skip the calling test when ``host:port`` is down, unless ``CI`` is set: then fail."""
    if reachable(host, port):
        return
    message = f"{service} is not reachable on {host}:{port}"
    if os.environ.get("CI"):
        pytest.fail(f"{message}, and CI is set: the service must run in CI")
    pytest.skip(message)


def redis_url(db: int = 0) -> str:
    """A URL to the shared test Redis with a prefix of its own (skips or fails if down)."""
    require("Redis", REDIS_HOST, REDIS_PORT)
    prefix = f"t{uuid.uuid4().hex[:12]}"
    return f"redis://{REDIS_HOST}:{REDIS_PORT}/{db}?prefix={prefix}"


def drop_prefix(url: str) -> int:
    """Delete every key under the URL's prefix; returns how many."""
    import redis

    prefix = url.rsplit("prefix=", 1)[1].split("&", 1)[0]
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start : start + 500])
        return len(keys)
    finally:
        client.close()


class OnRedis:
    """A mixin for conformance test classes: a fresh key prefix on the shared test Redis for
    each test (``self.url``), its keys deleted afterwards."""

    url: str

    def setup_method(self) -> None:
        self.url = redis_url()
        super().setup_method()  # type: ignore[misc]

    def teardown_method(self) -> None:
        try:
            super().teardown_method()  # type: ignore[misc]
        finally:
            drop_prefix(self.url)

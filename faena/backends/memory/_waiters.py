"""Waking event-loop waiters from any thread: how memory producers meet memory consumers."""

from __future__ import annotations

import asyncio


class Waiters:
    """Event-loop futures to wake when something changes; safe to poke from any thread."""

    def __init__(self) -> None:
        self._waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()

    def add(self) -> tuple[asyncio.AbstractEventLoop, asyncio.Event]:
        pair = (asyncio.get_running_loop(), asyncio.Event())
        self._waiters.add(pair)
        return pair

    def discard(self, pair: tuple[asyncio.AbstractEventLoop, asyncio.Event]) -> None:
        self._waiters.discard(pair)

    def wake(self) -> None:
        for loop, event in tuple(self._waiters):
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is loop:
                event.set()
            elif not loop.is_closed():
                loop.call_soon_threadsafe(event.set)

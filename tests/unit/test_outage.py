"""The worker's outage handling: one log line per outage, capped back-off, a recovery line."""

from __future__ import annotations

import asyncio
import logging

import pytest

from faena.foundation.clock import FakeClock
from faena.foundation.exceptions import BrokerUnavailable
from faena.worker.outage import FIRST_DELAY_S, MAX_DELAY_S, Outage


def test_back_off_doubles_from_the_first_delay_up_to_the_cap() -> None:
    # Given an outage that keeps failing
    outage = Outage("fetching messages", FakeClock())
    ceilings = []
    for _ in range(12):
        delay = outage.failed(BrokerUnavailable("down"))
        ceilings.append(delay)
    # Then each pause lies between half and all of a ceiling that doubles up to the cap
    for n, delay in enumerate(ceilings):
        ceiling = min(MAX_DELAY_S, FIRST_DELAY_S * 2**n)
        assert ceiling / 2 <= delay <= ceiling
    assert max(ceilings) <= MAX_DELAY_S


def test_an_unreachable_server_is_logged_once_then_its_recovery_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    outage = Outage("fetching messages", clock)
    caplog.set_level(logging.INFO, logger="faena.worker")
    # When the server is unreachable for five tries over 12 s
    for _ in range(5):
        outage.failed(BrokerUnavailable("Redis at 127.0.0.1:1 did not answer"))
        clock.advance(2.4)
    assert outage.ongoing
    outage.recovered()
    # Then one line says it failed, without a traceback, and one says it works again
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert lines[0].startswith("fetching messages failed: Redis at 127.0.0.1:1")
    assert caplog.records[0].exc_info is None
    assert lines[1] == "fetching messages works again after 12.0 s"
    # And the back-off starts from the bottom again
    assert outage.failed(BrokerUnavailable("down")) <= FIRST_DELAY_S


def test_other_errors_are_logged_with_their_traceback_every_time(
    caplog: pytest.LogCaptureFixture,
) -> None:
    outage = Outage("the heartbeat", FakeClock())
    caplog.set_level(logging.INFO, logger="faena.worker")
    for _ in range(3):
        outage.failed(ValueError("a bug"))
    assert [r.exc_info is not None for r in caplog.records] == [True, True, True]
    assert not outage.ongoing


def test_a_pause_ends_early_when_stop_is_set() -> None:
    async def scenario() -> None:
        outage = Outage("fetching messages", FakeClock())
        for _ in range(10):
            outage.failed(BrokerUnavailable("down"))  # the next pause is seconds long
        stop = asyncio.Event()
        pause = asyncio.create_task(outage.pause(BrokerUnavailable("down"), stop))
        await asyncio.sleep(0)
        stop.set()
        await asyncio.wait_for(pause, 1.0)

    asyncio.run(scenario())

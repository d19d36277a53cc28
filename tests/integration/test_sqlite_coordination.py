"""Four processes use one SQLite file's coordination store at once.

Proves the store is atomic across processes, not only across threads: racing ``set_if_absent``
has exactly one winner per key, ``incr`` and ``aincr`` add up exactly, and fencing tokens are
unique and increasing for every process.
"""

from __future__ import annotations

import asyncio
import itertools
import multiprocessing
import queue
import traceback
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import pytest

from faena.backends.sqlite import SQLiteCoordinationStore

PROCESSES = 4
ROUNDS = 200
INCREMENTS = 250
TOKENS = 100
TTL_S = 60.0
JOIN_S = 30.0
"""Upper bound on one process's whole run; it finishes in about a second."""


def _race(store: SQLiteCoordinationStore, n: int, barrier: Barrier) -> list[int]:
    """Contend for a fresh key each round, all processes starting the round together."""
    won = []
    for r in range(ROUNDS):
        barrier.wait(JOIN_S)
        if store.set_if_absent(f"round-{r}", f"p{n}", TTL_S):
            won.append(r)
    return won


async def _acount(store: SQLiteCoordinationStore, amount: int) -> None:
    for _ in range(INCREMENTS):
        await store.aincr("total", amount, TTL_S)


def _body(url: str, n: int, barrier: Barrier) -> dict[str, list[int]]:
    store = SQLiteCoordinationStore(url)
    try:
        won = _race(store, n, barrier)
        barrier.wait(JOIN_S)
        # Half the processes count through the executor (async twin), half on the caller.
        if n % 2:
            asyncio.run(_acount(store, n + 1))
        else:
            for _ in range(INCREMENTS):
                store.incr("total", n + 1, TTL_S)
        tokens = [store.next_token("fence") for _ in range(TOKENS)]
        return {"won": won, "tokens": tokens}
    finally:
        store.close()


def _process(url: str, n: int, barrier: Barrier, results: Any) -> None:
    """A process's body; every failure is reported, never swallowed."""
    try:
        results.put((n, _body(url, n, barrier), None))
    except BaseException:
        barrier.abort()  # the others fail at once instead of waiting out the timeout
        results.put((n, None, traceback.format_exc()))


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_processes_race_count_and_draw_tokens_on_one_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shared.sqlite3'}"
    SQLiteCoordinationStore(url).close()  # the schema exists before the race starts
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(PROCESSES), ctx.Queue()
    processes = [
        ctx.Process(target=_process, args=(url, n, barrier, results)) for n in range(PROCESSES)
    ]
    answers: dict[int, dict[str, list[int]]] = {}
    failures: list[str] = []
    try:
        # Given four processes racing, counting and drawing tokens on one file
        for process in processes:
            process.start()
        for _ in processes:
            try:
                n, answer, failure = results.get(timeout=JOIN_S)
            except queue.Empty:
                failures.append(f"a process did not report within {JOIN_S} s")
                break
            if failure is not None:
                failures.append(f"p{n}: {failure}")
            else:
                answers[n] = answer
        for process in processes:
            process.join(JOIN_S)
    finally:
        for process in processes:
            if process.is_alive():
                process.kill()
                process.join()
        results.close()
        results.join_thread()
    assert failures == []
    assert [p.exitcode for p in processes] == [0] * PROCESSES
    # Then every round had exactly one winner
    wins = sorted(r for a in answers.values() for r in a["won"])
    assert wins == list(range(ROUNDS))
    store = SQLiteCoordinationStore(url)
    try:
        # And the counts add up exactly, whichever flavour each process used
        assert store.get("total") == str(INCREMENTS * sum(range(1, PROCESSES + 1)))
        winners = {r: f"p{n}" for n, a in answers.items() for r in a["won"]}
        assert {r: store.get(f"round-{r}") for r in range(ROUNDS)} == winners
        # And the tokens are unique overall and increasing within each process
        tokens = [t for a in answers.values() for t in a["tokens"]]
        assert sorted(tokens) == list(range(1, PROCESSES * TOKENS + 1))
        for answer in answers.values():
            assert all(x < y for x, y in itertools.pairwise(answer["tokens"]))
        assert store.next_token("fence") == PROCESSES * TOKENS + 1
    finally:
        store.close()

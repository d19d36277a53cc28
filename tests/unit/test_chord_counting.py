"""How a worker counts chord members: the members whose follow-ups run together are added to
the chord's set in one ``aadd_members`` call, and a call that fails, whether or not its adds
were made, leaves the body to run exactly once."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from faena import Faena, chord
from faena.backends.memory import MemoryCoordinationStore
from faena.foundation.exceptions import BrokerUnavailable

from .support import AppFactory, drain

MEMBERS = 40


class CountingStore(MemoryCoordinationStore):
    """The memory store, noting every set add it is asked for. ``fail`` says how the
    ``add_members`` call that completes the chord fails: ``"before"`` its adds, ``"after"``
    them (the answer lost); once."""

    def __init__(self, fail: str | None = None) -> None:
        super().__init__("memory://")
        self.fail = fail
        self.singles: list[tuple[str, str]] = []
        self.batches: list[list[tuple[str, str]]] = []
        self._counted: set[str] = set()

    def add_member(self, key: str, member: str, ttl_s: float) -> tuple[bool, int]:
        self.singles.append((key, member))
        return self._add(key, member, ttl_s)

    def _add(self, key: str, member: str, ttl_s: float) -> tuple[bool, int]:
        self._counted.add(member)
        return super().add_member(key, member, ttl_s)

    def add_members(self, items: Sequence[tuple[str, str]], ttl_s: float) -> list[tuple[bool, int]]:
        self.batches.append(list(items))
        completes = len(self._counted | {m for _, m in items}) == MEMBERS
        fail = self.fail if completes else None
        if fail is not None:
            self.fail = None
        if fail == "before":
            raise BrokerUnavailable("no answer (the adds were not made)")
        answers = [self._add(key, member, ttl_s) for key, member in items]
        if fail == "after":
            raise BrokerUnavailable("no answer (the adds were made)")
        return answers

    async def aadd_members(
        self, items: Sequence[tuple[str, str]], ttl_s: float
    ) -> list[tuple[bool, int]]:
        return self.add_members(items, ttl_s)


def _chord_app(make_app: AppFactory, store: CountingStore) -> tuple[Faena, list[list[int]]]:
    app = make_app("chord-counting")
    app._coordination = store  # the app's own store, with a window onto its calls
    bodies: list[list[int]] = []

    @app.task(name="counting.member")
    def member(i: int) -> int:
        return i

    @app.task(name="counting.body")
    def body(values: list[int]) -> int:
        bodies.append(values)
        return sum(values)

    result = chord((member.s(i) for i in range(MEMBERS)), body.s()).delay()
    drain(app, concurrency=8)
    assert result.get(timeout=5) == sum(range(MEMBERS))
    return app, bodies


def test_a_worker_counts_chord_members_in_batches(make_app: AppFactory) -> None:
    store = CountingStore()
    # When a burst worker runs a chord
    _, bodies = _chord_app(make_app, store)
    # Then the body ran once, with every result in member order
    assert bodies == [list(range(MEMBERS))]
    # And every member was counted once, through add_members, never one add_member call each
    counted = [member for batch in store.batches for _, member in batch]
    assert sorted(counted, key=int) == [str(i) for i in range(MEMBERS)]
    assert store.singles == []


@pytest.mark.parametrize("fail", ["before", "after"])
def test_a_failed_add_members_call_still_runs_the_body_exactly_once(
    make_app: AppFactory, fail: str
) -> None:
    # Given a coordination store whose add_members call that completes the chord fails,
    # before or after its adds
    store = CountingStore(fail)
    # When a burst worker runs a chord
    _, bodies = _chord_app(make_app, store)
    # Then the follow-ups of that call ran again, and the body ran exactly once
    assert bodies == [list(range(MEMBERS))]
    assert store.fail is None
    counted = {member for batch in store.batches for _, member in batch}
    assert counted == {str(i) for i in range(MEMBERS)}

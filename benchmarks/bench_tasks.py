"""Tasks the benchmarks run: no-ops, so that what is measured is faena itself."""

from __future__ import annotations

from faena import Faena

app = Faena("bench")


@app.task
def noop(i: int) -> int:
    return i


@app.task(ignore_result=True)
def noop_ignored(i: int) -> None:
    return None


@app.task
async def anoop(i: int) -> int:
    return i


@app.task
def tally(values: list[int]) -> int:
    """A chord body: the sum of the members' results."""
    return sum(values)

"""The typed API as a type checker sees it: ``@app.task`` and ``@shared_task`` make a
``Task[P, R]``, so calls with wrong arguments and uses of the wrong result type are errors
before anything runs. Runs mypy on a small module, as a user's CI would."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("mypy")

CHECKED = textwrap.dedent(
    """
    from faena import Faena, JobContext, shared_task

    app = Faena("typed", broker="memory://")


    @app.task
    def add(x: int, y: int) -> int:
        return x + y


    @app.task(queue="emails", bind=True)
    def send(self: JobContext, to: str) -> bool:
        return bool(to)


    @shared_task
    def double(x: int) -> int:
        return 2 * x


    @shared_task(queue="emails")
    async def shout(word: str) -> str:
        return word.upper()


    @shared_task(bind=True)
    def bound(self: JobContext, n: int) -> int:
        return n


    total: int = add.delay(1, 2).get()
    sent: bool = send.delay("a@example.org").get()
    doubled: int = double.delay(2).get()
    shouted: str = shout.delay("hi").get()
    counted: int = bound.delay(3).get()
    add.delay("1", 2)  # error
    double.delay("2")  # error
    shout.delay(3)  # error
    bound.delay("3")  # error
    wrong: str = double.delay(2).get()  # error
    """
)


@pytest.mark.timeout(180)
def test_tasks_and_shared_tasks_are_typed(tmp_path: Path) -> None:
    module = tmp_path / "typed_tasks.py"
    module.write_text(CHECKED)
    checked = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--no-error-summary",
            "--cache-dir",
            str(tmp_path / "cache"),
            str(module),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    lines = sorted(
        int(line.split(":")[1]) for line in checked.stdout.splitlines() if ": error:" in line
    )
    expected = [n for n, line in enumerate(CHECKED.splitlines(), 1) if line.endswith("# error")]
    assert len(expected) == 5
    assert lines == expected, checked.stdout

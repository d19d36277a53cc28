"""The Python examples of the routing, limits and locks guides run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[2] / "docs"
GUIDES = ("routing.md", "limits.md", "locks.md")


def _examples() -> list[tuple[str, int, str]]:
    found = []
    for guide in GUIDES:
        blocks = re.findall(r"```python\n(.*?)```", (DOCS / guide).read_text(), flags=re.S)
        found += [(guide, n, code) for n, code in enumerate(blocks, 1)]
    return found


@pytest.mark.parametrize(("guide", "number", "code"), _examples())
def test_guide_example_runs(
    guide: str, number: int, code: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # When the example runs in a fresh namespace, Then it raises nothing (its asserts hold)
    exec(compile(code, f"{guide} example {number}", "exec"), {"__name__": "docs_example"})

"""The first example of docs/canvas.md runs as written."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_canvas_guide_example_runs() -> None:
    text = (ROOT / "docs" / "canvas.md").read_text()
    example = re.findall(r"```python\n(.*?)```", text, flags=re.S)[0]
    exec(compile(example, "docs/canvas.md", "exec"), {"__name__": "canvas_docs"})

"""The README's first command, as a new user runs it: a fresh virtualenv, ``pip install``,
``faena demo`` — on a copy of the repository, with no broker server involved.

(The README's second command is ``scripts/test``, which runs this suite: it is exercised by
every run of it.)
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def readme_command(number: int) -> str:
    """The ``number``-th shell block under "The two commands" in README.md."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## The two commands", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)\n\s*```", section, flags=re.S)
    return blocks[number - 1].strip()


def test_readme_names_the_demo_and_the_test_script() -> None:
    assert readme_command(1) == (
        "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/faena demo"
    )
    assert readme_command(2) == "./scripts/test"
    assert "scripts/test" in (ROOT / ".ci" / "run").read_text()


def test_first_readme_command_runs_the_demo_in_a_fresh_virtualenv(tmp_path: Path) -> None:
    # Given a clean copy of the repository (what a user clones), with no .venv in it
    checkout = tmp_path / "faena"
    shutil.copytree(
        ROOT,
        checkout,
        ignore=shutil.ignore_patterns(".venv*", ".git", "__pycache__", "*.sqlite3*", ".*_cache"),
    )
    # When the README's first command runs there, with this interpreter as `python3`
    command = readme_command(1).replace("python3 -m venv .venv", f"{sys.executable} -m venv .venv")
    done = subprocess.run(
        ["bash", "-c", command],
        cwd=checkout,
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )
    # Then the demo ran real jobs on a worker process and everything finished
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    said = " ".join(done.stdout.split())  # the summary may wrap at the terminal's width
    assert "All 10 jobs succeeded" in said
    assert "worker stopped cleanly on SIGTERM (exit 0)" in said

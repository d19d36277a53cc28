"""The public surface: ``faena.__all__`` complete and sorted, ``import faena`` light, the
error tree and the small public types."""

from __future__ import annotations

import builtins
import json
import subprocess
import sys
import tomllib
import types
from pathlib import Path

import pytest

import faena
from faena import (
    READY_STATES,
    FakeClock,
    JobEvent,
    Progress,
    Request,
)

ROOT = Path(__file__).resolve().parents[2]

FORBIDDEN_AT_IMPORT = (
    "redis",
    "aio_pika",
    "aiormq",
    "psycopg",
    "psycopg_pool",
    "django",
    "starlette",
    "uvicorn",
    "aiosqlite",
    "apsw",
    "pysqlite3",
    "faena.backends.sqlite",
    "faena.backends.memory",
    "faena.worker",
    "faena.cli",
    "faena.testing",
    "click",
    "rich",
    "faena.app.eager",
    "ctypes",
    "getpass",
)


def _ruff_sort_key(name: str) -> tuple[int, str]:
    """The order ruff's RUF022 keeps ``__all__`` in: CONSTANTS, then Classes, then the rest."""
    if name.isupper() and len(name) > 1:
        return 0, name
    if name[:1].isupper():
        return 1, name
    return 2, name


def test_all_is_sorted() -> None:
    # Then __all__ is in ruff's RUF022 order, without duplicates
    assert faena.__all__ == sorted(faena.__all__, key=_ruff_sort_key)
    assert len(set(faena.__all__)) == len(faena.__all__)


def test_all_is_complete_and_every_name_exists() -> None:
    # Given every public name faena exposes
    public = {
        name
        for name, value in vars(faena).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    # Then __all__ lists exactly those, and each exists
    assert public == set(faena.__all__) - {"__version__"}
    for name in faena.__all__:
        assert hasattr(faena, name), name


def test_import_faena_loads_no_driver_and_no_adapter() -> None:
    # Given a fresh interpreter, When it imports faena
    code = "import json, sys, faena; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        timeout=30,
    )
    loaded = set(json.loads(out.stdout))
    # Then no broker driver, web stack, Django, CLI or backend module came with it, nor what
    # only eager mode, time limits or a revoke without a name use
    bad = sorted(m for m in loaded for f in FORBIDDEN_AT_IMPORT if m == f or m.startswith(f + "."))
    assert bad == []


def test_a_memory_app_does_not_load_the_sqlite_backend() -> None:
    # Given a fresh interpreter that creates a memory app and sends a task
    code = (
        "import json, sys, faena\n"
        "app = faena.Faena('x', broker='memory://')\n"
        "@app.task\n"
        "def f(): pass\n"
        "f.delay()\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        timeout=30,
    )
    # Then the SQLite backend and driver were never imported
    loaded = set(json.loads(out.stdout))
    assert "faena.backends.memory" in loaded
    assert not {m for m in loaded if m.startswith("faena.backends.sqlite")}
    assert "sqlite3" not in loaded


def test_version_matches_the_project_metadata() -> None:
    # Then faena.__version__ is the packaged version
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert faena.__version__ == project["version"]


def test_package_ships_py_typed() -> None:
    # Then the package is marked as typed
    assert (Path(faena.__file__).parent / "py.typed").is_file()


# -- errors ---------------------------------------------------------------------------------

ERROR_TREE = {
    "ConfigurationError": "FaenaError",
    "UnknownTaskError": "ConfigurationError",
    "BrokerError": "FaenaError",
    "MessageTooLarge": "BrokerError",
    "SerializationError": "FaenaError",
    "ResultError": "FaenaError",
    "TimeoutError": "ResultError",
    "TaskFailed": "ResultError",
    "TaskRevoked": "ResultError",
    "TaskControlError": "FaenaError",
    "MaxRetriesExceeded": "TaskControlError",
}


@pytest.mark.parametrize(("name", "parent"), ERROR_TREE.items())
def test_error_tree(name: str, parent: str) -> None:
    # Then each error sits in its family under FaenaError
    assert issubclass(getattr(faena, name), getattr(faena, parent))
    assert issubclass(getattr(faena, name), faena.FaenaError)


def test_signals_and_limits_are_outside_the_error_tree() -> None:
    # Then control signals and the hard limit cannot be caught by `except Exception`
    for name in ("Retry", "Reject", "TimeLimitExceeded"):
        kind = getattr(faena, name)
        assert not issubclass(kind, Exception), f"`except Exception` would swallow {name}"
        assert not issubclass(kind, faena.FaenaError)
    assert issubclass(faena.SoftTimeLimitExceeded, Exception)
    assert issubclass(faena.WorkerLost, Exception)


def test_faena_timeout_is_also_the_builtin_timeout() -> None:
    # Then `except TimeoutError` catches faena's too
    assert issubclass(faena.TimeoutError, builtins.TimeoutError)


def test_error_default_message_is_its_docstring() -> None:
    # Then an error raised without a message says its docstring
    assert str(faena.ConfigurationError()) == "The configuration is not valid."
    assert str(faena.MessageTooLarge("custom")) == "custom"


def test_task_failed_and_revoked_carry_their_fields() -> None:
    # Given the errors a result raises
    failed = faena.TaskFailed("j1", "ValueError", "bad", "Traceback ...")
    # Then they carry the job, the remote error, and the reason
    assert (failed.job_id, failed.type_name, failed.error_message) == ("j1", "ValueError", "bad")
    assert failed.remote_traceback == "Traceback ..."
    assert "j1" in str(failed)
    assert "ValueError: bad" in str(failed)
    revoked = faena.TaskRevoked("j2", "expired")
    assert (revoked.job_id, revoked.reason) == ("j2", "expired")
    assert str(revoked).endswith("expired")


# -- small public types ---------------------------------------------------------------------


def test_ready_states() -> None:
    # Then only SUCCESS, FAILURE and REVOKED are final
    assert frozenset({faena.SUCCESS, faena.FAILURE, faena.REVOKED}) == READY_STATES
    for state in (faena.PENDING, faena.QUEUED, faena.SCHEDULED, faena.STARTED, faena.RETRY):
        assert state not in READY_STATES


def test_fake_clock_moves_only_when_told() -> None:
    # Given a fake clock
    clock = FakeClock(1_000.0)
    assert clock.time() == clock.monotonic() == 1_000.0
    # When it is advanced or set, Then it moves exactly so
    clock.advance(2.5)
    assert clock.time() == 1_002.5
    clock.set(2_000.0)
    assert clock.time() == 2_000.0
    # And it never moves back
    with pytest.raises(ValueError, match="only moves forward"):
        clock.advance(-1)
    with pytest.raises(ValueError, match="only moves forward"):
        clock.set(1_999.0)


def test_request_attempt_counts_from_one() -> None:
    # Then the first run is attempt 1, the second retry attempt 3
    assert Request(id="j", task="t").attempt == 1
    assert Request(id="j", task="t", retries=2).attempt == 3


def test_progress_and_job_event_are_plain_values() -> None:
    # Then progress is a plain tuple, and an event needs only kind, id, task and time
    assert Progress(0.5, "half") == (0.5, "half")
    event = JobEvent(kind="SUCCESS", job_id="j", task="t", at=1.0)
    assert event.data == {}
    assert event.worker is None

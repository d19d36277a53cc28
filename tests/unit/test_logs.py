"""Worker logging: every line carries the job id it is about, as text or JSON."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from faena.worker import logs


@pytest.fixture
def faena_logger() -> Iterator[logging.Logger]:
    """The ``faena`` logger, restored (with the root logger) after the test reconfigures it."""
    logger, root = logging.getLogger("faena"), logging.getLogger()
    saved = (logger.handlers[:], logger.level, logger.propagate)
    saved_root = (root.handlers[:], root.level)
    yield logger
    logger.handlers[:], logger.level, logger.propagate = saved
    root.handlers[:], root.level = saved_root


def _record(message: str = "hello", exc: BaseException | None = None) -> logging.LogRecord:
    exc_info = (type(exc), exc, exc.__traceback__) if exc else None
    return logging.LogRecord("faena.worker", logging.INFO, __file__, 1, message, (), exc_info)


def test_job_id_filter_uses_the_current_job_or_a_dash() -> None:
    # Outside a job
    # Given no job running, When a line is filtered, Then its job id is '-'
    record = _record()
    assert logs.JobIdFilter().filter(record) is True
    assert record.job_id == "-"  # type: ignore[attr-defined]
    # Inside a job
    # Given a job running, Then its id is on the line
    token = logs.current_job.set("job-7")
    try:
        record = _record()
        logs.JobIdFilter().filter(record)
        assert record.job_id == "job-7"  # type: ignore[attr-defined]
    finally:
        logs.current_job.reset(token)


def test_json_formatter_writes_one_object_per_line() -> None:
    # Given a record about a job
    record = _record("done in %d ms")
    record.args = (12,)
    record.job_id = "job-1"
    # When it is formatted as JSON
    line = logs.JsonFormatter().format(record)
    data = json.loads(line)
    # Then it is one object on one line with the fields
    assert data["message"] == "done in 12 ms"
    assert data["job_id"] == "job-1"
    assert data["level"] == "INFO"
    assert data["logger"] == "faena.worker"
    assert data["time"].endswith("Z")
    assert "\n" not in line


def test_json_formatter_includes_the_exception() -> None:
    # Given a record with an exception
    try:
        raise ValueError("bad")
    except ValueError as exc:
        record = _record("failed", exc)
    # When it is formatted, Then the exception text is included
    data = json.loads(logs.JsonFormatter().format(record))
    assert "ValueError: bad" in data["exception"]


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_configure_sends_faena_logs_with_job_ids(
    faena_logger: logging.Logger, monkeypatch: pytest.MonkeyPatch, fmt: str
) -> None:
    # Given faena logging configured to a captured stderr
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    logs.configure("info", fmt)
    # When a line is logged inside a job
    token = logs.current_job.set("job-9")
    try:
        logging.getLogger("faena.worker").info("working")
        logging.getLogger("faena.worker").debug("hidden at info")
    finally:
        logs.current_job.reset(token)
    # Then it is written once, with the job id, in the chosen format
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    if fmt == "json":
        assert json.loads(lines[0])["job_id"] == "job-9"
    else:
        assert "[job-9]" in lines[0]
        assert "working" in lines[0]
    assert faena_logger.propagate is False


def test_adopt_root_gives_task_loggers_job_ids_when_the_root_is_unconfigured(
    faena_logger: logging.Logger, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an application that has not configured logging (no root handlers)
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    logging.getLogger().handlers[:] = []
    logs.configure("info", "text")
    logs.adopt_root("info")  # as `faena worker` does once the app is imported
    # When a task's own logger writes inside a job
    token = logs.current_job.set("job-3")
    try:
        logging.getLogger("shop.tasks").info("charging")
    finally:
        logs.current_job.reset(token)
    # Then the line goes out once, with the job id
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    assert "[job-3]" in lines[0]
    assert "shop.tasks: charging" in lines[0]


def test_configure_leaves_an_application_root_logger_alone(
    faena_logger: logging.Logger, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an application that configured the root logger
    mine = logging.NullHandler()
    logging.getLogger().handlers[:] = [mine]
    monkeypatch.setattr("sys.stderr", io.StringIO())
    # When faena logging is configured, and the root offered faena's handler
    logs.configure("info", "json")
    logs.adopt_root("info")
    # Then the application's handlers stay as they are
    assert logging.getLogger().handlers == [mine]

"""Worker logging: every line carries the job id it is about (``-`` outside a job).

Text lines for people, or one JSON object per line (``--log-format json``) for machines.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from typing import Final

current_job: contextvars.ContextVar[str] = contextvars.ContextVar("faena_job_id", default="-")

TEXT_FORMAT: Final = "%(asctime)s %(levelname)-7s [%(job_id)s] %(name)s: %(message)s"


class JobIdFilter(logging.Filter):
    """Adds ``job_id`` to every record, from the job running in this task or thread."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "job_id"):
            record.job_id = current_job.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, job_id, message (and the exception)."""

    def format(self, record: logging.LogRecord) -> str:
        data = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "job_id": getattr(record, "job_id", "-"),
            "message": record.getMessage(),
        }
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=False)


def configure(level: str = "INFO", fmt: str = "text") -> None:
    """Send faena's logs to stderr, with job ids, as text or JSON.

    See :func:`adopt_root` for the tasks' own loggers.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(JobIdFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    ours = logging.getLogger("faena")
    ours.handlers[:] = [handler]
    ours.setLevel(level.upper())
    ours.propagate = False


def adopt_root(level: str = "INFO") -> None:
    """Give the root logger faena's handler (job ids, format) if nothing configured it.

    Call after importing the app: an app that sets up logging itself keeps its own setup.
    """
    root = logging.getLogger()
    ours = logging.getLogger("faena")
    if not root.handlers and ours.handlers:
        root.addHandler(ours.handlers[0])
        root.setLevel(level.upper())

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

    The tasks' own loggers get the same handler through the root logger, unless the
    application has configured the root logger itself (then its handlers stay as they are).
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(JobIdFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    ours = logging.getLogger("faena")
    ours.handlers[:] = [handler]
    ours.setLevel(level.upper())
    ours.propagate = False
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(handler)
        root.setLevel(level.upper())

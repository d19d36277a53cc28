"""What a job produced, and the record a result store keeps about it."""

from __future__ import annotations

import traceback as tb
from typing import Final, Literal

import msgspec

from faena.foundation.util import utf8_safe


class ErrorInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A failure as stored: type name, message and traceback text, never a pickled object."""

    type: str
    message: str
    traceback: str = ""

    @classmethod
    def from_exception(cls, exc: BaseException) -> ErrorInfo:
        """``exc`` as stored. Whatever its text holds, the result can be encoded: an exception
        whose ``str()`` fails is named instead, and text that is not valid UTF-8 (a file name
        decoded with ``surrogateescape``) keeps the odd characters as escapes."""
        kind = type(exc)
        if kind.__module__ == "builtins":
            name = kind.__qualname__
        elif kind.__module__.startswith("faena."):
            name = f"faena.{kind.__qualname__}"  # the public name: faena.SoftTimeLimitExceeded
        else:
            name = f"{kind.__module__}.{kind.__qualname__}"
        try:
            message = str(exc)
        except Exception as failure:
            message = f"<str() of this {name} raised {failure!r}>"
        text = "".join(tb.format_exception(kind, exc, exc.__traceback__))
        return cls(
            type=utf8_safe(name),
            message=utf8_safe(_cut(message, MAX_ERROR_MESSAGE)),
            traceback=utf8_safe(_cut(text, MAX_TRACEBACK)),
        )


MAX_ERROR_MESSAGE: Final = 8 * 1024
"""The most characters of an error's message a record, a dead letter or a log line keeps."""
MAX_TRACEBACK: Final = 64 * 1024
"""The most characters of a traceback a record keeps (its start and its end, which names the
error)."""


def _cut(text: str, limit: int) -> str:
    """``text``, or its start and end around a note of how much was left out."""
    if len(text) <= limit:
        return text
    keep = limit // 2
    return f"{text[:keep]}\n[... {len(text) - 2 * keep:,} characters left out ...]\n{text[-keep:]}"


OutcomeStatus = Literal["success", "failure", "retry", "reject", "lost"]


class Outcome(msgspec.Struct, frozen=True, kw_only=True):
    """How one run of a job ended, as a pool reports it.

    ``value`` is the encoded return value (JSON or pickle bytes). For ``retry``, ``countdown``
    or ``eta`` say when; ``None`` for both means "let the retry policy decide".
    """

    status: OutcomeStatus
    value: bytes | None = None
    error: ErrorInfo | None = None
    countdown: float | None = None
    eta: float | None = None
    max_retries: int | None = None
    reason: str | None = None
    runtime_s: float = 0.0


class JobRecord(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What a result store keeps for one job id.

    ``fence`` is the broker's delivery token of the run that wrote the record; a store never
    lets a lower fence overwrite a higher one, so a worker that lost its lease cannot overwrite
    the outcome of the worker that holds it now.
    """

    id: str
    state: str
    task: str | None = None
    queue: str | None = None
    worker: str | None = None
    value: bytes | None = None
    serializer: str = "json"
    error: ErrorInfo | None = None
    progress: float | None = None
    progress_message: str | None = None
    retries: int = 0
    deliveries: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    updated_at: float = 0.0
    next_run_at: float | None = None
    reason: str | None = None
    terminate: bool = False
    revoked_by: str | None = None
    parent_id: str | None = None
    root_id: str | None = None
    children: list[str] = []
    fence: int = 0
    expires_at: float | None = None


FINAL_FENCE = 1 << 62
"""The fence of a record that nothing may overwrite (a revoke)."""

_record_encoder = msgspec.msgpack.Encoder()
_record_decoder = msgspec.msgpack.Decoder(JobRecord)


def encode_record(record: JobRecord) -> bytes:
    """Compact binary form of a record, for stores that keep bytes."""
    return _record_encoder.encode(record)


def decode_record(data: bytes) -> JobRecord:
    """Inverse of :func:`encode_record`."""
    return _record_decoder.decode(data)

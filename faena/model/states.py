"""Job states, as ``AsyncResult.state`` reports them."""

from __future__ import annotations

from typing import Final, Literal

PENDING: Final = "PENDING"
"""No record of this id: never sent, already forgotten, or expired."""
QUEUED: Final = "QUEUED"
"""In a queue, ready to be handed to a worker."""
SCHEDULED: Final = "SCHEDULED"
"""In the broker, due later (countdown, eta, or a retry's back-off)."""
STARTED: Final = "STARTED"
"""A worker is running it."""
RETRY: Final = "RETRY"
"""It failed and will run again later."""
SUCCESS: Final = "SUCCESS"
"""It finished and returned a value."""
FAILURE: Final = "FAILURE"
"""It failed for good (no retries left, or a failure that is never retried)."""
REVOKED: Final = "REVOKED"
"""It was revoked or expired before it could run."""

State = Literal[
    "PENDING", "QUEUED", "SCHEDULED", "STARTED", "RETRY", "SUCCESS", "FAILURE", "REVOKED"
]

READY_STATES: Final = frozenset({SUCCESS, FAILURE, REVOKED})
"""States after which nothing more happens to the job."""
ALL_STATES: Final = (PENDING, QUEUED, SCHEDULED, STARTED, RETRY, SUCCESS, FAILURE, REVOKED)

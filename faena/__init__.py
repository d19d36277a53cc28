"""faena: a distributed task queue for Python.

Declare tasks on an app, send them with ``delay``, run them with ``faena worker``::

    from faena import Faena

    app = Faena("shop")

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    add.delay(2, 3).get(timeout=5)  # 5, with `faena worker -A shop` running

Importing faena loads no broker driver and reads no environment; an app does both when it is
created and used.
"""

from faena.app.core import Faena, QueueHandle, shared_task
from faena.app.result import AsyncResult, Progress
from faena.app.settings import Settings
from faena.app.workflow import GroupResult, WorkflowResult
from faena.canvas import chain, chord, group, signature
from faena.contracts.events import JobEvent
from faena.features.lock import Lock
from faena.foundation.clock import FakeClock
from faena.foundation.exceptions import (
    BrokerError,
    BrokerGone,
    BrokerUnavailable,
    ChordError,
    ConfigurationError,
    FaenaError,
    LockError,
    LockLost,
    LockNotAcquired,
    MaxRetriesExceeded,
    MessageTooLarge,
    Reject,
    ResultError,
    Retry,
    SerializationError,
    SoftTimeLimitExceeded,
    TaskControlError,
    TaskFailed,
    TaskRevoked,
    TimeLimitExceeded,
    TimeoutError,
    UnknownTaskError,
    WorkerLost,
)
from faena.model.signature import Signature
from faena.model.states import (
    FAILURE,
    PENDING,
    QUEUED,
    READY_STATES,
    RETRY,
    REVOKED,
    SCHEDULED,
    STARTED,
    SUCCESS,
)
from faena.model.task import JobContext, Request, Task

__version__ = "0.1.0"

__all__ = [
    "FAILURE",
    "PENDING",
    "QUEUED",
    "READY_STATES",
    "RETRY",
    "REVOKED",
    "SCHEDULED",
    "STARTED",
    "SUCCESS",
    "AsyncResult",
    "BrokerError",
    "BrokerGone",
    "BrokerUnavailable",
    "ChordError",
    "ConfigurationError",
    "Faena",
    "FaenaError",
    "FakeClock",
    "GroupResult",
    "JobContext",
    "JobEvent",
    "Lock",
    "LockError",
    "LockLost",
    "LockNotAcquired",
    "MaxRetriesExceeded",
    "MessageTooLarge",
    "Progress",
    "QueueHandle",
    "Reject",
    "Request",
    "ResultError",
    "Retry",
    "SerializationError",
    "Settings",
    "Signature",
    "SoftTimeLimitExceeded",
    "Task",
    "TaskControlError",
    "TaskFailed",
    "TaskRevoked",
    "TimeLimitExceeded",
    "TimeoutError",
    "UnknownTaskError",
    "WorkerLost",
    "WorkflowResult",
    "__version__",
    "chain",
    "chord",
    "group",
    "shared_task",
    "signature",
]

"""The failure rules of a workflow part that a producer ends: a revoked message removed from
the broker before any worker took it. No worker will ever see it, so the process that revoked
it stops its chain, fails its chord and sends its error callbacks, as a worker does for a part
that ends without running."""

from __future__ import annotations

from typing import TYPE_CHECKING

from faena.app.eager_flow import EagerFlowIO
from faena.app.producer import to_outgoing
from faena.features.followups import after_failure
from faena.foundation.exceptions import SerializationError
from faena.model.message import Message, decode_message
from faena.model.outcome import ErrorInfo

if TYPE_CHECKING:
    from faena.app.core import Faena


class ProducerFlowIO(EagerFlowIO):
    """:class:`~faena.features.followups.FlowIO` that sends what follows through the broker."""

    def publish(self, messages: list[Message]) -> None:
        self.app.broker.enqueue([to_outgoing(self.app.settings, m) for m in messages])


def end_revoked(app: Faena, body: bytes, reason: str) -> None:
    """Carry out the failure rules of the revoked message ``body``, if it is a workflow's."""
    try:
        message = decode_message(body)
    except SerializationError:
        return  # not a message faena can read: no workflow to end
    if message.flow is None:
        return
    error = ErrorInfo(type="faena.TaskRevoked", message=f"revoked: {reason}")
    after_failure(ProducerFlowIO(app), message, error, again=False)

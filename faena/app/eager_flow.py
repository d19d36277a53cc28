"""Workflows in eager mode: the same follow-up rules as a worker, carried out inline.

A follow-up is "sent" by running it at once, so a whole canvas has run when ``apply_async``
returns; chord counting still goes through the app's coordination store, as on a worker.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import msgspec

from faena.features.followups import after_failure, after_success, decode_value
from faena.features.lifecycle import Decision
from faena.foundation.exceptions import ConfigurationError
from faena.model import states
from faena.model.message import Message
from faena.model.outcome import ErrorInfo, JobRecord, Outcome

if TYPE_CHECKING:
    from faena.app.core import Faena


class AppFlowIO:
    """The part of :class:`~faena.features.followups.FlowIO` that any app's stores answer:
    time, TTL and the coordination store's chord keys. Eager mode and the worker add how they
    read results and send messages."""

    def __init__(self, app: Faena) -> None:
        self.app = app

    def now(self) -> float:
        return self.app.settings.clock.time()

    def ttl(self) -> float:
        return self.app.settings.result_ttl

    def add_member(self, key: str, member: str) -> tuple[bool, int]:
        return self.app.coordination.add_member(key, member, self.ttl())

    def take_once(self, key: str, value: str) -> bool:
        return self.app.coordination.set_if_absent(key, value, self.ttl())

    def holder(self, key: str) -> str | None:
        return self.app.coordination.get(key)


class EagerFlowIO(AppFlowIO):
    """:class:`~faena.features.followups.FlowIO` that runs what it publishes, inline."""

    def values(self, job_ids: list[str]) -> dict[str, Any]:
        found = {}
        for job_id in job_ids:
            record = self.app.results.fetch(job_id)
            if record is not None and record.state == states.SUCCESS:
                found[job_id] = decode_value(
                    record.value, record.serializer, self.app.settings.accept
                )
        return found

    def recorded(self, job_ids: list[str]) -> set[str]:
        return {i for i in job_ids if self.app.results.fetch(i) is not None}

    def publish(self, messages: list[Message]) -> None:
        run_messages(self.app, messages)

    def store(self, records: list[JobRecord]) -> None:
        for record in records:
            self.app.results.store(record)


def run_messages(app: Faena, messages: list[Message]) -> None:
    """Run each message now, in order, as eager mode sends it.

    Raises:
        ConfigurationError: a message names a task this app does not have.
    """
    from faena.app.eager import run_eagerly

    for message in messages:
        task = app.registry.find(message.task)
        if task is None:
            raise ConfigurationError(
                f"eager mode runs tasks of this app only, and {message.task!r} (in a workflow) "
                "is not registered here"
            )
        run_eagerly(app, task, message)


def follow_eagerly(app: Faena, message: Message, outcome: Outcome, decision: Decision) -> Decision:
    """Store the record of workflow job ``message``, then run what follows it."""
    flow = message.flow
    assert flow is not None
    success = outcome.status == "success" and decision.action == "ack"
    record = decision.record
    if record is not None and (success or decision.action == "dead"):
        children = flow.children() if success else [j.id for j in flow.link_error]
        record = msgspec.structs.replace(record, children=children)
        decision = dataclasses.replace(decision, record=record)
    if record is not None:
        app.results.store(record)
    io = EagerFlowIO(app)
    if success:
        value = decode_value(outcome.value, message.serializer, app.settings.accept)
        after_success(io, message, value, again=False)
    elif decision.action == "dead":
        error = (record.error if record else None) or outcome.error
        error = error or ErrorInfo(type="faena.Failed", message=decision.detail or "failed")
        after_failure(io, message, error, again=False)
    return decision

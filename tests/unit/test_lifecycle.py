"""What happens after a run, as pure decisions: the record to store and how to settle the
message. No worker, no clock: the time is an argument."""

from __future__ import annotations

import msgspec
import pytest

from faena import FAILURE, RETRY, REVOKED, SUCCESS
from faena.contracts.broker import SEND_FENCE_STEP
from faena.features.lifecycle import RunInfo, decide, expired, record_fence
from faena.model.message import Message
from faena.model.options import build_options
from faena.model.outcome import FINAL_FENCE, ErrorInfo, Outcome

NOW = 1_000.0
MESSAGE = Message(id="j1", task="shop.add", queue="q", root_id="j1")
BOOM = ErrorInfo(type="ValueError", message="boom", traceback="Traceback ...")


def _info(deliveries: int = 1, max_deliveries: int = 5) -> RunInfo:
    return RunInfo(
        worker="w1",
        fence=3,
        deliveries=deliveries,
        started_at=NOW - 2,
        now=NOW,
        result_ttl=60.0,
        max_deliveries=max_deliveries,
    )


def test_success_is_recorded_and_acked() -> None:
    # When a run succeeds
    decision = decide(build_options(), MESSAGE, Outcome(status="success", value=b"5"), _info())
    # Then the message is acked and a SUCCESS record holds the value
    assert decision.action == "ack"
    record = decision.record
    assert record is not None
    assert (record.state, record.value, record.progress) == (SUCCESS, b"5", 1.0)
    assert (record.worker, record.fence, record.finished_at) == ("w1", 3, NOW)
    assert record.expires_at == NOW + 60.0


def test_success_with_ignore_result_stores_nothing() -> None:
    # Given a task whose result is ignored
    options = build_options(ignore_result=True)
    # When it succeeds
    decision = decide(options, MESSAGE, Outcome(status="success", value=b"5"), _info())
    # Then it is acked with no record
    assert (decision.action, decision.record) == ("ack", None)


def test_task_result_ttl_overrides_the_app_ttl() -> None:
    # Given a task keeping its results 5 s
    options = build_options(result_ttl=5.0)
    # When it succeeds
    decision = decide(options, MESSAGE, Outcome(status="success"), _info())
    assert decision.record is not None
    # Then its record expires after 5 s, not the app's 60 s
    assert decision.record.expires_at == NOW + 5.0


def test_failure_is_recorded_and_dead_lettered_as_failed() -> None:
    # When a run fails
    decision = decide(build_options(), MESSAGE, Outcome(status="failure", error=BOOM), _info())
    # Then the message is dead-lettered as failed, with the error recorded
    assert (decision.action, decision.reason) == ("dead", "failed")
    assert decision.detail == "ValueError: boom"
    assert decision.record is not None
    assert decision.record.state == FAILURE
    assert decision.record.error == BOOM


def test_reject_dead_letters_with_the_tasks_reason() -> None:
    # When a task rejects its message
    outcome = Outcome(status="reject", reason="invalid order", error=BOOM)
    decision = decide(build_options(), MESSAGE, outcome, _info())
    # Then it is dead-lettered with the task's reason
    assert (decision.action, decision.reason) == ("dead", "invalid order")


def test_retry_sends_the_next_attempt_due_after_the_delay() -> None:
    # Given a 30 s retry delay
    options = build_options(default_retry_delay=30)
    # When a run asks to retry
    decision = decide(options, MESSAGE, Outcome(status="retry", error=BOOM), _info())
    # Then the next attempt (same id, one more retry) is due in 30 s, recorded RETRY
    assert decision.action == "retry"
    assert decision.due == NOW + 30
    assert decision.next_message is not None
    assert decision.next_message.retries == 1
    assert decision.next_message.eta == NOW + 30
    assert decision.next_message.id == MESSAGE.id
    assert decision.record is not None
    assert (decision.record.state, decision.record.next_run_at) == (RETRY, NOW + 30)


def test_retry_with_an_eta_uses_it() -> None:
    # When a run asks to retry at a given time
    outcome = Outcome(status="retry", eta=NOW + 500)
    decision = decide(build_options(), MESSAGE, outcome, _info())
    # Then that is when the next attempt is due
    assert decision.due == NOW + 500


def test_retry_with_no_retries_left_is_a_failure() -> None:
    # Given a job retried as often as allowed
    options = build_options(max_retries=2)
    message = Message(id="j1", task="shop.add", queue="q", retries=2)
    # When it asks to retry again
    decision = decide(options, message, Outcome(status="retry"), _info())
    # Then it fails for good with MaxRetriesExceeded
    assert (decision.action, decision.reason) == ("dead", "failed")
    assert decision.record is not None
    assert decision.record.error is not None
    assert decision.record.error.type == "faena.MaxRetriesExceeded"


@pytest.mark.parametrize(("deliveries", "action"), [(1, "release"), (4, "release"), (5, "dead")])
def test_lost_worker_gives_the_message_back_until_the_last_delivery(
    deliveries: int, action: str
) -> None:
    # Given a job whose process died, on its n-th delivery of 5 allowed
    outcome = Outcome(status="lost")
    decision = decide(build_options(), MESSAGE, outcome, _info(deliveries, max_deliveries=5))
    # Then it is handed back counted as worker_lost, or dead-lettered on the last delivery
    assert decision.action == action
    assert decision.reason == "worker_lost"
    assert decision.record is not None
    assert decision.record.state == (RETRY if action == "release" else FAILURE)
    assert decision.record.error is not None
    assert decision.record.error.type == "faena.WorkerLost"


def test_expired_message_is_revoked_and_acked() -> None:
    # When a message expired before it could run
    decision = expired(MESSAGE, _info())
    # Then it is acked and recorded REVOKED, expired
    assert decision.action == "ack"
    assert decision.record is not None
    assert (decision.record.state, decision.record.reason) == (REVOKED, "expired")


def test_record_fences_order_deliveries_within_a_send_and_sends_by_time() -> None:
    # Given the delivery fences a broker hands out: a send's first fence is its send number
    # times SEND_FENCE_STEP, then one more per hand-out
    first_send, later_send = 7 * SEND_FENCE_STEP, 3_000 * SEND_FENCE_STEP
    sent, resent = NOW, NOW + 0.002
    # Then a later delivery of one send writes with a higher record fence
    assert record_fence(sent, first_send + 2) > record_fence(sent, first_send + 1)
    # and any delivery of a later send outranks every delivery of the earlier one
    assert record_fence(resent, later_send + 1) > record_fence(sent, first_send + 40)
    # and all stay below the fence of a revoke
    assert record_fence(resent, later_send + 1) < FINAL_FENCE


def test_each_retry_is_a_new_send_whose_records_outrank_every_earlier_attempt() -> None:
    # Given a job retried in place for the 70,000th time: its message has been handed out so
    # often that the low 16 bits of its delivery fence have wrapped around
    sent = NOW - 3_600
    message = msgspec.structs.replace(MESSAGE, retries=69_999, sent_at=sent)
    fence = 6 * SEND_FENCE_STEP - 1  # the next hand-out wraps the low 16 bits to 0
    decision = decide(build_options(max_retries=None), message, Outcome(status="retry"), _info())
    # When it asks to retry once more
    nxt = decision.next_message
    assert nxt is not None
    # Then the next attempt carries a new send time, and its records outrank this attempt's
    assert nxt.sent_at == NOW
    assert record_fence(nxt.sent_at, fence + 1) > record_fence(sent, fence)


def test_a_retry_is_sent_later_than_the_attempt_it_follows_whatever_the_clocks_say() -> None:
    # Given an attempt sent by a producer whose clock runs half a second ahead of the worker's
    ahead = msgspec.structs.replace(MESSAGE, sent_at=NOW + 0.5)
    for message in (ahead, msgspec.structs.replace(MESSAGE, sent_at=NOW)):
        # When the worker decides on a retry
        decision = decide(build_options(), message, Outcome(status="retry"), _info())
        nxt = decision.next_message
        assert nxt is not None
        # Then the next attempt is sent one millisecond later (the worker's clock is not
        # ahead of the last send), and its records outrank this attempt's, even from its first
        # hand-out
        step = round(nxt.sent_at * 1000) - round(message.sent_at * 1000)
        assert step == 1
        assert record_fence(nxt.sent_at, 1) > record_fence(message.sent_at, SEND_FENCE_STEP - 1)

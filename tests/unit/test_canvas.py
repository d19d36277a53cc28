"""The canvas on every backend and in eager mode: signatures, chains, groups, chords, nesting,
callbacks, error rules and lineage. A burst worker runs what was sent (eager mode: nothing to
run, the canvas ran when it was sent)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from faena import (
    ChordError,
    ConfigurationError,
    Faena,
    GroupResult,
    Signature,
    TaskFailed,
    TaskRevoked,
    chain,
    chord,
    group,
    signature,
)
from faena.canvas import from_dict

from .support import drain


class Flows:
    """Tasks for workflows on ``app``, with a ledger of what ran."""

    def __init__(self, app: Faena) -> None:
        self.app = app
        self.ran: list[tuple[str, Any]] = []
        self._lock = threading.Lock()
        note = self.note

        @app.task(name="flows.add")
        def add(x: int, y: int) -> int:
            note("add", (x, y))
            return x + y

        @app.task(name="flows.mul")
        def mul(x: int, y: int) -> int:
            note("mul", (x, y))
            return x * y

        @app.task(name="flows.total")
        def total(values: list[Any], plus: int = 0) -> int:
            note("total", values)
            return sum(_flat(values)) + plus

        @app.task(name="flows.boom")
        def boom(x: Any) -> None:
            note("boom", x)
            raise ValueError(f"boom on {x}")

        @app.task(name="flows.errback")
        def errback(job_id: str, error: dict[str, str]) -> None:
            note("errback", (job_id, error))

        @app.task(name="flows.seen")
        def seen(value: Any) -> Any:
            note("seen", value)
            return value

        self.add, self.mul, self.total, self.boom = add, mul, total, boom
        self.errback, self.seen = errback, seen

    def note(self, name: str, value: Any) -> None:
        with self._lock:
            self.ran.append((name, value))

    def runs(self, name: str) -> list[Any]:
        return [v for n, v in self.ran if n == name]

    def run(self) -> None:
        """Run everything sent (nothing to do in eager mode)."""
        if not self.app.settings.eager:
            drain(self.app)


def _flat(values: list[Any]) -> list[int]:
    out: list[int] = []
    for v in values:
        out += _flat(v) if isinstance(v, list) else [v]
    return out


@pytest.fixture
def flows(workflow_app: Faena) -> Flows:
    return Flows(workflow_app)


# -- signatures -------------------------------------------------------------------------------
def test_signatures_hold_task_args_and_options_and_round_trip_through_json(flows: Flows) -> None:
    sig = flows.add.s(2, y=3).set(queue="high", countdown=5)
    # Then the signature says what it will send, a clone is independent, JSON round-trips
    assert (sig.name, sig.args, sig.kwargs) == ("flows.add", (2,), {"y": 3})
    assert sig.options == {"queue": "high", "countdown": 5}
    twin = sig.clone()
    assert isinstance(twin, Signature)
    twin.set(priority=9)
    assert "priority" not in sig.options
    back = from_dict(sig.to_dict(), app=flows.app)
    assert back == sig
    assert repr(flows.add.si(1, 2)) == "flows.add.si(1, 2)"
    assert from_dict(chord([sig], flows.total.s()).to_dict(), flows.app).to_dict() == (
        chord([sig], flows.total.s()).to_dict()
    )


def test_bad_signatures_are_refused_with_the_valid_choices(flows: Flows) -> None:
    with pytest.raises(ConfigurationError, match=r"unknown option.*colour.*valid options are"):
        flows.add.s(1, 2).set(colour="red")
    with pytest.raises(ConfigurationError, match="knows no app"):
        signature("flows.add", (1, 2)).delay()
    with pytest.raises(TypeError, match=r"flows\.add"):
        chain(flows.add.s(1, 2, 3)).delay()
    with pytest.raises(ConfigurationError, match="at least one member"):
        chord([], flows.total.s()).delay()
    with pytest.raises(ConfigurationError, match="expected a 'kind'"):
        from_dict({"task": "x"})
    # A chain or a group is no callback: it is a step
    for callback in (flows.add.s(1) | flows.mul.s(2), group(flows.add.s(1))):
        with pytest.raises(ConfigurationError, match="make it a step"):
            flows.add.apply_async((1, 2), link=callback)


def test_signatures_compare_by_what_they_send_whatever_their_arguments(flows: Flows) -> None:
    class Opaque:
        pass

    thing = Opaque()
    # Signatures holding a value JSON cannot carry compare without error
    assert flows.add.s(thing, 1) == flows.add.s(thing, 1)
    assert flows.add.s(thing, 1) != flows.add.s(thing, 2)
    assert flows.add.s(1, 2) != flows.add.si(1, 2)
    assert flows.add.s(1, 2).set(queue="q") != flows.add.s(1, 2)


@pytest.mark.parametrize(
    ("build", "error", "message"),
    [
        (lambda f: chain(f.add.s(1, 1), "flows.mul"), ConfigurationError, "a chain takes"),
        (lambda f: chain(f.add.s(1, 1), 5), ConfigurationError, "a chain takes"),
        (lambda f: group(f.add.s(1, 1), "flows.mul"), ConfigurationError, "a group takes"),
        (lambda f: f.add.chunks([1, 2, 3], 2), TypeError, "one sequence of arguments"),
        (lambda f: f.add.starmap(["ab"]), TypeError, "one sequence of arguments"),
        (lambda f: f.add.starmap([(1,)]), TypeError, r"flows\.add.*missing"),
        (lambda f: f.add.chunks([(1,), (2,)], 1), TypeError, r"flows\.add.*missing"),
        (lambda f: f.add.map([1]), TypeError, r"flows\.add.*missing"),
        (
            lambda f: from_dict({"kind": "chord", "header": f.add.s(1, 1).to_dict(), "body": {}}),
            ConfigurationError,
            "a chord's header is a group",
        ),
        (lambda f: from_dict({"kind": "signature"}), ConfigurationError, "needs 'task'"),
        (lambda f: from_dict({"kind": "chain"}), ConfigurationError, "needs 'steps'"),
    ],
)
def test_malformed_canvases_are_refused_when_built_saying_what_is_wrong(
    make_app: Any, build: Any, error: type[Exception], message: str
) -> None:
    flows = Flows(make_app())
    with pytest.raises(error, match=message):
        build(flows)
    flows.run()
    assert flows.ran == []  # nothing was sent


def test_a_signature_sends_like_its_task(flows: Flows) -> None:
    # Given a partial signature, When it is sent with more arguments, they go first
    result = flows.add.s(10).delay(5)
    by_name = signature("flows.mul", (3, 4), app=flows.app).apply_async()
    flows.run()
    assert (result.get(timeout=5), by_name.get(timeout=5)) == (15, 12)


# -- chains -----------------------------------------------------------------------------------
def test_a_chain_passes_each_result_on_unless_immutable(flows: Flows) -> None:
    # Given (2 + 2) * 4, then an immutable step that ignores it, then + 1
    result = (flows.add.s(2, 2) | flows.mul.s(4) | flows.add.si(1, 1) | flows.add.s(1)).delay()
    flows.run()
    # Then the chain's result is its last job's
    assert result.get(timeout=5) == 3
    assert flows.runs("mul") == [(4, 4)]
    # And each job knows the one before it; the root is the first
    first = result.parent.parent.parent  # type: ignore[union-attr]
    assert first is not None
    assert first.parent is None
    assert result.record.root_id == first.id  # type: ignore[union-attr]
    graph = flows.app.workflow(first.id)
    assert len(graph["nodes"]) == 4
    assert len(graph["edges"]) == 3


def test_a_failed_step_stops_the_chain_and_its_result_carries_the_failure(flows: Flows) -> None:
    # Given a chain whose second step fails
    result = chain(flows.add.s(1, 1), flows.boom.s(), flows.mul.s(2)).apply_async(
        link_error=flows.errback.s()
    )
    flows.run()
    # Then the third step never runs, and the chain's result is the failure
    with pytest.raises(TaskFailed, match="boom on 2"):
        result.get(timeout=5)
    assert flows.runs("mul") == []
    # And the error callback ran once, with the failed job's id and error
    [(failed_id, error)] = flows.runs("errback")
    assert error == {"type": "ValueError", "message": "boom on 2"}
    assert flows.app.AsyncResult(failed_id).state == "FAILURE"


# -- groups -----------------------------------------------------------------------------------
def test_a_group_returns_results_in_member_order(flows: Flows) -> None:
    result = group(flows.add.s(i, i) for i in range(10)).delay()
    assert isinstance(result, GroupResult)
    flows.run()
    assert result.get(timeout=5) == [2 * i for i in range(10)]
    assert (result.completed_count(), result.ready(), result.successful()) == (10, True, True)
    assert result.failed() is False


def test_a_group_with_a_failed_member_reports_it(flows: Flows) -> None:
    result = group(flows.add.s(1, 1), flows.boom.s(7)).delay()
    flows.run()
    assert (result.ready(), result.successful(), result.failed()) == (True, False, True)
    assert result.completed_count() == 1
    with pytest.raises(TaskFailed, match="boom on 7"):
        result.get(timeout=5)
    values = result.get(timeout=5, propagate=False)
    assert values[0] == 2
    assert isinstance(values[1], TaskFailed)


def test_revoking_a_group_or_chain_revokes_what_has_not_started(flows: Flows) -> None:
    if flows.app.settings.eager:
        pytest.skip("eager mode runs a workflow when it is sent: nothing is left to revoke")
    # Given a group and a chain, sent but not run
    members = group(flows.add.s(i, i) for i in range(3)).delay()
    steps = (flows.add.s(1, 1) | flows.mul.s(2)).delay()
    # When both are revoked
    assert members.revoke() == 3
    steps.revoke()
    flows.run()
    # Then nothing ran
    assert flows.ran == []
    assert [r.state for r in members] == ["REVOKED"] * 3
    assert steps.state == "REVOKED"


def test_revoking_one_waiting_part_ends_its_workflow_as_a_failure(flows: Flows) -> None:
    if flows.app.settings.eager:
        pytest.skip("eager mode runs a workflow when it is sent: nothing is left to revoke")
    # Given a chord and a chain with error callbacks, sent but not run
    header = [flows.add.s(1, 1), flows.add.s(2, 2)]
    chorded = chord(header, flows.total.s()).apply_async(link_error=flows.errback.s())
    chained = (flows.add.s(1, 1) | flows.mul.s(2)).apply_async(link_error=flows.errback.s())
    # (the parts waiting in the broker: the chord's members, the chain's first step)
    waiting = [
        [i for i in result.ids if flows.app.AsyncResult(i).state == "QUEUED"]
        for result in (chorded, chained)
    ]
    assert [len(ids) for ids in waiting] == [2, 1]
    member, step = waiting[0][0], waiting[1][0]
    # When one chord member and the chain's first step are revoked by their own ids
    assert flows.app.AsyncResult(member).revoke(reason="not needed") is True
    assert flows.app.AsyncResult(step).revoke(reason="not needed") is True
    flows.run()
    # Then the chord failed without running its body, naming the revoked member
    with pytest.raises(ChordError, match="TaskRevoked: revoked: not needed") as caught:
        chorded.get(timeout=5)
    assert caught.value.member_id == member
    assert flows.runs("total") == []
    # And the chain stopped there, its result failed with the revoke
    with pytest.raises(TaskFailed, match="TaskRevoked"):
        chained.get(timeout=5)
    assert flows.runs("mul") == []
    # And each workflow's error callback ran once, for the revoked part
    assert sorted(job_id for job_id, _ in flows.runs("errback")) == sorted([member, step])
    assert flows.app.AsyncResult(member).state == "REVOKED"


def test_revoking_a_group_revokes_every_part_of_its_members(flows: Flows) -> None:
    if flows.app.settings.eager:
        pytest.skip("eager mode runs a workflow when it is sent: nothing is left to revoke")
    # Given a group of a chain and a chord, sent but not run
    nested = group(
        flows.add.s(1, 1) | flows.mul.s(2),
        chord([flows.add.s(2, 2), flows.add.s(3, 3)], flows.total.s()),
    ).delay()
    # When the group is revoked
    assert nested.revoke() == 3  # the chain's first step and the chord's two members waited
    flows.run()
    # Then no part of any member ran, and each member's result reads REVOKED
    assert flows.ran == []
    assert [r.state for r in nested] == ["REVOKED", "REVOKED"]


def test_each_failed_member_of_a_group_runs_the_error_callback(flows: Flows) -> None:
    # Given a group of three failing members and one that succeeds, with an error callback
    members = group(flows.boom.s(1), flows.add.s(1, 1), flows.boom.s(2), flows.boom.s(3))
    result = members.apply_async(link_error=flows.errback.s())
    flows.run()
    # Then the callback ran once for each failed member, with that member's id
    failed = {result[n].id for n in (0, 2, 3)}
    assert {job_id for job_id, _ in flows.runs("errback")} == failed
    assert len(flows.runs("errback")) == 3


# -- chords -----------------------------------------------------------------------------------
def test_a_chord_runs_its_body_once_with_results_in_member_order(flows: Flows) -> None:
    result = chord((flows.add.s(i, 0) for i in range(20)), flows.seen.s()).delay()
    flows.run()
    assert result.get(timeout=5) == list(range(20))
    assert flows.runs("seen") == [list(range(20))]


def test_a_chord_header_called_with_its_body_sends_the_chord(flows: Flows) -> None:
    # Given Celery's spelling: chord(header)(body)
    result = chord(flows.add.s(i, i) for i in range(4))(flows.total.s(100))
    flows.run()
    # Then it is the same chord as chord(header, body).delay()
    assert result.get(timeout=5) == 112
    assert flows.runs("total") == [[0, 2, 4, 6]]


def test_group_piped_into_a_signature_is_a_chord(flows: Flows) -> None:
    result = (group(flows.add.s(i, i) for i in range(4)) | flows.total.s(100)).delay()
    flows.run()
    assert result.get(timeout=5) == 112


def test_a_failed_member_fails_the_chord_and_the_body_never_runs(flows: Flows) -> None:
    # Given a chord with two failing members and an error callback
    header = [flows.add.s(1, 1), flows.boom.s(1), flows.add.s(2, 2), flows.boom.s(2)]
    result = chord(header, flows.total.s()).apply_async(link_error=flows.errback.s())
    flows.run()
    # Then the body never ran, get() raises ChordError naming a failed member
    assert flows.runs("total") == []
    with pytest.raises(ChordError, match="boom on") as caught:
        result.get(timeout=5)
    assert caught.value.member_id is not None
    assert flows.app.AsyncResult(caught.value.member_id).state == "FAILURE"
    # And the error callback ran once, with that member's id and error
    [(failed_id, error)] = flows.runs("errback")
    assert failed_id == caught.value.member_id
    assert error["type"] == "ValueError"


def test_a_failed_chord_stays_failed_when_its_member_is_run_again(flows: Flows) -> None:
    if flows.app.settings.eager:
        pytest.skip("eager mode keeps no dead letters to run again")
    first_run = [True]

    @flows.app.task(name="flows.once")
    def once(x: int) -> int:
        if first_run.pop() if first_run else False:
            raise ValueError("the first run fails")
        return x

    # Given a chord that failed because one member failed
    result = chord([flows.add.s(1, 1), once.s(5)], flows.total.s()).delay()
    flows.run()
    with pytest.raises(ChordError) as caught:
        result.get(timeout=5)
    # When that member's dead letter is run again, and succeeds
    assert asyncio.run(flows.app.broker.requeue_dead()) == 1
    flows.run()
    assert flows.app.AsyncResult(caught.value.member_id).state == "SUCCESS"
    # Then the body still never ran, and the chord still reads failed
    assert flows.runs("total") == []
    with pytest.raises(ChordError):
        result.get(timeout=5)


def test_a_member_with_a_short_result_ttl_still_gives_the_body_its_result(
    make_app: Any, clock: Any
) -> None:
    # Given a chord whose first member keeps its results 1 s, and whose last member ends later
    app = make_app("ttl", result_ttl=3600)

    @app.task(name="t.brief", result_ttl=1)
    def brief() -> int:
        return 7

    @app.task(name="t.late")
    def late() -> int:
        clock.advance(5)  # the first member's own result_ttl is long past when this one ends
        return 1

    @app.task(name="t.pair")
    def pair(values: list[int]) -> list[int]:
        return values

    result = chord([brief.s(), late.s()], pair.s()).delay()
    drain(app)
    # Then the body got both results, not None for the first
    assert result.get(timeout=5) == [7, 1]


# -- nesting ----------------------------------------------------------------------------------
def test_chains_inside_a_group_and_groups_inside_a_chain(flows: Flows) -> None:
    # Given a group of chains, and a chain with a group in the middle and one at the end
    chains = group(flows.add.s(i, i) | flows.mul.s(10) for i in range(3)).delay()
    middle = (flows.add.s(1, 1) | group(flows.mul.s(i) for i in range(3)) | flows.total.s()).delay()
    ending = (flows.add.s(1, 1) | group(flows.mul.s(2), flows.mul.s(3))).delay()
    flows.run()
    assert chains.get(timeout=5) == [0, 20, 40]
    assert middle.get(timeout=5) == 0 + 2 + 4
    assert ending.get(timeout=5) == [4, 6]


def test_chords_of_chords(flows: Flows) -> None:
    inner = [chord([flows.add.s(i, 1), flows.add.s(i, 2)], flows.total.s()) for i in range(3)]
    result = chord(inner, flows.seen.s()).delay()
    flows.run()
    assert result.get(timeout=5) == [3, 5, 7]


def test_a_failure_deep_in_a_nested_chord_reaches_the_outer_chord(flows: Flows) -> None:
    # Given an outer chord whose member is a chain ending in a chord with a failing member
    member = flows.add.s(1, 1) | chord([flows.boom.s(), flows.add.s(1)], flows.total.s())
    result = chord([member, flows.add.s(5, 5)], flows.seen.s()).apply_async(
        link_error=flows.errback.s()
    )
    flows.run()
    # Then neither body ran, and the outer chord fails once
    assert flows.runs("total") == []
    assert flows.runs("seen") == []
    with pytest.raises(ChordError):
        result.get(timeout=5)
    assert len(flows.runs("errback")) == 1


# -- map, starmap, chunks, callbacks ----------------------------------------------------------
def test_map_starmap_and_chunks(flows: Flows) -> None:
    mapped = flows.seen.map([1, 2, 3]).delay()
    starred = flows.add.starmap([(1, 2), (3, 4)]).delay()
    chunked = flows.add.chunks([(i, i) for i in range(5)], 2).delay()
    spread = flows.add.chunks([(1, 1), (2, 2)], 1).group() | flows.total.s()
    total = spread.delay()
    flows.run()
    assert (mapped.get(timeout=5), starred.get(timeout=5)) == ([1, 2, 3], [3, 7])
    assert chunked.get(timeout=5) == [[0, 2], [4, 6], [8]]
    assert total.get(timeout=5) == 6


def test_links_get_the_result_and_errbacks_the_failure(flows: Flows) -> None:
    ok = flows.add.s(2, 3).on_success(flows.seen.s()).delay()
    bad = flows.boom.s(9).on_error(flows.errback.s()).delay()
    flows.run()
    assert ok.get(timeout=5) == 5
    assert flows.runs("seen") == [5]
    assert [error["message"] for _, error in flows.runs("errback")] == ["boom on 9"]
    assert [c.id for c in ok.children] == [ok.children[0].id]
    assert ok.children[0].parent == ok
    with pytest.raises(TaskFailed):
        bad.get(timeout=5)


def test_a_task_sent_with_link_and_link_error_gets_its_callbacks(flows: Flows) -> None:
    # Celery's form: the callbacks as call options of the task itself
    ok = flows.add.apply_async((2, 3), link=flows.seen.s())
    bad = flows.boom.apply_async((9,), link_error=flows.errback.s())
    flows.run()
    assert ok.get(timeout=5) == 5
    assert flows.runs("seen") == [5]
    assert [error["message"] for _, error in flows.runs("errback")] == ["boom on 9"]
    with pytest.raises(TaskFailed):
        bad.get(timeout=5)


@pytest.mark.parametrize("eager", [False, True], ids=["worker", "eager"])
def test_a_next_job_too_large_to_send_fails_the_workflow_and_holds_nothing_back(
    make_app: Any, eager: bool
) -> None:
    # Given a small message size limit, and results that fit in a record but not in the
    # message of the job they go to next
    app = make_app("large", max_message_size=20_000, eager=eager)
    ran: list[Any] = []

    @app.task(name="large.text")
    def text(size: int) -> str:
        return "x" * size

    @app.task(name="large.length")
    def length(values: Any) -> int:
        ran.append(("length", values))
        return len(values)

    @app.task(name="large.errback")
    def errback(job_id: str, error: dict[str, str]) -> None:
        ran.append(("errback", error["type"]))

    @app.task(name="large.plain")
    def plain() -> str:
        return "ok"

    # When a chain's second step would carry 30 KB, and a chord's body three results of 8 KB
    # (each member's own message fits), and an unrelated job is sent after them
    chained = (text.s(30_000) | length.s()).apply_async(link_error=errback.s())
    chorded = chord([text.s(8_000)] * 3, length.s()).apply_async(link_error=errback.s())
    other = plain.delay()
    if not eager:
        drain(app)  # a burst worker ends only once every message is settled
    # Then both workflows failed with the reason, their bodies never ran, and the error
    # callbacks ran once each
    with pytest.raises(TaskFailed, match="over max_message_size"):
        chained.get(timeout=5)
    with pytest.raises(ChordError, match=r"MessageTooLarge: .* over max_message_size"):
        chorded.get(timeout=5)
    assert ran == [("errback", "faena.MessageTooLarge")] * 2
    # And the unrelated job ran, and every message was settled
    assert other.get(timeout=5) == "ok"
    if not eager:
        from .support import queue_stats

        assert queue_stats(app) == []


def test_error_callbacks_too_large_to_send_are_dropped_and_hold_nothing_back(
    make_app: Any,
) -> None:
    # Given a job that fails with an error message longer than a message may be, with an error
    # callback (which is given that message)
    app = make_app("long-error", max_message_size=4_000)
    ran: list[str] = []

    @app.task(name="long.boom")
    def boom() -> None:
        raise ValueError("x" * 30_000)

    @app.task(name="long.errback")
    def errback(job_id: str, error: dict[str, str]) -> None:
        ran.append("errback")

    @app.task(name="long.plain")
    def plain() -> str:
        return "ok"

    failed = boom.s().apply_async(link_error=errback.s())
    other = plain.delay()
    # When a worker runs them (a burst worker ends only once every message is settled)
    drain(app)
    # Then the failure is recorded, the callback was dropped, and the other job went through
    with pytest.raises(TaskFailed, match="ValueError"):
        failed.get(timeout=5)
    assert ran == []
    assert other.get(timeout=5) == "ok"


def test_workflows_carry_pickled_arguments_and_results(make_app: Any) -> None:
    # Given an app that sends and accepts pickle
    app = make_app("pickled", serializer="pickle", accept=["json", "pickle"])

    @app.task(name="p.pair")
    def pair(x: Any, y: Any) -> tuple[Any, Any]:
        return (x, y)

    @app.task(name="p.first")
    def first(values: list[Any]) -> Any:
        return values[0]

    # When a chain and a chord pass pickled values along
    result = (pair.s(1, {2}) | pair.s(frozenset({3}))).delay()
    merged = chord([pair.s(b"a", 1), pair.s(b"b", 2)], first.s()).delay()
    drain(app)
    # Then each step got the previous result first, as the Python value it was
    assert result.get(timeout=5) == ((1, {2}), frozenset({3}))
    assert merged.get(timeout=5) == (b"a", 1)


class Box:
    """A value only pickle carries (a plain class has no JSON form)."""

    def __init__(self, value: int) -> None:
        self.value = value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Box) and other.value == self.value

    def __hash__(self) -> int:
        return hash(self.value)


def test_results_of_pickle_tasks_are_gathered_with_pickle(make_app: Any) -> None:
    # Given an app that sends JSON but accepts pickle, and a task declared with pickle
    app = make_app("mixed", accept=["json", "pickle"])

    @app.task(name="m.boxed", serializer="pickle")
    def boxed(x: int) -> Box:
        return Box(x)

    @app.task(name="m.plain")
    def plain(x: int) -> int:
        return x

    # When its results are gathered by jobs the user did not declare: a group nested in a
    # group, a group at the end of a chain, a map of the task
    nested = group(group(boxed.s(1), boxed.s(2)), plain.s(3)).delay()
    ending = (plain.s(1) | group(boxed.s(), boxed.s())).delay()
    mapped = boxed.map([4, 5]).delay()
    drain(app)
    # Then each gets the values as they were returned
    assert nested.get(timeout=5) == [[Box(1), Box(2)], 3]
    assert ending.get(timeout=5) == [Box(1), Box(1)]
    assert mapped.get(timeout=5) == [Box(4), Box(5)]


def test_a_workflow_sent_later_starts_later_then_runs_at_its_own_pace(
    app: Faena, clock: Any
) -> None:
    from .support import queue_stats

    flows = Flows(app)
    # Given a chain sent with a countdown and an id of its own
    result = (flows.add.s(1, 1) | flows.mul.s(2)).apply_async(countdown=60, task_id="the-end")
    # Then its result has that id, and only its first job waits, scheduled
    assert result.id == "the-end"
    assert [(s.ready, s.scheduled) for s in queue_stats(app)] == [(0, 1)]
    # When the time comes, the whole chain runs without waiting again
    clock.advance(61)
    drain(app)
    assert result.get(timeout=5) == 4


@pytest.mark.parametrize("eager", [False, True], ids=["worker", "eager"])
def test_a_chain_of_100_steps_runs_and_a_longer_one_is_refused_when_sent(
    make_app: Any, eager: bool
) -> None:
    from .support import queue_stats

    app = make_app("deep", eager=eager)

    @app.task(name="deep.inc")
    def inc(x: int) -> int:
        return x + 1

    # A chain nested as deep as a message may carry runs through
    result = chain(inc.s(0), *(inc.s() for _ in range(99))).delay()
    if not eager:
        drain(app)
    assert result.get(timeout=5) == 100
    # One step more is refused when sent, saying why, and nothing is sent
    with pytest.raises(ConfigurationError, match="nests more than 100 jobs deep"):
        chain(inc.s(0), *(inc.s() for _ in range(100))).delay()
    assert queue_stats(app) == []


def test_a_task_id_is_kept_where_it_can_be_and_refused_where_it_cannot(app: Faena) -> None:
    from .support import queue_stats

    flows = Flows(app)
    # A chord member's id is the chord's: an id of its own is refused, and nothing is sent
    with pytest.raises(ConfigurationError, match=r"'mine'.* cannot be kept"):
        chord([flows.add.s(1, 1).set(task_id="mine"), flows.add.s(2, 2)], flows.total.s()).delay()
    assert queue_stats(app) == []
    # A member of a group sent by itself keeps its own
    group(flows.add.s(1, 1).set(task_id="in-group"), flows.add.s(2, 2)).delay()
    drain(app)
    assert app.AsyncResult("in-group").get(timeout=5) == 2


def test_workflow_helper_jobs_go_where_their_tasks_go(app: Faena) -> None:
    # Given tasks declared on the queue "math"
    @app.task(name="q.add", queue="math")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="q.double", queue="math", priority=7)
    def double(x: int) -> int:
        return 2 * x

    # When map, starmap, chunks and a chain ending in a group are sent
    mapped = double.map([1, 2]).delay()
    starred = add.starmap([(1, 2), (3, 4)]).delay()
    chunked = add.chunks([(1, 1), (2, 2), (3, 3)], 2).delay()
    fanned = (add.s(1, 1) | group(double.s(), double.s())).delay()
    # And groups whose first member is a map or chunks, nested in a group
    nested_chunks = group(add.chunks([(1, 2)], 1), double.s(3)).delay()
    nested_maps = group(group(double.map([1]), double.map([2])), double.s(3)).delay()
    # Then a worker of that queue alone runs all of them: the jobs that call the task or
    # gather a group's results go to its queue
    drain(app, ["math"])
    assert mapped.get(timeout=5) == [2, 4]
    assert starred.get(timeout=5) == [3, 7]
    assert chunked.get(timeout=5) == [[2, 4], [6]]
    assert fanned.get(timeout=5) == [4, 4]
    assert nested_chunks.get(timeout=5) == [[[3]], 6]
    assert nested_maps.get(timeout=5) == [[[2], [4]], 6]
    assert mapped.record is not None
    assert mapped.record.queue == "math"


def test_a_part_that_expires_before_it_runs_ends_its_workflow(app: Faena, clock: Any) -> None:
    flows = Flows(app)
    # Given a chain and a chord whose first parts expire in 10 s, with error callbacks
    steps = (flows.add.s(1, 1).set(expires=10) | flows.mul.s(2)).apply_async(
        link_error=flows.errback.s()
    )
    members = chord([flows.add.s(2, 2).set(expires=10), flows.add.s(3, 3)], flows.total.s())
    chorded = members.apply_async(link_error=flows.errback.s())
    # When a worker takes them only after that
    clock.advance(11)
    drain(app)
    # Then the expired parts are REVOKED, and each workflow failed once, saying why
    with pytest.raises(TaskFailed, match="expired before it could run"):
        steps.get(timeout=5)
    with pytest.raises(ChordError, match="expired before it could run"):
        chorded.get(timeout=5)
    assert flows.runs("mul") == []
    assert flows.runs("total") == []
    assert sorted(e["type"] for _, e in flows.runs("errback")) == ["faena.TaskRevoked"] * 2


def test_a_step_no_worker_can_run_ends_its_workflow(flows: Flows) -> None:
    if flows.app.settings.eager:
        pytest.skip("eager mode refuses an unknown task when the workflow is sent")
    # Given a chain whose second step is a task of another service, sent by name
    step = signature("billing.not_here", app=flows.app)
    result = (flows.add.s(1, 1) | step).apply_async(link_error=flows.errback.s())
    # When a worker of this app runs it
    flows.run()
    # Then the step is refused, the chain fails saying why, and the error callback runs once
    with pytest.raises(TaskFailed, match=r"unknown_task|not_here"):
        result.get(timeout=5)
    assert [e["type"] for _, e in flows.runs("errback")] == ["faena.unknown_task"]


def test_a_canvas_countdown_delays_only_first_jobs_without_their_own(
    app: Faena, clock: Any
) -> None:
    from .support import queue_stats

    flows = Flows(app)
    # Given a group sent with countdown=10, one member of which set countdown=3600 itself
    result = group(flows.add.s(1, 1).set(countdown=3600), flows.add.s(2, 2)).apply_async(
        countdown=10
    )
    # When 11 seconds have passed
    clock.advance(11)
    drain(app)
    # Then only the member without a countdown of its own has run
    assert [r.state for r in result] == ["SCHEDULED", "SUCCESS"]
    assert [(s.ready, s.scheduled) for s in queue_stats(app)] == [(0, 1)]


@pytest.mark.parametrize("option", ["eta", "expires"])
def test_an_absolute_eta_or_expiry_on_a_later_step_stays_absolute(
    app: Faena, clock: Any, option: str
) -> None:
    import datetime as dt

    from .support import queue_stats

    ran: list[str] = []

    @app.task(name="abs.slow")
    def slow() -> int:
        clock.advance(100)  # the first step takes 100 s
        return 1

    @app.task(name="abs.then")
    def then(x: int) -> str:
        ran.append("then")
        return "then"

    start = dt.datetime.fromtimestamp(clock.time(), dt.UTC)
    # Given a chain whose second step is due at start + 150 s, or expires at start + 50 s
    when = start + dt.timedelta(seconds=150 if option == "eta" else 50)
    result = (slow.s() | then.s().set(**{option: when})).delay()
    # When the first step has run (at start + 100 s)
    drain(app)
    if option == "expires":
        # Then the second step expired at start + 50 s, and never ran
        with pytest.raises(TaskRevoked, match="expired"):
            result.get(timeout=5)
    else:
        # Then the second step waits until start + 150 s, not 150 s after it was sent
        assert [(q.ready, q.scheduled) for q in queue_stats(app)] == [(0, 1)]
        clock.advance(51)
        drain(app)
        assert result.get(timeout=5) == "then"
    assert ran == (["then"] if option == "eta" else [])


def test_the_workflow_graph_of_a_chord_joins_every_member_to_the_body(flows: Flows) -> None:
    # Given a chain that fans out into a chord
    result = (flows.add.s(1, 1) | group(flows.mul.s(i) for i in range(3)) | flows.total.s()).delay()
    flows.run()
    assert result.get(timeout=5) == 6
    # When its graph is fetched from the root
    root = result.parent.parent  # type: ignore[union-attr]
    assert root is not None
    graph = flows.app.workflow(root.id)
    # Then it has the first job, three members and the body, each member joined to the body
    tasks = sorted(node["task"] for node in graph["nodes"].values())
    assert tasks == ["flows.add", "flows.mul", "flows.mul", "flows.mul", "flows.total"]
    into_body = [edge for edge in graph["edges"] if edge[1] == result.id]
    assert len(into_body) == 3
    assert all(node["state"] == "SUCCESS" for node in graph["nodes"].values())


def test_each_member_of_a_group_sent_by_a_producer_is_a_root_of_its_own(flows: Flows) -> None:
    # Given a group of two chains sent by a producer (outside any job)
    sent = group(flows.add.s(i, i) | flows.mul.s(10) for i in (1, 2)).delay()
    flows.run()
    assert sent.get(timeout=5) == [20, 40]
    for member in sent.results:
        first = member.parent
        assert first is not None
        assert first.record is not None
        # Then each chain's first job is its own root, and its graph is its own chain
        assert first.record.root_id == first.id
        graph = flows.app.workflow(first.id)
        assert set(graph["nodes"]) == {first.id, member.id}


def test_async_producers_send_canvases_without_blocking(flows: Flows) -> None:
    import asyncio

    async def send() -> tuple[Any, Any]:
        steps = await (flows.add.s(1, 2) | flows.mul.s(3)).adelay()
        members = await group(flows.add.s(i, i) for i in range(3)).aapply_async()
        return steps, members

    steps, members = asyncio.run(send())
    # And a group's result can be awaited, with the caller's timeout in what it says
    if not flows.app.settings.eager:
        with pytest.raises(TimeoutError, match=r"did not finish within 0.2 s \(member .*QUEUED"):
            asyncio.run(members.aget(timeout=0.2))
    flows.run()
    assert steps.get(timeout=5) == 9
    assert members.get(timeout=5) == [0, 2, 4]

    async def wait() -> tuple[list[Any], list[Any]]:
        return await members, await members.aget(timeout=5)

    assert asyncio.run(wait()) == ([0, 2, 4], [0, 2, 4])

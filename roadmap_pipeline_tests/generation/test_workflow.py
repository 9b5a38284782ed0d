"""The per-concept workflow, in process, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import select

from roadmap_pipeline.domain.keys import concept_key
from roadmap_pipeline.domain.statuses import ItemType
from roadmap_pipeline.generation.faults import FaultPlan
from roadmap_pipeline.generation.generator import ConceptContext, TransientGenerationError
from roadmap_pipeline.generation.offline import OfflineGenerator
from roadmap_pipeline.generation.openai_compat import OpenAICompatibleGenerator
from roadmap_pipeline.generation.workflow import (
    ConceptWorkflow,
    generation_id_for,
    run_concepts,
)
from roadmap_pipeline.store.database import connect
from roadmap_pipeline.store.schema import ContentGeneration, QuizMetadata, TutorialMetadata
from roadmap_pipeline.store.writers import UnknownConcept
from roadmap_pipeline.testing.counting import RecordingGenerator, count_calls, read_calls
from roadmap_pipeline_tests.generation.support import (
    FAST_RETRY,
    assert_consistent,
    new_locks,
    row_counts,
    submit,
    thread_exists,
)

TUTORIAL, RESOURCES, QUIZ = ItemType.TUTORIAL, ItemType.RESOURCES, ItemType.QUIZ


def test_a_run_writes_every_item_once_and_prunes_its_thread(
    engine, roadmap, workflow, checkpointer, call_log
):
    concept = roadmap.concept_ids[0]
    outcome = workflow.run(roadmap.roadmap_id, concept, request_id="req-1")

    assert outcome.thread_id == concept_key(roadmap.roadmap_id, concept) == "gen-roadmap/c-1-1-1"
    assert outcome.concept_id == concept
    assert not outcome.failed
    assert not outcome.resumed
    assert not outcome.skipped_locked
    assert list(outcome.items) == [TUTORIAL, RESOURCES, QUIZ]
    assert all(
        o.status == "completed" and o.generated and o.attempts == 1 for o in outcome.items.values()
    )
    assert outcome.items[TUTORIAL].content_version == 1
    assert outcome.items[QUIZ].content_version is None
    assert row_counts(engine, roadmap.roadmap_id, concept) == {
        "tutorial": 1,
        "resources": 1,
        "quiz": 1,
        "ledger": 3,
    }
    assert count_calls(call_log) == {"tutorial": 1, "resources": 1, "quiz": 1}
    assert not thread_exists(checkpointer, outcome.thread_id)
    assert_consistent(engine, roadmap.roadmap_id)


def test_the_same_request_twice_generates_nothing_the_second_time(
    engine, roadmap, workflow, call_log
):
    concept = roadmap.concept_ids[0]
    first = workflow.run(roadmap.roadmap_id, concept, request_id="req-1")
    second = workflow.run(roadmap.roadmap_id, concept, request_id="req-1")

    assert [o.generated for o in second.items.values()] == [False, False, False]
    assert {i: o.row_id for i, o in second.items.items()} == {
        i: o.row_id for i, o in first.items.items()
    }
    assert len(read_calls(call_log)) == 3
    assert row_counts(engine, roadmap.roadmap_id, concept)["ledger"] == 3


def test_generation_ids_are_derived_from_request_thread_and_item(engine, roadmap, workflow):
    concept = roadmap.concept_ids[1]
    workflow.run(roadmap.roadmap_id, concept, [QUIZ], request_id="req-9")
    expected = generation_id_for("req-9", concept_key(roadmap.roadmap_id, concept), QUIZ)
    with connect(engine) as conn:
        stored = conn.execute(
            select(ContentGeneration.generation_id).where(ContentGeneration.concept_id == concept)
        ).scalar_one()
    assert stored == expected
    assert generation_id_for("req-9", "a/b", QUIZ) != generation_id_for("req-9", "a/b", TUTORIAL)


def test_regenerating_only_the_quiz_replaces_it_in_place_and_leaves_the_rest(
    engine, roadmap, workflow, call_log
):
    concept = roadmap.concept_ids[0]
    first = workflow.run(roadmap.roadmap_id, concept, request_id="req-1")
    again = workflow.run(roadmap.roadmap_id, concept, [QUIZ], request_id="retry-quiz-1")

    assert list(again.items) == [QUIZ]
    assert again.items[QUIZ].generated
    assert again.items[QUIZ].row_id == first.items[QUIZ].row_id  # learners' attempts keep it
    assert count_calls(call_log) == {"tutorial": 1, "resources": 1, "quiz": 2}
    assert row_counts(engine, roadmap.roadmap_id, concept) == {
        "tutorial": 1,
        "resources": 1,
        "quiz": 1,
        "ledger": 4,
    }
    with connect(engine) as conn:
        quiz_ids = conn.execute(
            select(QuizMetadata.quiz_id).where(QuizMetadata.concept_id == concept)
        ).scalars()
        assert list(quiz_ids) == [first.items[QUIZ].row_id]
    assert_consistent(engine, roadmap.roadmap_id)


def test_regenerating_only_the_tutorial_adds_a_version(engine, roadmap, workflow, call_log):
    concept = roadmap.concept_ids[0]
    workflow.run(roadmap.roadmap_id, concept, request_id="req-1")
    again = workflow.run(roadmap.roadmap_id, concept, [TUTORIAL], request_id="retry-tutorial")

    assert again.items[TUTORIAL].content_version == 2
    with connect(engine) as conn:
        versions = conn.execute(
            select(TutorialMetadata.content_version, TutorialMetadata.is_latest)
            .where(TutorialMetadata.concept_id == concept)
            .order_by(TutorialMetadata.content_version)
        ).all()
    assert [tuple(v) for v in versions] == [(1, False), (2, True)]
    assert count_calls(call_log) == {"tutorial": 2, "resources": 1, "quiz": 1}
    assert_consistent(engine, roadmap.roadmap_id)


def test_a_transient_error_is_retried_by_the_node_retry_policy(
    engine, roadmap, recording, checkpointer, locks, call_log
):
    concept = roadmap.concept_ids[0]
    faults = FaultPlan.model_validate(
        {"fail": [{"concept": concept, "item": "resources", "times": 2, "kind": "transient"}]}
    )
    workflow = ConceptWorkflow(engine, recording, checkpointer, locks, faults, FAST_RETRY)
    outcome = workflow.run(roadmap.roadmap_id, concept, request_id="req-1")

    assert not outcome.failed
    assert outcome.items[RESOURCES].attempts == 3
    assert outcome.items[TUTORIAL].attempts == 1
    # the two failed attempts never reached the inner generator
    assert count_calls(call_log) == {"tutorial": 1, "resources": 1, "quiz": 1}


def test_exhausted_transient_retries_fail_the_item_and_the_graph_goes_on(
    engine, roadmap, recording, checkpointer, locks
):
    concept = roadmap.concept_ids[0]
    faults = FaultPlan.model_validate(
        {"fail": [{"concept": "c-1-1-1", "item": "tutorial", "times": 5}]}
    )
    workflow = ConceptWorkflow(engine, recording, checkpointer, locks, faults, FAST_RETRY)
    outcome = workflow.run(roadmap.roadmap_id, concept, request_id="req-1")

    tutorial = outcome.items[TUTORIAL]
    assert outcome.failed
    assert tutorial.status == "failed"
    assert tutorial.row_id is None
    assert tutorial.attempts == 3
    assert tutorial.error is not None
    assert tutorial.error.startswith("tutorial: injected transient fault (3 of 5)")
    assert tutorial.error.endswith("(gave up after 3 attempts)")
    assert outcome.items[RESOURCES].status == outcome.items[QUIZ].status == "completed"
    assert row_counts(engine, roadmap.roadmap_id, concept)["tutorial"] == 0
    assert not thread_exists(checkpointer, outcome.thread_id)
    assert_consistent(engine, roadmap.roadmap_id)


def test_a_permanent_error_fails_only_its_item_without_retrying(
    engine, roadmap, recording, checkpointer, locks
):
    concept = roadmap.concept_ids[2]
    faults = FaultPlan.model_validate(
        {"fail": [{"concept": "gen-roadmap/c-1-1-3", "item": "quiz", "kind": "permanent"}]}
    )
    workflow = ConceptWorkflow(engine, recording, checkpointer, locks, faults, FAST_RETRY)
    outcome = workflow.run(roadmap.roadmap_id, concept, request_id="req-1")

    quiz = outcome.items[QUIZ]
    assert (quiz.status, quiz.attempts, quiz.generated) == ("failed", 1, True)
    assert quiz.error is not None
    assert quiz.error.startswith("quiz: injected permanent fault")
    assert [outcome.items[i].status for i in (TUTORIAL, RESOURCES)] == ["completed"] * 2
    # the retry of the failed item alone, with a new request, completes it
    retry = workflow.run(roadmap.roadmap_id, concept, [QUIZ], request_id="retry-quiz")
    assert retry.items[QUIZ].status == "completed"
    assert not retry.failed
    assert_consistent(engine, roadmap.roadmap_id)


class _BrokenOnce:
    """The offline generator, except that one item raises an unexpected error the first time
    (as if the process lost its database or hit a bug): the error escapes the graph."""

    def __init__(self, item: ItemType) -> None:
        self.inner = OfflineGenerator()
        self.item = item
        self.raised = 0
        self.calls: list[ItemType] = []

    @property
    def name(self) -> str:
        return "offline"

    def _maybe_fail(self, item: ItemType) -> None:
        self.calls.append(item)
        if item is self.item and not self.raised:
            self.raised += 1
            raise RuntimeError("connection to the database lost")

    def tutorial(self, context: ConceptContext) -> Any:
        self._maybe_fail(TUTORIAL)
        return self.inner.tutorial(context)

    def resources(self, context: ConceptContext) -> Any:
        self._maybe_fail(RESOURCES)
        return self.inner.resources(context)

    def quiz(self, context: ConceptContext) -> Any:
        self._maybe_fail(QUIZ)
        return self.inner.quiz(context)


def test_an_unfinished_run_is_resumed_after_its_last_finished_node(
    engine, roadmap, checkpointer, locks
):
    concept = roadmap.concept_ids[0]
    generator = _BrokenOnce(QUIZ)
    workflow = ConceptWorkflow(engine, generator, checkpointer, locks, node_retry=FAST_RETRY)
    with pytest.raises(RuntimeError, match="database lost"):
        workflow.run(roadmap.roadmap_id, concept, request_id="req-1")
    thread = concept_key(roadmap.roadmap_id, concept)
    state = workflow.graph.get_state({"configurable": {"thread_id": thread}})
    assert state.next == ("quiz",)

    # A retry (say Dagster's, with a new run id) asks only for the quiz: the unfinished run is
    # resumed with its own generation ids, and reports all three of its items.
    outcome = workflow.run(roadmap.roadmap_id, concept, [QUIZ], request_id="req-2")
    assert outcome.resumed
    assert [o.status for o in outcome.items.values()] == ["completed"] * 3
    # only the quiz was generated by this run; the others were finished before the failure
    assert [(o.generated, o.attempts) for o in outcome.items.values()] == [
        (False, 0),
        (False, 0),
        (True, 1),
    ]
    assert generator.calls == [TUTORIAL, RESOURCES, QUIZ, QUIZ]
    assert row_counts(engine, roadmap.roadmap_id, concept)["ledger"] == 3
    with connect(engine) as conn:
        quiz_generation = conn.execute(
            select(ContentGeneration.generation_id).where(
                ContentGeneration.concept_id == concept, ContentGeneration.item == "quiz"
            )
        ).scalar_one()
    assert quiz_generation == generation_id_for("req-1", thread, QUIZ)
    assert not thread_exists(checkpointer, thread)


def test_items_a_resumed_run_did_not_cover_run_afterwards(engine, roadmap, checkpointer, locks):
    concept = roadmap.concept_ids[0]
    generator = _BrokenOnce(TUTORIAL)
    workflow = ConceptWorkflow(engine, generator, checkpointer, locks, node_retry=FAST_RETRY)
    with pytest.raises(RuntimeError):
        workflow.run(roadmap.roadmap_id, concept, [TUTORIAL], request_id="req-1")

    outcome = workflow.run(roadmap.roadmap_id, concept, [TUTORIAL, QUIZ], request_id="req-2")
    assert outcome.resumed
    assert list(outcome.items) == [TUTORIAL, QUIZ]
    assert generator.calls == [TUTORIAL, TUTORIAL, QUIZ]
    assert row_counts(engine, roadmap.roadmap_id, concept) == {
        "tutorial": 1,
        "resources": 0,
        "quiz": 1,
        "ledger": 2,
    }


def test_a_finished_thread_left_unpruned_does_not_leak_into_the_next_run(
    engine, roadmap, workflow, checkpointer
):
    concept = roadmap.concept_ids[0]
    thread = concept_key(roadmap.roadmap_id, concept)
    # A finished run whose pruning never happened (the process died right after END).
    start = workflow._initial_state(roadmap.roadmap_id, concept, thread, [TUTORIAL], "old", {})
    workflow.graph.invoke(start, {"configurable": {"thread_id": thread}}, durability="sync")
    assert thread_exists(checkpointer, thread)

    outcome = workflow.run(roadmap.roadmap_id, concept, [QUIZ], request_id="new")
    assert not outcome.resumed
    assert list(outcome.items) == [QUIZ]
    assert not thread_exists(checkpointer, thread)


def test_an_unknown_concept_is_refused_before_a_thread_is_started(
    engine, roadmap, workflow, checkpointer
):
    with pytest.raises(UnknownConcept):
        workflow.run(roadmap.roadmap_id, "c-9-9-9", request_id="req-1")
    assert not thread_exists(checkpointer, f"{roadmap.roadmap_id}/c-9-9-9")


def test_preferences_reach_the_generator(engine, roadmap, checkpointer, locks):
    seen: list[dict[str, Any]] = []

    class Spy(OfflineGenerator):
        def tutorial(self, context: ConceptContext) -> Any:
            seen.append(context.preferences)
            return super().tutorial(context)

    workflow = ConceptWorkflow(engine, Spy(), checkpointer, locks, node_retry=FAST_RETRY)
    workflow.run(
        roadmap.roadmap_id,
        roadmap.concept_ids[0],
        [TUTORIAL],
        request_id="r",
        preferences={"language": "de", "depth": "deep"},
    )
    assert seen == [{"language": "de", "depth": "deep"}]


def test_run_concepts_keeps_target_order_reports_each_and_isolates_failures(
    engine, workflow, call_log
):
    roadmap = submit(engine, "gen-many", 8)
    targets = [(roadmap.roadmap_id, c) for c in roadmap.concept_ids]
    targets.insert(3, (roadmap.roadmap_id, "c-does-not-exist"))
    done: list[str] = []

    outcomes = run_concepts(
        workflow,
        targets,
        [TUTORIAL, QUIZ],
        request_id="batch-1",
        concurrency=4,
        on_done=lambda o: done.append(o.concept_id),
    )

    assert [(o.roadmap_id, o.concept_id) for o in outcomes] == targets
    assert sorted(done) == sorted(c for _, c in targets)
    broken = outcomes[3]
    assert broken.failed
    assert list(broken.items) == [TUTORIAL, QUIZ]
    assert broken.items[QUIZ].error == (
        "quiz: UnknownConcept: roadmap 'gen-many' has no concept 'c-does-not-exist'"
    )
    others = outcomes[:3] + outcomes[4:]
    assert all(not o.failed and list(o.items) == [TUTORIAL, QUIZ] for o in others)
    assert count_calls(call_log) == {"tutorial": 8, "quiz": 8}
    assert_consistent(engine, roadmap.roadmap_id)


def test_run_concepts_passes_each_roadmaps_preferences(engine, checkpointer, locks):
    first, second = submit(engine, "gen-pref-a", 2), submit(engine, "gen-pref-b", 1)
    seen: dict[str, dict[str, Any]] = {}
    lock = threading.Lock()

    class Spy(OfflineGenerator):
        def quiz(self, context: ConceptContext) -> Any:
            with lock:
                seen[context.concept.concept_id] = context.preferences
            return super().quiz(context)

    workflow = ConceptWorkflow(engine, Spy(), checkpointer, locks, node_retry=FAST_RETRY)
    targets = [(first.roadmap_id, c) for c in first.concept_ids] + [
        (second.roadmap_id, second.concept_ids[0])
    ]
    run_concepts(
        workflow,
        targets,
        [QUIZ],
        request_id="r",
        concurrency=3,
        preferences={first.roadmap_id: {"level": "expert"}},
    )
    assert seen == {
        first.concept_ids[0]: {"level": "expert"},
        first.concept_ids[1]: {"level": "expert"},
        second.concept_ids[0]: {},
    }


def test_a_held_lock_makes_a_non_waiting_worker_skip(
    engine, roadmap, workflow, database_url, call_log
):
    concept = roadmap.concept_ids[0]
    other = new_locks(database_url)
    with other.hold(concept_key(roadmap.roadmap_id, concept), wait=False) as held:
        assert held
        outcome = workflow.run(roadmap.roadmap_id, concept, request_id="r", wait_for_lock=False)
    assert outcome.skipped_locked
    assert outcome.items == {}
    assert not outcome.failed
    assert read_calls(call_log) == []
    assert row_counts(engine, roadmap.roadmap_id, concept)["ledger"] == 0


@pytest.mark.parametrize("wait", [True, False], ids=["second-waits", "second-skips"])
def test_two_workers_on_one_concept_produce_one_set_of_rows(
    engine, roadmap, checkpointer, database_url, call_log, wait
):
    """Two workers (separate lock objects, as two processes have) get the same request for the
    same concept: one generates; the other waits and then finds everything done, or skips."""
    concept = roadmap.concept_ids[0]
    slow = RecordingGenerator(OfflineGenerator(), call_log, delay_s=0.15)
    workers = [
        ConceptWorkflow(engine, slow, checkpointer, new_locks(database_url), node_retry=FAST_RETRY)
        for _ in range(2)
    ]
    outcomes: list[Any] = [None, None]
    barrier = threading.Barrier(2)

    def work(index: int) -> None:
        barrier.wait()
        outcomes[index] = workers[index].run(
            roadmap.roadmap_id, concept, request_id="req-1", wait_for_lock=wait
        )

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    generated = [o for o in outcomes if o.items and any(i.generated for i in o.items.values())]
    assert len(generated) == 1
    other = next(o for o in outcomes if o is not generated[0])
    if wait:
        assert not other.skipped_locked
        assert [i.generated for i in other.items.values()] == [False, False, False]
        assert {k: v.row_id for k, v in other.items.items()} == {
            k: v.row_id for k, v in generated[0].items.items()
        }
    else:
        assert other.skipped_locked
        assert other.items == {}
    assert count_calls(call_log) == {"tutorial": 1, "resources": 1, "quiz": 1}
    assert row_counts(engine, roadmap.roadmap_id, concept) == {
        "tutorial": 1,
        "resources": 1,
        "quiz": 1,
        "ledger": 3,
    }


class _HeldByTheTest:
    """Locks for a worker whose concept lock the test itself holds on its behalf."""

    @contextmanager
    def hold(self, thread_id: str, wait: bool) -> Iterator[bool]:
        yield True


def test_work_done_elsewhere_while_a_run_waited_for_the_lock_is_not_generated_again(
    engine, roadmap, workflow, recording, checkpointer, database_url, call_log
):
    """A backfill waits on a concept's lock while a retry (another request) finishes two of its
    items and the orchestrator records them: asked under the lock, the backfill reports those
    two done by the retry and generates only the third. Asked before the lock, it would have
    generated all three again."""
    concept = roadmap.concept_ids[0]
    recorded: dict[ItemType, str] = {}  # what the orchestrator has recorded since the request
    asked: list[list[ItemType]] = []

    def done_elsewhere(items: Any) -> dict[ItemType, str]:
        asked.append(list(items))
        return {i: by for i, by in recorded.items() if i in items}

    retry = ConceptWorkflow(
        engine, recording, checkpointer, _HeldByTheTest(), node_retry=FAST_RETRY
    )
    result: dict[str, Any] = {}
    backfill = threading.Thread(
        target=lambda: result.update(
            outcome=workflow.run(
                roadmap.roadmap_id, concept, request_id="backfill", done_elsewhere=done_elsewhere
            )
        )
    )
    with new_locks(database_url).hold(concept_key(roadmap.roadmap_id, concept), wait=True):
        backfill.start()
        time.sleep(0.3)
        assert asked == []  # still waiting for the lock
        done = retry.run(roadmap.roadmap_id, concept, [TUTORIAL, RESOURCES], request_id="retry")
        recorded.update({TUTORIAL: "retry-run", RESOURCES: "retry-run"})
    backfill.join(timeout=30)

    outcome = result["outcome"]
    assert asked == [[TUTORIAL, RESOURCES, QUIZ]]
    assert [(o.done_by, o.generated) for o in outcome.items.values()] == [
        ("retry-run", False),
        ("retry-run", False),
        (None, True),
    ]
    assert all(o.status == "completed" for o in outcome.items.values())
    assert done.items[TUTORIAL].content_version == 1
    assert count_calls(call_log) == {"tutorial": 1, "resources": 1, "quiz": 1}
    assert row_counts(engine, roadmap.roadmap_id, concept) == {
        "tutorial": 1,
        "resources": 1,
        "quiz": 1,
        "ledger": 3,
    }


def test_the_workflow_with_the_openai_compatible_generator_end_to_end(
    engine, roadmap, checkpointer, locks, llm_server
):
    """Through real HTTP: a 500 (retried by the client), an invalid reply (repaired once)."""
    from roadmap_pipeline.testing.llm_server import Step

    llm_server.script(Step.error(500), Step.valid(), Step.invalid(), Step.valid())
    generator = OpenAICompatibleGenerator(
        llm_server.base_url, "loopback", "sk-test", timeout_s=5, max_retries=2
    )
    workflow = ConceptWorkflow(engine, generator, checkpointer, locks, node_retry=FAST_RETRY)
    outcome = workflow.run(roadmap.roadmap_id, roadmap.concept_ids[0], request_id="llm-1")

    assert not outcome.failed
    assert llm_server.calls == 5
    assert [r.item for r in llm_server.requests] == [
        "tutorial",
        "tutorial",
        "resources",
        "resources",
        "quiz",
    ]
    with connect(engine) as conn:
        generators = conn.execute(select(ContentGeneration.generator)).scalars().all()
    assert set(generators) == {"openai-compatible:loopback"}
    assert_consistent(engine, roadmap.roadmap_id)


def test_the_node_retry_policy_retries_exactly_transient_generation_errors():
    policy = FAST_RETRY.policy()
    assert policy.retry_on is TransientGenerationError
    assert policy.max_attempts == 3


def test_with_keep_finished_a_dead_callers_finished_run_is_reclaimed_not_regenerated(
    engine, roadmap, recording, checkpointer, locks, call_log
):
    """The orchestrator keeps threads until it has recorded their outcome. When it dies first,
    the next request (another run id) reclaims the finished items: same rows, no LLM calls."""
    workflow = ConceptWorkflow(
        engine, recording, checkpointer, locks, node_retry=FAST_RETRY, keep_finished=True
    )
    concept = roadmap.concept_ids[0]
    first = workflow.run(roadmap.roadmap_id, concept, request_id="crashed-run")
    assert thread_exists(checkpointer, first.thread_id)  # not pruned: nobody recorded it

    again = workflow.run(roadmap.roadmap_id, concept, request_id="retry-run")
    assert again.resumed
    assert {i: o.row_id for i, o in again.items.items()} == {
        i: o.row_id for i, o in first.items.items()
    }
    assert not any(o.generated for o in again.items.values())
    assert len(read_calls(call_log)) == 3

    workflow.prune(again.thread_id)  # recorded now
    assert not thread_exists(checkpointer, again.thread_id)
    fresh = workflow.run(roadmap.roadmap_id, concept, [TUTORIAL], request_id="a-later-request")
    assert fresh.items[TUTORIAL].content_version == 2  # a new materialization regenerates
    assert len(read_calls(call_log)) == 4


class LockLostOnRelease:
    """The concept locks, whose first release fails as one whose connection a database restart
    killed can: the run raises after its graph finished."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.failed = inner, False

    @contextmanager
    def hold(self, thread_id: str, wait: bool) -> Iterator[bool]:
        with self.inner.hold(thread_id, wait) as acquired:
            yield acquired
        if not self.failed:
            self.failed = True
            raise ConnectionError("the lock's connection was lost")


def test_a_run_that_raised_keeps_its_thread_and_the_next_request_reclaims_its_items(
    engine, roadmap, recording, checkpointer, locks, call_log
):
    """Its items are reported failed though every row was written: the caller must not prune
    the thread, or the retry (a new request) generates them again as new versions."""
    workflow = ConceptWorkflow(
        engine,
        recording,
        checkpointer,
        LockLostOnRelease(locks),
        node_retry=FAST_RETRY,
        keep_finished=True,
    )
    target = (roadmap.roadmap_id, roadmap.concept_ids[0])
    [errored] = run_concepts(
        workflow, [target], list(ItemType), request_id="lost-lock-run", concurrency=1
    )
    assert errored.errored
    assert errored.failed
    workflow.prune_recorded([errored])
    assert thread_exists(checkpointer, errored.thread_id)

    [retry] = run_concepts(
        workflow, [target], list(ItemType), request_id="retry-run", concurrency=1
    )
    assert not retry.failed
    assert not any(o.generated for o in retry.items.values())
    assert len(read_calls(call_log)) == 3
    assert row_counts(engine, *target)["tutorial"] == 1  # one version: nothing regenerated
    workflow.prune_recorded([retry])
    assert not thread_exists(checkpointer, retry.thread_id)


def test_reclaimed_items_stay_on_record_in_the_thread_until_the_caller_records_them(
    engine, roadmap, recording, checkpointer, locks, call_log
):
    """A run reclaims a finished tutorial and generates the quiz; it dies before its caller
    records anything. The next request (a new run id) must find both done."""
    workflow = ConceptWorkflow(
        engine, recording, checkpointer, locks, node_retry=FAST_RETRY, keep_finished=True
    )
    concept = roadmap.concept_ids[0]
    first = workflow.run(roadmap.roadmap_id, concept, [TUTORIAL], request_id="first")
    second = workflow.run(roadmap.roadmap_id, concept, [TUTORIAL, QUIZ], request_id="second")
    assert not second.items[TUTORIAL].generated
    assert second.items[QUIZ].generated
    # The caller of the second run died here: nothing recorded, nothing pruned.
    third = workflow.run(roadmap.roadmap_id, concept, [TUTORIAL, QUIZ], request_id="third")

    assert not any(o.generated for o in third.items.values())
    assert third.items[TUTORIAL].row_id == first.items[TUTORIAL].row_id
    assert third.items[QUIZ].row_id == second.items[QUIZ].row_id
    assert len(read_calls(call_log)) == 2
    assert row_counts(engine, roadmap.roadmap_id, concept)["tutorial"] == 1

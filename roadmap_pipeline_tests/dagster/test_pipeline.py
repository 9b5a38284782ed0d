"""The code location in-process on a real instance: intake, batch runs with exact per-concept
status, settlement, regeneration of one item. Our database runs on SQLite and Postgres."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import dagster as dg
import pytest
from sqlalchemy import select

from roadmap_pipeline.definitions import build_definitions
from roadmap_pipeline.domain.statuses import TaskStatus
from roadmap_pipeline.orchestration.keys import (
    FRAMEWORK_DATA,
    FRAMEWORK_ENTRY,
    QUIZ,
    RESOURCES,
    ROADMAP_FRAMEWORK,
    TUTORIAL,
)
from roadmap_pipeline.orchestration.partitions import CONCEPTS, KeyOrder, registered_concept_keys
from roadmap_pipeline.orchestration.resources import CheckpointerResource, RoadmapDatabase
from roadmap_pipeline.samples import load_sample, synthetic_framework
from roadmap_pipeline.store.activity import NothingRunning
from roadmap_pipeline.store.database import connect
from roadmap_pipeline.store.invariants import Scope, find_violations
from roadmap_pipeline.store.schema import (
    QuizMetadata,
    ResourceRecommendationMetadata,
    RoadmapTask,
    TutorialMetadata,
)
from roadmap_pipeline.store.writers import submit_roadmap
from roadmap_pipeline_tests.dagster.conftest import Pipeline

ROADMAP = "agent-performance-tuning-x5y9z2w8"
FAILING = ["c-3-2-3", "c-3-2-4", "c-3-2-5"]


def quiz_fails_permanently(concepts: list[str]) -> str:
    return json.dumps(
        {
            "fail": [
                {"concept": c, "item": "quiz", "times": 1000, "kind": "permanent"} for c in concepts
            ]
        }
    )


def statuses(pipeline: Pipeline, asset: dg.AssetKey, roadmap_id: str) -> Counter[str]:
    keys = registered_concept_keys(pipeline.instance, roadmap_id)
    found = pipeline.instance.get_status_by_partition(asset, keys, CONCEPTS)
    return Counter(status.value for status in found.values())


def task_row(pipeline: Pipeline, roadmap_id: str) -> Any:
    with connect(pipeline.engine) as conn:
        return conn.execute(select(RoadmapTask).where(RoadmapTask.roadmap_id == roadmap_id)).one()


def violations(pipeline: Pipeline) -> list:
    with connect(pipeline.engine) as conn:
        return find_violations(conn, Scope.fleet(), NothingRunning())


def intake(pipeline: Pipeline) -> dg.SensorResult:
    result = pipeline.tick("roadmap_intake")
    assert isinstance(result, dg.SensorResult)
    return result


def test_intake_registers_a_roadmap_in_one_call_and_requests_one_run(pipeline: Pipeline) -> None:
    submit_roadmap(pipeline.engine, load_sample(ROADMAP))
    result = intake(pipeline)

    concept_adds = [
        r for r in result.dynamic_partitions_requests if r.partitions_def_name == "concepts"
    ]
    assert len(concept_adds) == 1
    assert len(concept_adds[0].partition_keys) == 30
    assert [
        r.partition_keys
        for r in result.dynamic_partitions_requests
        if r.partitions_def_name == "roadmaps"
    ] == [[ROADMAP]]
    [request] = result.run_requests
    assert request.partition_key_range == dg.PartitionKeyRange(
        f"{ROADMAP}/c-1-1-1", f"{ROADMAP}/c-3-2-5"
    )
    assert set(request.asset_selection) == {TUTORIAL, RESOURCES, QUIZ, FRAMEWORK_ENTRY}
    assert task_row(pipeline, ROADMAP).status == TaskStatus.PROCESSING
    assert result.asset_events[0].asset_key == ROADMAP_FRAMEWORK
    # A second tick finds nothing new: the roadmap is registered and its task moved on.
    assert isinstance(pipeline.tick("roadmap_intake"), dg.SkipReason)


def test_a_roadmap_materializes_end_to_end_in_one_run(pipeline: Pipeline) -> None:
    submit_roadmap(pipeline.engine, load_sample(ROADMAP))
    [request] = intake(pipeline).run_requests
    result = pipeline.execute(request)

    assert result.success
    for asset in (TUTORIAL, RESOURCES, QUIZ, FRAMEWORK_ENTRY):
        assert statuses(pipeline, asset, ROADMAP) == {"MATERIALIZED": 30}
    task = task_row(pipeline, ROADMAP)
    assert task.status == TaskStatus.COMPLETED
    assert task.failed_concepts == []
    assert violations(pipeline) == []
    # The run rolled the roadmap up (it covered every concept) and checked it.
    rolled = pipeline.instance.fetch_materializations(FRAMEWORK_DATA, limit=1).records
    assert rolled[0].partition_key == ROADMAP
    # One materialization per partition and asset, with that concept's own metadata.
    events = pipeline.instance.fetch_materializations(TUTORIAL, limit=100).records
    assert len(events) == 30
    assert len({e.partition_key for e in events}) == 30
    metadata = events[0].asset_materialization.metadata
    assert metadata["content_version"].value == "v1"
    assert metadata["concept_id"].value.startswith(ROADMAP)
    # The settlement sensor sees that the roadmap is already settled.
    assert isinstance(pipeline.tick("roadmap_settlement"), (dg.SkipReason, dg.SensorResult))
    settle = pipeline.tick("roadmap_settlement")
    assert not isinstance(settle, dg.SensorResult) or not settle.run_requests


def count_key_reads(monkeypatch: Any, instance: dg.DagsterInstance) -> Counter[str]:
    """Counts reads of a whole dynamic partition set (each loads every key of the fleet)."""
    reads: Counter[str] = Counter()
    read_keys = instance.get_dynamic_partitions

    def counting(partitions_def_name: str) -> Any:
        reads[partitions_def_name] += 1
        return read_keys(partitions_def_name)

    monkeypatch.setattr(instance, "get_dynamic_partitions", counting)
    return reads


def test_intake_reads_the_registered_keys_once_per_tick_for_all_its_roadmaps(
    pipeline: Pipeline, monkeypatch: Any
) -> None:
    for n in range(3):
        submit_roadmap(pipeline.engine, synthetic_framework(f"intake-{n}", 5))
    reads = count_key_reads(monkeypatch, pipeline.instance)
    result = intake(pipeline)

    assert len(result.run_requests) == 3
    assert reads == {"roadmaps": 1, "concepts": 1}


def test_a_run_reads_the_concept_keys_a_few_times_not_once_per_partition(
    pipeline: Pipeline, monkeypatch: Any
) -> None:
    submit_roadmap(pipeline.engine, load_sample(ROADMAP))
    [request] = intake(pipeline).run_requests
    reads = count_key_reads(monkeypatch, pipeline.instance)
    result = pipeline.execute(request)
    during_run = reads[CONCEPTS.name]

    assert result.success
    assert statuses(pipeline, QUIZ, ROADMAP) == {"MATERIALIZED": 30}
    # Dagster's own reads are per step and asset (planning, inputs, outputs: 21 in 1.13) and
    # ours one per step; per-partition reads would be 4 x 30 more.
    assert during_run < 30, reads


def test_sensor_ticks_with_nothing_new_read_no_partition_keys(
    pipeline: Pipeline, monkeypatch: Any
) -> None:
    submit_roadmap(pipeline.engine, load_sample(ROADMAP))
    [request] = intake(pipeline).run_requests
    assert pipeline.execute(request).success
    cursors = {}
    for sensor in ("roadmap_settlement", "failed_partition_retry"):
        first = pipeline.tick(sensor)  # takes in the finished run
        assert isinstance(first, dg.SensorResult)
        cursors[sensor] = first.cursor
    reads = count_key_reads(monkeypatch, pipeline.instance)

    for sensor, cursor in cursors.items():
        again = pipeline.tick(sensor, cursor)
        assert not isinstance(again, dg.SensorResult) or not again.run_requests
    assert not isinstance(pipeline.tick("stuck_task_recovery"), dg.SensorResult)

    assert reads == {}


def test_a_key_order_is_read_once_on_first_use_and_indexed(
    pipeline: Pipeline, monkeypatch: Any
) -> None:
    pipeline.instance.add_dynamic_partitions(CONCEPTS.name, ["r/b", "r/a", "r/c"])
    reads = count_key_reads(monkeypatch, pipeline.instance)
    order = KeyOrder(pipeline.instance, CONCEPTS)
    assert reads == {}

    assert list(order) == ["r/b", "r/a", "r/c"]  # registration order, not sorted
    assert "r/a" in order
    assert "r/x" not in order
    assert order.index("r/c") == 2
    assert order[order.index("r/a") : order.index("r/c") + 1] == ["r/a", "r/c"]
    with pytest.raises(ValueError, match="r/x"):
        order.index("r/x")
    assert reads == {CONCEPTS.name: 1}


def test_failing_quizzes_fail_exactly_their_partitions_and_settle_partial_failure(
    pipeline: Pipeline,
) -> None:
    pipeline = pipeline.with_faults(quiz_fails_permanently(FAILING))
    submit_roadmap(pipeline.engine, load_sample(ROADMAP))
    [request] = intake(pipeline).run_requests
    result = pipeline.execute(request)

    assert not result.success
    assert statuses(pipeline, QUIZ, ROADMAP) == {"MATERIALIZED": 27, "FAILED": 3}
    assert statuses(pipeline, TUTORIAL, ROADMAP) == {"MATERIALIZED": 30}
    assert statuses(pipeline, RESOURCES, ROADMAP) == {"MATERIALIZED": 30}
    failed_keys = {
        key
        for key, status in pipeline.instance.get_status_by_partition(
            QUIZ, registered_concept_keys(pipeline.instance, ROADMAP), CONCEPTS
        ).items()
        if status.value == "FAILED"
    }
    assert failed_keys == {f"{ROADMAP}/{c}" for c in FAILING}

    settle = pipeline.tick("roadmap_settlement")
    assert isinstance(settle, dg.SensorResult)
    [settle_request] = settle.run_requests
    assert list(settle_request.asset_selection) == [FRAMEWORK_ENTRY]
    settled = pipeline.execute(settle_request)
    assert settled.success
    # The settle run checks the content again, one evaluation per partition, each pointing at
    # the materialization it judged (the failed quiz partitions have none to point at).
    evaluations = [
        e.event_specific_data
        for e in settled.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION"
        and e.event_specific_data.check_name == "content_valid"
        and e.event_specific_data.partition
    ]
    assert len(evaluations) == 90
    assert all(e.passed for e in evaluations)
    unpointed = {e.partition for e in evaluations if e.target_materialization_data is None}
    assert unpointed == {f"{ROADMAP}/{c}" for c in FAILING}

    task = task_row(pipeline, ROADMAP)
    assert task.status == TaskStatus.PARTIAL_FAILURE
    assert {f["concept_id"] for f in task.failed_concepts} == {f"{ROADMAP}:{c}" for c in FAILING}
    assert all(f["items"] == ["quiz"] for f in task.failed_concepts)
    assert violations(pipeline) == []
    with connect(pipeline.engine) as conn:
        assert len(conn.execute(select(QuizMetadata.quiz_id)).all()) == 27
        assert len(conn.execute(select(TutorialMetadata.tutorial_id)).all()) == 30


def test_a_framework_with_unsafe_ids_fails_its_task_and_the_rest_goes_on(
    pipeline: Pipeline,
) -> None:
    good = synthetic_framework("good-roadmap", 4)
    bad = synthetic_framework("bad-roadmap", 3)
    submit_roadmap(pipeline.engine, good)
    submit_roadmap(pipeline.engine, bad)
    # The service may store ids that cannot be partition keys; intake must say so, not drop them.
    with connect(pipeline.engine) as conn, conn.begin():
        from roadmap_pipeline.store.schema import RoadmapMetadata

        document = conn.execute(
            select(RoadmapMetadata.framework_data).where(
                RoadmapMetadata.roadmap_id == "bad-roadmap"
            )
        ).scalar_one()
        document["stages"][0]["modules"][0]["concepts"][0]["concept_id"] = "bad-roadmap:c 1|x"
        conn.execute(
            RoadmapMetadata.__table__.update()
            .where(RoadmapMetadata.roadmap_id == "bad-roadmap")
            .values(framework_data=document)
        )
    result = intake(pipeline)
    assert [r.tags["roadmap_pipeline/roadmap"] for r in result.run_requests] == ["good-roadmap"]
    bad_task = task_row(pipeline, "bad-roadmap")
    assert bad_task.status == TaskStatus.FAILED
    assert "unsafe in a partition key" in bad_task.error_message
    assert "'|'" in bad_task.error_message
    assert task_row(pipeline, "good-roadmap").status == TaskStatus.PROCESSING
    assert "bad-roadmap" not in pipeline.instance.get_dynamic_partitions("roadmaps")


def test_regenerating_the_quiz_of_one_concept_bumps_only_the_quiz(pipeline: Pipeline) -> None:
    submit_roadmap(pipeline.engine, synthetic_framework("regen", 3))
    [request] = intake(pipeline).run_requests
    assert pipeline.execute(request).success
    key = "regen/c-1-1-2"
    with connect(pipeline.engine) as conn:
        before = {
            "tutorials": conn.execute(select(TutorialMetadata.tutorial_id)).scalars().all(),
            "resources": conn.execute(
                select(
                    ResourceRecommendationMetadata.id, ResourceRecommendationMetadata.generated_at
                )
            ).all(),
            "quiz": conn.execute(
                select(QuizMetadata.quiz_id, QuizMetadata.generated_at).where(
                    QuizMetadata.concept_id == "regen:c-1-1-2"
                )
            ).one(),
        }
    result = pipeline.run_job("regenerate_quiz", partition_key=key)
    assert result.success
    with connect(pipeline.engine) as conn:
        assert (
            conn.execute(select(TutorialMetadata.tutorial_id)).scalars().all()
            == before["tutorials"]
        )
        assert (
            conn.execute(
                select(
                    ResourceRecommendationMetadata.id, ResourceRecommendationMetadata.generated_at
                )
            ).all()
            == before["resources"]
        )
        quiz = conn.execute(
            select(QuizMetadata.quiz_id, QuizMetadata.generated_at).where(
                QuizMetadata.concept_id == "regen:c-1-1-2"
            )
        ).one()
    assert quiz.quiz_id == before["quiz"].quiz_id  # learners' attempts keep their quiz
    assert quiz.generated_at > before["quiz"].generated_at
    quiz_events = pipeline.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=QUIZ, asset_partitions=[key]), limit=10
    ).records
    assert len(quiz_events) == 2
    assert violations(pipeline) == []


class PruneWitness(CheckpointerResource):
    """The run's real checkpointer, whose thread deletions note whether Dagster already holds
    the concept's tutorial materialization at that moment."""

    @contextmanager
    def open(self, database: RoadmapDatabase) -> Iterator[Any]:
        with super().open(database) as saver:
            base = type(saver)

            def delete_thread(self: Any, thread_id: str) -> None:
                records = WITNESSED.instance.fetch_materializations(
                    dg.AssetRecordsFilter(asset_key=TUTORIAL, asset_partitions=[thread_id]),
                    limit=1,
                ).records
                WITNESSED.pruned.append((thread_id, bool(records)))
                base.delete_thread(self, thread_id)

            saver.__class__ = type(
                f"Witnessing{base.__name__}", (base,), {"delete_thread": delete_thread}
            )
            yield saver


@dataclass
class Witnessed:
    instance: Any = None
    pruned: list[tuple[str, bool]] = field(default_factory=list)


WITNESSED = Witnessed()


def test_a_failing_batch_prunes_threads_only_once_its_successes_are_on_record(
    pipeline: Pipeline,
) -> None:
    """A thread is the record of finished work until Dagster holds its materialization: pruned
    earlier, a death in between lost both, and the next run generated the item again."""
    pipeline = pipeline.with_faults(quiz_fails_permanently(FAILING))
    pipeline.defs = build_definitions({**pipeline.resources(), "checkpointer": PruneWitness()})
    WITNESSED.instance, WITNESSED.pruned = pipeline.instance, []
    submit_roadmap(pipeline.engine, load_sample(ROADMAP))
    [request] = intake(pipeline).run_requests

    assert not pipeline.execute(request).success
    assert len(WITNESSED.pruned) == 30
    assert [thread for thread, on_record in WITNESSED.pruned if not on_record] == []

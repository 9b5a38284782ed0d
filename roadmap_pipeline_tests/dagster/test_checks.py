"""The asset checks: each rule's violation planted, the right check failing with the right rows,
then repaired by rematerialization (or left to a human when the rule says so)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import dagster as dg
import pytest
from sqlalchemy import Engine, select, text, update

from roadmap_pipeline.domain.framework import load_framework
from roadmap_pipeline.domain.statuses import TaskStatus
from roadmap_pipeline.orchestration.keys import (
    CONTENT_VALID,
    ENTRY_AGREES,
    FLEET,
    ROADMAP_COMPLETE,
    ROADMAP_CONSISTENT,
    TASK_AGREES,
)
from roadmap_pipeline.orchestration.partitions import register, roadmap_keys
from roadmap_pipeline.samples import build_incident, load_sample, synthetic_framework
from roadmap_pipeline.store.database import transaction
from roadmap_pipeline.store.schema import RoadmapMetadata, RoadmapTask
from roadmap_pipeline.store.writers import submit_roadmap
from roadmap_pipeline_tests.dagster.conftest import Pipeline

ROADMAP = "checked"
CONCEPT = f"{ROADMAP}:c-1-1-2"
KEY = f"{ROADMAP}/c-1-1-2"


def evaluations(result: Any) -> dict[tuple[str, str], Any]:
    """(asset, check) -> the step's own evaluation (the last one logged), from a run's events."""
    found = {}
    for event in result.all_events:
        if event.event_type_value == "ASSET_CHECK_EVALUATION":
            data = event.event_specific_data
            found[(data.asset_key.to_user_string(), data.check_name)] = data
    return found


def meta(evaluation: Any) -> dict[str, Any]:
    return {k: getattr(v, "value", v) for k, v in evaluation.metadata.items()}


def edit_document(engine: Engine, change: Callable[[dict[str, Any]], None]) -> None:
    with transaction(engine) as conn:
        document = conn.execute(
            select(RoadmapMetadata.framework_data).where(RoadmapMetadata.roadmap_id == ROADMAP)
        ).scalar_one()
        change(document)
        conn.execute(
            update(RoadmapMetadata)
            .where(RoadmapMetadata.roadmap_id == ROADMAP)
            .values(framework_data=document)
        )


def concept_node(document: dict[str, Any]) -> dict[str, Any]:
    return document["stages"][0]["modules"][0]["concepts"][1]


def sql(engine: Engine, statement: str, **params: Any) -> None:
    with transaction(engine) as conn:
        conn.execute(text(statement), params)


def generated(pipeline: Pipeline) -> Pipeline:
    submit_roadmap(pipeline.engine, synthetic_framework(ROADMAP, 4))
    result = pipeline.tick("roadmap_intake")
    assert isinstance(result, dg.SensorResult)
    assert pipeline.execute(result.run_requests[0]).success
    return pipeline


def check_concept(pipeline: Pipeline) -> dict[tuple[str, str], Any]:
    result = pipeline.run_job("check_concepts", tags={"dagster/partition": KEY})
    return evaluations(result)


def check_roadmap(pipeline: Pipeline) -> dict[tuple[str, str], Any]:
    result = pipeline.run_job("check_roadmap", tags={"dagster/partition": ROADMAP})
    return evaluations(result)


def repair(pipeline: Pipeline) -> None:
    assert pipeline.run_job("roll_up_roadmap", partition_key=ROADMAP).success


PLANTS: dict[str, tuple[Callable[[Engine], None], str, str]] = {
    # rule: (plant, failing check, where)
    "item_not_marked": (
        lambda e: edit_document(e, lambda d: concept_node(d).update(quiz_status="pending")),
        ENTRY_AGREES,
        "concept",
    ),
    "ref_missing": (
        lambda e: edit_document(e, lambda d: concept_node(d).update(tutorial_id="no-such-row")),
        ENTRY_AGREES,
        "concept",
    ),
    "ref_mismatch": (
        lambda e: edit_document(e, lambda d: concept_node(d).update(resources_count=99)),
        ENTRY_AGREES,
        "concept",
    ),
    "task_status_mismatch": (
        lambda e: sql(
            e,
            "UPDATE roadmap_tasks SET failed_concepts = :f WHERE roadmap_id = :r",
            f=json.dumps([CONCEPT]),
            r=ROADMAP,
        ),
        TASK_AGREES,
        "roadmap",
    ),
    "zombie_status": (
        lambda e: sql(
            e, "UPDATE roadmap_tasks SET status = 'processing' WHERE roadmap_id = :r", r=ROADMAP
        ),
        TASK_AGREES,
        "roadmap",
    ),
}


@pytest.mark.parametrize("rule", sorted(PLANTS))
def test_a_planted_violation_fails_its_check_and_rematerializing_repairs_it(
    pipeline: Pipeline, rule: str
) -> None:
    pipeline = generated(pipeline)
    assert all(e.passed for e in check_roadmap(pipeline).values())
    plant, failing_check, where = PLANTS[rule]
    plant(pipeline.engine)

    if where == "concept":
        found = check_concept(pipeline)
        evaluation = found[("framework_entry", ENTRY_AGREES)]
        assert not evaluation.passed
        assert meta(evaluation)["counts_by_rule"] == {rule: 1}
        assert CONCEPT in meta(evaluation)["detail"]
        assert all(e.passed for k, e in found.items() if k[1] == CONTENT_VALID)
    roadmap = check_roadmap(pipeline)
    name = failing_check if where == "roadmap" else ROADMAP_CONSISTENT
    evaluation = roadmap[("framework_data", name)]
    assert not evaluation.passed
    expected = {rule: 1}
    if rule == "zombie_status":  # a task processing with every item done is also a mismatch
        expected["task_status_mismatch"] = 1
    assert meta(evaluation)["counts_by_rule"] == expected
    assert meta(evaluation)["repair"] == "rematerialize framework_data for this roadmap"

    repair(pipeline)
    assert all(e.passed for e in check_roadmap(pipeline).values())
    assert all(e.passed for e in check_concept(pipeline).values())


def test_invalid_content_blocks_and_needs_regeneration_not_rematerialization(
    pipeline: Pipeline,
) -> None:
    pipeline = generated(pipeline)
    with transaction(pipeline.engine) as conn:
        questions = conn.execute(
            text("SELECT questions FROM quiz_metadata WHERE concept_id = :c"), {"c": CONCEPT}
        ).scalar_one()
        questions = json.loads(questions) if isinstance(questions, str) else questions
        questions[0]["correct_answer"] = [9]
        conn.execute(
            text("UPDATE quiz_metadata SET questions = :q WHERE concept_id = :c"),
            {"q": json.dumps(questions), "c": CONCEPT},
        )
    found = check_concept(pipeline)
    quiz_check = found[("quiz", CONTENT_VALID)]
    assert not quiz_check.passed
    assert quiz_check.blocking
    assert "does not index its" in meta(quiz_check)["detail"]
    assert found[("tutorial", CONTENT_VALID)].passed

    repair(pipeline)
    roadmap = check_roadmap(pipeline)
    still = roadmap[("framework_data", ROADMAP_CONSISTENT)]
    assert not still.passed  # rematerializing framework_data cannot fix invalid content
    assert meta(still)["needs_human"] == 1

    assert pipeline.run_job("regenerate_quiz", partition_key=KEY).success
    assert all(e.passed for e in check_roadmap(pipeline).values())


def test_orphan_rows_are_reported_and_never_deleted(pipeline: Pipeline) -> None:
    pipeline = generated(pipeline)
    sql(
        pipeline.engine,
        "INSERT INTO resource_recommendation_metadata (id, roadmap_id, concept_id, resources, "
        "resources_count, search_queries_used, generated_at) "
        "VALUES ('orphan-row', :r, 'checked:ghost', '[]', 0, '[]', :t)",
        r=ROADMAP,
        t="2026-01-01 00:00:00",
    )
    evaluation = check_roadmap(pipeline)[("framework_data", ROADMAP_CONSISTENT)]
    assert meta(evaluation)["counts_by_rule"] == {"orphan_content": 1}
    repair(pipeline)
    evaluation = check_roadmap(pipeline)[("framework_data", ROADMAP_CONSISTENT)]
    assert not evaluation.passed
    assert meta(evaluation)["needs_human"] == 1


def test_fleet_check_names_violating_roadmaps_and_a_clean_fleet_passes(pipeline: Pipeline) -> None:
    pipeline = generated(pipeline)
    config = {"ops": {"roadmap_fleet_fleet_consistency": {"config": {"force_full_pass": True}}}}
    clean = evaluations(pipeline.run_job("fleet_consistency_check", run_config=config))
    assert clean[("roadmap_fleet", FLEET)].passed

    edit_document(pipeline.engine, lambda d: concept_node(d).update(resources_count=99))
    found = evaluations(pipeline.run_job("fleet_consistency_check", run_config=config))
    evaluation = found[("roadmap_fleet", FLEET)]
    assert not evaluation.passed
    metadata = meta(evaluation)
    assert metadata["pass_kind"] == "full"
    assert metadata["counts_by_rule"] == {"ref_mismatch": 1}
    assert metadata["violating_roadmap_ids"] == [ROADMAP]
    assert metadata["repairable_roadmaps"] == [ROADMAP]


def test_incremental_fleet_pass_reads_only_what_changed(pipeline: Pipeline) -> None:
    pipeline = generated(pipeline)
    submit_roadmap(pipeline.engine, synthetic_framework("other", 2))
    full = evaluations(pipeline.run_job("fleet_consistency_check"))
    assert meta(full[("roadmap_fleet", FLEET)])["pass_kind"] == "full"
    # Nothing changed since: the next pass is incremental and reads no roadmap.
    again = meta(evaluations(pipeline.run_job("fleet_consistency_check"))[("roadmap_fleet", FLEET)])
    assert again["pass_kind"] == "incremental"
    assert again["roadmaps_checked"] == 0
    # A task update is seen: only that roadmap is read.
    sql(
        pipeline.engine,
        "UPDATE roadmap_tasks SET status = 'processing', updated_at = :t "
        "WHERE roadmap_id = 'other'",
        t="2999-01-01 00:00:00",
    )
    changed = meta(
        evaluations(pipeline.run_job("fleet_consistency_check"))[("roadmap_fleet", FLEET)]
    )
    assert changed["pass_kind"] == "incremental"
    assert changed["roadmaps_checked"] == 1
    assert changed["violating_roadmap_ids"] == ["other"]


def test_the_incident_fails_the_checks_and_the_roll_up_settles_it(pipeline: Pipeline) -> None:
    state = build_incident(pipeline.engine)
    register(pipeline.instance, roadmap_keys(load_framework(load_sample(state.roadmap_id))))
    result = pipeline.run_job("check_roadmap", tags={"dagster/partition": state.roadmap_id})
    found = evaluations(result)
    consistency = meta(found[("framework_data", ROADMAP_CONSISTENT)])
    assert consistency["counts_by_rule"] == {"item_not_marked": 81}
    task = meta(found[("framework_data", TASK_AGREES)])
    assert task["counts_by_rule"]["zombie_status"] == 10  # 9 items without rows + the task
    assert state.task_id in task["detail"]
    fleet = evaluations(pipeline.run_job("fleet_consistency_check"))
    assert meta(fleet[("roadmap_fleet", FLEET)])["violating_roadmap_ids"] == [state.roadmap_id]

    assert pipeline.run_job("roll_up_roadmap", partition_key=state.roadmap_id).success
    after = evaluations(
        pipeline.run_job("check_roadmap", tags={"dagster/partition": state.roadmap_id})
    )
    assert after[("framework_data", ROADMAP_CONSISTENT)].passed
    assert after[("framework_data", TASK_AGREES)].passed
    # The three concepts without rows are failed now: consistent, and work to retry (WARN).
    complete = after[("framework_data", ROADMAP_COMPLETE)]
    assert not complete.passed
    assert complete.severity == dg.AssetCheckSeverity.WARN
    assert meta(complete)["concepts_to_retry"] == sorted(state.missing_concepts)
    with transaction(pipeline.engine) as conn:
        task_row = conn.execute(
            select(RoadmapTask).where(RoadmapTask.task_id == state.task_id)
        ).one()
    assert task_row.status == TaskStatus.PARTIAL_FAILURE
    assert {f["concept_id"] for f in task_row.failed_concepts} == set(state.missing_concepts)

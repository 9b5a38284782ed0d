"""Retry layer 4 and stuck-task recovery, in-process on a real instance (both databases)."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from dagster._core.definitions.job_base import InMemoryJob
from dagster._core.execution.api import execute_run
from dagster._core.storage.tags import AUTO_RETRY_RUN_ID_TAG, WILL_RETRY_TAG
from sqlalchemy import func, select, update

from roadmap_pipeline.domain.statuses import TaskStatus
from roadmap_pipeline.orchestration import activity, recovery
from roadmap_pipeline.orchestration.activity import DagsterActivity
from roadmap_pipeline.orchestration.keys import (
    ATTEMPT_TAG,
    FRAMEWORK_ENTRY,
    QUIZ,
    REQUEST_TAG,
    TUTORIAL,
)
from roadmap_pipeline.orchestration.partitions import CONCEPTS
from roadmap_pipeline.orchestration.recovery import RecoverySettings, RetrySettings
from roadmap_pipeline.orchestration.sensors import range_tags
from roadmap_pipeline.samples import synthetic_framework
from roadmap_pipeline.store.activity import NothingRunning
from roadmap_pipeline.store.database import connect, transaction
from roadmap_pipeline.store.invariants import Scope, find_violations
from roadmap_pipeline.store.schema import ContentGeneration, RoadmapTask, TutorialMetadata
from roadmap_pipeline.store.writers import submit_roadmap
from roadmap_pipeline_tests.dagster.conftest import TEST_CONCURRENCY, Pipeline

ROADMAP = "retried"
FAILING = [f"{ROADMAP}/c-1-1-2", f"{ROADMAP}/c-1-1-3"]


def quiz_fails(times: int, counter_dir: Path) -> str:
    faults = [
        {"concept": key, "item": "quiz", "times": times, "kind": "permanent"} for key in FAILING
    ]
    return json.dumps({"fail": faults, "counter_dir": str(counter_dir)})


def task(pipeline: Pipeline) -> Any:
    with connect(pipeline.engine) as conn:
        return conn.execute(select(RoadmapTask).where(RoadmapTask.roadmap_id == ROADMAP)).one()


def first_run(pipeline: Pipeline) -> dg.RunRequest:
    submit_roadmap(pipeline.engine, synthetic_framework(ROADMAP, 5))
    intake = pipeline.tick("roadmap_intake")
    assert isinstance(intake, dg.SensorResult)
    assert not pipeline.execute(intake.run_requests[0]).success
    return intake.run_requests[0]


def retry_sensor_on(pipeline: Pipeline) -> str:
    """The sensor's first tick: it starts after the last finished run."""
    first = pipeline.tick("failed_partition_retry")
    assert isinstance(first, dg.SensorResult)
    assert not first.run_requests
    assert first.cursor is not None
    return first.cursor


def settle(pipeline: Pipeline, cursor: str | None) -> str | None:
    result = pipeline.tick("roadmap_settlement", cursor)
    if isinstance(result, dg.SensorResult):
        for request in result.run_requests:
            assert pipeline.execute(request).success
        return result.cursor
    return cursor


def test_a_failed_partition_is_retried_alone_and_the_task_completes(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    pipeline = pipeline.with_faults(quiz_fails(1, tmp_path))
    cursor = retry_sensor_on(pipeline)
    first = first_run(pipeline)
    settle(pipeline, None)
    assert task(pipeline).status == TaskStatus.PARTIAL_FAILURE
    with connect(pipeline.engine) as conn:
        tutorials_before = conn.execute(select(TutorialMetadata.tutorial_id)).scalars().all()

    retry = pipeline.tick("failed_partition_retry", cursor)
    assert isinstance(retry, dg.SensorResult)
    [request] = retry.run_requests
    assert request.partition_key_range == dg.PartitionKeyRange(*FAILING)
    assert set(request.asset_selection) == {QUIZ, FRAMEWORK_ENTRY}  # only what failed
    assert request.tags[ATTEMPT_TAG] == "2"
    # The retry serves the task's request, as the failed run did (same generation ids).
    assert request.tags[REQUEST_TAG] == first.tags[REQUEST_TAG] == f"task:{task(pipeline).task_id}"
    assert pipeline.execute(request).success
    settle(pipeline, None)

    assert task(pipeline).status == TaskStatus.COMPLETED
    with connect(pipeline.engine) as conn:
        assert (
            conn.execute(select(TutorialMetadata.tutorial_id)).scalars().all() == tutorials_before
        )
        assert find_violations(conn, Scope.fleet(), NothingRunning()) == []
    # Nothing failed any more: the next tick has nothing to do.
    again = pipeline.tick("failed_partition_retry", retry.cursor)
    assert isinstance(again, dg.SensorResult)
    assert not again.run_requests


def test_past_the_cap_a_concept_stays_failed_and_the_task_names_it(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    pipeline = pipeline.with_faults(
        quiz_fails(1000, tmp_path), retry=RetrySettings(max_retries=2, base_delay_s=0)
    )
    cursor = retry_sensor_on(pipeline)
    first_run(pipeline)
    attempts = []
    for _ in range(4):
        result = pipeline.tick("failed_partition_retry", cursor)
        assert isinstance(result, dg.SensorResult)
        cursor = result.cursor
        for request in result.run_requests:
            attempts.append(request.tags[ATTEMPT_TAG])
            assert not pipeline.execute(request).success
    assert attempts == ["2", "3"]  # the first run, then two retries: the cap
    settle(pipeline, None)
    settled = task(pipeline)
    assert settled.status == TaskStatus.PARTIAL_FAILURE
    assert {f["concept_id"] for f in settled.failed_concepts} == {
        k.replace("/", ":", 1) for k in FAILING
    }


def test_failures_from_before_the_retry_sensor_was_on_are_left_to_the_operator(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    """As `make demo` then `make dev`: the partitions the demo failed stay failed for the UI's
    backfill; a failure after the sensor's first tick is retried."""
    pipeline = pipeline.with_faults(quiz_fails(1, tmp_path), retry=RetrySettings(base_delay_s=0))
    first_run(pipeline)
    cursor = retry_sensor_on(pipeline)
    again = pipeline.tick("failed_partition_retry", cursor)
    assert isinstance(again, dg.SensorResult)
    assert not again.run_requests
    statuses = pipeline.instance.get_status_by_partition(QUIZ, FAILING, CONCEPTS)
    assert set((statuses or {}).values()) == {dg.AssetPartitionStatus.FAILED}

    # A later failure (a regeneration of the quiz of a concept that fails again) is retried.
    pipeline = pipeline.with_faults(quiz_fails(2, tmp_path / "later"))
    request = dg.RunRequest(partition_key=FAILING[0], asset_selection=[QUIZ, FRAMEWORK_ENTRY])
    assert not pipeline.execute(request).success
    later = pipeline.tick("failed_partition_retry", again.cursor)
    assert isinstance(later, dg.SensorResult)
    [retry] = later.run_requests
    assert retry.partition_key_range == dg.PartitionKeyRange(FAILING[0], FAILING[0])


def test_a_crashed_run_that_dagster_retries_and_a_run_read_twice_count_no_attempt(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    """Retry layer 3 owns a failed run Dagster will re-execute (a killed run worker); a failed
    run whose tags change comes back to the sensor, and counts once."""
    pipeline = pipeline.with_faults(quiz_fails(1000, tmp_path), retry=RetrySettings(base_delay_s=0))
    cursor = retry_sensor_on(pipeline)
    request = first_run(pipeline)
    [crashed] = pipeline.instance.get_runs()
    pipeline.instance.add_run_tags(crashed.run_id, {WILL_RETRY_TAG: "true"})
    owned = pipeline.tick("failed_partition_retry", cursor)
    assert isinstance(owned, dg.SensorResult)
    assert not owned.run_requests

    # Its re-execution (linked as Dagster links it) fails on the quizzes: that is the
    # partitions' first failure.
    assert not pipeline.execute(request).success
    [failed, _] = pipeline.instance.get_runs()
    pipeline.instance.add_run_tags(crashed.run_id, {AUTO_RETRY_RUN_ID_TAG: failed.run_id})
    first = pipeline.tick("failed_partition_retry", owned.cursor)
    assert isinstance(first, dg.SensorResult)
    assert [r.tags[ATTEMPT_TAG] for r in first.run_requests] == ["2"]
    pipeline.instance.add_run_tags(failed.run_id, {WILL_RETRY_TAG: "false"})
    reread = pipeline.tick("failed_partition_retry", first.cursor)
    assert isinstance(reread, dg.SensorResult)
    assert [r.tags[ATTEMPT_TAG] for r in reread.run_requests] == ["2"]
    assert [r.run_key for r in reread.run_requests] == [r.run_key for r in first.run_requests]


def test_a_processing_task_without_a_run_is_recovered(pipeline: Pipeline) -> None:
    submit_roadmap(pipeline.engine, synthetic_framework(ROADMAP, 4))
    intake = pipeline.tick("roadmap_intake")
    assert isinstance(intake, dg.SensorResult)
    # The run the intake asked for never happened (the daemon died with the request).
    assert task(pipeline).status == TaskStatus.PROCESSING

    recovery = pipeline.tick("stuck_task_recovery")
    assert isinstance(recovery, dg.SensorResult)
    [request] = recovery.run_requests
    assert request.tags["roadmap_pipeline/purpose"] == "recovery"
    assert pipeline.execute(request).success
    assert task(pipeline).status == TaskStatus.COMPLETED
    # Settled: nothing left to recover.
    assert isinstance(pipeline.tick("stuck_task_recovery"), dg.SkipReason)


def test_recovery_never_launches_a_second_run_for_a_roadmap_that_has_one(
    pipeline: Pipeline,
) -> None:
    submit_roadmap(pipeline.engine, synthetic_framework(ROADMAP, 4))
    intake = pipeline.tick("roadmap_intake")
    assert isinstance(intake, dg.SensorResult)
    job = pipeline.defs.resolve_job_def("generate_concepts")
    pipeline.instance.create_run_for_job(
        job,
        tags=dict(intake.run_requests[0].tags),
        status=dg.DagsterRunStatus.STARTED,
        asset_selection=frozenset(intake.run_requests[0].asset_selection or []),
    )
    result = pipeline.tick("stuck_task_recovery")
    assert isinstance(result, dg.SensorResult)
    assert result.run_requests == []


def content_step_only(pipeline: Pipeline) -> None:
    """A submitted roadmap whose run finished its content step and died before framework_entry
    ran: every row exists, the task still says processing."""
    submit_roadmap(pipeline.engine, synthetic_framework(ROADMAP, 3))
    intake = pipeline.tick("roadmap_intake")
    assert isinstance(intake, dg.SensorResult)
    [request] = intake.run_requests
    selection = [a for a in request.asset_selection or [] if a != FRAMEWORK_ENTRY]
    assert pipeline.execute(request.with_replaced_attrs(asset_selection=selection)).success
    assert task(pipeline).status == TaskStatus.PROCESSING


def test_recovery_of_a_roadmap_whose_rows_all_exist_only_settles_it(pipeline: Pipeline) -> None:
    content_step_only(pipeline)
    [request] = pipeline.tick("stuck_task_recovery").run_requests  # type: ignore[union-attr]
    assert list(request.asset_selection or []) == [FRAMEWORK_ENTRY]
    assert pipeline.execute(request).success
    assert task(pipeline).status == TaskStatus.COMPLETED


def tutorial_versions(pipeline: Pipeline) -> list[tuple[str, int]]:
    with connect(pipeline.engine) as conn:
        rows = conn.execute(
            select(TutorialMetadata.tutorial_id, TutorialMetadata.content_version).order_by(
                TutorialMetadata.tutorial_id
            )
        )
        return [tuple(row) for row in rows]  # type: ignore[misc]


def test_a_recovery_that_runs_after_the_work_was_done_generates_nothing_again(
    pipeline: Pipeline,
) -> None:
    """The recovery sensor decides from the rows at its tick; the run it asks for may run after
    another run of the same task has filled them (queued behind a crashed run's re-execution,
    in CI's kill test). Both serve the task's request, so the late run finds every write in the
    ledger: no new tutorial version, no generator call."""
    submit_roadmap(pipeline.engine, synthetic_framework(ROADMAP, 4))
    intake = pipeline.tick("roadmap_intake")
    assert isinstance(intake, dg.SensorResult)
    [first] = intake.run_requests
    recovery = pipeline.tick("stuck_task_recovery")  # the intake's run does not exist yet
    assert isinstance(recovery, dg.SensorResult)
    [late] = recovery.run_requests
    assert late.tags[REQUEST_TAG] == first.tags[REQUEST_TAG]

    assert pipeline.execute(first).success
    written = tutorial_versions(pipeline)
    assert len(written) == 4
    result = pipeline.execute(late)
    assert result.success
    assert tutorial_versions(pipeline) == written
    generated = [
        event.materialization.metadata["generated"].value
        for event in result.get_asset_materialization_events()
        if event.asset_key == TUTORIAL
    ]
    assert generated == [False] * 4
    assert task(pipeline).status == TaskStatus.COMPLETED


def test_a_failed_run_counts_as_active_while_dagster_may_still_retry_it(
    pipeline: Pipeline,
) -> None:
    """Dagster stores a run's failure, then tags whether run retries relaunch it: until the
    tag says no, or the retry exists (and is active itself), the failed run is queued work."""
    job = pipeline.defs.resolve_job_def("generate_concepts")
    key = f"{ROADMAP}/c-1-1-1"
    with dg.instance_for_test(overrides={"run_retries": {"enabled": True}}) as instance:
        run = instance.create_run_for_job(
            job, tags={"dagster/partition": key}, status=dg.DagsterRunStatus.FAILURE
        )

        def covered() -> bool:
            return DagsterActivity(instance).active(None).covers_concept(ROADMAP, "c-1-1-1")

        assert covered()  # no decision yet
        instance.add_run_tags(run.run_id, {WILL_RETRY_TAG: "false"})
        assert not covered()
        instance.add_run_tags(run.run_id, {WILL_RETRY_TAG: "true"})
        assert covered()
        instance.add_run_tags(run.run_id, {AUTO_RETRY_RUN_ID_TAG: "its-retry"})
        assert not covered()  # the retry run itself is what counts now
    # Without run retries nothing relaunches a failed run.
    other = pipeline.instance.create_run_for_job(
        job, tags={"dagster/partition": key}, status=dg.DagsterRunStatus.FAILURE
    )
    assert other.tags.get(WILL_RETRY_TAG) is None
    assert not DagsterActivity(pipeline.instance).active(None).covers_concept(ROADMAP, "c-1-1-1")


def test_recovery_leaves_a_roadmap_whose_run_just_ended_to_the_settlement(
    pipeline: Pipeline,
) -> None:
    """A task still processing right after its roadmap's last run ended is the settlement's
    first (a concept past the retry cap must not get one more attempt from recovery)."""
    waiting = pipeline.with_faults("", recovery=RecoverySettings(delay_s=60))
    content_step_only(waiting)
    long_ago = task(waiting).updated_at - timedelta(minutes=10)
    with transaction(waiting.engine) as conn:  # the task itself has been still for long
        conn.execute(
            update(RoadmapTask).where(RoadmapTask.roadmap_id == ROADMAP).values(updated_at=long_ago)
        )
    assert task(waiting).status == TaskStatus.PROCESSING

    early = waiting.tick("stuck_task_recovery")
    assert isinstance(early, dg.SensorResult)
    assert early.run_requests == []
    # Once the run's end is as old as the delay (here: no delay), recovery settles it.
    [settle_run] = pipeline.tick("stuck_task_recovery").run_requests  # type: ignore[union-attr]
    assert list(settle_run.asset_selection or []) == [FRAMEWORK_ENTRY]


def test_a_run_created_before_another_did_its_work_generates_nothing_again(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    """An operator backfills the failed quizzes while their automatic retry runs: the backfill's
    run was created first and runs last, and finds them materialized since by the retry. It
    writes nothing (the ledger has no new generation) and says which run did the work."""
    pipeline = pipeline.with_faults(quiz_fails(1, tmp_path))
    cursor = retry_sensor_on(pipeline)
    first_run(pipeline)
    retry = pipeline.tick("failed_partition_retry", cursor)
    assert isinstance(retry, dg.SensorResult)
    [request] = retry.run_requests
    job = pipeline.defs.resolve_job_def("generate_concepts")
    backfill = pipeline.instance.create_run_for_job(  # while the retry is queued
        job,
        asset_selection=frozenset({QUIZ, FRAMEWORK_ENTRY}),
        tags=range_tags(dg.PartitionKeyRange(*FAILING)),
    )
    retried = pipeline.execute(request)
    assert retried.success
    with connect(pipeline.engine) as conn:
        ledger = conn.execute(select(func.count()).select_from(ContentGeneration)).scalar_one()

    assert execute_run(InMemoryJob(job), backfill, pipeline.instance).success
    with connect(pipeline.engine) as conn:
        assert conn.execute(select(func.count()).select_from(ContentGeneration)).scalar_one() == (
            ledger
        )
    recorded = pipeline.instance.get_records_for_run(
        backfill.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION
    ).records
    by_run = {
        (r.partition_key, r.asset_materialization.metadata["materialized_by_run"].value)
        for r in recorded
        if r.asset_key == QUIZ and r.asset_materialization is not None
    }
    assert by_run == {(key, retried.run_id) for key in FAILING}


def test_a_retry_dagster_promised_but_never_launched_is_taken_over_when_its_promise_lapses(
    data_engine: tuple[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Dagster's run retries can miss a failure they promised to retry (dagster-io/dagster#33741):
    the run says will_retry=true and no re-execution ever comes. Layer 4 leaves the run to them
    only while the other sensors count it as active, then retries its failed partitions."""
    url, engine = data_engine
    # Dagster promises a retry of this run itself (its failure is a step's, as a crash's would
    # be treated by production's setting).
    retries = {"enabled": True, "max_retries": 3, "retry_on_asset_or_op_failure": True}
    overrides = {**TEST_CONCURRENCY, "run_retries": retries}
    with dg.instance_for_test(overrides=overrides) as instance:
        pipeline = Pipeline(url, engine, instance, quiz_fails(1000, tmp_path))
        cursor = retry_sensor_on(pipeline)
        first = first_run(pipeline)
        [failed] = instance.get_runs()
        assert failed.tags[WILL_RETRY_TAG] == "true"  # promised; no daemon here launches it

        waiting = pipeline.tick("failed_partition_retry", cursor)
        assert isinstance(waiting, dg.SensorResult)
        assert not waiting.run_requests
        again = pipeline.tick("failed_partition_retry", waiting.cursor)
        assert isinstance(again, dg.SensorResult)
        assert not again.run_requests  # still within the promise: read again, not forgotten

        monkeypatch.setattr(recovery, "RETRY_PROMISE_S", 0.0)
        monkeypatch.setattr(activity, "RETRY_PROMISE_S", 0.0)
        lapsed = pipeline.tick("failed_partition_retry", again.cursor)
        assert isinstance(lapsed, dg.SensorResult)
        [request] = lapsed.run_requests
        assert request.partition_key_range == dg.PartitionKeyRange(*FAILING)
        assert set(request.asset_selection) == {QUIZ, FRAMEWORK_ENTRY}
        assert request.tags[ATTEMPT_TAG] == "2"
        assert request.tags[REQUEST_TAG] == first.tags[REQUEST_TAG]

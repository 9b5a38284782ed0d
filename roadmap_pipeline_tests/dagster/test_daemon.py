"""Through the daemon, not in-process: sensors pick roadmaps up, runs are launched by the queued
run coordinator, the settlement sensor rolls up, the fleet check schedule ticks. Storage is
Postgres (dagster-postgres) and so is our database. One deployment serves the whole module:
daemon runs are what cost time."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import dagster as dg
import psycopg
import pytest
from sqlalchemy import select, text
from sqlalchemy.engine import make_url

from roadmap_pipeline.domain.statuses import TaskStatus
from roadmap_pipeline.orchestration.keys import FLEET_CHECK_KEY, FRAMEWORK_ENTRY, QUIZ, TUTORIAL
from roadmap_pipeline.orchestration.partitions import CONCEPTS, registered_concept_keys
from roadmap_pipeline.samples import synthetic_framework
from roadmap_pipeline.store.activity import NothingRunning
from roadmap_pipeline.store.database import connect, create_store_engine
from roadmap_pipeline.store.invariants import Scope, find_violations
from roadmap_pipeline.store.migrate import init_db
from roadmap_pipeline.store.schema import RoadmapTask
from roadmap_pipeline.store.writers import submit_roadmap
from roadmap_pipeline.testing.dagster_harness import Deployment, dagster_deployment, wait_for
from roadmap_pipeline_tests.conftest import PG_ADMIN_URL

pytestmark = [pytest.mark.daemon, pytest.mark.postgres]

CLEAN = "daemon-clean-r1"
FAILING = "daemon-failing-r2"
FAILING_CONCEPTS = [f"{FAILING}/c-1-1-2", f"{FAILING}/c-1-2-1", f"{FAILING}/c-2-1-2"]


@pytest.fixture(scope="module")
def data_url(pg_database_url: str) -> Iterator[str]:
    schema = f"d_{uuid.uuid4().hex[:12]}"
    plain = (
        make_url(pg_database_url).set(drivername="postgresql").render_as_string(hide_password=False)
    )
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield (
            make_url(pg_database_url)
            .update_query_dict({"options": f"-csearch_path={schema}"})
            .render_as_string(hide_password=False)
        )
    finally:
        with psycopg.connect(plain, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture(scope="module")
def deployment(data_url: str) -> Iterator[Deployment]:
    engine = create_store_engine(data_url)
    init_db(engine)
    engine.dispose()
    faults = {
        "fail": [
            {"concept": key, "item": "quiz", "times": 1000, "kind": "permanent"}
            for key in FAILING_CONCEPTS
        ]
    }
    with dagster_deployment(
        database_url=data_url,
        admin_url=PG_ADMIN_URL,
        module="roadmap_pipeline.testing.daemon_defs",
        extra_env={"ROADMAP_FAULTS": json.dumps(faults)},
    ) as deployment:
        yield deployment


def task_status(engine: Any, roadmap_id: str) -> Any:
    with connect(engine) as conn:
        return conn.execute(select(RoadmapTask).where(RoadmapTask.roadmap_id == roadmap_id)).one()


def partition_statuses(
    instance: dg.DagsterInstance, asset: dg.AssetKey, roadmap_id: str
) -> dict[str, str]:
    keys = registered_concept_keys(instance, roadmap_id)
    return {k: s.value for k, s in instance.get_status_by_partition(asset, keys, CONCEPTS).items()}


def test_the_daemon_generates_settles_and_fails_exactly_the_failing_partitions(
    deployment: Deployment, data_url: str
) -> None:
    engine = create_store_engine(data_url)
    submit_roadmap(engine, synthetic_framework(CLEAN, 12))
    submit_roadmap(engine, synthetic_framework(FAILING, 12))
    terminal = {TaskStatus.COMPLETED.value, TaskStatus.PARTIAL_FAILURE.value}
    wait_for(
        lambda: all(task_status(engine, r).status in terminal for r in (CLEAN, FAILING)),
        timeout_s=300,
        every_s=2,
        what="both tasks to settle: " + deployment.logs("daemon")[-2000:],
    )
    instance = deployment.instance

    clean = task_status(engine, CLEAN)
    assert clean.status == TaskStatus.COMPLETED
    assert set(partition_statuses(instance, QUIZ, CLEAN).values()) == {"MATERIALIZED"}
    assert set(partition_statuses(instance, FRAMEWORK_ENTRY, CLEAN).values()) == {"MATERIALIZED"}

    failing = task_status(engine, FAILING)
    assert failing.status == TaskStatus.PARTIAL_FAILURE
    assert {f["concept_id"] for f in failing.failed_concepts} == {
        key.replace("/", ":", 1) for key in FAILING_CONCEPTS
    }
    quiz = partition_statuses(instance, QUIZ, FAILING)
    assert {k for k, s in quiz.items() if s == "FAILED"} == set(FAILING_CONCEPTS)
    assert sum(1 for s in quiz.values() if s == "MATERIALIZED") == 9
    assert set(partition_statuses(instance, TUTORIAL, FAILING).values()) == {"MATERIALIZED"}
    with connect(engine) as conn:
        assert find_violations(conn, Scope.fleet(), NothingRunning()) == []
        rows = conn.execute(text("SELECT COUNT(*) FROM quiz_metadata")).scalar_one()
    assert rows == 12 + 9
    runs = instance.get_runs(filters=dg.RunsFilter(tags={"roadmap_pipeline/roadmap": CLEAN}))
    described = [(r.run_id[:8], r.status.value, r.tags) for r in runs]
    assert len(runs) == 1, described  # one run for a whole roadmap, roll-up included
    engine.dispose()


def test_the_fleet_check_schedule_ticks_and_reports_a_planted_violation(
    deployment: Deployment, data_url: str
) -> None:
    instance = deployment.instance
    engine = create_store_engine(data_url)
    wait_for(
        lambda: task_status(engine, CLEAN).status == TaskStatus.COMPLETED,
        timeout_s=300,
        what="the clean roadmap to complete",
    )
    # The service regenerates a tutorial behind the pipeline's back (a new latest version, the
    # old one demoted) and never updates framework_data: the incident's shape, on one concept.
    concept = f"{CLEAN}:c-1-1-1"
    with connect(engine) as conn, conn.begin():
        conn.execute(
            text("UPDATE tutorial_metadata SET is_latest = false WHERE concept_id = :c"),
            {"c": concept},
        )
        conn.execute(
            text(
                "INSERT INTO tutorial_metadata (tutorial_id, roadmap_id, concept_id, title, "
                "summary, content_url, content_status, content_version, is_latest, "
                "estimated_completion_time, generated_at) VALUES ('service-made-v2', :r, :c, "
                "'t', 's', :u, 'completed', 2, true, 30, now() AT TIME ZONE 'utc')"
            ),
            {"r": CLEAN, "c": concept, "u": f"{CLEAN}/concepts/{concept}/v2.md"},
        )
    planted_at = time.time()

    def failed_evaluation() -> Any:
        record = instance.event_log_storage.get_latest_asset_check_execution_by_key(
            [FLEET_CHECK_KEY]
        ).get(FLEET_CHECK_KEY)
        if record is None or record.event is None or record.event.timestamp < planted_at:
            return None
        evaluation = record.event.dagster_event.event_specific_data
        return evaluation if getattr(evaluation, "passed", None) is False else None

    evaluation = wait_for(
        failed_evaluation, timeout_s=200, every_s=3, what="a failing scheduled fleet check"
    )
    metadata = {k: getattr(v, "value", v) for k, v in evaluation.metadata.items()}
    assert metadata["counts_by_rule"] == {"ref_mismatch": 1}
    assert metadata["violating_roadmap_ids"] == [CLEAN]
    assert metadata["repairable_roadmaps"] == [CLEAN]
    schedule_runs = instance.get_runs(filters=dg.RunsFilter(job_name="fleet_consistency_check"))
    assert schedule_runs
    assert all(
        r.tags.get("dagster/schedule_name") == "fleet_consistency_schedule" for r in schedule_runs
    )
    engine.dispose()

"""The incident, rebuilt in a database shaped like the service's: verify sees exactly it, repair
settles it, and the 81 rows learners read are untouched."""

from __future__ import annotations

import json
from typing import Any

from click.testing import CliRunner
from sqlalchemy import Engine

from roadmap_pipeline.cli import main
from roadmap_pipeline.domain.keys import short_concept_id
from roadmap_pipeline.samples import INCIDENT_ROADMAP, INCIDENT_TASK, IncidentState
from roadmap_pipeline.store.activity import NothingRunning
from roadmap_pipeline.store.invariants import Scope
from roadmap_pipeline.store.repair import repair
from roadmap_pipeline_tests.store.helpers import (
    concept_ids,
    keys,
    node,
    read_document,
    scalar,
    snapshot,
    task_row,
    verify,
)

ITEMS = ("tutorial", "resources", "quiz")
CONTENT_TABLES = ("tutorial_metadata", "resource_recommendation_metadata", "quiz_metadata")
ID_COLUMNS = {"tutorial": "tutorial_id", "resources": "id", "quiz": "quiz_id"}
TABLES = dict(zip(ITEMS, CONTENT_TABLES, strict=True))


def expected_findings(state: IncidentState) -> set[Any]:
    unmarked = {
        (INCIDENT_ROADMAP, c, item, "item_not_marked")
        for c in state.completed_concepts
        for item in ITEMS
    }
    zombies = {
        (INCIDENT_ROADMAP, c, item, "zombie_status")
        for c in state.missing_concepts
        for item in ITEMS
    }
    return unmarked | zombies | {(INCIDENT_ROADMAP, None, None, "zombie_status")}


def assert_settled(engine: Engine, state: IncidentState) -> None:
    document = read_document(engine, INCIDENT_ROADMAP)
    assert len(concept_ids(document)) == 30
    for concept_id in state.completed_concepts:
        entry = node(document, concept_id)
        for item in ITEMS:
            row_id = scalar(
                engine,
                f"SELECT CAST({ID_COLUMNS[item]} AS TEXT) FROM {TABLES[item]} "
                "WHERE concept_id = :c",
                c=concept_id,
            )
            status_key = "content_status" if item == "tutorial" else f"{item}_status"
            ref_key = {"tutorial": "tutorial_id", "resources": "resources_id", "quiz": "quiz_id"}
            assert (entry[status_key], entry[ref_key[item]]) == ("completed", row_id)
        assert entry["content_ref"] == f"{INCIDENT_ROADMAP}/concepts/{concept_id}/v1.md"
        assert entry["content_version"] == "v1"
    for concept_id in state.missing_concepts:
        entry = node(document, concept_id)
        assert [entry["content_status"], entry["resources_status"], entry["quiz_status"]] == [
            "failed"
        ] * 3
    task = task_row(engine, INCIDENT_TASK)
    assert task.status == "partial_failure"
    assert [f["concept_id"] for f in task.failed_concepts] == state.missing_concepts
    assert all(f["items"] == list(ITEMS) for f in task.failed_concepts)
    assert verify(engine) == []


def test_verify_sees_the_incident_and_repair_settles_it(
    service_engine: Engine, service_incident: IncidentState
) -> None:
    state = service_incident
    assert (len(state.completed_concepts), len(state.missing_concepts)) == (27, 3)
    rows = snapshot(service_engine, CONTENT_TABLES)
    assert {name: len(r) for name, r in rows.items()} == dict.fromkeys(CONTENT_TABLES, 27)

    found = verify(service_engine)

    assert keys(found) == expected_findings(state)
    assert len(found) == 81 + 9 + 1
    task_zombie = next(v for v in found if v.concept_id is None)
    assert task_zombie.detail.startswith(f"task {INCIDENT_TASK} is processing")
    assert "nothing is taken to be queued or running" in task_zombie.detail

    report = repair(service_engine, Scope.fleet(), NothingRunning())

    assert [(t.task_id, t.before, t.after) for t in report.tasks] == [
        (INCIDENT_TASK, "processing", "partial_failure")
    ]
    assert (report.needs_human, report.remaining, report.demoted) == ([], [], [])
    assert snapshot(service_engine, CONTENT_TABLES) == rows  # same ids, same content
    assert_settled(service_engine, state)


def test_the_incident_through_the_cli(
    service_engine: Engine, service_incident: IncidentState, database_url: str
) -> None:
    state = service_incident
    env = {"ROADMAP_DATABASE_URL": database_url, "COLUMNS": "250"}
    runner = CliRunner()
    rows = snapshot(service_engine, CONTENT_TABLES)

    verified = runner.invoke(main, ["verify", "--json"], env=env)
    before_dry = snapshot(service_engine, (*CONTENT_TABLES, "roadmap_metadata", "roadmap_tasks"))
    dry = runner.invoke(main, ["repair", "--roadmap", INCIDENT_ROADMAP, "--dry-run"], env=env)
    status_after_dry = task_row(service_engine, INCIDENT_TASK).status
    after_dry = snapshot(service_engine, (*CONTENT_TABLES, "roadmap_metadata", "roadmap_tasks"))
    repaired = runner.invoke(main, ["repair", "--roadmap", INCIDENT_ROADMAP], env=env)
    clean = runner.invoke(main, ["verify", "--roadmap", INCIDENT_ROADMAP], env=env)

    assert verified.exit_code == 1
    listed = json.loads(verified.stdout)
    assert {(v["roadmap_id"], v["concept_id"], v["item"], v["rule"]) for v in listed} == (
        expected_findings(state)
    )
    assert "nothing is taken to be queued or running" in verified.stderr
    assert dry.exit_code == 1, dry.output
    assert "dry run: nothing was written" in dry.stdout
    assert "processing -> partial_failure" in dry.stdout
    assert status_after_dry == "processing"
    assert after_dry == before_dry
    assert repaired.exit_code == 0, repaired.output
    for concept_id in state.missing_concepts:
        assert short_concept_id(INCIDENT_ROADMAP, concept_id) in repaired.stdout
    assert "left: no violations" in repaired.stdout
    assert "No content row was deleted" in repaired.stdout
    assert clean.exit_code == 0
    assert "no violations" in clean.stdout
    assert snapshot(service_engine, CONTENT_TABLES) == rows
    assert_settled(service_engine, state)

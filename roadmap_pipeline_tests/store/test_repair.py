"""Repair: set-based over batches of roadmaps, honest about what it changed and what it left."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from sqlalchemy import Engine

from roadmap_pipeline.store import sync
from roadmap_pipeline.store.activity import NothingRunning
from roadmap_pipeline.store.invariants import Rule, Scope
from roadmap_pipeline.store.repair import repair
from roadmap_pipeline.store.schema import utcnow
from roadmap_pipeline_tests.store.helpers import (
    complete_roadmap,
    edit_document,
    execute,
    keys,
    node,
    read_document,
    scalar,
    snapshot,
    verify,
)

ROADMAPS = ("rm-1", "rm-2", "rm-3")
ALL = ("roadmap_metadata", "roadmap_tasks", "tutorial_metadata", "quiz_metadata")


def unmark(engine: Engine, roadmap_id: str, n: int = 1) -> None:
    edit_document(
        engine,
        roadmap_id,
        lambda doc: node(doc, f"{roadmap_id}:c-1-1-{n}").__setitem__("quiz_status", "pending"),
    )


@pytest.fixture
def fleet(engine: Engine) -> Engine:
    for roadmap_id in ROADMAPS:
        complete_roadmap(engine, roadmap_id, 3, task=True)
        unmark(engine, roadmap_id)
    return engine


def test_a_dry_run_writes_nothing_and_shows_what_the_repair_does(fleet: Engine) -> None:
    rows = snapshot(fleet, ALL)

    dry = repair(fleet, Scope.fleet(), NothingRunning(), dry_run=True)

    assert snapshot(fleet, ALL) == rows
    assert (dry.dry_run, dry.remaining, dry.clean) == (True, None, False)
    real = repair(fleet, Scope.fleet(), NothingRunning())
    assert (dry.entries, dry.tasks, dry.roadmaps) == (real.entries, real.tasks, real.roadmaps)
    assert real.roadmaps == list(ROADMAPS)
    assert {(e.roadmap_id, e.key, e.before, e.after) for e in real.entries} == {
        (r, "quiz_status", "pending", "completed") for r in ROADMAPS
    }
    assert [(t.roadmap_id, t.before, t.after) for t in real.tasks] == []
    assert (real.remaining, real.clean) == ([], True)


def test_batches_report_progress_and_repair_every_roadmap(fleet: Engine) -> None:
    calls: list[tuple[int, int]] = []

    report = repair(
        fleet, Scope.fleet(), NothingRunning(), batch_size=2, progress=lambda *a: calls.append(a)
    )

    assert calls == [(0, 3), (2, 3), (3, 3)]
    assert report.remaining == []


def test_a_roadmap_scope_repairs_only_that_roadmap(fleet: Engine) -> None:
    report = repair(fleet, Scope.roadmap("rm-2"), NothingRunning())

    assert report.roadmaps == ["rm-2"]
    assert report.remaining == []
    assert {v.roadmap_id for v in verify(fleet)} == {"rm-1", "rm-3"}


def test_one_roadmap_that_breaks_its_batch_does_not_stop_the_fleet(
    fleet: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = sync._sync_node

    def breaks_on_rm_2(roadmap_id: str, *args: Any) -> Any:
        if roadmap_id == "rm-2":
            raise ValueError("a value the database refuses")
        return original(roadmap_id, *args)

    monkeypatch.setattr(sync, "_sync_node", breaks_on_rm_2)

    report = repair(fleet, Scope.fleet(), NothingRunning(), batch_size=10)

    assert report.skipped == [
        "rm-2: could not be synced (ValueError: a value the database refuses)"
    ]
    assert keys(report.remaining or []) == {
        ("rm-2", "rm-2:c-1-1-1", "quiz", "item_not_marked"),
        ("rm-2", None, None, "task_status_mismatch"),  # completed, with an item still pending
    }
    assert node(read_document(fleet, "rm-1"), "rm-1:c-1-1-1")["quiz_status"] == "completed"


def test_what_needs_a_human_is_reported_and_left_untouched(fleet: Engine) -> None:
    raw = scalar(fleet, "SELECT questions FROM quiz_metadata WHERE concept_id = 'rm-3:c-1-1-2'")
    questions = raw if isinstance(raw, list) else json.loads(raw)
    questions[0]["correct_answer"] = [7]
    execute(
        fleet,
        "UPDATE quiz_metadata SET questions = :q WHERE concept_id = 'rm-3:c-1-1-2'",
        q=json.dumps(questions),
    )
    execute(
        fleet,
        "INSERT INTO tutorial_metadata (tutorial_id, roadmap_id, concept_id, title, summary, "
        "content_url, content_status, content_version, is_latest, estimated_completion_time, "
        "generated_at) VALUES (:id, 'rm-1', 'rm-1:gone', 't', 's', 'u', 'completed', 1, :yes, "
        "5, :t)",
        id=str(uuid.uuid4()),
        yes=True,
        t=utcnow(),
    )
    content = snapshot(fleet, ("tutorial_metadata", "quiz_metadata"))

    report = repair(fleet, Scope.fleet(), NothingRunning())

    assert keys(report.needs_human) == {
        ("rm-3", "rm-3:c-1-1-2", "quiz", "invalid_content"),
        ("rm-1", "rm-1:gone", "tutorial", "orphan_content"),
    }
    assert keys(report.remaining or []) == keys(report.needs_human)
    assert {v.rule for v in report.found} == {
        Rule.ITEM_NOT_MARKED,
        Rule.TASK_STATUS_MISMATCH,
        Rule.INVALID_CONTENT,
        Rule.ORPHAN_CONTENT,
    }
    assert snapshot(fleet, ("tutorial_metadata", "quiz_metadata")) == content

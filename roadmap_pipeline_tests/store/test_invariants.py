"""Each rule, planted alone, is reported exactly (roadmap, concept, item, rule); repair removes
the repairable ones and reports the others; scopes agree with each other."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Engine

from roadmap_pipeline.store.activity import ActiveWork, KnownWork, NothingRunning
from roadmap_pipeline.store.invariants import Rule, Scope
from roadmap_pipeline.store.repair import repair
from roadmap_pipeline.store.schema import utcnow
from roadmap_pipeline.store.writers import creation_task_id
from roadmap_pipeline_tests.store.helpers import (
    complete_roadmap,
    edit_document,
    execute,
    keys,
    node,
    read_document,
    scalar,
    snapshot,
    task_row,
    verify,
    write_document,
)

RID = "rm-a"
OTHER = "rm-b"


def cid(n: int, roadmap_id: str = RID) -> str:
    return f"{roadmap_id}:c-1-1-{n}"


@pytest.fixture
def fleet(engine: Engine) -> Engine:
    """Two complete, consistent roadmaps without tasks: a planted item-level violation is then
    the only finding (no task roll-up disagrees with it)."""
    for roadmap_id in (RID, OTHER):
        complete_roadmap(engine, roadmap_id, 4, task=False)
    return engine


@pytest.fixture
def tasked(engine: Engine) -> Engine:
    """One complete roadmap whose creation task is ``completed``."""
    complete_roadmap(engine, RID, 4, task=True)
    return engine


def set_key(engine: Engine, concept_id: str, key: str, value: Any, roadmap_id: str = RID) -> None:
    edit_document(engine, roadmap_id, lambda doc: node(doc, concept_id).__setitem__(key, value))


def row_id(engine: Engine, table: str, id_column: str, concept_id: str) -> str:
    return str(
        scalar(
            engine,
            f"SELECT CAST({id_column} AS TEXT) FROM {table} WHERE concept_id = :c",
            c=concept_id,
        )
    )


def test_a_clean_fleet_reports_nothing(engine: Engine) -> None:
    complete_roadmap(engine, RID, 4, task=True)
    complete_roadmap(engine, OTHER, 4, task=False)

    assert verify(engine) == []
    assert task_row(engine, creation_task_id(RID)).status == "completed"
    report = repair(engine, Scope.fleet(), NothingRunning())
    assert (report.found, report.remaining, report.changed) == ([], [], False)


def test_item_not_marked_is_seen_and_repaired(fleet: Engine) -> None:
    set_key(fleet, cid(2), "quiz_status", "generating")

    found = verify(fleet)

    assert keys(found) == {(RID, cid(2), "quiz", "item_not_marked")}
    assert "status is generating" in found[0].detail
    assert verify(fleet, activity=KnownWork(ActiveWork(roadmaps=frozenset({RID})))) == found
    report = repair(fleet, Scope.fleet(), NothingRunning())
    assert report.remaining == []
    assert node(read_document(fleet, RID), cid(2))["quiz_status"] == "completed"


def test_ref_missing_when_the_row_is_gone_and_repair_marks_the_item_failed(fleet: Engine) -> None:
    execute(fleet, "DELETE FROM quiz_metadata WHERE concept_id = :c", c=cid(2))

    found = verify(fleet)

    assert keys(found) == {(RID, cid(2), "quiz", "ref_missing")}
    assert found[0].detail == "status completed but no current row exists"
    assert repair(fleet, Scope.fleet(), NothingRunning()).remaining == []
    entry = node(read_document(fleet, RID), cid(2))
    assert (entry["quiz_status"], entry["quiz_id"], entry["quiz_questions_count"]) == (
        "failed",
        None,
        None,
    )


def test_ref_missing_when_the_reference_points_nowhere(fleet: Engine) -> None:
    set_key(fleet, cid(3), "resources_id", "no-such-row")

    found = verify(fleet)

    assert keys(found) == {(RID, cid(3), "resources", "ref_missing")}
    assert found[0].detail == "references no-such-row, which does not exist"
    repair(fleet, Scope.fleet(), NothingRunning())
    assert node(read_document(fleet, RID), cid(3))["resources_id"] == row_id(
        fleet, "resource_recommendation_metadata", "id", cid(3)
    )


@pytest.mark.parametrize(
    ("key", "item", "value", "detail"),
    [
        ("content_ref", "tutorial", "elsewhere.md", "content_ref is elsewhere.md, the row says "),
        ("content_version", "tutorial", "v9", "content_version is v9, the row says v1"),
        ("resources_count", "resources", 99, "resources_count is 99, the row says "),
        ("quiz_questions_count", "quiz", 0, "quiz_questions_count is 0, the row says "),
    ],
)
def test_ref_mismatch_on_each_mirrored_value(
    fleet: Engine, key: str, item: str, value: Any, detail: str
) -> None:
    before = read_document(fleet, RID)
    set_key(fleet, cid(4), key, value)

    found = verify(fleet)

    assert keys(found) == {(RID, cid(4), item, "ref_mismatch")}
    assert found[0].detail.startswith(detail)
    assert repair(fleet, Scope.fleet(), NothingRunning()).remaining == []
    assert read_document(fleet, RID) == before


def test_ref_mismatch_when_an_older_version_is_referenced(fleet: Engine) -> None:
    from roadmap_pipeline.samples import write_concept_rows

    old_id = row_id(fleet, "tutorial_metadata", "tutorial_id", cid(1))
    write_concept_rows(fleet, read_document(fleet, RID), [cid(1)], attempt="second")

    found = verify(fleet)

    new_id = str(
        scalar(
            fleet,
            "SELECT CAST(tutorial_id AS TEXT) FROM tutorial_metadata "
            "WHERE concept_id = :c AND is_latest",
            c=cid(1),
        )
    )
    # resources and quiz were replaced in place (same ids, maybe other counts): only the tutorial
    # reference is stale for sure
    assert (RID, cid(1), "tutorial", "ref_mismatch") in keys(found)
    assert any(f"references {old_id} but the current row is {new_id}" == v.detail for v in found)
    assert repair(fleet, Scope.fleet(), NothingRunning()).remaining == []
    assert node(read_document(fleet, RID), cid(1))["content_version"] == "v2"


def test_orphan_rows_are_reported_and_left_for_a_human(fleet: Engine) -> None:
    for roadmap_id, concept_id in ((RID, "ghost"), ("rm-gone", "rm-gone:c1")):
        execute(
            fleet,
            "INSERT INTO quiz_metadata (quiz_id, roadmap_id, concept_id, questions, "
            "total_questions, easy_count, medium_count, hard_count, generated_at) "
            "VALUES (:id, :r, :c, :q, 0, 0, 0, 0, :t)",
            id=str(uuid.uuid4()),
            r=roadmap_id,
            c=concept_id,
            q="[]",
            t=utcnow(),
        )
    before = snapshot(fleet)

    expected = {
        (RID, "ghost", "quiz", "orphan_content"),
        ("rm-gone", "rm-gone:c1", "quiz", "orphan_content"),
    }
    assert keys(verify(fleet)) == expected
    report = repair(fleet, Scope.fleet(), NothingRunning())
    assert keys(report.needs_human) == expected
    assert keys(report.remaining or []) == expected
    assert not report.changed
    assert snapshot(fleet) == before


def _quiz_questions(engine: Engine, concept_id: str) -> list[dict[str, Any]]:
    raw = scalar(engine, "SELECT questions FROM quiz_metadata WHERE concept_id = :c", c=concept_id)
    return raw if isinstance(raw, list) else json.loads(raw)


@pytest.mark.parametrize(
    ("plant", "item", "detail"),
    [
        (
            lambda q: q[0].__setitem__("correct_answer", [9]),
            "quiz",
            "question #1: correct_answer [9] does not index its",
        ),
        (
            lambda q: q[0].update(question_type="single_choice", correct_answer=[0, 1]),
            "quiz",
            "question #1: a single_choice question has 2 answers",
        ),
    ],
)
def test_invalid_quiz_content_is_reported_and_left_for_a_human(
    fleet: Engine, plant: Callable[[list[dict[str, Any]]], None], item: str, detail: str
) -> None:
    questions = _quiz_questions(fleet, cid(2))
    plant(questions)
    execute(
        fleet,
        "UPDATE quiz_metadata SET questions = :q WHERE concept_id = :c",
        q=json.dumps(questions),
        c=cid(2),
    )
    before = snapshot(fleet)

    found = verify(fleet)

    assert keys(found) == {(RID, cid(2), item, "invalid_content")}
    assert detail in found[0].detail
    report = repair(fleet, Scope.fleet(), NothingRunning())
    assert keys(report.needs_human) == keys(found)
    assert report.remaining == found
    assert snapshot(fleet) == before


def test_invalid_resources_and_counts_are_reported(fleet: Engine) -> None:
    raw = scalar(
        fleet,
        "SELECT resources FROM resource_recommendation_metadata WHERE concept_id = :c",
        c=cid(1),
    )
    resources = raw if isinstance(raw, list) else json.loads(raw)
    resources[1]["relevance_score"] = 1.5
    execute(
        fleet,
        "UPDATE resource_recommendation_metadata SET resources = :r WHERE concept_id = :c",
        r=json.dumps(resources),
        c=cid(1),
    )
    execute(
        fleet,
        "UPDATE quiz_metadata SET easy_count = easy_count + 1 WHERE concept_id = :c",
        c=cid(3),
    )

    found = verify(fleet)

    assert keys(found) == {
        (RID, cid(1), "resources", "invalid_content"),
        (RID, cid(3), "quiz", "invalid_content"),
    }
    details = sorted(v.detail.split(": ", 1)[1] for v in found)
    assert details[0].startswith("counts (total ")
    assert details[1] == "resource #2: relevance_score 1.5 is not within 0..1"


def _allow_null(engine: Engine, table: str, column: str) -> None:
    """Make a column nullable, as a service database built without migrations may have it."""
    if engine.dialect.name == "postgresql":
        execute(engine, f"ALTER TABLE {table} ALTER COLUMN {column} DROP NOT NULL")
        return
    # SQLite cannot drop NOT NULL; a copy made by CREATE TABLE AS has no constraints.
    execute(engine, f"CREATE TABLE nullable_copy AS SELECT * FROM {table}")
    execute(engine, f"DROP TABLE {table}")
    execute(engine, f"ALTER TABLE nullable_copy RENAME TO {table}")


def test_a_null_document_is_not_a_list_on_both_dialects(fleet: Engine) -> None:
    """A quiz or resources row whose document is SQL NULL breaks invariant 7 the same way on
    SQLite and PostgreSQL (there, through the IS NULL partial indexes the indexed check reads)."""
    _allow_null(fleet, "quiz_metadata", "questions")
    _allow_null(fleet, "resource_recommendation_metadata", "resources")
    execute(fleet, "UPDATE quiz_metadata SET questions = NULL WHERE concept_id = :c", c=cid(2))
    execute(
        fleet,
        "UPDATE resource_recommendation_metadata SET resources = NULL WHERE concept_id = :c",
        c=cid(3),
    )

    found = verify(fleet)

    assert keys(found) == {
        (RID, cid(2), "quiz", "invalid_content"),
        (RID, cid(3), "resources", "invalid_content"),
    }
    assert sorted(v.detail.split(": ", 1)[1] for v in found) == [
        "questions is not a list",
        "resources is not a list",
    ]


def test_zombie_items_are_judged_by_the_activity_seam(fleet: Engine) -> None:
    for table in ("tutorial_metadata", "resource_recommendation_metadata", "quiz_metadata"):
        execute(fleet, f"DELETE FROM {table} WHERE concept_id = :c", c=cid(3))

    def generating(doc: dict[str, Any]) -> None:
        entry = node(doc, cid(3))
        for key in ("content_status", "resources_status", "quiz_status"):
            entry[key] = "generating"
        for key in ("tutorial_id", "resources_id", "quiz_id"):
            entry[key] = None

    edit_document(fleet, RID, generating)
    running = KnownWork(ActiveWork(concepts=frozenset({(RID, "c-1-1-3")})), "test runs")

    found = verify(fleet)

    assert keys(found) == {
        (RID, cid(3), item, "zombie_status") for item in ("tutorial", "resources", "quiz")
    }
    assert all(v.detail.endswith(f"({NothingRunning().describe()})") for v in found)
    assert verify(fleet, activity=running) == []
    busy = repair(fleet, Scope.fleet(), running)
    assert (busy.found, busy.changed) == ([], False)
    assert repair(fleet, Scope.fleet(), NothingRunning()).remaining == []
    entry = node(read_document(fleet, RID), cid(3))
    assert [entry[k] for k in ("content_status", "resources_status", "quiz_status")] == [
        "failed"
    ] * 3


def test_pending_items_of_a_queued_task_are_not_zombies(engine: Engine) -> None:
    from roadmap_pipeline.samples import synthetic_framework
    from roadmap_pipeline.store.writers import submit_roadmap

    submit_roadmap(engine, synthetic_framework(RID, 3))  # a pending creation task: queued work

    assert verify(engine) == []
    assert repair(engine, Scope.fleet(), NothingRunning()).found == []


# --- task status (invariant 6) ---------------------------------------------------------------


def set_task(engine: Engine, **values: Any) -> None:
    assignments = ", ".join(f"{k} = :{k}" for k in values)
    execute(
        engine,
        f"UPDATE roadmap_tasks SET {assignments} WHERE task_id = :task_id",
        task_id=creation_task_id(RID),
        **values,
    )


def test_a_terminal_task_that_disagrees_is_rolled_up(tasked: Engine) -> None:
    set_task(tasked, status="partial_failure", failed_concepts="[]")

    found = verify(tasked)

    assert keys(found) == {(RID, None, None, "task_status_mismatch")}
    assert found[0].detail.endswith("is partial_failure but its items say completed")
    report = repair(tasked, Scope.fleet(), NothingRunning())
    assert [(t.before, t.after) for t in report.tasks] == [("partial_failure", "completed")]
    task = task_row(tasked, creation_task_id(RID))
    assert (task.status, task.failed_concepts, report.remaining) == ("completed", [], [])


def test_a_completed_task_with_a_failed_item_becomes_partial_failure(tasked: Engine) -> None:
    execute(tasked, "DELETE FROM quiz_metadata WHERE concept_id = :c", c=cid(2))
    set_key(tasked, cid(2), "quiz_status", "failed")
    set_key(tasked, cid(2), "quiz_id", None)
    set_key(tasked, cid(2), "quiz_questions_count", None)

    assert keys(verify(tasked)) == {(RID, None, None, "task_status_mismatch")}
    assert repair(tasked, Scope.fleet(), NothingRunning()).remaining == []
    task = task_row(tasked, creation_task_id(RID))
    assert task.status == "partial_failure"
    assert task.failed_concepts == [{"concept_id": cid(2), "items": ["quiz"]}]
    assert cid(2) in task.error_message


def test_failed_concepts_must_name_exactly_the_failed_ones(tasked: Engine) -> None:
    execute(tasked, "DELETE FROM quiz_metadata WHERE concept_id = :c", c=cid(2))
    set_key(tasked, cid(2), "quiz_status", "failed")
    set_key(tasked, cid(2), "quiz_id", None)
    set_key(tasked, cid(2), "quiz_questions_count", None)
    set_task(tasked, status="partial_failure", failed_concepts=json.dumps(["c-1-1-4"]))

    found = verify(tasked)

    assert keys(found) == {(RID, None, None, "task_status_mismatch")}
    assert sorted(v.detail.split(" failed_concepts ")[1].split(",")[0] for v in found) == [
        "lacks 1 failed concept(s)",
        "names 1 concept(s) that did not fail",
    ]
    assert repair(tasked, Scope.fleet(), NothingRunning()).remaining == []
    assert task_row(tasked, creation_task_id(RID)).failed_concepts == [
        {"concept_id": cid(2), "items": ["quiz"]}
    ]


def test_processing_with_everything_done_is_a_mismatch_and_a_zombie(tasked: Engine) -> None:
    set_task(tasked, status="processing")

    found = verify(tasked)

    assert keys(found) == {
        (RID, None, None, "task_status_mismatch"),
        (RID, None, None, "zombie_status"),
    }
    running = KnownWork(ActiveWork(roadmaps=frozenset({RID})))
    assert keys(verify(tasked, activity=running)) == {(RID, None, None, "task_status_mismatch")}
    assert repair(tasked, Scope.fleet(), NothingRunning()).remaining == []
    assert task_row(tasked, creation_task_id(RID)).status == "completed"


def test_a_terminal_task_whose_items_still_have_work_is_a_mismatch(tasked: Engine) -> None:
    execute(tasked, "DELETE FROM quiz_metadata WHERE concept_id = :c", c=cid(2))
    set_key(tasked, cid(2), "quiz_status", "generating")
    running = KnownWork(ActiveWork(concepts=frozenset({(RID, "c-1-1-2")})))

    found = verify(tasked, activity=running)

    assert keys(found) == {(RID, None, None, "task_status_mismatch")}
    assert found[0].detail.endswith("is completed but 1 item(s) still have work")


# --- several rows claim to be current (adopted databases have no unique constraints) --------


def insert_tutorial(engine: Engine, concept_id: str, version: int, latest: bool) -> str:
    tutorial_id = str(uuid.uuid4())
    execute(
        engine,
        "INSERT INTO tutorial_metadata (tutorial_id, roadmap_id, concept_id, title, summary, "
        "content_url, content_status, content_version, is_latest, estimated_completion_time, "
        "generated_at) VALUES (:id, :r, :c, 'old', 'old', :url, 'completed', :v, :latest, 10, :t)",
        id=tutorial_id,
        r=RID,
        c=concept_id,
        url=f"{RID}/concepts/{concept_id}/v{version}-copy.md",
        v=version,
        latest=latest,
        t=utcnow() - timedelta(days=30),
    )
    return tutorial_id


def duplicate_row(engine: Engine, table: str, id_column: str, concept_id: str) -> str:
    """A copy of the concept's row under a new id, generated a month earlier."""
    columns = {
        "resource_recommendation_metadata": "resources, resources_count, search_queries_used",
        "quiz_metadata": "questions, total_questions, easy_count, medium_count, hard_count",
    }[table]
    new_id = str(uuid.uuid4())
    postgres = engine.dialect.name == "postgresql"
    id_value = "CAST(:id AS uuid)" if postgres and id_column != "x" else ":id"
    execute(
        engine,
        f"INSERT INTO {table} ({id_column}, roadmap_id, concept_id, {columns}, generated_at) "
        f"SELECT {id_value}, roadmap_id, concept_id, {columns}, :t FROM {table} "
        "WHERE concept_id = :c",
        id=new_id,
        c=concept_id,
        t=utcnow() - timedelta(days=30),
    )
    return new_id


@pytest.fixture
def adopted(adopt: Callable[[Callable[[Engine], None]], Engine]) -> Engine:
    return adopt(lambda scratch: complete_roadmap(scratch, RID, 4, task=False) and None)


def test_two_latest_tutorials_are_repaired_by_demoting_the_lower_version(adopted: Engine) -> None:
    extra = insert_tutorial(adopted, cid(2), version=0, latest=True)
    before = snapshot(adopted)

    found = verify(adopted)

    assert keys(found) == {(RID, cid(2), "tutorial", "multiple_current")}
    assert found[0].detail == "2 rows are current"
    report = repair(adopted, Scope.fleet(), NothingRunning())
    assert [(d.tutorial_id, d.version) for d in report.demoted] == [(extra, 0)]
    assert (report.needs_human, report.remaining) == ([], [])
    after = snapshot(adopted)
    changed = [row for row in after["tutorial_metadata"] if row not in before["tutorial_metadata"]]
    assert [row[0] for row in changed] == [extra]  # only is_latest of that row changed
    assert (
        scalar(adopted, "SELECT COUNT(*) FROM tutorial_metadata WHERE concept_id = :c", c=cid(2))
        == 2
    )


@pytest.mark.parametrize(
    ("table", "id_column", "item"),
    [
        ("resource_recommendation_metadata", "id", "resources"),
        ("quiz_metadata", "quiz_id", "quiz"),
    ],
)
def test_duplicate_resources_or_quiz_rows_are_left_for_a_human(
    adopted: Engine, table: str, id_column: str, item: str
) -> None:
    duplicate_row(adopted, table, id_column, cid(3))
    before = snapshot(adopted)

    found = verify(adopted)

    assert keys(found) == {(RID, cid(3), item, "multiple_current")}
    report = repair(adopted, Scope.fleet(), NothingRunning())
    assert (report.needs_human, report.remaining, report.changed) == (found, found, False)
    assert snapshot(adopted) == before


def test_a_tutorial_version_stored_twice_is_left_for_a_human(adopted: Engine) -> None:
    insert_tutorial(adopted, cid(1), version=1, latest=False)
    before = snapshot(adopted)

    found = verify(adopted)

    assert keys(found) == {(RID, cid(1), "tutorial", "multiple_current")}
    assert found[0].detail == "version v1 is stored 2 times"
    report = repair(adopted, Scope.fleet(), NothingRunning())
    assert report.remaining == found == report.needs_human
    assert snapshot(adopted) == before


# --- malformed documents -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("document", "detail"),
    [
        ([], "framework_data is not an object with a stages list"),
        ({"stages": "oops"}, "framework_data is not an object with a stages list"),
        ({"stages": [{"stage_id": "s"}]}, "stage #1 has no modules list"),
        ({"stages": [{"modules": [{"concepts": {}}]}]}, "stage #1 module #1 has no concepts list"),
        ({"stages": [{"modules": [{"concepts": [{"x": 1}]}]}]}, "has no concept_id"),
    ],
)
def test_a_malformed_document_is_reported_without_breaking_the_fleet(
    fleet: Engine, document: Any, detail: str
) -> None:
    write_document(fleet, OTHER, document)
    set_key(fleet, cid(2), "quiz_status", "pending")

    found = verify(fleet)

    assert keys(found) == {
        (OTHER, None, None, "malformed_framework"),
        (RID, cid(2), "quiz", "item_not_marked"),
    }
    assert detail in next(v.detail for v in found if v.roadmap_id == OTHER)
    report = repair(fleet, Scope.fleet(), NothingRunning())
    assert keys(report.remaining or []) == {(OTHER, None, None, "malformed_framework")}
    assert read_document(fleet, OTHER) == document
    assert node(read_document(fleet, RID), cid(2))["quiz_status"] == "completed"


def test_an_unparseable_sqlite_document_is_reported_without_breaking_the_fleet(
    tmp_path: Any,
) -> None:
    from roadmap_pipeline.store.database import create_store_engine
    from roadmap_pipeline.store.migrate import init_db

    engine = create_store_engine(f"sqlite:///{tmp_path / 'text.db'}")
    init_db(engine)
    for roadmap_id in (RID, OTHER):
        complete_roadmap(engine, roadmap_id, 3, task=False)
    execute(
        engine,
        "UPDATE roadmap_metadata SET framework_data = '{not json' WHERE roadmap_id = :r",
        r=OTHER,
    )
    set_key(engine, cid(1), "content_status", "pending")

    found = verify(engine)

    assert keys(found) == {
        (OTHER, None, None, "malformed_framework"),
        (RID, cid(1), "tutorial", "item_not_marked"),
    }
    report = repair(engine, Scope.fleet(), NothingRunning(), batch_size=10)
    assert keys(report.remaining or []) == {(OTHER, None, None, "malformed_framework")}
    engine.dispose()


# --- scopes ----------------------------------------------------------------------------------


def test_fleet_roadmap_and_concept_scopes_agree(engine: Engine) -> None:
    complete_roadmap(engine, RID, 4, task=True)
    complete_roadmap(engine, OTHER, 4, task=True)
    execute(engine, "DELETE FROM quiz_metadata WHERE concept_id = :c", c=cid(2))
    set_key(engine, cid(2), "quiz_status", "failed")
    set_key(engine, cid(3), "content_status", "pending")
    set_key(engine, cid(1, OTHER), "resources_count", 42, roadmap_id=OTHER)
    set_key(engine, cid(4, OTHER), "content_status", "generating", roadmap_id=OTHER)
    execute(engine, "DELETE FROM tutorial_metadata WHERE concept_id = :c", c=cid(4, OTHER))

    fleet = verify(engine)

    assert {v.rule for v in fleet} >= {
        Rule.TASK_STATUS_MISMATCH,
        Rule.ITEM_NOT_MARKED,
        Rule.REF_MISMATCH,
        Rule.ZOMBIE_STATUS,
    }
    assert verify(engine, Scope.roadmaps([RID, OTHER])) == fleet
    for roadmap_id in (RID, OTHER):
        in_roadmap = [v for v in fleet if v.roadmap_id == roadmap_id]
        assert verify(engine, Scope.roadmap(roadmap_id)) == in_roadmap
        for n in range(1, 5):
            concept_id = cid(n, roadmap_id)
            expected = [v for v in in_roadmap if v.concept_id == concept_id]
            assert verify(engine, Scope.concept(roadmap_id, concept_id)) == expected


def test_a_quiz_with_several_bad_questions_names_the_first_and_counts_the_rest(
    fleet: Engine,
) -> None:
    questions = _quiz_questions(fleet, cid(4))
    questions[1]["correct_answer"] = ["b"]
    questions[2]["question_type"] = "essay"
    questions[3]["options"] = "not a list"
    execute(
        fleet,
        "UPDATE quiz_metadata SET questions = :q WHERE concept_id = :c",
        q=json.dumps(questions),
        c=cid(4),
    )

    found = verify(fleet)

    row = row_id(fleet, "quiz_metadata", "quiz_id", cid(4))
    assert [v.detail for v in found] == [
        f'row {row}: question #2: correct_answer ["b"] does not index its 4 options (and 2 more)'
    ]


def test_the_constrained_statement_finds_what_the_general_one_finds(engine: Engine) -> None:
    from sqlalchemy import String, bindparam, text

    from roadmap_pipeline.store.database import connect
    from roadmap_pipeline.store.invariants import enforces_uniqueness, rules_statement

    complete_roadmap(engine, RID, 4, task=True)
    execute(engine, "DELETE FROM quiz_metadata WHERE concept_id = :c", c=cid(2))
    set_key(engine, cid(3), "content_status", "pending")
    set_key(engine, cid(4), "resources_count", 42)
    execute(
        engine,
        "UPDATE tutorial_metadata SET is_latest = :no WHERE concept_id = :c",
        no=False,
        c=cid(1),
    )  # versions, none of them latest
    execute(
        engine,
        "INSERT INTO quiz_metadata (quiz_id, roadmap_id, concept_id, questions, total_questions, "
        "easy_count, medium_count, hard_count, generated_at) "
        "VALUES ('orphan-quiz', :r, 'ghost', '[]', 0, 0, 0, 0, :t)",
        r=RID,
        t=utcnow(),
    )

    with connect(engine) as conn:
        assert enforces_uniqueness(conn)
        results = []
        for constrained in (True, False):
            statement = text(
                rules_statement(conn.dialect.name, list(Rule), constrained)
            ).bindparams(bindparam("roadmap_ids", expanding=True, type_=String))
            rows = conn.execute(statement, Scope.fleet().params())
            results.append(sorted((tuple(r) for r in rows), key=repr))

    assert results[0] == results[1]
    assert {r[3] for r in results[0]} >= {
        "ref_missing",
        "item_not_marked",
        "ref_mismatch",
        "orphan_content",
        "task_status_mismatch",
    }


def test_an_adopted_database_is_checked_for_duplicates(adopted: Engine) -> None:
    from roadmap_pipeline.store.database import connect
    from roadmap_pipeline.store.invariants import enforces_uniqueness

    with connect(adopted) as conn:
        assert not enforces_uniqueness(conn)


def _plant_one_of_each(engine: Engine) -> None:
    """Five roadmaps (so that slices have several each), with repairable, human and orphan
    findings spread over them, invalid content included."""
    for n in range(5):
        complete_roadmap(engine, f"rm-{n}", 3, task=True)
    execute(engine, "DELETE FROM quiz_metadata WHERE concept_id = :c", c=cid(2, "rm-0"))
    set_key(engine, cid(1, "rm-1"), "content_status", "pending", roadmap_id="rm-1")
    execute(
        engine,
        "UPDATE quiz_metadata SET easy_count = easy_count + 1 WHERE concept_id = :c",
        c=cid(3, "rm-2"),
    )
    raw = scalar(
        engine,
        "SELECT resources FROM resource_recommendation_metadata WHERE concept_id = :c",
        c=cid(1, "rm-3"),
    )
    resources = raw if isinstance(raw, list) else json.loads(raw)
    resources[0]["relevance_score"] = -2
    execute(
        engine,
        "UPDATE resource_recommendation_metadata SET resources = :r WHERE concept_id = :c",
        r=json.dumps(resources),
        c=cid(1, "rm-3"),
    )
    execute(
        engine,
        "INSERT INTO quiz_metadata (quiz_id, roadmap_id, concept_id, questions, total_questions, "
        "easy_count, medium_count, hard_count, generated_at) "
        "VALUES ('orphan-quiz', 'rm-4', 'ghost', '[]', 0, 0, 0, 0, :t)",
        t=utcnow(),
    )


@pytest.mark.parametrize("workers", [1, 2, 3, 7])
def test_the_fleet_checked_in_concurrent_slices_finds_what_one_statement_finds(
    engine: Engine, workers: int
) -> None:
    from roadmap_pipeline.store.invariants import find_fleet_violations

    _plant_one_of_each(engine)
    whole = verify(engine)
    assert {v.rule for v in whole} >= {
        Rule.REF_MISSING,
        Rule.ITEM_NOT_MARKED,
        Rule.INVALID_CONTENT,
        Rule.ORPHAN_CONTENT,
        Rule.TASK_STATUS_MISMATCH,
    }
    assert {v.roadmap_id for v in whole} == {f"rm-{n}" for n in range(5)}

    assert find_fleet_violations(engine, NothingRunning(), workers=workers) == whole


def test_postgres_content_checks_use_the_row_functions_and_find_the_same_rows(
    engine: Engine,
) -> None:
    """Migration 0005's partial indexes narrow invariant 7 to the rows the row functions flag;
    the statement that trusts them finds exactly what the one parsing every document finds,
    and a function whose body differs from today's rule is not trusted."""
    from sqlalchemy import String, bindparam, text

    from roadmap_pipeline.store.database import connect
    from roadmap_pipeline.store.invariants import content_checks_indexed, rules_statement
    from roadmap_pipeline.store.schema import QUIZ_CHECK_FUNCTION

    if engine.dialect.name != "postgresql":
        with connect(engine) as conn:
            assert not content_checks_indexed(conn)
        return
    _plant_one_of_each(engine)
    # A service database may hold NULLs where ours cannot: judged the same by both statements.
    _allow_null(engine, "quiz_metadata", "questions")
    _allow_null(engine, "quiz_metadata", "total_questions")
    execute(
        engine, "UPDATE quiz_metadata SET questions = NULL WHERE concept_id = :c", c=cid(1, "rm-4")
    )
    execute(
        engine,
        "UPDATE quiz_metadata SET total_questions = NULL WHERE concept_id = :c",
        c=cid(2, "rm-4"),
    )
    with connect(engine) as conn:
        assert content_checks_indexed(conn)
        results = []
        for indexed in (True, False):
            statement = text(
                rules_statement("postgresql", [Rule.INVALID_CONTENT], True, indexed)
            ).bindparams(bindparam("roadmap_ids", expanding=True, type_=String))
            rows = conn.execute(statement, Scope.fleet().params())
            results.append(sorted(tuple(r) for r in rows))
        assert results[0] == results[1]
        assert {(r[0], r[1], r[2]) for r in results[0]} == {
            ("rm-2", cid(3, "rm-2"), "quiz"),
            ("rm-3", cid(1, "rm-3"), "resources"),
            ("rm-4", cid(1, "rm-4"), "quiz"),  # questions is not a list (NULL)
            ("rm-4", cid(2, "rm-4"), "quiz"),  # counts (total null) differ from the questions
        }
        # Someone replaced the function under the index: the check stops trusting the index.
        conn.execute(
            text(
                f"CREATE OR REPLACE FUNCTION {QUIZ_CHECK_FUNCTION}(questions jsonb, "
                "total_questions integer, easy_count integer, medium_count integer, "
                "hard_count integer) RETURNS boolean LANGUAGE sql IMMUTABLE AS 'SELECT false'"
            )
        )
        assert not content_checks_indexed(conn)
        conn.rollback()


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_some_roadmaps_checked_in_concurrent_shares_find_what_one_statement_finds(
    engine: Engine, workers: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    from roadmap_pipeline.store import invariants

    # Shares of one roadmap, so that five roadmaps are enough to cut them up.
    monkeypatch.setattr(invariants, "MIN_ROADMAPS_PER_SHARE", 1)
    _plant_one_of_each(engine)
    some = ["rm-4", "rm-0", "rm-2", "rm-3"]
    expected = verify(engine, Scope.roadmaps(some))
    assert {v.roadmap_id for v in expected} == set(some)

    found = invariants.find_fleet_violations(
        engine, NothingRunning(), workers=workers, roadmap_ids=some
    )

    assert found == expected
    assert invariants.find_fleet_violations(engine, NothingRunning(), roadmap_ids=[]) == []

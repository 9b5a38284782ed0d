"""Every writer is one transaction and idempotent: replayed, or replayed after a crash halfway,
it leaves the same rows."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime
from typing import Any

import pytest
from sqlalchemy import Engine, event, update

from roadmap_pipeline.domain.content import QuizContent, ResourcesContent, TutorialContent
from roadmap_pipeline.domain.framework import FrameworkError, validate_submission
from roadmap_pipeline.domain.statuses import ItemType
from roadmap_pipeline.generation.generator import ConceptContext
from roadmap_pipeline.generation.offline import OfflineGenerator
from roadmap_pipeline.samples import synthetic_framework
from roadmap_pipeline.store.activity import NothingRunning
from roadmap_pipeline.store.schema import OWN_TABLE_NAMES, SERVICE_TABLE_NAMES, RoadmapMetadata
from roadmap_pipeline.store.sync import sync_concept, sync_roadmaps
from roadmap_pipeline.store.writers import (
    RoadmapConflict,
    UnknownConcept,
    UnknownRoadmap,
    find_generation,
    find_generations,
    save_item,
    submit_frameworks,
    submit_roadmap,
)
from roadmap_pipeline_tests.store.helpers import node, read_document, scalar, snapshot

RID = "rm-w"
CONCEPT = f"{RID}:c-1-1-2"
ALL_TABLES = (*SERVICE_TABLE_NAMES, *OWN_TABLE_NAMES)


class InjectedCrash(RuntimeError):
    pass


@contextmanager
def crash_before(engine: Engine, statement_prefix: str) -> Iterator[None]:
    """Raise inside the transaction right before a statement starting with the prefix runs."""

    def _crash(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith(statement_prefix.upper()):
            raise InjectedCrash(statement_prefix)

    event.listen(engine, "before_cursor_execute", _crash)
    try:
        yield
    finally:
        event.remove(engine, "before_cursor_execute", _crash)


def content(item: ItemType, concept_id: str = CONCEPT, variant: int = 0) -> Any:
    framework = validate_submission(synthetic_framework(RID, 3))
    context = ConceptContext.from_framework(framework, concept_id)
    generator = OfflineGenerator()
    made: Any = {
        ItemType.TUTORIAL: generator.tutorial,
        ItemType.RESOURCES: generator.resources,
        ItemType.QUIZ: generator.quiz,
    }[item](context)
    if variant and isinstance(made, TutorialContent):
        return made.model_copy(update={"markdown": made.markdown + f"\nrevision {variant}\n"})
    if variant and isinstance(made, QuizContent):
        return QuizContent(questions=made.questions[:-1])
    if variant and isinstance(made, ResourcesContent):
        return ResourcesContent(resources=made.resources[:-1], search_queries_used=["again"])
    return made


@pytest.fixture
def submitted(engine: Engine) -> Engine:
    submit_roadmap(engine, synthetic_framework(RID, 3))
    return engine


def test_submitting_twice_writes_the_roadmap_and_its_task_once(engine: Engine) -> None:
    document = synthetic_framework(RID, 3)
    first = submit_roadmap(engine, document)
    rows = snapshot(engine, ALL_TABLES)

    again = submit_roadmap(engine, document)

    assert (first.created, again.created, first.task_id) == (True, False, again.task_id)
    assert snapshot(engine, ALL_TABLES) == rows
    assert read_document(engine, RID) == document  # stored exactly, unknown keys included


def test_a_different_document_under_the_same_id_is_refused(submitted: Engine) -> None:
    rows = snapshot(submitted, ALL_TABLES)
    changed = synthetic_framework(RID, 4)

    with pytest.raises(RoadmapConflict, match="already exists with a different document"):
        submit_roadmap(submitted, changed)
    assert snapshot(submitted, ALL_TABLES) == rows


def test_a_batch_of_submissions_is_written_whole_or_not_at_all(engine: Engine) -> None:
    submit_roadmap(engine, synthetic_framework("rm-taken", 2))
    rows = snapshot(engine, ALL_TABLES)
    frameworks = [
        validate_submission(synthetic_framework("rm-new", 2)),
        validate_submission(synthetic_framework("rm-taken", 3)),  # conflicts: the batch fails
    ]

    with pytest.raises(RoadmapConflict):
        submit_frameworks(engine, frameworks)
    assert snapshot(engine, ALL_TABLES) == rows


@pytest.mark.parametrize("item", list(ItemType))
def test_an_item_write_replayed_changes_nothing(submitted: Engine, item: ItemType) -> None:
    first = save_item(submitted, RID, CONCEPT, content(item), "gen-1")
    rows = snapshot(submitted, ALL_TABLES)

    again = save_item(submitted, RID, CONCEPT, content(item), "gen-1")

    assert (first.replayed, again.replayed) == (False, True)
    assert (again.row_id, again.content_version) == (first.row_id, first.content_version)
    assert snapshot(submitted, ALL_TABLES) == rows


def test_the_ledger_answers_which_generations_were_written(submitted: Engine) -> None:
    tutorial = save_item(submitted, RID, CONCEPT, content(ItemType.TUTORIAL), "gen-t")
    quiz = save_item(submitted, RID, CONCEPT, content(ItemType.QUIZ), "gen-q")

    with submitted.connect() as conn:
        found = find_generations(conn, ["gen-t", "gen-q", "gen-never"])
        one, none = find_generation(conn, "gen-q"), find_generation(conn, "gen-never")

    assert found == {
        "gen-t": replace(tutorial, replayed=True),
        "gen-q": replace(quiz, replayed=True),
    }
    assert (one, none) == (replace(quiz, replayed=True), None)


@pytest.mark.parametrize("item", list(ItemType))
def test_an_item_write_that_crashes_halfway_leaves_nothing(
    submitted: Engine, item: ItemType
) -> None:
    save_item(submitted, RID, CONCEPT, content(item), "gen-1")
    rows = snapshot(submitted, ALL_TABLES)

    # the ledger row is the last statement of the transaction: everything before it is undone
    with crash_before(submitted, "INSERT INTO content_generations"), pytest.raises(InjectedCrash):
        save_item(submitted, RID, CONCEPT, content(item, variant=1), "gen-2")
    assert snapshot(submitted, ALL_TABLES) == rows

    replayed = save_item(submitted, RID, CONCEPT, content(item, variant=1), "gen-2")
    after = snapshot(submitted, ALL_TABLES)
    assert not replayed.replayed
    assert save_item(submitted, RID, CONCEPT, content(item, variant=1), "gen-2").replayed
    assert snapshot(submitted, ALL_TABLES) == after


def _tutorials(engine: Engine) -> list[tuple[int, bool, str]]:
    from sqlalchemy import text

    from roadmap_pipeline.store.database import connect

    with connect(engine) as conn:
        rows = conn.execute(
            text(
                "SELECT content_version, is_latest, content_url FROM tutorial_metadata "
                "WHERE concept_id = :c ORDER BY content_version"
            ),
            {"c": CONCEPT},
        ).all()
    return [(r[0], bool(r[1]), r[2]) for r in rows]


def test_a_new_tutorial_is_the_next_version_and_demotes_the_previous(submitted: Engine) -> None:
    v1 = save_item(submitted, RID, CONCEPT, content(ItemType.TUTORIAL), "gen-1")
    v2 = save_item(submitted, RID, CONCEPT, content(ItemType.TUTORIAL, variant=1), "gen-2")
    save_item(submitted, RID, CONCEPT, content(ItemType.TUTORIAL, variant=1), "gen-2")
    save_item(submitted, RID, CONCEPT, content(ItemType.TUTORIAL), "gen-1")

    assert (v1.content_version, v2.content_version) == (1, 2)
    assert _tutorials(submitted) == [
        (1, False, f"{RID}/concepts/{CONCEPT}/v1.md"),
        (2, True, f"{RID}/concepts/{CONCEPT}/v2.md"),
    ]
    assert (
        scalar(submitted, "SELECT COUNT(*) FROM tutorial_objects WHERE concept_id = :c", c=CONCEPT)
        == 2
    )


def test_a_crash_while_saving_a_version_keeps_the_previous_one_latest(submitted: Engine) -> None:
    save_item(submitted, RID, CONCEPT, content(ItemType.TUTORIAL), "gen-1")

    with crash_before(submitted, "INSERT INTO tutorial_metadata"), pytest.raises(InjectedCrash):
        save_item(submitted, RID, CONCEPT, content(ItemType.TUTORIAL, variant=1), "gen-2")

    assert _tutorials(submitted) == [(1, True, f"{RID}/concepts/{CONCEPT}/v1.md")]


@pytest.mark.parametrize(
    ("item", "table", "id_column", "payload"),
    [
        (ItemType.QUIZ, "quiz_metadata", "quiz_id", "total_questions"),
        (ItemType.RESOURCES, "resource_recommendation_metadata", "id", "resources_count"),
    ],
)
def test_regenerating_resources_or_quiz_replaces_the_row_and_keeps_its_id(
    submitted: Engine, item: ItemType, table: str, id_column: str, payload: str
) -> None:
    first = save_item(submitted, RID, CONCEPT, content(item), "gen-1")
    count_before = scalar(
        submitted, f"SELECT {payload} FROM {table} WHERE concept_id = :c", c=CONCEPT
    )

    second = save_item(submitted, RID, CONCEPT, content(item, variant=1), "gen-2")

    assert second.row_id == first.row_id  # learners' quiz_attempts may reference it
    assert scalar(submitted, f"SELECT COUNT(*) FROM {table} WHERE concept_id = :c", c=CONCEPT) == 1
    assert scalar(submitted, f"SELECT CAST({id_column} AS TEXT) FROM {table}") == first.row_id
    count_after = scalar(
        submitted, f"SELECT {payload} FROM {table} WHERE concept_id = :c", c=CONCEPT
    )
    assert count_after == count_before - 1


def test_items_of_unknown_roadmaps_or_concepts_are_refused(submitted: Engine) -> None:
    rows = snapshot(submitted, ALL_TABLES)

    with pytest.raises(UnknownRoadmap):
        save_item(submitted, "rm-none", CONCEPT, content(ItemType.QUIZ), "gen-x")
    with pytest.raises(UnknownConcept):
        save_item(submitted, RID, f"{RID}:nope", content(ItemType.QUIZ), "gen-y")
    assert snapshot(submitted, ALL_TABLES) == rows


def test_items_of_deleted_or_malformed_roadmaps_are_refused(submitted: Engine) -> None:
    """The cheap concept lookup of every write falls back to the full load, which names the
    problem, whenever it does not find the concept in a well-formed tree."""
    with submitted.begin() as conn:
        conn.execute(
            update(RoadmapMetadata)
            .where(RoadmapMetadata.roadmap_id == RID)
            .values(deleted_at=datetime(2026, 1, 2, 3, 4))
        )
    with pytest.raises(UnknownRoadmap, match="no roadmap"):
        save_item(submitted, RID, CONCEPT, content(ItemType.QUIZ), "gen-deleted")

    with submitted.begin() as conn:
        conn.execute(
            update(RoadmapMetadata)
            .where(RoadmapMetadata.roadmap_id == RID)
            .values(deleted_at=None, framework_data={"roadmap_id": RID, "stages": "oops"})
        )
    rows = snapshot(submitted, ALL_TABLES)
    with pytest.raises(FrameworkError, match="stages"):
        save_item(submitted, RID, CONCEPT, content(ItemType.QUIZ), "gen-malformed")
    assert snapshot(submitted, ALL_TABLES) == rows


def test_syncs_replayed_change_nothing_and_keep_unknown_keys(submitted: Engine) -> None:
    for item in ItemType:
        save_item(submitted, RID, CONCEPT, content(item), f"gen-{item.value}")
    sync_concept(submitted, RID, CONCEPT, NothingRunning())
    rows = snapshot(submitted, ALL_TABLES)

    assert not sync_concept(submitted, RID, CONCEPT, NothingRunning()).changed
    assert snapshot(submitted, ALL_TABLES) == rows
    entry = node(read_document(submitted, RID), CONCEPT)
    assert entry["x_service_note"] == {"kept": True}
    assert (entry["content_status"], entry["resources_status"], entry["quiz_status"]) == (
        "completed",
        "completed",
        "completed",
    )

    sync_roadmaps(submitted, [RID], NothingRunning())
    rows = snapshot(submitted, ALL_TABLES)
    assert not sync_roadmaps(submitted, [RID], NothingRunning()).changed
    assert snapshot(submitted, ALL_TABLES) == rows


def test_a_roadmap_sync_that_crashes_halfway_leaves_nothing(submitted: Engine) -> None:
    for item in ItemType:
        save_item(submitted, RID, CONCEPT, content(item), f"gen-{item.value}")
    from roadmap_pipeline_tests.store.helpers import execute

    execute(submitted, "UPDATE roadmap_tasks SET status = 'processing'")
    rows = snapshot(submitted, ALL_TABLES)

    # framework_data is written first, the task roll-up last: the crash undoes both
    with crash_before(submitted, "UPDATE roadmap_tasks"), pytest.raises(InjectedCrash):
        sync_roadmaps(submitted, [RID], NothingRunning())
    assert snapshot(submitted, ALL_TABLES) == rows

    report = sync_roadmaps(submitted, [RID], NothingRunning())
    assert [(t.before, t.after) for t in report.tasks] == [("processing", "partial_failure")]


def test_a_service_summary_longer_than_300_loads_syncs_and_round_trips(submitted: Engine) -> None:
    from roadmap_pipeline.domain.framework import load_framework
    from roadmap_pipeline.store.schema import utcnow
    from roadmap_pipeline_tests.store.helpers import edit_document, execute

    long_summary = "The service wrote this summary past its own limit. " * 9
    assert len(long_summary) > 300
    other = f"{RID}:c-1-1-1"
    edit_document(
        submitted, RID, lambda doc: node(doc, other).__setitem__("content_summary", long_summary)
    )
    execute(
        submitted,
        "INSERT INTO tutorial_metadata (tutorial_id, roadmap_id, concept_id, title, summary, "
        "content_url, content_status, content_version, is_latest, estimated_completion_time, "
        "generated_at) VALUES ('t-long', :r, :c, 'Long', :s, 'u/v1.md', 'completed', 1, :yes, "
        "30, :t)",
        r=RID,
        c=CONCEPT,
        s=long_summary,
        yes=True,
        t=utcnow(),
    )

    sync_roadmaps(submitted, [RID], NothingRunning())

    document = read_document(submitted, RID)
    assert node(document, CONCEPT)["content_summary"] == long_summary
    assert node(document, CONCEPT)["tutorial_id"] == "t-long"
    assert node(document, other)["content_summary"] == long_summary  # a failed item keeps it
    assert load_framework(document).to_document() == document

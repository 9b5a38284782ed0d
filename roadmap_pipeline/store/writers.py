"""Idempotent writers of content rows and of submitted roadmaps; each is one transaction.

Every content write carries a ``generation_id`` (one generation request of one item). The row's
id is derived from it and the write records it in the ``content_generations`` ledger in the same
transaction, so replaying a write, or re-running a node that crashed after its commit, finds the
ledger row and changes nothing. Writers of one concept serialise on a per-concept lock, so two
workers cannot both compute "the next version".
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, func, insert, select, update

from roadmap_pipeline.domain.content import (
    ItemContent,
    QuizContent,
    ResourcesContent,
    TutorialContent,
)
from roadmap_pipeline.domain.framework import (
    Framework,
    concept_nodes,
    load_framework,
    validate_submission,
)
from roadmap_pipeline.domain.statuses import ItemType, TaskStatus, TaskType
from roadmap_pipeline.store.database import lock_concept, transaction
from roadmap_pipeline.store.schema import (
    ContentGeneration,
    QuizMetadata,
    ResourceRecommendationMetadata,
    RoadmapMetadata,
    RoadmapTask,
    TutorialMetadata,
    TutorialObject,
    utcnow,
)

_ROW_NAMESPACE = uuid.UUID("6f1c7a52-2b7e-4df4-9a43-5d0d4c1b9e21")


class UnknownRoadmap(LookupError):
    """No (non-deleted) roadmap with this id."""


class UnknownConcept(LookupError):
    """The roadmap's framework_data has no concept with this id."""


class RoadmapConflict(ValueError):
    """A roadmap with this id exists with a different document."""


@dataclass(frozen=True)
class ItemWrite:
    """The outcome of one item write."""

    item: ItemType
    row_id: str
    content_version: int | None
    replayed: bool  # the ledger already held this generation: nothing was written


def row_id_for(generation_id: str, item: ItemType) -> str:
    """The id a generation's new row gets: a replay computes the same one."""
    return str(uuid.uuid5(_ROW_NAMESPACE, f"{item.value}:{generation_id}"))


def content_url(roadmap_id: str, concept_id: str, version: int) -> str:
    return f"{roadmap_id}/concepts/{concept_id}/v{version}.md"


def find_generation(conn: Connection, generation_id: str) -> ItemWrite | None:
    """The write a generation already made, if any (the workflow asks before generating)."""
    return find_generations(conn, [generation_id]).get(generation_id)


def find_generations(conn: Connection, generation_ids: Iterable[str]) -> dict[str, ItemWrite]:
    """The writes already made for any of these generations, by generation id (one query)."""
    wanted = sorted(set(generation_ids))
    if not wanted:
        return {}
    rows = conn.execute(
        select(
            ContentGeneration.generation_id,
            ContentGeneration.item,
            ContentGeneration.row_id,
            ContentGeneration.content_version,
        ).where(ContentGeneration.generation_id.in_(wanted))
    )
    return {
        row.generation_id: ItemWrite(ItemType(row.item), row.row_id, row.content_version, True)
        for row in rows
    }


def save_item(
    engine: Engine,
    roadmap_id: str,
    concept_id: str,
    content: ItemContent,
    generation_id: str,
    generator: str = "",
) -> ItemWrite:
    """Store one generated item; a replay of the same generation changes nothing."""
    with transaction(engine) as conn:
        lock_concept(conn, roadmap_id, concept_id)
        done = find_generation(conn, generation_id)
        if done is not None:
            return done
        require_concept(conn, roadmap_id, concept_id)
        if isinstance(content, TutorialContent):
            written = _insert_tutorial_version(conn, roadmap_id, concept_id, content, generation_id)
        elif isinstance(content, ResourcesContent):
            written = _replace_resources(conn, roadmap_id, concept_id, content, generation_id)
        else:
            written = _replace_quiz(conn, roadmap_id, concept_id, content, generation_id)
        conn.execute(
            insert(ContentGeneration).values(
                generation_id=generation_id,
                roadmap_id=roadmap_id,
                concept_id=concept_id,
                item=written.item.value,
                row_id=written.row_id,
                content_version=written.content_version,
                generator=generator[:128] or None,
                created_at=utcnow(),
            )
        )
        return written


def save_tutorial(
    engine: Engine, roadmap_id: str, concept_id: str, content: TutorialContent, generation_id: str
) -> ItemWrite:
    """A new tutorial version (the next number); the previous latest is demoted in the same
    transaction."""
    return save_item(engine, roadmap_id, concept_id, content, generation_id)


def replace_resources(
    engine: Engine, roadmap_id: str, concept_id: str, content: ResourcesContent, generation_id: str
) -> ItemWrite:
    """The concept's one resources row, replaced (updated in place when it exists)."""
    return save_item(engine, roadmap_id, concept_id, content, generation_id)


def replace_quiz(
    engine: Engine, roadmap_id: str, concept_id: str, content: QuizContent, generation_id: str
) -> ItemWrite:
    """The concept's one quiz row, replaced in place: its quiz_id, which learners' attempts may
    reference, never changes."""
    return save_item(engine, roadmap_id, concept_id, content, generation_id)


def _insert_tutorial_version(
    conn: Connection,
    roadmap_id: str,
    concept_id: str,
    content: TutorialContent,
    generation_id: str,
) -> ItemWrite:
    of_concept = (TutorialMetadata.roadmap_id == roadmap_id) & (
        TutorialMetadata.concept_id == concept_id
    )
    latest = conn.execute(select(func.max(TutorialMetadata.content_version)).where(of_concept))
    version = (latest.scalar_one() or 0) + 1
    url = content_url(roadmap_id, concept_id, version)
    row_id = row_id_for(generation_id, ItemType.TUTORIAL)
    now = utcnow()
    conn.execute(
        update(TutorialMetadata)
        .where(of_concept & TutorialMetadata.is_latest)
        .values(is_latest=False)
    )
    conn.execute(
        insert(TutorialObject).values(
            content_url=url,
            roadmap_id=roadmap_id,
            concept_id=concept_id,
            markdown=content.markdown,
            created_at=now,
        )
    )
    conn.execute(
        insert(TutorialMetadata).values(
            tutorial_id=row_id,
            roadmap_id=roadmap_id,
            concept_id=concept_id,
            title=content.title,
            summary=content.summary,
            content_url=url,
            content_status="completed",
            content_version=version,
            is_latest=True,
            estimated_completion_time=content.estimated_completion_time,
            generated_at=now,
        )
    )
    return ItemWrite(ItemType.TUTORIAL, row_id, version, replayed=False)


def _replace_resources(
    conn: Connection,
    roadmap_id: str,
    concept_id: str,
    content: ResourcesContent,
    generation_id: str,
) -> ItemWrite:
    values: dict[str, Any] = {
        "resources": [r.model_dump(mode="json") for r in content.resources],
        "resources_count": len(content.resources),
        "search_queries_used": content.search_queries_used,
        "generated_at": utcnow(),
    }
    row_id = _replace_single_row(
        conn,
        ResourceRecommendationMetadata,
        "id",
        roadmap_id,
        concept_id,
        values,
        row_id_for(generation_id, ItemType.RESOURCES),
    )
    return ItemWrite(ItemType.RESOURCES, row_id, None, replayed=False)


def _replace_quiz(
    conn: Connection,
    roadmap_id: str,
    concept_id: str,
    content: QuizContent,
    generation_id: str,
) -> ItemWrite:
    counts = content.difficulty_counts()
    values: dict[str, Any] = {
        "questions": [q.model_dump(mode="json") for q in content.questions],
        "total_questions": len(content.questions),
        "easy_count": counts["easy"],
        "medium_count": counts["medium"],
        "hard_count": counts["hard"],
        "generated_at": utcnow(),
    }
    row_id = _replace_single_row(
        conn,
        QuizMetadata,
        "quiz_id",
        roadmap_id,
        concept_id,
        values,
        row_id_for(generation_id, ItemType.QUIZ),
    )
    return ItemWrite(ItemType.QUIZ, row_id, None, replayed=False)


def _replace_single_row(
    conn: Connection,
    model: type[ResourceRecommendationMetadata] | type[QuizMetadata],
    id_column: str,
    roadmap_id: str,
    concept_id: str,
    values: dict[str, Any],
    new_id: str,
) -> str:
    """Update the concept's current row in place (its id survives), or insert the first one.

    An adopted database may hold several rows for one concept; the current one (most recently
    generated) is replaced and the others are left for the ``multiple_current`` rule to report.
    """
    id_col = getattr(model, id_column)
    current = conn.execute(
        select(id_col)
        .where(model.roadmap_id == roadmap_id, model.concept_id == concept_id)
        .order_by(model.generated_at.desc(), id_col.desc())
        .limit(1)
    ).scalar_one_or_none()
    if current is None:
        conn.execute(
            insert(model).values(
                {id_column: new_id, "roadmap_id": roadmap_id, "concept_id": concept_id, **values}
            )
        )
        return new_id
    conn.execute(update(model).where(id_col == current).values(values))
    return str(current)


def _roadmap_document(conn: Connection, roadmap_id: str) -> Any:
    """The stored framework_data of a roadmap that is not deleted, unparsed; None if none."""
    return conn.execute(
        select(RoadmapMetadata.framework_data).where(
            RoadmapMetadata.roadmap_id == roadmap_id, RoadmapMetadata.deleted_at.is_(None)
        )
    ).scalar_one_or_none()


def require_roadmap(conn: Connection, roadmap_id: str) -> Framework:
    document = _roadmap_document(conn, roadmap_id)
    if document is None:
        raise UnknownRoadmap(f"no roadmap {roadmap_id!r} in roadmap_metadata")
    return load_framework(document)


def require_roadmaps(conn: Connection, roadmap_ids: Iterable[str]) -> None:
    """Raise UnknownRoadmap naming every id that is not a (non-deleted) roadmap."""
    wanted = sorted(set(roadmap_ids))
    found = {
        row.roadmap_id: row.deleted_at
        for row in conn.execute(
            select(RoadmapMetadata.roadmap_id, RoadmapMetadata.deleted_at).where(
                RoadmapMetadata.roadmap_id.in_(wanted)
            )
        )
    }
    problems = [
        f"roadmap {rid!r} was deleted at {found[rid]:%Y-%m-%d %H:%M}"
        if rid in found
        else f"no roadmap {rid!r} in roadmap_metadata"
        for rid in wanted
        if found.get(rid, False) is not None
    ]
    if problems:
        raise UnknownRoadmap("; ".join(problems))


def require_concept(conn: Connection, roadmap_id: str, concept_id: str) -> None:
    """Raise unless the roadmap exists and holds the concept.

    Every item write asks this, so the common case reads the tree's ids without validating the
    whole document (validation was most of a write's CPU time); a miss takes the full load, whose
    error names what is wrong (no roadmap, a malformed document, no such concept)."""
    document = _roadmap_document(conn, roadmap_id)
    if any(node["concept_id"] == concept_id for node in concept_nodes(document)):
        return
    if document is None:
        raise UnknownRoadmap(f"no roadmap {roadmap_id!r} in roadmap_metadata")
    framework = load_framework(document)
    if concept_id not in {c.concept_id for c in framework.concepts()}:
        raise UnknownConcept(f"roadmap {roadmap_id!r} has no concept {concept_id!r}")


@dataclass(frozen=True)
class Submission:
    roadmap_id: str
    task_id: str
    concepts: int
    created: bool  # False: the same document was already submitted, nothing was written


def roadmap_row(framework: Framework, user_id: str | None, now: datetime) -> dict[str, Any]:
    """The roadmap_metadata row of a framework document."""
    return {
        "roadmap_id": framework.roadmap_id,
        "user_id": user_id,
        "title": framework.title,
        "total_estimated_hours": framework.total_estimated_hours,
        "recommended_completion_weeks": framework.recommended_completion_weeks,
        "framework_data": framework.to_document(),
        "created_at": now,
    }


def creation_task_id(roadmap_id: str) -> str:
    return str(uuid.uuid5(_ROW_NAMESPACE, f"creation:{roadmap_id}"))


def submit_roadmap(engine: Engine, document: Any, user_id: str | None = None) -> Submission:
    """A framework document becomes a roadmap_metadata row and a pending creation task.

    Submitting the same document again changes nothing; a different document under an existing
    roadmap id is refused (RoadmapConflict).
    """
    return submit_frameworks(engine, [validate_submission(document)], user_id)[0]


def submit_frameworks(
    engine: Engine,
    frameworks: Sequence[Framework],
    user_id: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[Submission]:
    """Submit validated frameworks in one transaction: all of them are written, or none.

    ``progress`` is called with the number of frameworks handled so far.
    """
    submissions: list[Submission] = []
    with transaction(engine) as conn:
        for framework in frameworks:
            submissions.append(_submit(conn, framework, user_id))
            if progress:
                progress(len(submissions))
    return submissions


def _submit(conn: Connection, framework: Framework, user_id: str | None) -> Submission:
    stored = framework.to_document()
    task_id = creation_task_id(framework.roadmap_id)
    concepts = len(framework.concepts())
    existing = conn.execute(
        select(RoadmapMetadata.framework_data).where(
            RoadmapMetadata.roadmap_id == framework.roadmap_id
        )
    ).one_or_none()
    if existing is not None:
        if existing.framework_data != stored:
            raise RoadmapConflict(
                f"roadmap {framework.roadmap_id!r} already exists with a different document; "
                "submit it under a new roadmap_id"
            )
        return Submission(framework.roadmap_id, task_id, concepts, created=False)
    now = utcnow()
    conn.execute(insert(RoadmapMetadata).values(roadmap_row(framework, user_id, now)))
    conn.execute(
        insert(RoadmapTask).values(
            task_id=task_id,
            user_id=user_id,
            status=TaskStatus.PENDING.value,
            current_step="queued",
            user_request={"source": "roadmap-pipeline submit"},
            roadmap_id=framework.roadmap_id,
            task_type=TaskType.CREATION.value,
            created_at=now,
            updated_at=now,
        )
    )
    return Submission(framework.roadmap_id, task_id, concepts, created=True)


def start_task(conn: Connection, task_id: str, step: str = "content_generation") -> bool:
    """pending -> processing (guarded: a task that moved on meanwhile is left alone)."""
    result = conn.execute(
        update(RoadmapTask)
        .where(RoadmapTask.task_id == task_id, RoadmapTask.status == TaskStatus.PENDING.value)
        .values(status=TaskStatus.PROCESSING.value, current_step=step, updated_at=utcnow())
    )
    return bool(result.rowcount)


def fail_task(conn: Connection, task_id: str, message: str) -> bool:
    """A task that cannot run at all (its framework is unusable) -> failed, with the reason."""
    now = utcnow()
    result = conn.execute(
        update(RoadmapTask)
        .where(
            RoadmapTask.task_id == task_id,
            RoadmapTask.status.in_([TaskStatus.PENDING.value, TaskStatus.PROCESSING.value]),
        )
        .values(
            status=TaskStatus.FAILED.value,
            error_message=message[:4000],
            updated_at=now,
            completed_at=now,
        )
    )
    return bool(result.rowcount)

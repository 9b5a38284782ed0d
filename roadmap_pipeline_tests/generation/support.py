"""Helpers shared by the generation tests (fixtures are in conftest.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, func, select

from roadmap_pipeline.domain.statuses import ItemType
from roadmap_pipeline.generation.locks import ConceptLocks, locks_for
from roadmap_pipeline.generation.workflow import NodeRetrySettings
from roadmap_pipeline.samples import synthetic_framework
from roadmap_pipeline.store.activity import NothingRunning
from roadmap_pipeline.store.database import connect
from roadmap_pipeline.store.invariants import Scope, find_violations
from roadmap_pipeline.store.schema import (
    ContentGeneration,
    QuizMetadata,
    ResourceRecommendationMetadata,
    TutorialMetadata,
)
from roadmap_pipeline.store.sync import sync_roadmaps
from roadmap_pipeline.store.writers import submit_roadmap

FAST_RETRY = NodeRetrySettings(max_attempts=3, initial_interval_s=0.01, jitter=False)
ALL_ITEMS = tuple(ItemType)


@dataclass(frozen=True)
class Roadmap:
    roadmap_id: str
    concept_ids: list[str]
    document: dict[str, Any]


def submit(engine: Engine, roadmap_id: str, concepts: int) -> Roadmap:
    document = synthetic_framework(roadmap_id, concepts)
    submit_roadmap(engine, document)
    ids = [c["concept_id"] for s in document["stages"] for m in s["modules"] for c in m["concepts"]]
    return Roadmap(roadmap_id, ids, document)


def new_locks(database_url: str) -> ConceptLocks:
    """A separate locks object, as a second worker process would have (the same kind and place
    that ``locks_for`` gives every worker of this database)."""
    return locks_for(database_url)


def row_counts(engine: Engine, roadmap_id: str, concept_id: str) -> dict[str, int]:
    """Rows of one concept per table (tutorial versions, resources, quiz, ledger)."""
    counts: dict[str, int] = {}
    with connect(engine) as conn:
        for name, model in (
            ("tutorial", TutorialMetadata),
            ("resources", ResourceRecommendationMetadata),
            ("quiz", QuizMetadata),
            ("ledger", ContentGeneration),
        ):
            counts[name] = conn.execute(
                select(func.count())
                .select_from(model)
                .where(model.roadmap_id == roadmap_id, model.concept_id == concept_id)
            ).scalar_one()
    return counts


def assert_consistent(engine: Engine, roadmap_id: str) -> None:
    """After syncing framework_data with the rows, no invariant is violated."""
    sync_roadmaps(engine, [roadmap_id], NothingRunning())
    with connect(engine) as conn:
        violations = find_violations(conn, Scope.roadmap(roadmap_id), NothingRunning())
    assert violations == []


def thread_exists(checkpointer: Any, thread_id: str) -> bool:
    return checkpointer.get_tuple({"configurable": {"thread_id": thread_id}}) is not None

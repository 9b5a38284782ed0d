"""Read-side helpers: partition keys to stored concept ids, documents and tasks of roadmaps."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, select

from roadmap_pipeline.domain.framework import FrameworkError, load_framework
from roadmap_pipeline.domain.keys import UnsafeIdError, resolve_concept_id, split_concept_key
from roadmap_pipeline.store.schema import RoadmapMetadata, RoadmapTask


@dataclass(frozen=True)
class ResolvedKeys:
    """Concept keys resolved against the stored documents."""

    concepts: dict[str, tuple[str, str]]  # key -> (roadmap_id, stored concept_id)
    problems: dict[str, str]  # key -> why it cannot be resolved

    def by_roadmap(self) -> dict[str, list[str]]:
        grouped: dict[str, list[str]] = defaultdict(list)
        for roadmap_id, concept_id in self.concepts.values():
            grouped[roadmap_id].append(concept_id)
        return dict(grouped)


def documents(conn: Connection, roadmap_ids: Iterable[str]) -> dict[str, Any]:
    """The framework_data of each (non-deleted) roadmap among ``roadmap_ids``."""
    query = select(RoadmapMetadata.roadmap_id, RoadmapMetadata.framework_data).where(
        RoadmapMetadata.roadmap_id.in_(list(set(roadmap_ids))),
        RoadmapMetadata.deleted_at.is_(None),
    )
    return {row.roadmap_id: row.framework_data for row in conn.execute(query)}


def resolve_concept_keys(conn: Connection, keys: Iterable[str]) -> ResolvedKeys:
    """Map partition keys to stored concept ids, one document read per roadmap."""
    split: dict[str, tuple[str, str]] = {}
    problems: dict[str, str] = {}
    for key in keys:
        try:
            split[key] = split_concept_key(key)
        except UnsafeIdError as exc:
            problems[key] = str(exc)
    docs = documents(conn, {roadmap_id for roadmap_id, _ in split.values()})
    concepts: dict[str, tuple[str, str]] = {}
    stored_ids: dict[str, list[str]] = {}
    for key, (roadmap_id, short) in split.items():
        if roadmap_id not in docs:
            problems[key] = f"roadmap {roadmap_id!r} does not exist (or was deleted)"
            continue
        if roadmap_id not in stored_ids:
            try:
                stored_ids[roadmap_id] = [
                    c.concept_id for c in load_framework(docs[roadmap_id]).concepts()
                ]
            except FrameworkError as exc:
                stored_ids[roadmap_id] = []
                problems[key] = f"framework_data of {roadmap_id!r} is malformed: {exc.problems[0]}"
                continue
        try:
            concepts[key] = (
                roadmap_id,
                resolve_concept_id(roadmap_id, short, stored_ids[roadmap_id]),
            )
        except KeyError as exc:
            problems.setdefault(key, str(exc.args[0]))
    return ResolvedKeys(concepts, problems)


def task_preferences(conn: Connection, roadmap_id: str) -> dict[str, Any]:
    """The learner's preferences from the roadmap's latest task request, if it has any."""
    request = conn.execute(
        select(RoadmapTask.user_request)
        .where(RoadmapTask.roadmap_id == roadmap_id)
        .order_by(RoadmapTask.created_at.desc())
        .limit(1)
    ).scalar_one_or_none()
    if isinstance(request, dict) and isinstance(request.get("preferences"), dict):
        return dict(request["preferences"])
    return {}

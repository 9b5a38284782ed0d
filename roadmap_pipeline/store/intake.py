"""What the intake sensor picks up: pending creation tasks, and roadmaps it has never seen."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select

from roadmap_pipeline.domain.statuses import TaskStatus, TaskType
from roadmap_pipeline.store.schema import RoadmapMetadata, RoadmapTask


@dataclass(frozen=True)
class IntakeCandidate:
    roadmap_id: str
    task_id: str | None  # the pending creation task, when there is one
    document: Any


def intake_candidates(
    conn: Connection, registered: Iterable[str], limit: int = 20
) -> list[IntakeCandidate]:
    """Pending creation tasks (oldest first), then roadmaps not yet registered as partitions."""
    known = set(registered)
    pending = conn.execute(
        select(RoadmapTask.task_id, RoadmapTask.roadmap_id, RoadmapMetadata.framework_data)
        .join(RoadmapMetadata, RoadmapMetadata.roadmap_id == RoadmapTask.roadmap_id)
        .where(
            RoadmapTask.status == TaskStatus.PENDING.value,
            RoadmapTask.task_type == TaskType.CREATION.value,
            RoadmapMetadata.deleted_at.is_(None),
        )
        .order_by(RoadmapTask.created_at, RoadmapTask.task_id)
        .limit(limit)
    ).all()
    found = [IntakeCandidate(r.roadmap_id, r.task_id, r.framework_data) for r in pending]
    taken = {c.roadmap_id for c in found}
    if len(found) < limit:
        ids = conn.execute(
            select(RoadmapMetadata.roadmap_id)
            .where(RoadmapMetadata.deleted_at.is_(None))
            .order_by(RoadmapMetadata.created_at, RoadmapMetadata.roadmap_id)
        ).scalars()
        new = [rid for rid in ids if rid not in known and rid not in taken][: limit - len(found)]
        if new:
            docs = conn.execute(
                select(RoadmapMetadata.roadmap_id, RoadmapMetadata.framework_data).where(
                    RoadmapMetadata.roadmap_id.in_(new)
                )
            ).all()
            by_id = {r.roadmap_id: r.framework_data for r in docs}
            found += [IntakeCandidate(rid, None, by_id[rid]) for rid in new]
    return found


@dataclass(frozen=True)
class ProcessingTask:
    task_id: str
    roadmap_id: str
    created_at: datetime
    updated_at: datetime


def processing_tasks(conn: Connection) -> list[ProcessingTask]:
    """Tasks in ``processing`` (indexed on status): what stuck-task recovery looks at."""
    rows = conn.execute(
        select(
            RoadmapTask.task_id,
            RoadmapTask.roadmap_id,
            RoadmapTask.created_at,
            RoadmapTask.updated_at,
        )
        .where(
            RoadmapTask.status == TaskStatus.PROCESSING.value, RoadmapTask.roadmap_id.is_not(None)
        )
        .order_by(RoadmapTask.updated_at)
    ).all()
    return [ProcessingTask(r.task_id, r.roadmap_id, r.created_at, r.updated_at) for r in rows]

"""Bring framework_data and the task rows into agreement with the content rows.

One mechanism serves the ``framework_entry`` asset (one concept), the ``framework_data`` roll-up
(one roadmap) and ``repair`` (any set of roadmaps, in batches): per batch, one transaction locks
the roadmap rows (``SELECT ... FOR UPDATE``), reads the current rows with the same SQL the rules
use (``CURRENT_ROWS``), demotes extra latest tutorials with one UPDATE, rewrites the changed
documents with one executemany and rolls up the tasks.

Only the keys the pipeline owns (``ITEM_FIELDS``) are written: every other key of the document,
known or unknown, stays exactly as it was.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, String, Text, bindparam, cast, select, text, update

from roadmap_pipeline.domain.framework import concept_nodes, well_formed
from roadmap_pipeline.domain.statuses import (
    ITEM_FIELDS,
    RETRY_TASK_ITEM,
    ItemStatus,
    ItemType,
    TaskStatus,
    TaskType,
)
from roadmap_pipeline.store.activity import ActiveWork, WorkInProgress
from roadmap_pipeline.store.database import is_postgres, transaction
from roadmap_pipeline.store.invariants import CURRENT_ROWS, Scope
from roadmap_pipeline.store.schema import RoadmapMetadata, RoadmapTask, utcnow
from roadmap_pipeline.store.writers import UnknownConcept, UnknownRoadmap

DEFAULT_BATCH = 200


@dataclass(frozen=True)
class CurrentRow:
    row_id: str
    ref_a: str | None  # content_url for tutorials
    number: int | None  # version for tutorials, count otherwise
    summary: str | None


@dataclass(frozen=True)
class EntryChange:
    roadmap_id: str
    concept_id: str
    item: str
    key: str
    before: Any
    after: Any


@dataclass(frozen=True)
class TaskChange:
    task_id: str
    roadmap_id: str
    before: str
    after: str
    failed_concepts: list[dict[str, Any]]


@dataclass(frozen=True)
class Demotion:
    roadmap_id: str
    concept_id: str
    tutorial_id: str
    version: int


@dataclass
class SyncReport:
    entries: list[EntryChange] = field(default_factory=list)
    tasks: list[TaskChange] = field(default_factory=list)
    demoted: list[Demotion] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # roadmaps that need a human, and why
    dry_run: bool = False

    def merge(self, other: SyncReport) -> None:
        self.entries += other.entries
        self.tasks += other.tasks
        self.demoted += other.demoted
        self.skipped += other.skipped

    @property
    def changed(self) -> bool:
        return bool(self.entries or self.tasks or self.demoted)


def sync_concept(
    engine: Engine,
    roadmap_id: str,
    concept_id: str,
    activity: WorkInProgress,
    *,
    dry_run: bool = False,
) -> SyncReport:
    """Sync one concept's node (no task roll-up): what the ``framework_entry`` asset does."""
    with transaction(engine) as conn:
        report = _sync_batch(
            conn, [roadmap_id], activity, concept_id=concept_id, roll_up=False, dry_run=dry_run
        )
        if roadmap_id in report.missing:
            raise UnknownRoadmap(f"no roadmap {roadmap_id!r} in roadmap_metadata")
        if not report.concept_seen:
            raise UnknownConcept(f"roadmap {roadmap_id!r} has no concept {concept_id!r}")
        return report.report


def sync_roadmaps(
    engine: Engine,
    roadmap_ids: Iterable[str],
    activity: WorkInProgress,
    *,
    dry_run: bool = False,
    batch_size: int = DEFAULT_BATCH,
    strict: bool = False,
) -> SyncReport:
    """Sync whole roadmaps and roll up their tasks (the repair of a roadmap), in batches.

    ``strict``: an unknown roadmap id raises UnknownRoadmap (for a roadmap named by an operator);
    otherwise it is noted in ``skipped`` and the rest of the fleet goes on.
    """
    total = SyncReport(dry_run=dry_run)
    ids = sorted(set(roadmap_ids))
    for start in range(0, len(ids), batch_size):
        batch = ids[start : start + batch_size]
        with transaction(engine) as conn:
            outcome = _sync_batch(
                conn, batch, activity, concept_id=None, roll_up=True, dry_run=dry_run
            )
        if strict and outcome.missing:
            raise UnknownRoadmap(f"no roadmap {sorted(outcome.missing)[0]!r} in roadmap_metadata")
        total.merge(outcome.report)
        total.skipped += [f"{rid}: no such roadmap" for rid in sorted(outcome.missing)]
    return total


@dataclass
class _BatchOutcome:
    report: SyncReport
    missing: set[str]
    concept_seen: bool


def _sync_batch(
    conn: Connection,
    roadmap_ids: Sequence[str],
    activity: WorkInProgress,
    *,
    concept_id: str | None,
    roll_up: bool,
    dry_run: bool,
) -> _BatchOutcome:
    report = SyncReport(dry_run=dry_run)
    scope = Scope(roadmap_ids=tuple(roadmap_ids), concept_id=concept_id)
    documents = _lock_documents(conn, roadmap_ids)
    missing = set(roadmap_ids) - set(documents)
    report.demoted = _demote_extra_latest(conn, scope, dry_run=dry_run)
    rows = current_rows(conn, scope)
    queued = _roadmaps_with_pending_task(conn, roadmap_ids)
    work = activity.active(roadmap_ids)
    new_documents: dict[str, Any] = {}
    concept_seen = False
    for roadmap_id, document in documents.items():
        if not well_formed(document):
            report.skipped.append(f"{roadmap_id}: framework_data is malformed (needs a human)")
            continue
        updated = copy.deepcopy(document)
        changes: list[EntryChange] = []
        for node in concept_nodes(updated):
            cid = node["concept_id"]
            if concept_id is not None and cid != concept_id:
                continue
            concept_seen = True
            busy = roadmap_id in queued or work.covers_concept(roadmap_id, cid)
            changes += _sync_node(roadmap_id, node, rows, busy)
        if changes:
            new_documents[roadmap_id] = updated
            report.entries += changes
        documents[roadmap_id] = updated
    if new_documents and not dry_run:
        conn.execute(
            update(RoadmapMetadata)
            .where(RoadmapMetadata.roadmap_id == bindparam("rid"))
            .values(framework_data=bindparam("doc")),
            [{"rid": rid, "doc": doc} for rid, doc in new_documents.items()],
        )
    if roll_up:
        report.tasks = _roll_up_tasks(conn, documents, work, dry_run=dry_run)
    return _BatchOutcome(report, missing, concept_seen)


def _lock_documents(conn: Connection, roadmap_ids: Sequence[str]) -> dict[str, Any]:
    """The documents, locked; read as text so that one unparseable document (an SQLite JSON
    column holds any text) is reported as malformed instead of failing the whole batch."""
    query = (
        select(RoadmapMetadata.roadmap_id, cast(RoadmapMetadata.framework_data, Text))
        .where(RoadmapMetadata.roadmap_id.in_(roadmap_ids), RoadmapMetadata.deleted_at.is_(None))
        .order_by(RoadmapMetadata.roadmap_id)  # one lock order for every writer: no deadlocks
    )
    if is_postgres(conn):
        query = query.with_for_update()
    return {roadmap_id: _parse_document(raw) for roadmap_id, raw in conn.execute(query)}


def _parse_document(raw: str | None) -> Any:
    """The parsed document, or the raw text itself when it is not JSON (never well formed)."""
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw


_CURRENT_ROWS_SELECT = text(
    f"WITH {CURRENT_ROWS} "
    "SELECT roadmap_id, concept_id, item, row_id, ref_a, number, summary FROM item_rows "
    "WHERE row_id IS NOT NULL"
).bindparams(bindparam("roadmap_ids", expanding=True, type_=String))

_EXTRA_LATEST_SELECT = text(
    f"WITH {CURRENT_ROWS} "
    "SELECT roadmap_id, concept_id, row_id, content_version FROM tutorial_ranked "
    "WHERE rank_no > 1 AND is_latest"
).bindparams(bindparam("roadmap_ids", expanding=True, type_=String))

_DEMOTE = text(
    "UPDATE tutorial_metadata SET is_latest = :no WHERE CAST(tutorial_id AS TEXT) IN :ids"
).bindparams(bindparam("ids", expanding=True))


def current_rows(conn: Connection, scope: Scope) -> dict[tuple[str, str, str], CurrentRow]:
    """The current row of every item in scope, keyed (roadmap_id, concept_id, item)."""
    return {
        (r.roadmap_id, r.concept_id, r.item): CurrentRow(r.row_id, r.ref_a, r.number, r.summary)
        for r in conn.execute(_CURRENT_ROWS_SELECT, scope.params())
    }


def _demote_extra_latest(conn: Connection, scope: Scope, *, dry_run: bool) -> list[Demotion]:
    """Keep only the highest latest version per concept latest (invariant 3); rows are kept."""
    extras = [
        Demotion(r.roadmap_id, r.concept_id, r.row_id, r.content_version)
        for r in conn.execute(_EXTRA_LATEST_SELECT, scope.params())
    ]
    if extras and not dry_run:
        conn.execute(_DEMOTE, {"no": False, "ids": [d.tutorial_id for d in extras]})
    return extras


def _roadmaps_with_pending_task(conn: Connection, roadmap_ids: Sequence[str]) -> set[str]:
    """A pending task is queued work (the service's queue): its roadmap's items may wait."""
    query = select(RoadmapTask.roadmap_id).where(
        RoadmapTask.roadmap_id.in_(roadmap_ids), RoadmapTask.status == TaskStatus.PENDING.value
    )
    return {rid for rid in conn.execute(query).scalars() if rid is not None}


def _sync_node(
    roadmap_id: str,
    node: dict[str, Any],
    rows: dict[tuple[str, str, str], CurrentRow],
    busy: bool,
) -> list[EntryChange]:
    changes: list[EntryChange] = []
    for item in ItemType:
        wanted = _wanted_fields(
            item, node, rows.get((roadmap_id, node["concept_id"], item.value)), busy
        )
        for key, value in wanted.items():
            if node.get(key) != value or key not in node:
                if key not in node and value is None:
                    continue
                changes.append(
                    EntryChange(
                        roadmap_id, node["concept_id"], item.value, key, node.get(key), value
                    )
                )
                node[key] = value
    return changes


def _wanted_fields(
    item: ItemType, node: dict[str, Any], row: CurrentRow | None, busy: bool
) -> dict[str, Any]:
    """The owned keys of one item as the rows say they should be ({} when nothing may change)."""
    fields = ITEM_FIELDS[item]
    if row is not None:
        wanted: dict[str, Any] = {
            fields.status: ItemStatus.COMPLETED.value,
            fields.ref_id: row.row_id,
        }
        if item is ItemType.TUTORIAL:
            wanted |= {
                "content_ref": row.ref_a,
                "content_version": f"v{row.number}",
                "content_summary": row.summary,
            }
        else:
            wanted[fields.extra_refs[0]] = row.number
        return wanted
    if busy:
        return {}  # work for it is queued or running: its worker will sync it
    # No row and nothing queued or running: the item failed (or its row vanished).
    return _failed_fields(item)


def _failed_fields(item: ItemType) -> dict[str, Any]:
    """Status failed and the references cleared; a summary written before generation stays."""
    fields = ITEM_FIELDS[item]
    cleared = {key: None for key in (fields.ref_id, *fields.extra_refs) if key != "content_summary"}
    return {fields.status: ItemStatus.FAILED.value} | cleared


# --- task roll-up --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    completed: int
    failed: int
    active: int
    failed_items: dict[str, list[str]]  # concept_id -> failed items

    @property
    def expected(self) -> TaskStatus | None:
        """The terminal status the items call for, or None while work remains."""
        if self.active or not (self.completed or self.failed):
            return None
        if not self.failed:
            return TaskStatus.COMPLETED
        return TaskStatus.PARTIAL_FAILURE if self.completed else TaskStatus.FAILED


def task_outcome(document: Any, task_type: str, concept_id: str | None, roadmap_id: str) -> Outcome:
    """Count the items in a task's scope: the whole roadmap, or one item of one concept."""
    retry_item = (
        RETRY_TASK_ITEM.get(TaskType(task_type))
        if task_type in TaskType.__members__.values()
        else None
    )
    completed = failed = active = 0
    failed_items: dict[str, list[str]] = {}
    for node in concept_nodes(document):
        cid = node["concept_id"]
        if retry_item is not None and cid not in (concept_id, f"{roadmap_id}:{concept_id}"):
            continue
        for item in (retry_item,) if retry_item is not None else tuple(ItemType):
            status = node.get(ITEM_FIELDS[item].status)
            if status == ItemStatus.COMPLETED:
                completed += 1
            elif status == ItemStatus.FAILED:
                failed += 1
                failed_items.setdefault(cid, []).append(item.value)
            else:
                active += 1
    return Outcome(completed, failed, active, failed_items)


def _roll_up_tasks(
    conn: Connection, documents: dict[str, Any], work: ActiveWork, *, dry_run: bool
) -> list[TaskChange]:
    tasks = conn.execute(
        select(RoadmapTask)
        .where(
            RoadmapTask.roadmap_id.in_(list(documents)),
            RoadmapTask.status != TaskStatus.CANCELLED.value,
        )
        .order_by(RoadmapTask.roadmap_id, RoadmapTask.created_at.desc(), RoadmapTask.task_id.desc())
    ).all()
    changes: list[TaskChange] = []
    seen: set[str] = set()
    now = utcnow()
    for task in tasks:
        is_current = task.roadmap_id not in seen
        seen.add(task.roadmap_id)
        document = documents.get(task.roadmap_id)
        if document is None or not well_formed(document):
            continue
        outcome = task_outcome(document, task.task_type, task.concept_id, task.roadmap_id)
        target = _target_status(task.status, outcome, is_current, task.failed_concepts)
        if target is None:
            continue
        failed = [
            {"concept_id": cid, "items": items}
            for cid, items in sorted(outcome.failed_items.items())
        ]
        changes.append(TaskChange(str(task.task_id), task.roadmap_id, task.status, target, failed))
        if not dry_run:
            conn.execute(
                update(RoadmapTask)
                .where(RoadmapTask.task_id == task.task_id)
                .values(_task_values(task, target, outcome, failed, now))
            )
    return changes


def _target_status(
    status: str, outcome: Outcome, is_current: bool, failed_concepts: Any
) -> str | None:
    """The status a task must move to, or None when it stays as it is."""
    expected = outcome.expected
    if expected is None:
        return None  # work remains (or there are no items): unchanged
    if status == TaskStatus.PROCESSING:
        return expected.value
    terminal = {TaskStatus.COMPLETED, TaskStatus.PARTIAL_FAILURE, TaskStatus.FAILED}
    if not is_current or status not in terminal:
        return None
    if status != expected:
        return expected.value
    if status in (TaskStatus.COMPLETED, TaskStatus.PARTIAL_FAILURE):
        named = failed_concept_names(failed_concepts)
        if named != set(outcome.failed_items):
            return expected.value  # same status, failed_concepts rewritten
    return None


def failed_concept_names(failed_concepts: Any) -> set[str]:
    """Concept ids named by a failed_concepts value (strings, or objects with concept_id)."""
    if not isinstance(failed_concepts, list):
        return set()
    names = set()
    for entry in failed_concepts:
        if isinstance(entry, str):
            names.add(entry)
        elif isinstance(entry, dict) and isinstance(entry.get("concept_id"), str):
            names.add(entry["concept_id"])
    return names


def _task_values(
    task: Any, target: str, outcome: Outcome, failed: list[dict[str, Any]], now: datetime
) -> dict[str, Any]:
    summary = dict(task.execution_summary) if isinstance(task.execution_summary, dict) else {}
    summary |= {
        "items_completed": outcome.completed,
        "items_failed": outcome.failed,
        "concepts_failed": len(failed),
        "settled_by": "roadmap_pipeline",
    }
    message = None
    if failed:
        names = ", ".join(f"{f['concept_id']} ({'/'.join(f['items'])})" for f in failed[:10])
        more = f" and {len(failed) - 10} more" if len(failed) > 10 else ""
        message = f"{len(failed)} concept(s) failed: {names}{more}"
    return {
        "status": target,
        "updated_at": now,
        "completed_at": now,
        "failed_concepts": failed,
        "error_message": message,
        "execution_summary": summary,
    }

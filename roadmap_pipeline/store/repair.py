"""Repair: framework_data and the task rows set from the content rows, for a roadmap or the fleet.

The rules that ``verify`` runs (:func:`find_violations`) decide what needs repair, and the
mechanism that the ``framework_entry`` and ``framework_data`` assets use (:func:`sync_roadmaps`)
repairs it: set-based reads and writes, a batch of roadmaps per transaction under the roadmap
rows' locks. Then the same rules run again and what is left is reported.

What a repair never does: delete a content row or change what a learner reads. Demoting an extra
latest tutorial clears ``is_latest`` on the older version and keeps its row. Invalid content,
orphan rows, a tutorial version stored twice, duplicate resources or quiz rows and a malformed
document are reported for a human, untouched.

One roadmap that breaks its batch (an unreadable document, a value the database refuses) does not
stop the fleet: the batch is retried roadmap by roadmap, and the one that fails is reported.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from roadmap_pipeline.store.activity import WorkInProgress
from roadmap_pipeline.store.database import connect
from roadmap_pipeline.store.invariants import Rule, Scope, Violation, find_violations, is_repairable
from roadmap_pipeline.store.sync import (
    DEFAULT_BATCH,
    Demotion,
    EntryChange,
    SyncReport,
    TaskChange,
    sync_roadmaps,
)

Progress = Callable[[int, int], None]
"""Called with (roadmaps done, roadmaps to repair) before the first batch and after each."""

CONTENT_POLICY = (
    "No content row was deleted and no content was rewritten: demoting a tutorial only clears "
    "is_latest on an older version (its row stays), and the rows that need a human are left "
    "exactly as they are, because learners may be reading them."
)

HUMAN_ACTIONS: dict[Rule, str] = {
    Rule.INVALID_CONTENT: "regenerate the item (rematerialize its concept) or correct the row",
    Rule.ORPHAN_CONTENT: "attach the rows to a concept of the roadmap or delete them",
    Rule.MULTIPLE_CURRENT: "choose the row learners keep and delete the others "
    "(quiz_attempts may reference a quiz_id)",
    Rule.MALFORMED_FRAMEWORK: "rewrite framework_data as a roadmap tree (stages > modules > "
    "concepts, each concept with a concept_id)",
}

# Errors that one roadmap can cause in its batch; anything else (a lost connection) stops the run.
_ROADMAP_ERRORS = (SQLAlchemyError, ValueError, TypeError, KeyError, AttributeError)


@dataclass
class RepairReport:
    dry_run: bool
    activity: str  # which source answered "is work queued or running?"
    found: list[Violation]
    roadmaps: list[str] = field(default_factory=list)  # synced, or inspected in a dry run
    entries: list[EntryChange] = field(default_factory=list)
    demoted: list[Demotion] = field(default_factory=list)
    tasks: list[TaskChange] = field(default_factory=list)
    needs_human: list[Violation] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "<roadmap>: why it was not synced"
    remaining: list[Violation] | None = None  # after the repair; None in a dry run

    @property
    def changed(self) -> bool:
        return bool(self.entries or self.demoted or self.tasks)

    @property
    def clean(self) -> bool:
        """Nothing is left to do (a dry run is clean only when nothing was found)."""
        return not (self.found if self.remaining is None else self.remaining)

    def entry_counts(self) -> dict[str, int]:
        """Changed framework_data keys per roadmap."""
        counts: dict[str, int] = {}
        for change in self.entries:
            counts[change.roadmap_id] = counts.get(change.roadmap_id, 0) + 1
        return counts


def repair(
    engine: Engine,
    scope: Scope,
    activity: WorkInProgress,
    *,
    dry_run: bool = False,
    batch_size: int = DEFAULT_BATCH,
    progress: Progress | None = None,
) -> RepairReport:
    """Find the violations in ``scope``, sync the roadmaps they concern, and verify again.

    A dry run computes the same changes and writes nothing.
    """
    with connect(engine) as conn:
        found = find_violations(conn, scope, activity)
    report = RepairReport(
        dry_run=dry_run,
        activity=activity.describe(),
        found=found,
        needs_human=[v for v in found if not is_repairable(v)],
    )
    report.roadmaps = sorted({v.roadmap_id for v in found if is_repairable(v)})
    total = len(report.roadmaps)
    if progress:
        progress(0, total)
    for start in range(0, total, batch_size):
        batch = report.roadmaps[start : start + batch_size]
        _absorb(report, _sync_batch(engine, batch, activity, dry_run=dry_run))
        if progress:
            progress(min(start + batch_size, total), total)
    if not dry_run:
        with connect(engine) as conn:
            report.remaining = find_violations(conn, scope, activity)
    return report


def _sync_batch(
    engine: Engine, batch: Sequence[str], activity: WorkInProgress, *, dry_run: bool
) -> SyncReport:
    try:
        return sync_roadmaps(engine, batch, activity, dry_run=dry_run, batch_size=len(batch))
    except _ROADMAP_ERRORS as exc:
        if _connection_lost(exc):
            raise
        if len(batch) == 1:
            return SyncReport(dry_run=dry_run, skipped=[f"{batch[0]}: {_reason(exc)}"])
    # One roadmap spoiled the batch (nothing of it was written): go one by one.
    merged = SyncReport(dry_run=dry_run)
    for roadmap_id in batch:
        merged.merge(_sync_batch(engine, [roadmap_id], activity, dry_run=dry_run))
    return merged


def _absorb(report: RepairReport, part: SyncReport) -> None:
    report.entries += part.entries
    report.demoted += part.demoted
    report.tasks += part.tasks
    report.skipped += part.skipped


def _connection_lost(exc: BaseException) -> bool:
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


def _reason(exc: BaseException) -> str:
    original = getattr(exc, "orig", None) or exc
    first_line = str(original).strip().splitlines()[0] if str(original).strip() else ""
    return f"could not be synced ({type(original).__name__}: {first_line})"

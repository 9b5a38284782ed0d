"""The fleet-wide consistency pass: full, or incremental over what changed since the last pass.

The previous pass is read back from Dagster's own record of the fleet check (its evaluation
metadata), so checking an adopted service database writes nothing into it.
"""

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import dagster as dg

from roadmap_pipeline.domain.keys import UnsafeIdError, split_concept_key
from roadmap_pipeline.orchestration.activity import DagsterActivity
from roadmap_pipeline.orchestration.keys import (
    CONTENT_ASSETS,
    FLEET_CHECK_KEY,
    FRAMEWORK_DATA,
    FRAMEWORK_ENTRY,
)
from roadmap_pipeline.orchestration.resources import RoadmapDatabase
from roadmap_pipeline.store.changes import roadmaps_changed_since
from roadmap_pipeline.store.database import connect
from roadmap_pipeline.store.invariants import (
    Violation,
    find_fleet_violations,
)

# A full pass checks the fleet in this many slices at once, one connection each (within the
# resource's pool), all in one snapshot: on this 2-core server that halves the pass.
FULL_PASS_WORKERS = 2


@dataclass(frozen=True)
class FleetResult:
    kind: str  # "full" or "incremental"
    violations: list[Violation]
    roadmaps_checked: int | None  # None: every roadmap
    since: str | None
    checked_at: str
    last_full_pass_at: str


def _utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def previous_pass(instance: dg.DagsterInstance) -> dict[str, Any] | None:
    """Metadata of the latest completed fleet check evaluation, as plain values."""
    records = instance.event_log_storage.get_asset_check_execution_history(FLEET_CHECK_KEY, limit=5)
    for record in records:
        entry = record.event
        event = entry.dagster_event if entry else None
        evaluation = getattr(event, "event_specific_data", None) if event else None
        metadata = getattr(evaluation, "metadata", None)
        if metadata and "checked_at" in metadata:
            return {key: getattr(value, "value", value) for key, value in metadata.items()}
    return None


def _roadmaps_with_events(instance: dg.DagsterInstance, since: datetime) -> set[str]:
    """Roadmaps whose content or framework assets Dagster materialized since ``since``."""
    found: set[str] = set()
    after = since.replace(tzinfo=UTC).timestamp()
    for asset_key in (*CONTENT_ASSETS, FRAMEWORK_ENTRY, FRAMEWORK_DATA):
        result = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=asset_key, after_timestamp=after), limit=10_000
        )
        for record in result.records:
            partition = record.partition_key or ""
            try:
                found.add(split_concept_key(partition)[0] if "/" in partition else partition)
            except UnsafeIdError:
                continue
    found.discard("")
    return found


def evaluate_fleet(
    instance: dg.DagsterInstance,
    database: RoadmapDatabase,
    full_pass_every_hours: float,
    force_full_pass: bool = False,
    exclude_run_id: str | None = None,
) -> FleetResult:
    now = _utcnow()
    previous = previous_pass(instance)
    activity = DagsterActivity(instance, exclude_run_id=exclude_run_id)
    last_full = _parse(previous.get("last_full_pass_at")) if previous else None
    due = (
        last_full is None
        or now - last_full >= timedelta(hours=full_pass_every_hours)
        or bool(previous and previous.get("violators_truncated"))
    )
    engine = database.get_engine()
    workers = max(1, min(FULL_PASS_WORKERS, database.pool_size))
    if force_full_pass or due or previous is None:
        violations = find_fleet_violations(engine, activity, workers=workers)
        return FleetResult("full", violations, None, None, now.isoformat(), now.isoformat())
    with connect(engine) as conn:
        # checked_at is when the previous pass started reading: rows written while it read are
        # newer than that, so nothing slips between two passes.
        since = _parse(previous.get("checked_at")) or now
        changed = roadmaps_changed_since(conn, since) | _roadmaps_with_events(instance, since)
    changed |= set(previous.get("violating_roadmap_ids") or [])
    violations = find_fleet_violations(engine, activity, workers=workers, roadmap_ids=changed)
    return FleetResult(
        "incremental",
        violations,
        len(changed),
        since.isoformat(),
        now.isoformat(),
        last_full.isoformat() if last_full else now.isoformat(),
    )


def _parse(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None

"""What ``roadmap-pipeline status`` shows: per item type how many concepts are completed, failed
or pending; the failed concepts with their reason; the task; the last check results.

The database answers the first three. Reasons and check results come from the Dagster instance
(``DAGSTER_HOME``) when there is one: the failure each failed run recorded for its items, and the
latest evaluation of each check; without an instance the checks are evaluated now instead.
"""

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import dagster as dg
from sqlalchemy import Engine, select

from roadmap_pipeline.domain.keys import UnsafeIdError, concept_key
from roadmap_pipeline.domain.statuses import ItemStatus
from roadmap_pipeline.orchestration.keys import (
    FLEET_CHECK_KEY,
    FRAMEWORK_DATA,
    ROADMAP_COMPLETE,
    ROADMAP_CONSISTENT,
    TASK_AGREES,
)
from roadmap_pipeline.store.activity import WorkInProgress
from roadmap_pipeline.store.database import connect
from roadmap_pipeline.store.invariants import Scope, find_violations, item_states
from roadmap_pipeline.store.schema import RoadmapTask

ROADMAP_CHECKS = (ROADMAP_CONSISTENT, TASK_AGREES, ROADMAP_COMPLETE)


@dataclass
class RoadmapStatus:
    roadmap_id: str
    counts: dict[str, Counter[str]] = field(default_factory=dict)  # item -> status -> concepts
    failed: dict[str, list[str]] = field(default_factory=dict)  # concept -> failed items
    reasons: dict[str, str] = field(default_factory=dict)  # "concept item" -> reason
    task_id: str | None = None
    task_status: str | None = None
    task_step: str | None = None
    checks: dict[str, str] = field(default_factory=dict)  # check -> "passed"/"failed: ..."


def gather(
    engine: Engine,
    roadmap_id: str | None,
    activity: WorkInProgress,
    instance: dg.DagsterInstance | None,
) -> tuple[list[RoadmapStatus], dict[str, str]]:
    """The status of one roadmap or of the fleet, and the fleet check's last result."""
    scope = Scope.roadmap(roadmap_id) if roadmap_id else Scope.fleet()
    with connect(engine) as conn:
        states = item_states(conn, scope)
        query = select(RoadmapTask).order_by(RoadmapTask.created_at)
        if roadmap_id:
            query = query.where(RoadmapTask.roadmap_id == roadmap_id)
        tasks = {t.roadmap_id: t for t in conn.execute(query)}  # the latest task wins
        violations = find_violations(conn, scope, activity) if instance is None else []
    roadmaps: dict[str, RoadmapStatus] = {}
    for state in states:
        status = roadmaps.setdefault(state.roadmap_id, RoadmapStatus(state.roadmap_id))
        status.counts.setdefault(state.item, Counter())[_bucket(state.status)] += 1
        if state.status == ItemStatus.FAILED:
            status.failed.setdefault(state.concept_id, []).append(state.item)
    for status in roadmaps.values():
        task = tasks.get(status.roadmap_id)
        if task is not None:
            status.task_id, status.task_status = str(task.task_id), task.status
            status.task_step = task.current_step
        if instance is None:
            mine = [v for v in violations if v.roadmap_id == status.roadmap_id]
            status.checks["consistency (evaluated now)"] = (
                "passed" if not mine else f"failed: {len(mine)} violation(s)"
            )
        else:
            status.checks = _last_checks(instance, status.roadmap_id)
            status.reasons = _failure_reasons(instance, status)
    fleet = _fleet_check(instance) if instance is not None else {}
    return sorted(roadmaps.values(), key=lambda s: s.roadmap_id), fleet


def _bucket(status: str | None) -> str:
    if status in (ItemStatus.COMPLETED, ItemStatus.FAILED):
        return str(status)
    return "pending"


def _last_checks(instance: dg.DagsterInstance, roadmap_id: str) -> dict[str, str]:
    found: dict[str, str] = {}
    storage = instance.event_log_storage
    for name in ROADMAP_CHECKS:
        key = dg.AssetCheckKey(FRAMEWORK_DATA, name)
        records = storage.get_asset_check_execution_history(key, limit=50)
        for record in records:
            evaluation = _evaluation(record)
            if evaluation is None or evaluation.partition != roadmap_id:
                continue
            found[name] = _describe_evaluation(evaluation)
            break
    return found


def _fleet_check(instance: dg.DagsterInstance) -> dict[str, str]:
    records = instance.event_log_storage.get_asset_check_execution_history(FLEET_CHECK_KEY, limit=5)
    for record in records:
        evaluation = _evaluation(record)
        if evaluation is not None:
            return {"fleet_consistency": _describe_evaluation(evaluation)}
    return {}


def _evaluation(record: Any) -> Any:
    entry = getattr(record, "event", None)
    event = getattr(entry, "dagster_event", None)
    evaluation = getattr(event, "event_specific_data", None)
    return evaluation if hasattr(evaluation, "passed") else None


def _describe_evaluation(evaluation: Any) -> str:
    if evaluation.passed:
        return "passed"
    counts = getattr(evaluation.metadata.get("counts_by_rule"), "value", None)
    failed = getattr(evaluation.metadata.get("failed_items"), "value", None)
    detail = counts if counts else (f"{failed} failed item(s)" if failed else "")
    return f"failed {detail}".strip()


def _failure_reasons(instance: dg.DagsterInstance, status: RoadmapStatus) -> dict[str, str]:
    """The reason the latest failed run gave for each failed item of this roadmap."""
    wanted: dict[str, str] = {}
    for concept_id, items in status.failed.items():
        try:
            key = concept_key(status.roadmap_id, concept_id)
        except UnsafeIdError:
            continue
        for item in items:
            wanted[f"{key} {item}"] = f"{concept_id} {item}"
    if not wanted:
        return {}
    reasons: dict[str, str] = {}
    runs = instance.get_runs(
        filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.FAILURE]), limit=200
    )
    for run in runs:  # newest first: the latest reason wins
        for record in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_FAILURE):
            data = getattr(record.dagster_event, "event_specific_data", None)
            metadata = getattr(getattr(data, "user_failure_data", None), "metadata", None) or {}
            for line in getattr(metadata.get("failed"), "value", None) or []:
                head, _, reason = str(line).partition(": ")
                if head in wanted and wanted[head] not in reasons:
                    reasons[wanted[head]] = reason
        if len(reasons) == len(wanted):
            break
    return reasons

"""Sensors: intake of new work, and settlement of roadmaps whose concept work has finished.

Both read Dagster's own run status to decide whether work is still running, never ages.
"""

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import dagster as dg
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
)

from roadmap_pipeline.domain.framework import FrameworkError, load_framework
from roadmap_pipeline.domain.keys import UnsafeIdError
from roadmap_pipeline.orchestration.activity import DagsterActivity
from roadmap_pipeline.orchestration.assets import framework_metadata
from roadmap_pipeline.orchestration.jobs import generate_concepts_job, roll_up_job
from roadmap_pipeline.orchestration.keys import (
    CONTENT_ASSETS,
    FLEET_CHECK_KEY,
    FRAMEWORK_DATA,
    FRAMEWORK_ENTRY,
    ITEM_ASSETS,
    ROADMAP_FRAMEWORK,
    ROADMAP_TAG,
    SETTLE_CHECKS,
    task_tags,
)
from roadmap_pipeline.orchestration.partitions import (
    CONCEPTS,
    ROADMAPS,
    KeyOrder,
    RoadmapKeys,
    contiguous_ranges,
    registration_requests,
    roadmap_keys,
)
from roadmap_pipeline.orchestration.resources import RoadmapDatabase
from roadmap_pipeline.orchestration.run_history import finished_since
from roadmap_pipeline.store.database import connect, transaction
from roadmap_pipeline.store.intake import intake_candidates
from roadmap_pipeline.store.invariants import Scope
from roadmap_pipeline.store.sync import current_rows
from roadmap_pipeline.store.writers import fail_task, start_task

INTAKE_BATCH = 20


def range_tags(key_range: dg.PartitionKeyRange) -> dict[str, str]:
    return {
        ASSET_PARTITION_RANGE_START_TAG: key_range.start,
        ASSET_PARTITION_RANGE_END_TAG: key_range.end,
    }


def concept_run_requests(
    roadmap_id: str,
    ordered: Sequence[str],
    wanted: Iterable[str],
    assets: Iterable[dg.AssetKey],
    run_key: str,
    tags: dict[str, str] | None = None,
) -> list[dg.RunRequest]:
    """One run per contiguous key range (a whole roadmap registered at once: one run)."""
    requests = []
    for i, key_range in enumerate(contiguous_ranges(ordered, wanted)):
        requests.append(
            dg.RunRequest(
                run_key=f"{run_key}:{i}",
                job_name=generate_concepts_job.name,
                asset_selection=list(assets),
                tags={ROADMAP_TAG: roadmap_id, **(tags or {}), **range_tags(key_range)},
            )
        )
    return requests


def intake_sensor(interval_s: int = 10) -> dg.SensorDefinition:
    @dg.sensor(
        job=generate_concepts_job,
        minimum_interval_seconds=interval_s,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            "Picks up new work: a pending creation task, or a roadmap row never seen before. "
            "Validates the framework, registers the roadmap and its concepts as partitions (one "
            "call per roadmap), records roadmap_framework, moves the task to processing and "
            "requests one run per roadmap (content + framework_entry over its concept range). A "
            "framework whose ids cannot be partition keys fails its task with the reason."
        ),
    )
    def roadmap_intake(
        context: dg.SensorEvaluationContext, database: RoadmapDatabase
    ) -> dg.SensorResult | dg.SkipReason:
        rejected: set[str] = set(json.loads(context.cursor or "[]"))
        instance = context.instance
        registered = set(instance.get_dynamic_partitions("roadmaps"))
        engine = database.get_engine()
        with connect(engine) as conn:
            candidates = intake_candidates(conn, registered | rejected, INTAKE_BATCH)
        if not candidates:
            return dg.SkipReason("no pending creation task and no unregistered roadmap")
        ensure_pools(instance)
        concept_order = list(instance.get_dynamic_partitions(CONCEPTS.name or ""))
        known_concepts = set(concept_order)
        partition_requests: list[dg.AddDynamicPartitionsRequest] = []
        run_requests: list[dg.RunRequest] = []
        events: list[dg.AssetMaterialization] = []
        for candidate in candidates:
            try:
                framework = load_framework(candidate.document)
                keys = roadmap_keys(framework)
            except (FrameworkError, UnsafeIdError) as exc:
                message = f"roadmap {candidate.roadmap_id!r} cannot be processed: {exc}"
                context.log.error(message)
                rejected.add(candidate.roadmap_id)
                if candidate.task_id:
                    with transaction(engine) as conn:
                        fail_task(conn, candidate.task_id, message)
                continue
            adds = registration_requests(keys, registered, known_concepts)
            partition_requests += adds
            new_keys: set[str] = set()
            for add in adds:
                if add.partitions_def_name == CONCEPTS.name:
                    concept_order += list(add.partition_keys)
                    new_keys |= set(add.partition_keys)
            known_concepts |= new_keys
            events.append(
                dg.AssetMaterialization(
                    asset_key=ROADMAP_FRAMEWORK,
                    partition=keys.roadmap_id,
                    metadata=framework_metadata(candidate.document, keys.concept_keys),
                )
            )
            with connect(engine) as conn:
                rows = current_rows(conn, Scope.roadmap(keys.roadmap_id))
            unrecorded = {(k, a) for k in new_keys for a in CONTENT_ASSETS}
            events += adopted_row_events(keys, rows, unrecorded)
            missing = missing_items(framework, keys, rows, pending_task=bool(candidate.task_id))
            tags = task_tags(candidate.task_id) if candidate.task_id else {}
            run_requests += grouped_run_requests(
                keys.roadmap_id,
                concept_order,
                missing,
                run_key=f"intake:{keys.roadmap_id}:{candidate.task_id or 'untracked'}",
                tags=tags,
            )
            if candidate.task_id:
                with transaction(engine) as conn:
                    start_task(conn, candidate.task_id)
        return dg.SensorResult(
            run_requests=run_requests,
            dynamic_partitions_requests=partition_requests,
            asset_events=events,
            cursor=json.dumps(sorted(rejected)[-1000:]),
        )

    return roadmap_intake


POOLS = ("llm", "database")


def ensure_pools(instance: dg.DagsterInstance) -> None:
    """Create the pools' limit rows (the instance's default limit) before any run needs them.

    Dagster creates a pool's row when a step first claims it; two runs doing that at the same
    moment collide on the row's unique key and one of them fails (seen with dagster-postgres
    1.13). The intake sensor runs before the runs it launches, one tick at a time.
    """
    storage: Any = instance.event_log_storage
    if not getattr(storage, "supports_global_concurrency_limits", False):
        return
    configured = set(storage.get_concurrency_keys())
    for pool in POOLS:
        if pool not in configured:
            storage.initialize_concurrency_limit_to_default(pool)


def missing_items(
    framework: Any,
    keys: RoadmapKeys,
    rows: dict[tuple[str, str, str], Any],
    *,
    pending_task: bool,
) -> dict[str, set[str]]:
    """Content assets to generate per concept key: items without a current row. Without a
    pending task (a roadmap adopted from the service), only items never generated (pending)."""
    missing: dict[str, set[str]] = {}
    for key, concept_id in keys.concepts.items():
        concept = framework.concept(concept_id).concept
        for item, asset_key in ITEM_ASSETS.items():
            if (keys.roadmap_id, concept_id, item.value) in rows:
                continue
            if pending_task or concept.item_status(item) == "pending":
                missing.setdefault(key, set()).add(asset_key.to_user_string())
    return missing


def adopted_row_events(
    keys: RoadmapKeys,
    rows: dict[tuple[str, str, str], Any],
    unrecorded: set[tuple[str, dg.AssetKey]],
) -> list[dg.AssetMaterialization]:
    """Rows that exist before Dagster ever saw the concept (an adopted service database, or a
    run that died before recording them) become materializations, so that the partition status
    shows the data as it is and nothing is generated again."""
    events = []
    for key, concept_id in keys.concepts.items():
        for item, asset_key in ITEM_ASSETS.items():
            row = rows.get((keys.roadmap_id, concept_id, item.value))
            if row is not None and (key, asset_key) in unrecorded:
                events.append(
                    dg.AssetMaterialization(
                        asset_key=asset_key,
                        partition=key,
                        metadata={"row_id": row.row_id, "recorded_from": "an existing row"},
                    )
                )
    return events


def grouped_run_requests(
    roadmap_id: str,
    order: Sequence[str],
    missing: dict[str, set[str]],
    run_key: str,
    tags: dict[str, str] | None = None,
) -> list[dg.RunRequest]:
    """Runs for the missing items: concepts that miss the same items share a run (one per
    contiguous key range); each run also syncs the entries of its concepts."""
    groups: dict[tuple[str, ...], list[str]] = {}
    for key, assets in missing.items():
        groups.setdefault(tuple(sorted(assets)), []).append(key)
    requests: list[dg.RunRequest] = []
    for asset_names, group_keys in sorted(groups.items()):
        requests += concept_run_requests(
            roadmap_id,
            order,
            group_keys,
            [*(dg.AssetKey(a) for a in asset_names), FRAMEWORK_ENTRY],
            run_key=f"{run_key}:{'+'.join(asset_names)}",
            tags=tags,
        )
    return requests


@dataclass
class SettlementCursor:
    since: float = 0.0  # update timestamp of the last finished run read
    pending: dict[str, list[Any]] = field(default_factory=dict)  # roadmap -> [run id, updated]

    @classmethod
    def parse(cls, raw: str | None) -> "SettlementCursor":
        if not raw:
            return cls()
        data = json.loads(raw)
        return cls(float(data.get("since", 0.0)), dict(data.get("pending", {})))

    def dump(self) -> str:
        return json.dumps({"since": self.since, "pending": self.pending}, sort_keys=True)


def rolled_up_since(
    instance: dg.DagsterInstance, roadmap_id: str, run_id: str, updated: float
) -> bool:
    """Whether framework_data of the roadmap was materialized by that run or after it."""
    latest = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=FRAMEWORK_DATA, asset_partitions=[roadmap_id]), limit=1
    ).records
    return bool(latest) and (latest[0].run_id == run_id or latest[0].timestamp >= updated)


def settlement_sensor(interval_s: int = 10) -> dg.SensorDefinition:
    @dg.sensor(
        jobs=[generate_concepts_job, roll_up_job],
        minimum_interval_seconds=interval_s,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            "Settles roadmaps whose concept work has finished: after a run that touched a "
            "roadmap's content finishes (succeeded, failed or canceled) and no queued or running "
            "run touches the roadmap any more, requests framework_entry over its whole concept "
            "range, which syncs every entry and rolls the roadmap up (framework_data, the task "
            "status and the roadmap checks). Skipped when the run rolled the roadmap up itself; "
            "a roadmap whose keys are not contiguous gets a framework_data run instead."
        ),
    )
    def roadmap_settlement(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
        state = SettlementCursor.parse(context.cursor)
        instance = context.instance
        order = KeyOrder(instance, CONCEPTS)
        for run in finished_since(instance, state.since, order):
            state.since = max(state.since, run.updated)
            if run.content_assets:
                for roadmap_id in run.roadmap_ids:
                    state.pending[roadmap_id] = [run.run_id, run.updated]
        if not state.pending:
            return dg.SensorResult(cursor=state.dump())
        activity = DagsterActivity(instance).active(set(state.pending))
        requests: list[dg.RunRequest] = []
        for roadmap_id, (run_id, updated) in sorted(state.pending.items()):
            if activity.covers_roadmap(roadmap_id):
                continue  # settle once nothing runs on it any more
            del state.pending[roadmap_id]
            if rolled_up_since(instance, roadmap_id, run_id, updated):
                continue
            keys = [k for k in order if k.startswith(f"{roadmap_id}/")]
            ranges = contiguous_ranges(order, keys)
            if not ranges:
                continue
            if len(ranges) == 1:
                requests.append(
                    dg.RunRequest(
                        run_key=f"settle:{roadmap_id}:{run_id}",
                        job_name=generate_concepts_job.name,
                        asset_selection=[FRAMEWORK_ENTRY],
                        asset_check_keys=list(SETTLE_CHECKS),
                        tags={ROADMAP_TAG: roadmap_id, **range_tags(ranges[0])},
                    )
                )
            else:
                requests.append(
                    dg.RunRequest(
                        run_key=f"settle:{roadmap_id}:{run_id}",
                        job_name=roll_up_job.name,
                        partition_key=roadmap_id,
                        tags={ROADMAP_TAG: roadmap_id},
                    )
                )
        return dg.SensorResult(run_requests=requests, cursor=state.dump())

    return roadmap_settlement


def repair_sensor(interval_s: int = 60) -> dg.SensorDefinition:
    @dg.sensor(
        job=roll_up_job,
        minimum_interval_seconds=interval_s,
        default_status=dg.DefaultSensorStatus.STOPPED,
        description=(
            "Opt-in repair automation (off by default): after each fleet_consistency evaluation, "
            "rematerializes framework_data for every roadmap it lists as repairable (and that no "
            "queued or running run touches). Rules that need a human are never touched."
        ),
    )
    def consistency_repair(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
        instance = context.instance
        latest = instance.event_log_storage.get_latest_asset_check_execution_by_key(
            [FLEET_CHECK_KEY]
        ).get(FLEET_CHECK_KEY)
        entry = latest.event if latest else None
        evaluation = (
            entry.dagster_event.event_specific_data if entry and entry.dagster_event else None
        )
        metadata = getattr(evaluation, "metadata", None) or {}
        if latest is None or not metadata:
            return dg.SkipReason("no fleet_consistency evaluation yet")
        marker = str(latest.id)
        if context.cursor == marker:
            return dg.SkipReason("the latest fleet_consistency evaluation was handled")
        repairable = [str(r) for r in getattr(metadata.get("repairable_roadmaps"), "value", [])]
        registered = set(instance.get_dynamic_partitions(ROADMAPS.name or ""))
        active = DagsterActivity(instance).active(repairable)
        requests = [
            dg.RunRequest(
                run_key=f"repair:{roadmap_id}:{marker}",
                partition_key=roadmap_id,
                tags={ROADMAP_TAG: roadmap_id, "roadmap_pipeline/purpose": "repair"},
            )
            for roadmap_id in repairable
            if roadmap_id in registered and not active.covers_roadmap(roadmap_id)
        ]
        return dg.SensorResult(run_requests=requests, cursor=marker)

    return consistency_repair

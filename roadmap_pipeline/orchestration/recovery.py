"""Retry and recovery sensors: the fourth retry layer (failed partitions) and stuck tasks.

The four layers (README "Retries"):

1. LangGraph node ``RetryPolicy`` for transient LLM errors (generation/workflow.py);
2. a Dagster ``RetryPolicy`` on each step for transient database errors (assets.py);
3. run retries for crashed runs (``run_retries`` in dagster.yaml; a SIGKILLed run worker is
   reported failed by the code server and re-executed with the same root run, so every concept's
   LangGraph thread resumes with the same generation ids);
4. ``failed_partition_retry`` below: failed content partitions are rematerialized with a capped
   number of attempts and a growing delay; past the cap they stay failed (the task says
   ``partial_failure`` naming them). Runs that layer 3 re-executes count no attempt.

``stuck_task_recovery`` relaunches the missing and failed partitions of a task that is
``processing`` while no queued or running run touches its roadmap (judged from Dagster's run
status; the delay only debounces the moment between intake and the run's creation).
"""

import hashlib
import json
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import dagster as dg

from roadmap_pipeline.domain.framework import load_framework
from roadmap_pipeline.domain.keys import split_concept_key
from roadmap_pipeline.orchestration.activity import RETRY_PROMISE_S, DagsterActivity
from roadmap_pipeline.orchestration.jobs import generate_concepts_job
from roadmap_pipeline.orchestration.keys import (
    ATTEMPT_TAG,
    CONTENT_ASSETS,
    FRAMEWORK_ENTRY,
    REQUEST_TAG,
    ROADMAP_TAG,
    SETTLE_CHECKS,
    task_tags,
)
from roadmap_pipeline.orchestration.partitions import (
    CONCEPTS,
    KeyOrder,
    contiguous_ranges,
    roadmap_keys,
)
from roadmap_pipeline.orchestration.resources import RoadmapDatabase
from roadmap_pipeline.orchestration.run_history import (
    finished_recently,
    finished_runs,
    finished_since,
    has_retry,
    last_finished_at,
    roadmap_of_key,
)
from roadmap_pipeline.orchestration.sensors import (
    adopted_row_events,
    concept_run_requests,
    grouped_run_requests,
    missing_items,
    range_tags,
)
from roadmap_pipeline.store.database import connect
from roadmap_pipeline.store.intake import processing_tasks
from roadmap_pipeline.store.invariants import Scope
from roadmap_pipeline.store.readers import documents
from roadmap_pipeline.store.sync import current_rows

PURPOSE_TAG = "roadmap_pipeline/purpose"


@dataclass(frozen=True)
class RetrySettings:
    interval_s: int = 15  # how often the sensor looks
    max_retries: int = 3  # retries after the first failure; then the partition stays failed
    base_delay_s: float = 30.0  # first retry after this; doubled for every further failure
    max_delay_s: float = 900.0

    def delay(self, failures: int) -> float:
        return min(self.max_delay_s, self.base_delay_s * 2 ** max(0, failures - 1))


@dataclass(frozen=True)
class RecoverySettings:
    """As the service had them: on/off, maximum task age, concurrent recoveries, a delay."""

    enabled: bool = True
    interval_s: int = 30  # how often the sensor looks
    max_task_age_hours: float = 72.0  # older stuck tasks are left to a human (the checks say so)
    max_concurrent_recoveries: int = 2
    delay_s: float = 60.0


COUNTED_RUNS_KEPT_S = 86_400.0


@dataclass
class RetryCursor:
    since: float = 0.0  # update timestamp of the last finished run read
    failures: dict[str, list[float]] = field(default_factory=dict)  # "asset|key" -> [n, last ts]
    # Failed runs already counted (run id -> update timestamp): a finished run comes back when
    # its tags change (Dagster adds some after the failure), and must not count twice.
    counted: dict[str, float] = field(default_factory=dict)
    # The request of the run that failed each "asset|key": its retry serves the same request, so
    # whatever that run (or a run racing it) wrote is found in the ledger, not generated again.
    requests: dict[str, str] = field(default_factory=dict)
    # Failed runs Dagster has not tagged with its retry decision yet (run id -> update
    # timestamp): looked at again every tick until it decides, or until its promise lapses.
    undecided: dict[str, float] = field(default_factory=dict)

    @classmethod
    def start(cls, instance: dg.DagsterInstance) -> "RetryCursor":
        """The first tick (or the first after a cursor reset) starts after the last finished
        run, as Dagster's run status sensors do: the sensor retries what fails while it is on.
        Partitions that failed before are the operator's (the UI's backfill of failed
        partitions; ``roadmap_complete`` names them), e.g. the demo's, which `make dev` shows."""
        return cls(since=last_finished_at(instance))

    @classmethod
    def parse(cls, raw: str) -> "RetryCursor":
        data = json.loads(raw)
        return cls(
            float(data.get("since", 0.0)),
            dict(data.get("failures", {})),
            dict(data.get("counted", {})),
            dict(data.get("requests", {})),
            dict(data.get("undecided", {})),
        )

    def dump(self) -> str:
        data = {
            "since": self.since,
            "failures": self.failures,
            "counted": self.counted,
            "requests": self.requests,
            "undecided": self.undecided,
        }
        return json.dumps(data, sort_keys=True)


def _statuses(
    instance: dg.DagsterInstance, asset_key: dg.AssetKey, keys: Sequence[str]
) -> dict[str, dg.AssetPartitionStatus | None]:
    found = instance.get_status_by_partition(asset_key, list(keys), CONCEPTS)
    return dict(found or {})


def _read_failures(instance: dg.DagsterInstance, state: RetryCursor, order: Sequence[str]) -> None:
    """One more failure for every (asset, partition) a newly failed run left FAILED; drop the
    ones that are materialized now.

    A failed run that Dagster's run retries re-execute (a crashed run worker) is not a failure
    of its partitions yet: its re-execution's outcome is. So crashes do not use up the attempts
    that are meant for failing items. Dagster tags its decision just after the failure and then
    launches the retry; a run read before that is looked at again each tick. A retry promised
    but not launched within RETRY_PROMISE_S, the window in which the other sensors treat such a
    run as still active, is taken as not coming (Dagster's daemon follows failures by event-log
    position and can miss one, dagster-io/dagster#33741): this layer retries it then."""
    now = time.time()
    runs = finished_since(instance, state.since, order)
    for run in runs:
        state.since = max(state.since, run.updated)
    seen = {run.run_id for run in runs}
    runs += [r for r in finished_runs(instance, state.undecided, order) if r.run_id not in seen]
    # A run deleted while undecided is forgotten.
    state.undecided = {r.run_id: r.updated for r in runs if r.run_id in state.undecided}
    for run in runs:
        if run.status != dg.DagsterRunStatus.FAILURE or not run.concept_keys:
            continue
        if run.retried or run.run_id in state.counted:
            state.undecided.pop(run.run_id, None)
            continue
        promised = run.retry_decision == "true" or (
            instance.run_retries_enabled and run.retry_decision is None
        )
        if promised and now - run.updated < RETRY_PROMISE_S:
            state.undecided[run.run_id] = run.updated
            continue
        state.undecided.pop(run.run_id, None)
        if promised and has_retry(instance, run.run_id):
            continue  # retried, though its parent was never tagged with the retry
        state.counted[run.run_id] = run.updated
        for asset_key in run.content_assets:
            for key, status in _statuses(instance, asset_key, run.concept_keys).items():
                if status == dg.AssetPartitionStatus.FAILED:
                    name = f"{asset_key.to_user_string()}|{key}"
                    count = int(state.failures.get(name, [0, 0])[0]) + 1
                    state.failures[name] = [count, run.updated]
                    state.requests[name] = run.request_id
    state.counted = {
        run_id: updated
        for run_id, updated in state.counted.items()
        if updated >= state.since - COUNTED_RUNS_KEPT_S
    }
    by_asset: dict[str, list[str]] = defaultdict(list)
    for name in state.failures:
        asset, key = name.split("|", 1)
        by_asset[asset].append(key)
    for asset, keys in by_asset.items():
        statuses = _statuses(instance, dg.AssetKey(asset), [k for k in keys if k in order])
        for key in keys:
            if key not in order or statuses.get(key) == dg.AssetPartitionStatus.MATERIALIZED:
                state.failures.pop(f"{asset}|{key}", None)
    state.requests = {name: r for name, r in state.requests.items() if name in state.failures}


def failed_partition_retry_sensor(settings: RetrySettings, running: bool) -> dg.SensorDefinition:
    @dg.sensor(
        name="failed_partition_retry",
        job=generate_concepts_job,
        minimum_interval_seconds=settings.interval_s,
        default_status=dg.DefaultSensorStatus.RUNNING
        if running
        else dg.DefaultSensorStatus.STOPPED,
        description=(
            f"Retry layer 4: rematerializes failed content partitions (only the failed items) "
            f"after {settings.base_delay_s:.0f}s, doubling the delay per failure, at most "
            f"{settings.max_retries} times; the attempt number is the run tag "
            f"{ATTEMPT_TAG}. Past the cap a concept stays failed and its task says "
            "partial_failure naming it. Each retry resumes the concept's LangGraph checkpoint. "
            "It retries what fails while it is on: partitions that failed before its first "
            "tick (or a cursor reset) are left to a backfill of failed partitions."
        ),
    )
    def failed_partition_retry(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        instance = context.instance
        if not context.cursor:
            return dg.SensorResult(cursor=RetryCursor.start(instance).dump())
        state = RetryCursor.parse(context.cursor)
        order = KeyOrder(instance, CONCEPTS)
        _read_failures(instance, state, order)
        now = time.time()
        due: dict[str, dict[str, int]] = defaultdict(dict)  # key -> asset -> failures
        for name, (count, last) in state.failures.items():
            failures = int(count)
            if failures > settings.max_retries or now < last + settings.delay(failures):
                continue
            asset, key = name.split("|", 1)
            due[key][asset] = failures
        if not due:
            return dg.SensorResult(cursor=state.dump())
        work = DagsterActivity(instance).active({r for r in map(roadmap_of_key, due) if r})
        # One run per (roadmap, failed assets, request): a retry serves the failed run's request.
        groups: dict[tuple[str, tuple[str, ...], str], list[str]] = defaultdict(list)
        attempts: dict[tuple[str, tuple[str, ...], str], int] = {}
        for key, failed_assets in due.items():
            roadmap_id = roadmap_of_key(key)
            if roadmap_id is None or key not in order:
                continue
            _, short = split_concept_key(key)
            if roadmap_id in work.roadmaps or (roadmap_id, short) in work.concepts:
                continue  # a run already works on it: never a second one
            by_request: dict[str, list[str]] = defaultdict(list)
            for asset in failed_assets:
                by_request[state.requests.get(f"{asset}|{key}", "")].append(asset)
            for request_id, names in by_request.items():
                group = (roadmap_id, tuple(sorted(names)), request_id)
                groups[group].append(key)
                tried = max(failed_assets[a] for a in names)
                attempts[group] = max(attempts.get(group, 0), tried + 1)
        requests: list[dg.RunRequest] = []
        for group, keys in sorted(groups.items()):
            roadmap_id, assets, request_id = group
            marker = ",".join(f"{k}:{due[k][a]}" for k in sorted(keys) for a in assets)
            tags = {ATTEMPT_TAG: str(attempts[group]), PURPOSE_TAG: "retry"}
            if request_id:
                tags[REQUEST_TAG] = request_id
            requests += concept_run_requests(
                roadmap_id,
                order,
                keys,
                [*(dg.AssetKey(a) for a in assets), FRAMEWORK_ENTRY],
                run_key=f"retry:{roadmap_id}:{hash_marker(f'{request_id}|{marker}')}",
                tags=tags,
            )
        return dg.SensorResult(run_requests=requests, cursor=state.dump())

    return failed_partition_retry


def hash_marker(marker: str) -> str:
    """A short run-key part: one retry run per set of (partition, failure count)."""
    return hashlib.sha256(marker.encode()).hexdigest()[:16]


def stuck_task_recovery_sensor(settings: RecoverySettings) -> dg.SensorDefinition:
    @dg.sensor(
        name="stuck_task_recovery",
        job=generate_concepts_job,
        minimum_interval_seconds=settings.interval_s,
        default_status=(
            dg.DefaultSensorStatus.RUNNING if settings.enabled else dg.DefaultSensorStatus.STOPPED
        ),
        description=(
            "Recovers a task that is processing while no queued or running run touches its "
            "roadmap (judged from Dagster's run status): relaunches its missing and failed "
            f"content partitions, or settles it when nothing is missing. Tasks older than "
            f"{settings.max_task_age_hours:g}h are left to a human; at most "
            f"{settings.max_concurrent_recoveries} recoveries run at once; a task, and its "
            f"roadmap's last run, must have been still for {settings.delay_s:.0f}s (the moments "
            "between intake and its run, and between a run's end and its settlement)."
        ),
    )
    def stuck_task_recovery(
        context: dg.SensorEvaluationContext, database: RoadmapDatabase
    ) -> dg.SensorResult | dg.SkipReason:
        instance = context.instance
        now = datetime.now(UTC).replace(tzinfo=None)
        with connect(database.get_engine()) as conn:
            tasks = processing_tasks(conn)
        candidates = [
            t
            for t in tasks
            if now - t.updated_at >= timedelta(seconds=settings.delay_s)
            and now - t.created_at <= timedelta(hours=settings.max_task_age_hours)
        ]
        if not candidates:
            return dg.SkipReason("no processing task is without a run")
        running = instance.get_runs(
            filters=dg.RunsFilter(
                statuses=[
                    dg.DagsterRunStatus.QUEUED,
                    dg.DagsterRunStatus.NOT_STARTED,
                    dg.DagsterRunStatus.STARTING,
                    dg.DagsterRunStatus.STARTED,
                ],
                tags={PURPOSE_TAG: "recovery"},
            )
        )
        budget = settings.max_concurrent_recoveries - len(running)
        activity = DagsterActivity(instance).active({t.roadmap_id for t in candidates})
        order = KeyOrder(instance, CONCEPTS)
        requests: list[dg.RunRequest] = []
        events: list[dg.AssetMaterialization] = []
        for task in candidates:
            if budget <= 0:
                break
            if activity.covers_roadmap(task.roadmap_id):
                continue
            if finished_recently(instance, {ROADMAP_TAG: task.roadmap_id}, settings.delay_s):
                # Its last run has just ended: the settlement (or a retry) acts on it first; a
                # recovery now would retry a concept past the retry cap once more.
                continue
            keys = [k for k in order if k.startswith(f"{task.roadmap_id}/")]
            if not keys:
                continue  # never registered: the intake sensor owns it
            new, recorded = recovery_requests(instance, database, task, keys, order)
            events += recorded
            if new:
                requests += new
                budget -= 1
                context.log.info(f"recovering task {task.task_id} of {task.roadmap_id}")
        return dg.SensorResult(run_requests=requests, asset_events=events)

    return stuck_task_recovery


def recovery_requests(
    instance: dg.DagsterInstance,
    database: RoadmapDatabase,
    task: Any,
    keys: list[str],
    order: Sequence[str],
) -> tuple[list[dg.RunRequest], list[dg.AssetMaterialization]]:
    """Runs for the items that have no row (judged from the data, not from Dagster's record,
    which a dead run never completed), or one settle run when every row exists. Rows Dagster
    never recorded are reported as materializations, so nothing is generated twice."""
    with connect(database.get_engine()) as conn:
        document = documents(conn, [task.roadmap_id]).get(task.roadmap_id)
        rows = current_rows(conn, Scope.roadmap(task.roadmap_id))
    if document is None:
        return [], []
    roadmap = roadmap_keys(load_framework(document))
    recorded = {asset_key: _statuses(instance, asset_key, keys) for asset_key in CONTENT_ASSETS}
    unrecorded = {
        (key, asset_key)
        for key in roadmap.concept_keys
        for asset_key in CONTENT_ASSETS
        if recorded[asset_key].get(key) != dg.AssetPartitionStatus.MATERIALIZED
    }
    events = adopted_row_events(roadmap, rows, unrecorded)
    missing = missing_items(load_framework(document), roadmap, rows, pending_task=True)
    marker = f"recover:{task.task_id}:{task.updated_at.isoformat()}"
    tags = {PURPOSE_TAG: "recovery", **task_tags(task.task_id)}
    if missing:
        return grouped_run_requests(task.roadmap_id, order, missing, marker, tags), events
    ranges = contiguous_ranges(order, keys)
    settle = [
        dg.RunRequest(
            run_key=f"{marker}:settle:{i}",
            job_name=generate_concepts_job.name,
            asset_selection=[FRAMEWORK_ENTRY],
            asset_check_keys=list(SETTLE_CHECKS),
            tags={ROADMAP_TAG: task.roadmap_id, **tags, **range_tags(key_range)},
        )
        for i, key_range in enumerate(ranges)
    ]
    return settle, events

"""What finished runs touched: their roadmaps, concept keys and content assets.

The settlement and retry sensors follow finished runs rather than failure events: Dagster's OSS
event log does not index a failed partition as an event (its FAILED partition status is derived
from the planned partitions of failed runs), so a run is the unit both sensors react to.
"""

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import dagster as dg
from dagster._core.storage.dagster_run import RunRecord
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
    AUTO_RETRY_RUN_ID_TAG,
    PARENT_RUN_ID_TAG,
    PARTITION_NAME_TAG,
    WILL_RETRY_TAG,
)

from roadmap_pipeline.domain.keys import UnsafeIdError, split_concept_key
from roadmap_pipeline.orchestration.keys import CONTENT_ASSETS, request_of

FINISHED = [
    dg.DagsterRunStatus.SUCCESS,
    dg.DagsterRunStatus.FAILURE,
    dg.DagsterRunStatus.CANCELED,
]
BATCH = 200


@dataclass(frozen=True)
class FinishedRun:
    run_id: str
    status: dg.DagsterRunStatus
    updated: float  # update timestamp (seconds)
    concept_keys: tuple[str, ...]
    roadmap_ids: frozenset[str]
    content_assets: frozenset[dg.AssetKey]
    # Dagster's decision whether run retries (retry layer 3) re-execute a failed run: "true" or
    # "false", tagged just after the failure on instances with run retries; None until then.
    retry_decision: str | None = None
    request_id: str = ""  # the request it served (keys.request_of): its retries serve it too
    retried: bool = False  # Dagster's run retries launched its re-execution


def has_retry(instance: dg.DagsterInstance, run_id: str) -> bool:
    """Whether a re-execution of the run exists (its own or its parent's tag aside)."""
    children = dg.RunsFilter(tags={PARENT_RUN_ID_TAG: run_id})
    return bool(instance.get_run_records(filters=children, limit=1))


def roadmap_of_key(key: str) -> str | None:
    """The roadmap of a partition key of either family (None for a malformed key)."""
    if "/" not in key:
        return key or None
    try:
        return split_concept_key(key)[0]
    except UnsafeIdError:
        return None


def finished_since(
    instance: dg.DagsterInstance, since: float, ordering: Sequence[str]
) -> list[FinishedRun]:
    """Runs finished (updated) after ``since``, oldest first, with what they touched."""
    records = instance.get_run_records(
        filters=dg.RunsFilter(
            statuses=FINISHED, updated_after=datetime.fromtimestamp(since, tz=UTC)
        ),
        order_by="update_timestamp",
        ascending=True,
        limit=BATCH,
    )
    return [_describe(record, ordering) for record in records]


def finished_runs(
    instance: dg.DagsterInstance, run_ids: Iterable[str], ordering: Sequence[str]
) -> list[FinishedRun]:
    """These runs as they are now (a run deleted since is left out)."""
    wanted = list(run_ids)
    if not wanted:
        return []
    records = instance.get_run_records(filters=dg.RunsFilter(run_ids=wanted))
    return [_describe(record, ordering) for record in records]


def last_finished_at(instance: dg.DagsterInstance) -> float:
    """The update timestamp (seconds) of the run that finished last; 0.0 when none has."""
    records = instance.get_run_records(
        filters=dg.RunsFilter(statuses=FINISHED),
        order_by="update_timestamp",
        ascending=False,
        limit=1,
    )
    return records[0].update_timestamp.timestamp() if records else 0.0


def finished_recently(
    instance: dg.DagsterInstance, tags: Mapping[str, str], within_s: float
) -> bool:
    """Whether a run with these tags finished (or changed after finishing) in the last
    ``within_s`` seconds: its outcome may not be settled yet."""
    records = instance.get_run_records(
        filters=dg.RunsFilter(
            statuses=FINISHED,
            tags=dict(tags),
            updated_after=datetime.fromtimestamp(time.time() - within_s, tz=UTC),
        ),
        limit=1,
    )
    return bool(records)


def created_at(instance: dg.DagsterInstance, run_id: str) -> float | None:
    """When the run was created, by the time of its first event (None for an unknown run)."""
    first = instance.get_records_for_run(run_id, limit=1).records
    return first[0].timestamp if first else None


def materialized_after(
    instance: dg.DagsterInstance,
    after: float,
    run_id: str,
    assets: Sequence[dg.AssetKey],
    keys: Sequence[str],
) -> dict[tuple[dg.AssetKey, str], str]:
    """The (asset, partition) pairs that a run other than ``run_id`` materialized after the
    time ``after``, with that run's id. Given this run's ``created_at``, they are the work this
    run was asked for that has been done since (a UI backfill of failed partitions launched
    while their automatic retry was running, or the reverse).

    Times are the event log's (this run's first event; the materializations'), both written by
    Dagster processes, so the comparison holds on the sharded SQLite storage too, where storage
    ids of different runs are not comparable."""
    done: dict[tuple[dg.AssetKey, str], str] = {}
    if not keys:
        return done
    for asset in assets:
        records_filter = dg.AssetRecordsFilter(
            asset_key=asset, asset_partitions=list(keys), after_timestamp=after
        )
        cursor = None
        while True:
            found = instance.fetch_materializations(records_filter, limit=BATCH, cursor=cursor)
            for record in found.records:
                if record.run_id != run_id and record.partition_key:
                    done.setdefault((asset, record.partition_key), record.run_id)
            if not found.has_more:
                break
            cursor = found.cursor
    return done


def _describe(record: RunRecord, ordering: Sequence[str]) -> FinishedRun:
    run = record.dagster_run
    keys = run_keys(run.tags, ordering)
    selection = set(run.asset_selection or CONTENT_ASSETS)
    roadmaps = frozenset(r for r in map(roadmap_of_key, keys) if r)
    return FinishedRun(
        run_id=run.run_id,
        status=run.status,
        updated=record.update_timestamp.timestamp(),
        concept_keys=tuple(k for k in keys if "/" in k),
        roadmap_ids=roadmaps,
        content_assets=frozenset(selection & set(CONTENT_ASSETS)),
        retry_decision=run.tags.get(WILL_RETRY_TAG),
        request_id=request_of(run),
        retried=AUTO_RETRY_RUN_ID_TAG in run.tags,
    )


def run_keys(tags: Mapping[str, str], ordering: Sequence[str]) -> list[str]:
    """The partition keys a run targets, from its partition or range tags; a range is resolved
    in ``ordering`` (the registered order of its partitions definition)."""
    single = tags.get(PARTITION_NAME_TAG)
    if single:
        return [single]
    start = tags.get(ASSET_PARTITION_RANGE_START_TAG)
    end = tags.get(ASSET_PARTITION_RANGE_END_TAG)
    if not start or not end:
        return []
    try:
        return list(ordering[ordering.index(start) : ordering.index(end) + 1])
    except ValueError:
        return [start, end]

"""Invariant 5's seam, filled from Dagster's own run status: which work is queued or running.

"Is it still running?" is answered by the instance's runs (queued, starting, started), never
from ages. A run's partitions come from its tags: one key (``dagster/partition``) or a key range
(``dagster/asset_partition_range_start``/``_end``, resolved in the registered order). A roadmap
key stands for the whole roadmap, a concept key for one concept.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from datetime import UTC, datetime

import dagster as dg
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_START_TAG, WILL_RETRY_TAG

from roadmap_pipeline.domain.keys import split_concept_key
from roadmap_pipeline.orchestration.partitions import CONCEPTS, ROADMAPS, KeyOrder
from roadmap_pipeline.orchestration.run_history import run_keys
from roadmap_pipeline.store.activity import ActiveWork

# Dagster's run retries relaunch a failed run within seconds; a promised retry that has not
# appeared after this long is taken to be lost (the run no longer counts as queued work).
RETRY_PROMISE_S = 120.0

ACTIVE_STATUSES = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


class DagsterActivity:
    """Active work according to the Dagster instance (optionally ignoring the calling run)."""

    def __init__(self, instance: dg.DagsterInstance, exclude_run_id: str | None = None) -> None:
        self._instance = instance
        self._exclude = exclude_run_id

    def describe(self) -> str:
        return "judged from Dagster's queued and running runs"

    def active_runs(self) -> list[dg.DagsterRun]:
        """Queued and running runs, and failed runs that Dagster's run retries will relaunch
        (their retry is queued work even before it exists)."""
        runs = list(self._instance.get_runs(filters=dg.RunsFilter(statuses=ACTIVE_STATUSES)))
        now = time.time()
        recent = self._instance.get_run_records(
            filters=dg.RunsFilter(
                statuses=[dg.DagsterRunStatus.FAILURE],
                updated_after=datetime.fromtimestamp(now - RETRY_PROMISE_S, tz=UTC),
            )
        )
        runs += [
            record.dagster_run
            for record in recent
            if self._retry_pending(record.dagster_run)
            and now - (record.end_time or record.update_timestamp.timestamp()) < RETRY_PROMISE_S
        ]
        return [r for r in runs if r.run_id != self._exclude]

    def _retry_pending(self, run: dg.DagsterRun) -> bool:
        if run.tags.get(WILL_RETRY_TAG) is None:
            # Dagster stores the failure, then tags its retry decision: a run read in between
            # is one it may still relaunch (a sensor acting then would race its retry).
            return self._instance.run_retries_enabled
        return run.is_complete_and_waiting_to_retry

    def active(self, roadmap_ids: Iterable[str] | None) -> ActiveWork:
        wanted = None if roadmap_ids is None else set(roadmap_ids)
        roadmaps: set[str] = set()
        concepts: set[tuple[str, str]] = set()
        orderings: dict[str, KeyOrder] = {}
        for run in self.active_runs():
            start = run.tags.get(ASSET_PARTITION_RANGE_START_TAG, "")
            partitions_def = CONCEPTS if "/" in start else ROADMAPS
            name = partitions_def.name or ""
            if start and name not in orderings:
                orderings[name] = KeyOrder(self._instance, partitions_def)
            keys = run_keys(run.tags, orderings.get(name, []))
            for key in keys:
                if "/" in key:
                    roadmap_id, short = split_concept_key(key)
                    if wanted is None or roadmap_id in wanted:
                        concepts.add((roadmap_id, short))
                elif wanted is None or key in wanted:
                    roadmaps.add(key)
        return ActiveWork(frozenset(roadmaps), frozenset(concepts))

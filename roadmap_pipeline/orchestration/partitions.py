"""The two dynamic partition sets and the keys of a roadmap's concepts.

A roadmap's concept keys are registered in ONE ``add_dynamic_partitions`` call: dynamic keys keep
their insertion order, so a roadmap registered at once is one contiguous key range and a whole
roadmap runs as one range (one run, with ``BackfillPolicy.single_run``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import dagster as dg

from roadmap_pipeline.domain.framework import Framework
from roadmap_pipeline.domain.keys import check_roadmap_id, concept_key

ROADMAPS = dg.DynamicPartitionsDefinition(name="roadmaps")
CONCEPTS = dg.DynamicPartitionsDefinition(name="concepts")


@dataclass(frozen=True)
class RoadmapKeys:
    """A roadmap's partition keys, in document order, and the stored concept id of each."""

    roadmap_id: str
    concepts: dict[str, str]  # concept key -> stored concept_id

    @property
    def concept_keys(self) -> list[str]:
        return list(self.concepts)


def roadmap_keys(framework: Framework) -> RoadmapKeys:
    """The keys of a framework's concepts; UnsafeIdError names an id that cannot be a key."""
    roadmap_id = check_roadmap_id(framework.roadmap_id)
    keys = {concept_key(roadmap_id, c.concept_id): c.concept_id for c in framework.concepts()}
    return RoadmapKeys(roadmap_id, keys)


def registration_requests(
    instance: dg.DagsterInstance, keys: RoadmapKeys
) -> list[dg.AddDynamicPartitionsRequest]:
    """Requests that add what is not registered yet: the roadmap key and, in one call, its
    missing concept keys (in document order)."""
    requests = []
    if not instance.has_dynamic_partition(ROADMAPS.name or "", keys.roadmap_id):
        requests.append(ROADMAPS.build_add_request([keys.roadmap_id]))
    existing = set(registered_concept_keys(instance, keys.roadmap_id))
    missing = [k for k in keys.concept_keys if k not in existing]
    if missing:
        requests.append(CONCEPTS.build_add_request(missing))
    return requests


def register(instance: dg.DagsterInstance, keys: RoadmapKeys) -> None:
    """Register a roadmap's keys directly (the demo and tests; sensors return requests instead)."""
    for request in registration_requests(instance, keys):
        instance.add_dynamic_partitions(request.partitions_def_name, request.partition_keys)


def registered_concept_keys(instance: dg.DagsterInstance, roadmap_id: str) -> list[str]:
    prefix = f"{roadmap_id}/"
    return [k for k in instance.get_dynamic_partitions(CONCEPTS.name or "") if k.startswith(prefix)]


def contiguous_ranges(
    ordered_keys: Sequence[str], wanted: Iterable[str]
) -> list[dg.PartitionKeyRange]:
    """The fewest key ranges, in the registered order, that cover exactly ``wanted``."""
    wanted_set = set(wanted)
    ranges: list[dg.PartitionKeyRange] = []
    start: str | None = None
    previous: str | None = None
    for key in ordered_keys:
        if key in wanted_set:
            start = start or key
            previous = key
        elif start is not None and previous is not None:
            ranges.append(dg.PartitionKeyRange(start, previous))
            start = previous = None
    if start is not None and previous is not None:
        ranges.append(dg.PartitionKeyRange(start, previous))
    return ranges

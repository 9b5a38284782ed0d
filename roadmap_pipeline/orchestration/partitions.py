"""The two dynamic partition sets and the keys of a roadmap's concepts.

A roadmap's concept keys are registered in ONE ``add_dynamic_partitions`` call: dynamic keys keep
their insertion order, so a roadmap registered at once is one contiguous key range and a whole
roadmap runs as one range (one run, with ``BackfillPolicy.single_run``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from functools import cached_property
from typing import Any, overload

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


class KeyOrder(Sequence[str]):
    """The registered keys of a dynamic partition set, in registration order, read from the
    instance on first use. Each read loads the whole set (every concept of the fleet), so a
    sensor tick with nothing to do never pays it; membership and position are dict lookups,
    not scans of the fleet's keys."""

    def __init__(
        self, instance: dg.DagsterInstance, partitions_def: dg.DynamicPartitionsDefinition
    ) -> None:
        self._instance = instance
        self._name = partitions_def.name or ""

    @cached_property
    def _keys(self) -> list[str]:
        return list(self._instance.get_dynamic_partitions(self._name))

    @cached_property
    def _positions(self) -> dict[str, int]:
        return {key: position for position, key in enumerate(self._keys)}

    @overload
    def __getitem__(self, index: int) -> str: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[str]: ...

    def __getitem__(self, index: int | slice) -> str | Sequence[str]:
        return self._keys[index]

    def __len__(self) -> int:
        return len(self._keys)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __contains__(self, key: object) -> bool:
        return key in self._positions

    def index(self, value: Any, start: int = 0, stop: int | None = None) -> int:
        position = self._positions.get(value)
        if position is None or position < start or (stop is not None and position >= stop):
            raise ValueError(f"{value!r} is not a registered {self._name} key")
        return position


def registration_requests(
    keys: RoadmapKeys, roadmaps: AbstractSet[str], concepts: AbstractSet[str]
) -> list[dg.AddDynamicPartitionsRequest]:
    """Requests that add what is not registered yet: the roadmap key and, in one call, its
    missing concept keys (in document order). ``roadmaps`` and ``concepts`` are the registered
    keys, read once by the caller for all its roadmaps: each read loads the whole set."""
    requests = []
    if keys.roadmap_id not in roadmaps:
        requests.append(ROADMAPS.build_add_request([keys.roadmap_id]))
    missing = [k for k in keys.concept_keys if k not in concepts]
    if missing:
        requests.append(CONCEPTS.build_add_request(missing))
    return requests


def register(instance: dg.DagsterInstance, keys: RoadmapKeys) -> None:
    """Register a roadmap's keys directly (the demo and tests; sensors return requests instead)."""
    roadmap_known = instance.has_dynamic_partition(ROADMAPS.name or "", keys.roadmap_id)
    requests = registration_requests(
        keys,
        {keys.roadmap_id} if roadmap_known else set(),
        set(registered_concept_keys(instance, keys.roadmap_id)),
    )
    for request in requests:
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


def add_partition_metadata(
    context: dg.AssetExecutionContext,
    step_keys: Iterable[str],
    entries: Iterable[tuple[dg.AssetKey, str, Mapping[str, Any]]],
) -> None:
    """Per-partition materialization metadata for partitions of this step, one call for all.

    ``context.add_asset_metadata(partition_key=...)`` checks the key against the step's range by
    reading every key of the dynamic partitions definition from the instance, on every call:
    once per concept and asset, so 120 reads of the whole ``concepts`` set for a 30-concept
    roadmap (4 of the run's 11 s on an empty fleet, and growing with the fleet). Here the step's
    keys, which it read once (``context.partition_keys``), make the same check; the
    metadata goes to the step's accumulator, where ``add_asset_metadata`` puts it, and falls back
    to ``add_asset_metadata`` itself if a Dagster release moves that accumulator.
    """
    targeted = set(step_keys)
    step = context.get_step_execution_context()
    accumulator = getattr(step, "_metadata_accumulator", None)
    for asset_key, partition_key, metadata in entries:
        if partition_key not in targeted:
            raise dg.DagsterInvariantViolationError(
                f"partition {partition_key!r} of {asset_key.to_user_string()} is not targeted "
                "by this step"
            )
        if accumulator is None:
            context.add_asset_metadata(metadata, asset_key=asset_key, partition_key=partition_key)
            continue
        accumulator = accumulator.with_additional_asset_metadata(
            asset_key=asset_key, partition_key=partition_key, metadata=metadata
        )
    if accumulator is not None:
        step._metadata_accumulator = accumulator  # private: see the docstring

"""Jobs: the main generation job, the roll-up, registration, and regenerating one item."""

from __future__ import annotations

import dagster as dg

from roadmap_pipeline.domain.statuses import ItemType
from roadmap_pipeline.orchestration.keys import (
    CONTENT_ASSETS,
    CONTENT_VALID,
    ENTRY_AGREES,
    FLEET_CHECK_KEY,
    FRAMEWORK_DATA,
    FRAMEWORK_ENTRY,
    ITEM_ASSETS,
    ROADMAP_COMPLETE,
    ROADMAP_CONSISTENT,
    ROADMAP_FRAMEWORK,
    TASK_AGREES,
)
from roadmap_pipeline.orchestration.partitions import CONCEPTS, ROADMAPS

generate_concepts_job = dg.define_asset_job(
    "generate_concepts",
    selection=dg.AssetSelection.assets(*CONTENT_ASSETS, FRAMEWORK_ENTRY),
    partitions_def=CONCEPTS,
    description=(
        "The main job: generate the selected items of a range of concepts (a roadmap is one "
        "range) and sync their framework entries; a range covering a whole roadmap also rolls "
        "it up."
    ),
)

roll_up_job = dg.define_asset_job(
    "roll_up_roadmap",
    selection=dg.AssetSelection.assets(FRAMEWORK_DATA),
    partitions_def=ROADMAPS,
    description="Sync a roadmap's framework_data from its rows and settle its task (repair).",
)

register_roadmap_job = dg.define_asset_job(
    "register_roadmap",
    selection=dg.AssetSelection.assets(ROADMAP_FRAMEWORK),
    partitions_def=ROADMAPS,
    description="Validate a roadmap's framework and register its concept partitions.",
)


def _regenerate_job(item: ItemType) -> dg.UnresolvedAssetJobDefinition:
    return dg.define_asset_job(
        f"regenerate_{item.value}",
        selection=dg.AssetSelection.assets(ITEM_ASSETS[item], FRAMEWORK_ENTRY),
        partitions_def=CONCEPTS,
        tags={"roadmap_pipeline/purpose": f"regenerate {item.value}"},
        description=(
            f"Regenerate only the {item.value} of one concept (launch it for one partition) and "
            "sync that concept's entry; the other items keep their rows."
        ),
    )


regenerate_item_jobs = [_regenerate_job(item) for item in ItemType]

fleet_check_job = dg.define_asset_job(
    "fleet_consistency_check",
    selection=dg.AssetSelection.checks(FLEET_CHECK_KEY),
    description="Check-only: the fleet-wide consistency pass (full or incremental).",
)

check_roadmap_job = dg.define_asset_job(
    "check_roadmap",
    selection=dg.AssetSelection.checks(
        dg.AssetCheckKey(FRAMEWORK_DATA, ROADMAP_CONSISTENT),
        dg.AssetCheckKey(FRAMEWORK_DATA, TASK_AGREES),
        dg.AssetCheckKey(FRAMEWORK_DATA, ROADMAP_COMPLETE),
    ),
    partitions_def=ROADMAPS,
    description="Check-only: one roadmap's consistency and task status (launch for a partition).",
)

check_concepts_job = dg.define_asset_job(
    "check_concepts",
    selection=dg.AssetSelection.checks(
        *(dg.AssetCheckKey(asset, CONTENT_VALID) for asset in CONTENT_ASSETS),
        dg.AssetCheckKey(FRAMEWORK_ENTRY, ENTRY_AGREES),
    ),
    partitions_def=CONCEPTS,
    description="Check-only: content validity and entry agreement for a concept or a key range.",
)

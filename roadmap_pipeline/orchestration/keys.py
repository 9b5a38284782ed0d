"""Asset keys, check names and run tags: the names the UI shows and the snapshot test pins."""

import dagster as dg

from roadmap_pipeline.domain.statuses import ItemType

ROADMAP_FRAMEWORK = dg.AssetKey("roadmap_framework")
TUTORIAL = dg.AssetKey("tutorial")
RESOURCES = dg.AssetKey("resource_recommendations")
QUIZ = dg.AssetKey("quiz")
FRAMEWORK_ENTRY = dg.AssetKey("framework_entry")
FRAMEWORK_DATA = dg.AssetKey("framework_data")
ROADMAP_FLEET = dg.AssetKey("roadmap_fleet")

ITEM_ASSETS: dict[ItemType, dg.AssetKey] = {
    ItemType.TUTORIAL: TUTORIAL,
    ItemType.RESOURCES: RESOURCES,
    ItemType.QUIZ: QUIZ,
}
CONTENT_ASSETS = tuple(ITEM_ASSETS.values())
ITEM_OF_ASSET = {asset: item.value for item, asset in ITEM_ASSETS.items()}

CONTENT_VALID = "content_valid"
ENTRY_AGREES = "entry_agrees_with_rows"
ROADMAP_CONSISTENT = "roadmap_consistent"
TASK_AGREES = "task_status_agrees"
ROADMAP_COMPLETE = "roadmap_complete"
FLEET = "fleet_consistency"
FLEET_CHECK_KEY = dg.AssetCheckKey(ROADMAP_FLEET, FLEET)

ROADMAP_TAG = "roadmap_pipeline/roadmap"
TASK_TAG = "roadmap_pipeline/task"
ATTEMPT_TAG = "roadmap_pipeline/attempt"

# A settle run (framework_entry over a roadmap's range) checks its content again too: after a
# failed content step its checks were skipped, and the UI would show them failed forever.
SETTLE_CHECKS = (
    *(dg.AssetCheckKey(asset, CONTENT_VALID) for asset in CONTENT_ASSETS),
    dg.AssetCheckKey(FRAMEWORK_ENTRY, ENTRY_AGREES),
)

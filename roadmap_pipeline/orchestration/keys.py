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
# The request a run serves: every generation id derives from it (with the concept and the item).
# All runs that serve one creation task share the task's request, whichever sensor launched them
# and whenever they run: a run decided before another filled the same items (a recovery queued
# behind a crashed run's re-execution) then finds those writes in the ledger instead of
# generating new versions. Runs without the tag (a UI launch, a regeneration) are their own
# request, shared by their re-executions through the root run id.
REQUEST_TAG = "roadmap_pipeline/request"


def task_tags(task_id: str) -> dict[str, str]:
    """The tags of a run that serves a creation task: the task, and the task as its request."""
    return {TASK_TAG: task_id, REQUEST_TAG: f"task:{task_id}"}


def request_of(run: dg.DagsterRun) -> str:
    """The request a run serves: its tag, else its root run (re-executions share it)."""
    return run.tags.get(REQUEST_TAG) or run.root_run_id or run.run_id


# A settle run (framework_entry over a roadmap's range) checks its content again too: after a
# failed content step its checks were skipped, and the UI would show them failed forever.
SETTLE_CHECKS = (
    *(dg.AssetCheckKey(asset, CONTENT_VALID) for asset in CONTENT_ASSETS),
    dg.AssetCheckKey(FRAMEWORK_ENTRY, ENTRY_AGREES),
)

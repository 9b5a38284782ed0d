"""The asset graph (DESIGN.md):

    [roadmaps] roadmap_framework            the validated tree; registers the concept partitions
    [concepts] tutorial ─┐
    [concepts] resource_recommendations ─┼─> [concepts] framework_entry
    [concepts] quiz ─────┘
    [roadmaps] framework_data               whole-document agreement and the task status

There is deliberately no edge from the concept family to the roadmap family: a custom concept ->
roadmap PartitionMapping does not survive serialization of the code location, and
AllPartitionMapping marks every roadmap stale on any change. The roll-up is triggered by the
settlement sensor instead (sensors.py), or folded into a framework_entry run that covers a whole
roadmap (see ``framework_entry``).

Every asset stores its result in the database and returns ``MaterializeResult`` metadata; no IO
manager passes content around.
"""

import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import dagster as dg

from roadmap_pipeline.domain.framework import FrameworkError, load_framework
from roadmap_pipeline.domain.keys import UnsafeIdError, concept_key
from roadmap_pipeline.domain.statuses import ITEM_FIELDS, ItemType
from roadmap_pipeline.generation.locks import locks_for
from roadmap_pipeline.generation.workflow import (
    ConceptOutcome,
    ConceptWorkflow,
    DoneElsewhere,
    run_concepts,
)
from roadmap_pipeline.orchestration.activity import DagsterActivity
from roadmap_pipeline.orchestration.consistency import latest_targets, roadmap_check_evaluations
from roadmap_pipeline.orchestration.keys import (
    CONTENT_ASSETS,
    FRAMEWORK_DATA,
    FRAMEWORK_ENTRY,
    ITEM_ASSETS,
    ITEM_OF_ASSET,
    QUIZ,
    RESOURCES,
    ROADMAP_FLEET,
    ROADMAP_FRAMEWORK,
    TUTORIAL,
    request_of,
)
from roadmap_pipeline.orchestration.partitions import (
    CONCEPTS,
    ROADMAPS,
    add_partition_metadata,
    register,
    roadmap_keys,
)
from roadmap_pipeline.orchestration.resources import (
    CheckpointerResource,
    ContentGeneratorResource,
    RoadmapDatabase,
)
from roadmap_pipeline.orchestration.run_history import created_at, materialized_after
from roadmap_pipeline.store.database import connect
from roadmap_pipeline.store.invariants import Scope, find_violations, item_states
from roadmap_pipeline.store.readers import documents, resolve_concept_keys, task_preferences
from roadmap_pipeline.store.sync import SyncReport, sync_concept, sync_roadmaps
from roadmap_pipeline.store.writers import UnknownRoadmap

# Transient database errors (a restart, a dropped connection) retry the whole step; item
# failures raise Failure(allow_retries=False) and are retried by the retry sensor instead.
DATABASE_RETRY = dg.RetryPolicy(
    max_retries=3, delay=5, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS
)


@dg.asset(
    partitions_def=ROADMAPS,
    group_name="roadmaps",
    pool="database",
    description=(
        "The roadmap's framework tree, validated; registers its concepts as `concepts` "
        "partitions in one call (so a roadmap is one contiguous key range). The intake sensor "
        "records this materialization when it picks a roadmap up; rematerialize it after the "
        "framework document changed to register new concepts."
    ),
)
def roadmap_framework(
    context: dg.AssetExecutionContext, database: RoadmapDatabase
) -> dg.MaterializeResult:
    roadmap_id = context.partition_key
    with connect(database.get_engine()) as conn:
        document = documents(conn, [roadmap_id]).get(roadmap_id)
    if document is None:
        raise dg.Failure(
            f"roadmap {roadmap_id!r} does not exist (or was deleted)", allow_retries=False
        )
    try:
        keys = roadmap_keys(load_framework(document))
    except (FrameworkError, UnsafeIdError) as exc:
        raise dg.Failure(f"roadmap {roadmap_id!r}: {exc}", allow_retries=False) from None
    register(context.instance, keys)
    return dg.MaterializeResult(metadata=framework_metadata(document, keys.concept_keys))


def framework_metadata(document: dict[str, Any], concept_keys: Sequence[str]) -> dict[str, Any]:
    stages = document.get("stages") or []
    return {
        "title": str(document.get("title", "")),
        "stages": len(stages),
        "modules": sum(len(s.get("modules") or []) for s in stages if isinstance(s, dict)),
        "concepts": len(concept_keys),
        "first_concept_key": concept_keys[0] if concept_keys else "",
        "last_concept_key": concept_keys[-1] if concept_keys else "",
    }


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            TUTORIAL,
            description="The concept's tutorial: tutorial_metadata (latest version) + body.",
            group_name="content",
        ),
        dg.AssetSpec(
            RESOURCES,
            description="The concept's resource recommendations (one row, replaced in place).",
            group_name="content",
        ),
        dg.AssetSpec(
            QUIZ,
            description="The concept's quiz (one row, replaced in place: quiz_id never changes).",
            group_name="content",
        ),
    ],
    partitions_def=CONCEPTS,
    can_subset=True,
    # A roadmap's concepts run as one range in one run; inside the step they are generated
    # concurrently, bounded by the generator's max_concurrency.
    backfill_policy=dg.BackfillPolicy.single_run(),
    pool="llm",
    retry_policy=DATABASE_RETRY,
    name="concept_content",
)
def concept_content(
    context: dg.AssetExecutionContext,
    database: RoadmapDatabase,
    generator: ContentGeneratorResource,
    checkpointer: CheckpointerResource,
) -> Iterator[dg.MaterializeResult]:
    """Run the LangGraph workflow for every concept of the range, for the selected items.

    Status per item and per partition: a concept whose quiz failed keeps its tutorial and
    resources materialized and only its quiz partition failed, so "backfill failed and
    missing" regenerates exactly what failed.
    """
    started = time.monotonic()
    keys = list(context.partition_keys)
    items = [item for item, key in ITEM_ASSETS.items() if key in context.selected_asset_keys]
    engine = database.get_engine()
    with connect(engine) as conn:
        resolved = resolve_concept_keys(conn, keys)
        preferences = {rid: task_preferences(conn, rid) for rid in resolved.by_roadmap()}
    plan = generator.fault_plan()
    content_generator = generator.build(plan)
    outcomes: list[ConceptOutcome] = []
    with checkpointer.open(database) as saver:
        workflow = ConceptWorkflow(
            engine,
            content_generator,
            saver,
            locks_for(database.url),
            faults=plan,
            # Threads stay until this step has recorded their outcome: a run that dies before
            # that leaves them finished, and its retry reclaims instead of regenerating.
            keep_finished=True,
        )
        outcomes = run_concepts(
            workflow,
            list(resolved.concepts.values()),
            items,
            request_id=request_of(context.run),
            concurrency=max(1, generator.max_concurrency),
            preferences=preferences,
            done_elsewhere=_done_since_created(context.instance, context.run_id),
        )
        successes, failures = _content_events(outcomes, items)
        failures.update(
            {(item, key): reason for key, reason in resolved.problems.items() for item in items}
        )
        batch = {
            "concepts": len(keys),
            "items": [i.value for i in items],
            "failed_items": len(failures),
            "generator": content_generator.name,
            "duration_s": round(time.monotonic() - started, 3),
            "generated_calls": sum(1 for o in outcomes for i in o.items.values() if i.generated),
            **database.pool_metadata(),
        }
        if failures:
            for asset_key, key, metadata in successes:
                context.log_event(
                    dg.AssetMaterialization(asset_key=asset_key, partition=key, metadata=metadata)
                )
            workflow.prune_recorded(outcomes)  # recorded in Dagster now
            raise dg.Failure(
                description=_failure_summary(failures),
                metadata={
                    **batch,
                    "failed": [f"{k} {i.value}: {r}" for (i, k), r in sorted(failures.items())][
                        :50
                    ],
                },
                allow_retries=False,
            )
        add_partition_metadata(context, keys, successes)
        for item in items:
            yield dg.MaterializeResult(asset_key=ITEM_ASSETS[item], metadata=batch)
        workflow.prune_recorded(outcomes)  # recorded in Dagster now


def _done_since_created(
    instance: dg.DagsterInstance, run_id: str
) -> Callable[[str, str], DoneElsewhere] | None:
    """What another run has materialized since this one was created is done: this run was
    decided before that (its backfill or retry saw it failed), and generating it again would
    write a second version of work already done. The workflow asks under the concept's lock, so
    a run that finished the concept while this one waited for the lock is seen too (it records
    its materializations before it releases its finished thread)."""
    created = created_at(instance, run_id)
    if created is None:
        return None

    def for_concept(roadmap_id: str, concept_id: str) -> DoneElsewhere:
        def ask(items: Sequence[ItemType]) -> dict[ItemType, str]:
            done = materialized_after(
                instance,
                created,
                run_id,
                [ITEM_ASSETS[i] for i in items],
                [concept_key(roadmap_id, concept_id)],
            )
            return {ItemType(ITEM_OF_ASSET[asset]): by for (asset, _), by in done.items()}

        return ask

    return for_concept


def _content_events(
    outcomes: Sequence[ConceptOutcome], items: Sequence[ItemType]
) -> tuple[list[tuple[dg.AssetKey, str, dict[str, Any]]], dict[tuple[ItemType, str], str]]:
    successes: list[tuple[dg.AssetKey, str, dict[str, Any]]] = []
    failures: dict[tuple[ItemType, str], str] = {}
    for outcome in outcomes:
        key = outcome.thread_id
        for item in items:
            result = outcome.items.get(item)
            if result is None or result.status != "completed" or outcome.skipped_locked:
                reason = (
                    "another worker holds this concept"
                    if outcome.skipped_locked
                    else (result.error if result else "not attempted") or "failed"
                )
                failures[(item, key)] = reason
                continue
            if result.done_by is not None:
                successes.append(
                    (
                        ITEM_ASSETS[item],
                        key,
                        {"generated": False, "materialized_by_run": result.done_by},
                    )
                )
                continue
            metadata: dict[str, Any] = {
                "roadmap_id": outcome.roadmap_id,
                "concept_id": outcome.concept_id,
                ITEM_FIELDS[item].ref_id: result.row_id or "",
                "generated": result.generated,
                "attempts": result.attempts,
                "resumed": outcome.resumed,
                "concept_duration_s": round(outcome.duration_s, 3),
            }
            if result.content_version is not None:
                metadata["content_version"] = f"v{result.content_version}"
            successes.append((ITEM_ASSETS[item], key, metadata))
    return successes, failures


def _failure_summary(failures: dict[tuple[ItemType, str], str]) -> str:
    concepts = sorted({key for _, key in failures})
    shown = "; ".join(
        f"{key} {item.value}: {reason}" for (item, key), reason in sorted(failures.items())[:10]
    )
    return f"{len(failures)} item(s) of {len(concepts)} concept(s) failed: {shown}"


@dg.asset(
    partitions_def=CONCEPTS,
    deps=list(CONTENT_ASSETS),
    group_name="framework",
    backfill_policy=dg.BackfillPolicy.single_run(),
    pool="database",
    retry_policy=DATABASE_RETRY,
    description=(
        "This concept's node in framework_data, synced from the current rows under a lock on "
        "the roadmap row (SELECT ... FOR UPDATE); keys it does not own are kept as they are. "
        "When a run covers every concept of a roadmap, it also rolls the roadmap up "
        "(framework_data and the task status), saving a run."
    ),
)
def framework_entry(
    context: dg.AssetExecutionContext, database: RoadmapDatabase
) -> dg.MaterializeResult:
    keys = list(context.partition_keys)
    engine = database.get_engine()
    activity = DagsterActivity(context.instance, exclude_run_id=context.run_id)
    with connect(engine) as conn:
        resolved = resolve_concept_keys(conn, keys)
        docs = documents(conn, resolved.by_roadmap())
    by_roadmap = resolved.by_roadmap()
    entries: dict[str, dict[str, Any]] = {}
    for roadmap_id, concept_ids in by_roadmap.items():
        whole = _covers_roadmap(docs.get(roadmap_id), concept_ids)
        if whole:
            report = sync_roadmaps(engine, [roadmap_id], activity, strict=True)
            context.log_event(
                dg.AssetMaterialization(
                    asset_key=FRAMEWORK_DATA,
                    partition=roadmap_id,
                    metadata=roll_up_metadata(report, folded_into=context.run_id),
                )
            )
            with connect(engine) as conn:
                found = find_violations(conn, Scope.roadmap(roadmap_id), activity)
                states = item_states(conn, Scope.roadmap(roadmap_id))
            target = latest_targets(context.instance, FRAMEWORK_DATA, [roadmap_id]).get(roadmap_id)
            for evaluation in roadmap_check_evaluations(roadmap_id, found, states, target):
                context.log_event(evaluation)
        else:
            for concept_id in concept_ids:
                sync_concept(engine, roadmap_id, concept_id, activity)
    with connect(engine) as conn:
        synced = documents(conn, by_roadmap)
    for key, (roadmap_id, concept_id) in resolved.concepts.items():
        entries[key] = _entry_metadata(synced.get(roadmap_id), concept_id)
    if resolved.problems:
        for key, metadata in entries.items():
            context.log_event(
                dg.AssetMaterialization(asset_key=FRAMEWORK_ENTRY, partition=key, metadata=metadata)
            )
        shown = "; ".join(f"{k}: {r}" for k, r in sorted(resolved.problems.items())[:10])
        raise dg.Failure(
            f"{len(resolved.problems)} concept key(s) cannot be synced: {shown}",
            allow_retries=False,
        )
    add_partition_metadata(context, keys, [(FRAMEWORK_ENTRY, k, m) for k, m in entries.items()])
    return dg.MaterializeResult(metadata={"concepts": len(keys), "roadmaps": len(by_roadmap)})


def _covers_roadmap(document: Any, concept_ids: Sequence[str]) -> bool:
    try:
        all_ids = {c.concept_id for c in load_framework(document).concepts()}
    except FrameworkError:
        return False
    return all_ids == set(concept_ids)


def _entry_metadata(document: Any, concept_id: str) -> dict[str, Any]:
    try:
        concept = load_framework(document).concept(concept_id).concept
    except (FrameworkError, KeyError):
        return {"concept_id": concept_id}
    metadata: dict[str, Any] = {"concept_id": concept_id}
    for item in ItemType:
        fields = ITEM_FIELDS[item]
        metadata[fields.status] = concept.item_status(item)
        metadata[fields.ref_id] = str(getattr(concept, fields.ref_id) or "")
    return metadata


def roll_up_metadata(report: SyncReport, folded_into: str | None = None) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "entries_changed": len(report.entries),
        "tutorials_demoted": len(report.demoted),
        "tasks_settled": [f"{t.task_id}: {t.before} -> {t.after}" for t in report.tasks],
        "needs_human": report.skipped[:20],
    }
    if folded_into:
        metadata["rolled_up_by_run"] = folded_into
    return metadata


@dg.asset(
    partitions_def=ROADMAPS,
    deps=[ROADMAP_FRAMEWORK],
    group_name="roadmaps",
    pool="database",
    retry_policy=DATABASE_RETRY,
    description=(
        "The roadmap's roll-up: every concept's entry synced from the rows, extra latest "
        "tutorials demoted, and the task settled (completed / partial_failure naming the failed "
        "concepts / unchanged while work is queued or running, judged from Dagster's runs). "
        "Rematerializing it is the repair of a roadmap."
    ),
)
def framework_data(
    context: dg.AssetExecutionContext, database: RoadmapDatabase
) -> dg.MaterializeResult:
    roadmap_id = context.partition_key
    activity = DagsterActivity(context.instance, exclude_run_id=context.run_id)
    try:
        report = sync_roadmaps(database.get_engine(), [roadmap_id], activity, strict=True)
    except UnknownRoadmap as exc:
        raise dg.Failure(str(exc), allow_retries=False) from None
    return dg.MaterializeResult(metadata=roll_up_metadata(report))


roadmap_fleet = dg.AssetSpec(
    ROADMAP_FLEET,
    group_name="roadmaps",
    description=(
        "Every roadmap in the database, as a whole: nothing materializes it; the scheduled "
        "fleet_consistency check evaluates it (full pass, or incremental between full passes)."
    ),
)

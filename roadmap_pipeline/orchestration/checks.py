"""Asset checks: the consistency rules of ``store.invariants``, per concept, per roadmap, fleet.

Every check calls ``find_violations`` (the one set-based statement) for its scope and reports
the violations in its metadata; none of them decides anything on its own.

Partitioned checks run in range runs too (a roadmap's concepts in one run): there the check logs
one evaluation per partition and returns the range's overall result.
"""

import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import dagster as dg
from pydantic import Field

from roadmap_pipeline.domain.keys import UnsafeIdError, concept_key
from roadmap_pipeline.orchestration.activity import DagsterActivity
from roadmap_pipeline.orchestration.consistency import (
    CHECK_RULES,
    ENTRY_RULES,
    check_metadata,
    completeness_result,
    latest_targets,
    log_evaluation,
    roadmap_check_evaluations,
    roadmap_check_results,
)
from roadmap_pipeline.orchestration.keys import (
    CONTENT_ASSETS,
    CONTENT_VALID,
    ENTRY_AGREES,
    FLEET,
    FRAMEWORK_DATA,
    FRAMEWORK_ENTRY,
    ITEM_OF_ASSET,
    ROADMAP_COMPLETE,
    ROADMAP_CONSISTENT,
    ROADMAP_FLEET,
    TASK_AGREES,
)
from roadmap_pipeline.orchestration.partitions import CONCEPTS, ROADMAPS
from roadmap_pipeline.orchestration.resources import RoadmapDatabase
from roadmap_pipeline.store.activity import WorkInProgress
from roadmap_pipeline.store.database import connect
from roadmap_pipeline.store.invariants import (
    Rule,
    Scope,
    Violation,
    find_violations,
    is_repairable,
    item_states,
)
from roadmap_pipeline.store.readers import resolve_concept_keys

_NEEDS_HUMAN = (
    "Needs a human (rematerializing does not fix it): invalid_content (regenerate the item: "
    "rematerialize its partition, or correct the row), orphan_content and duplicate "
    "resources/quiz rows (learners may read them: decide, then delete), malformed_framework "
    "(rewrite the document)."
)

CONTENT_VALID_DESCRIPTION = (
    "Invariant 7 on the stored row: quiz answers index existing options, a single-choice or "
    "true/false question has exactly one answer, relevance scores lie in 0..1, counts equal list "
    "lengths. Blocking: a failure stops framework_entry in the same run, so invalid content "
    "never reaches framework_data. To fix: regenerate the item (rematerialize this partition) "
    "or correct the row."
)
ENTRY_DESCRIPTION = (
    "framework_data's node for this concept agrees with the rows: an item is completed exactly "
    "when its current row exists, and every reference (ids, content_ref, version, counts) equals "
    "the current row; at most one current row per item. To fix: rematerialize framework_entry "
    "for this partition."
)
ROADMAP_DESCRIPTION = (
    "The whole roadmap agrees: every concept as in entry_agrees_with_rows, no content rows for "
    "concepts the document lacks (orphans), valid content, a well-formed document. To fix the "
    "repairable rules: rematerialize framework_data for this roadmap. " + _NEEDS_HUMAN
)
TASK_DESCRIPTION = (
    "The roadmap's task agrees with its items (completed iff all completed, partial_failure iff "
    "some failed, failed_concepts names exactly those) and nothing is pending, generating or "
    "processing without a queued or running Dagster run (zombies; judged from Dagster's run "
    "status, never from ages). To fix: rematerialize framework_data for this roadmap; stuck "
    "work is relaunched by the recovery sensor."
)
COMPLETE_DESCRIPTION = (
    "Every item of every concept is completed. WARN, not an inconsistency: a failed item with no "
    "row is consistent, but it is work to retry. Metadata lists the concepts and items. To fix: "
    "backfill the failed partitions of the content assets (Materialize > Backfill > failed and "
    "missing), or let the retry sensor do it; the roll-up then turns this green."
)
FLEET_DESCRIPTION = (
    "Every rule over every roadmap in one set-based pass (or, between full passes, over the "
    "roadmaps that changed since the last pass). Metadata: counts per rule, the violating "
    "roadmaps, the first rows of detail and the roadmaps whose framework_data to rematerialize "
    "(the opt-in consistency_repair sensor launches those). " + _NEEDS_HUMAN
)


def _key_of(violation: Violation) -> str | None:
    if violation.concept_id is None:
        return None
    try:
        return concept_key(violation.roadmap_id, violation.concept_id)
    except UnsafeIdError:
        return None


def concept_range_violations(
    database: RoadmapDatabase, keys: Sequence[str], rules: Iterable[Rule], activity: WorkInProgress
) -> dict[str, list[Violation]]:
    """Violations per concept key for the concepts of a key range (one statement)."""
    engine = database.get_engine()
    with connect(engine) as conn:
        resolved = resolve_concept_keys(conn, keys)
        roadmap_ids = sorted(resolved.by_roadmap())
        found = (
            find_violations(conn, Scope.roadmaps(roadmap_ids), activity, tuple(rules))
            if roadmap_ids
            else []
        )
    per_key: dict[str, list[Violation]] = {key: [] for key in keys}
    wanted = set(keys)
    for violation in found:
        key = _key_of(violation)
        if key in wanted:
            per_key[key].append(violation)
    for key, problem in resolved.problems.items():
        roadmap_id = key.split("/", 1)[0]
        per_key[key].append(
            Violation(
                roadmap_id=roadmap_id,
                concept_id=None,
                item=None,
                rule=Rule.MALFORMED_FRAMEWORK,
                detail=problem,
            )
        )
    return per_key


def _log_partition_evaluation(
    context: dg.AssetCheckExecutionContext,
    asset_key: dg.AssetKey,
    check_name: str,
    partition: str,
    violations: Sequence[Violation],
    severity: dg.AssetCheckSeverity,
    blocking: bool,
    target: Any = None,
) -> None:
    log_evaluation(
        context.op_execution_context,
        dg.AssetCheckEvaluation(
            asset_key=asset_key,
            check_name=check_name,
            passed=not violations,
            partition=partition,
            metadata=check_metadata(violations),
            severity=severity,
            blocking=blocking,
            target_materialization_data=target,
        ),
    )


def _range_results(
    context: dg.AssetCheckExecutionContext,
    specs: dict[dg.AssetCheckKey, tuple[dg.AssetKey, bool]],
    per_key: dict[str, dict[dg.AssetCheckKey, list[Violation]]],
) -> Iterator[dg.AssetCheckResult]:
    """Per-partition evaluations, logged when the step covers a key range (Dagster records the
    step's own result without a partition then); the step's overall results."""
    ranged = not context.op_execution_context.has_partition_key
    for check_key, (asset_key, blocking) in specs.items():
        if check_key not in context.selected_asset_check_keys:
            continue
        targets = latest_targets(context.instance, asset_key, list(per_key)) if ranged else {}
        failing: list[Violation] = []
        for key, by_check in per_key.items():
            violations = by_check.get(check_key, [])
            failing += violations
            if ranged:
                _log_partition_evaluation(
                    context,
                    asset_key,
                    check_key.name,
                    key,
                    violations,
                    dg.AssetCheckSeverity.ERROR,
                    blocking,
                    targets.get(key),
                )
        bad_keys = sorted(k for k, by_check in per_key.items() if by_check.get(check_key))
        yield dg.AssetCheckResult(
            asset_key=asset_key,
            check_name=check_key.name,
            passed=not failing,
            severity=dg.AssetCheckSeverity.ERROR,
            metadata=check_metadata(
                failing, partitions_checked=len(per_key), failing_partitions=bad_keys[:50]
            ),
        )


_CONTENT_SPECS = {dg.AssetCheckKey(asset, CONTENT_VALID): (asset, True) for asset in CONTENT_ASSETS}


@dg.multi_asset_check(
    specs=[
        dg.AssetCheckSpec(
            CONTENT_VALID,
            asset=asset,
            blocking=True,
            partitions_def=CONCEPTS,
            description=CONTENT_VALID_DESCRIPTION,
        )
        for asset in CONTENT_ASSETS
    ],
    can_subset=True,
    name="content_valid",
    pool="database",
)
def content_valid(
    context: dg.AssetCheckExecutionContext, database: RoadmapDatabase
) -> Iterator[dg.AssetCheckResult]:
    keys = list(context.op_execution_context.partition_keys)
    violations = concept_range_violations(
        database, keys, [Rule.INVALID_CONTENT], DagsterActivity(context.instance)
    )
    per_key: dict[str, dict[dg.AssetCheckKey, list[Violation]]] = defaultdict(dict)
    for key, found in violations.items():
        for check_key, (asset_key, _) in _CONTENT_SPECS.items():
            per_key[key][check_key] = [
                v
                for v in found
                if v.item == ITEM_OF_ASSET[asset_key] or v.rule is Rule.MALFORMED_FRAMEWORK
            ]
    yield from _range_results(context, _CONTENT_SPECS, per_key)


_ENTRY_KEY = dg.AssetCheckKey(FRAMEWORK_ENTRY, ENTRY_AGREES)


@dg.asset_check(
    asset=FRAMEWORK_ENTRY,
    name=ENTRY_AGREES,
    partitions_def=CONCEPTS,
    description=ENTRY_DESCRIPTION,
    pool="database",
)
def entry_agrees_with_rows(
    context: dg.AssetCheckExecutionContext, database: RoadmapDatabase
) -> dg.AssetCheckResult:
    keys = list(context.op_execution_context.partition_keys)
    violations = concept_range_violations(
        database, keys, ENTRY_RULES, DagsterActivity(context.instance)
    )
    per_key = {key: {_ENTRY_KEY: found} for key, found in violations.items()}
    return next(_range_results(context, {_ENTRY_KEY: (FRAMEWORK_ENTRY, False)}, per_key))


@dg.multi_asset_check(
    specs=[
        dg.AssetCheckSpec(
            ROADMAP_CONSISTENT,
            asset=FRAMEWORK_DATA,
            partitions_def=ROADMAPS,
            description=ROADMAP_DESCRIPTION,
        ),
        dg.AssetCheckSpec(
            TASK_AGREES,
            asset=FRAMEWORK_DATA,
            partitions_def=ROADMAPS,
            description=TASK_DESCRIPTION,
        ),
        dg.AssetCheckSpec(
            ROADMAP_COMPLETE,
            asset=FRAMEWORK_DATA,
            partitions_def=ROADMAPS,
            description=COMPLETE_DESCRIPTION,
        ),
    ],
    can_subset=True,
    name="roadmap_checks",
    pool="database",
)
def roadmap_checks(
    context: dg.AssetCheckExecutionContext, database: RoadmapDatabase
) -> Iterator[dg.AssetCheckResult]:
    roadmap_ids = list(context.op_execution_context.partition_keys)
    activity = DagsterActivity(context.instance, exclude_run_id=context.op_execution_context.run_id)
    scope = Scope.roadmaps(roadmap_ids)
    with connect(database.get_engine()) as conn:
        found = find_violations(conn, scope, activity)
        states = item_states(conn, scope)
    if not context.op_execution_context.has_partition_key:
        targets = latest_targets(context.instance, FRAMEWORK_DATA, roadmap_ids)
        for roadmap_id in roadmap_ids:
            mine = [v for v in found if v.roadmap_id == roadmap_id]
            own_states = [s for s in states if s.roadmap_id == roadmap_id]
            for evaluation in roadmap_check_evaluations(
                roadmap_id, mine, own_states, targets.get(roadmap_id)
            ):
                log_evaluation(context.op_execution_context, evaluation)
    results = roadmap_check_results(found)
    for name, (passed, metadata) in results.items():
        if dg.AssetCheckKey(FRAMEWORK_DATA, name) in context.selected_asset_check_keys:
            failing = sorted({v.roadmap_id for v in found if v.rule in CHECK_RULES[name]})
            yield dg.AssetCheckResult(
                asset_key=FRAMEWORK_DATA,
                check_name=name,
                passed=passed,
                severity=dg.AssetCheckSeverity.ERROR,
                metadata={
                    **metadata,
                    "roadmaps_checked": len(roadmap_ids),
                    "failing_roadmaps": failing[:100],
                },
            )
    if dg.AssetCheckKey(FRAMEWORK_DATA, ROADMAP_COMPLETE) in context.selected_asset_check_keys:
        complete, metadata = completeness_result(states)
        yield dg.AssetCheckResult(
            asset_key=FRAMEWORK_DATA,
            check_name=ROADMAP_COMPLETE,
            passed=complete,
            severity=dg.AssetCheckSeverity.WARN,
            metadata=metadata,
        )


class FleetCheckConfig(dg.Config):
    full_pass_every_hours: float = Field(
        default=24.0,
        description="A full pass over every roadmap at least this often; between full passes "
        "only roadmaps that changed since the previous pass (and previous violators) are read.",
    )
    force_full_pass: bool = Field(default=False, description="Read every roadmap this time.")


@dg.asset_check(
    asset=ROADMAP_FLEET,
    name=FLEET,
    description=FLEET_DESCRIPTION,
    pool="database",
)
def fleet_consistency(
    context: dg.AssetCheckExecutionContext, config: FleetCheckConfig, database: RoadmapDatabase
) -> dg.AssetCheckResult:
    from roadmap_pipeline.orchestration.fleet import evaluate_fleet

    started = time.monotonic()
    result = evaluate_fleet(
        context.instance,
        database,
        config.full_pass_every_hours,
        config.force_full_pass,
        exclude_run_id=context.op_execution_context.run_id,
    )
    violations = result.violations
    repairable = sorted({v.roadmap_id for v in violations if is_repairable(v)})
    roadmaps = Counter(v.roadmap_id for v in violations)
    return dg.AssetCheckResult(
        passed=not violations,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata=check_metadata(
            violations,
            pass_kind=result.kind,
            roadmaps_checked=result.roadmaps_checked
            if result.roadmaps_checked is not None
            else "all",
            violating_roadmaps=len(roadmaps),
            violating_roadmap_ids=sorted(roadmaps)[:200],
            repairable_roadmaps=repairable[:500],
            needs_human=sum(1 for v in violations if not is_repairable(v)),
            duration_s=round(time.monotonic() - started, 3),
            since=result.since or "",
            checked_at=result.checked_at,
            last_full_pass_at=result.last_full_pass_at,
            violators_truncated=len(roadmaps) > 200,
        ),
    )

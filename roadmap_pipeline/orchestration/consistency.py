"""Turning violations into check outcomes and metadata a data engineer can read in the UI."""

from collections.abc import Sequence
from typing import Any

import dagster as dg
from dagster._core.definitions.asset_checks.asset_check_evaluation import (
    AssetCheckEvaluationTargetMaterializationData,
)

from roadmap_pipeline.orchestration.keys import (
    FRAMEWORK_DATA,
    ROADMAP_COMPLETE,
    ROADMAP_CONSISTENT,
    TASK_AGREES,
)
from roadmap_pipeline.store.invariants import (
    ItemState,
    Rule,
    Violation,
    counts_by_rule,
    is_repairable,
)

ENTRY_RULES = (Rule.ITEM_NOT_MARKED, Rule.REF_MISSING, Rule.REF_MISMATCH, Rule.MULTIPLE_CURRENT)
ROADMAP_RULES = (
    *ENTRY_RULES,
    Rule.ORPHAN_CONTENT,
    Rule.INVALID_CONTENT,
    Rule.MALFORMED_FRAMEWORK,
)
TASK_RULES = (Rule.TASK_STATUS_MISMATCH, Rule.ZOMBIE_STATUS)
CHECK_RULES = {ROADMAP_CONSISTENT: ROADMAP_RULES, TASK_AGREES: TASK_RULES}
DETAIL_ROWS = 20


def violations_table(violations: Sequence[Violation], limit: int = DETAIL_ROWS) -> str:
    """The first violations as a Markdown table (readable in the UI)."""
    lines = ["| roadmap | concept | item | rule | detail |", "|---|---|---|---|---|"]
    for v in violations[:limit]:
        detail = v.detail.replace("|", "/")
        lines.append(
            f"| {v.roadmap_id} | {v.concept_id or ''} | {v.item or ''} | {v.rule} | {detail} |"
        )
    if len(violations) > limit:
        lines.append(f"| ... | | | | {len(violations) - limit} more |")
    return "\n".join(lines)


def check_metadata(violations: Sequence[Violation], **extra: Any) -> dict[str, Any]:
    counts = {rule: n for rule, n in counts_by_rule(violations).items() if n}
    metadata: dict[str, Any] = {"violations": len(violations), "counts_by_rule": counts, **extra}
    if violations:
        metadata["detail"] = dg.MetadataValue.md(violations_table(violations))
    return metadata


def roadmap_check_results(
    violations: Sequence[Violation],
) -> dict[str, tuple[bool, dict[str, Any]]]:
    """The two per-roadmap checks' outcomes from one roadmap's violations."""
    results: dict[str, tuple[bool, dict[str, Any]]] = {}
    for name, rules in CHECK_RULES.items():
        found = [v for v in violations if v.rule in rules]
        repairable = any(is_repairable(v) for v in found)
        results[name] = (
            not found,
            check_metadata(
                found,
                needs_human=sum(1 for v in found if not is_repairable(v)),
                repair="rematerialize framework_data for this roadmap" if repairable else "",
            ),
        )
    return results


def completeness_result(states: Sequence[ItemState]) -> tuple[bool, dict[str, Any]]:
    """Whether every item is completed; the unfinished ones to retry in the metadata."""
    unfinished = [s for s in states if s.status != "completed"]
    lines = ["| roadmap | concept | item | status |", "|---|---|---|---|"]
    lines += [
        f"| {s.roadmap_id} | {s.concept_id} | {s.item} | {s.status} |"
        for s in unfinished[:DETAIL_ROWS]
    ]
    metadata: dict[str, Any] = {
        "items": len(states),
        "failed_items": sum(1 for s in unfinished if s.status == "failed"),
        "unfinished_items": len(unfinished),
        "concepts_to_retry": sorted({s.concept_id for s in unfinished if s.status == "failed"})[
            :100
        ],
    }
    if unfinished:
        metadata["detail"] = dg.MetadataValue.md("\n".join(lines))
        metadata["retry"] = (
            "backfill the failed partitions of tutorial / resource_recommendations / quiz "
            "(Materialize > Backfill > failed and missing); the retry sensor also does it"
        )
    return not unfinished, metadata


def roadmap_check_evaluations(
    roadmap_id: str,
    violations: Sequence[Violation],
    states: Sequence[ItemState],
    target: AssetCheckEvaluationTargetMaterializationData | None = None,
) -> list[dg.AssetCheckEvaluation]:
    """The per-roadmap checks as events (logged by a run that rolled the roadmap up)."""
    results = roadmap_check_results(violations)
    complete, metadata = completeness_result(states)
    evaluations = [
        dg.AssetCheckEvaluation(
            asset_key=FRAMEWORK_DATA,
            check_name=name,
            passed=passed,
            partition=roadmap_id,
            metadata=metadata,
            severity=dg.AssetCheckSeverity.ERROR,
            target_materialization_data=target,
        )
        for name, (passed, metadata) in results.items()
    ]
    evaluations.append(
        dg.AssetCheckEvaluation(
            asset_key=FRAMEWORK_DATA,
            check_name=ROADMAP_COMPLETE,
            passed=complete,
            partition=roadmap_id,
            metadata=metadata,
            severity=dg.AssetCheckSeverity.WARN,
            target_materialization_data=target,
        )
    )
    return evaluations


def log_evaluation(context: dg.OpExecutionContext, evaluation: dg.AssetCheckEvaluation) -> None:
    """Log one partition's check evaluation from a step that covers a key range."""
    # log_event accepts check evaluations at run time (a UserEvent); its annotation lags.
    context.log_event(evaluation)  # type: ignore[arg-type]


def latest_targets(
    instance: dg.DagsterInstance, asset_key: dg.AssetKey, partitions: Sequence[str]
) -> dict[str, AssetCheckEvaluationTargetMaterializationData]:
    """The latest materialization of each partition, for the evaluations a step logs itself:
    without it, Dagster takes a partition's check result for one about an older version."""
    if not partitions:
        return {}
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=asset_key, asset_partitions=list(partitions)),
        limit=min(10_000, 20 * len(partitions)),
    ).records
    targets: dict[str, AssetCheckEvaluationTargetMaterializationData] = {}
    for record in records:  # newest first
        if record.partition_key and record.partition_key not in targets:
            targets[record.partition_key] = AssetCheckEvaluationTargetMaterializationData(
                storage_id=record.storage_id, run_id=record.run_id, timestamp=record.timestamp
            )
    return targets

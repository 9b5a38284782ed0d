"""The code location the end-to-end benchmark loads: production definitions plus a trivial
asset over 30 partitions whose single-run backfill is the floor of Dagster's own overhead."""

import dagster as dg

from roadmap_pipeline.definitions import build_definitions

BENCH_KEYS = dg.DynamicPartitionsDefinition(name="bench_keys")


@dg.asset(
    partitions_def=BENCH_KEYS,
    backfill_policy=dg.BackfillPolicy.single_run(),
    group_name="benchmark",
    description="Does nothing: a single-run backfill of it measures Dagster's run overhead.",
)
def trivial(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    return dg.MaterializeResult(metadata={"partitions": len(context.partition_keys)})


defs = dg.Definitions.merge(
    build_definitions(),
    dg.Definitions(assets=[trivial], executor=dg.in_process_executor),
)

"""Connection safety: a starved pool slows work down but loses nothing; a budget that cannot
fit the server's max_connections is refused with the arithmetic spelled out."""

from __future__ import annotations

import dagster as dg
import pytest

from roadmap_pipeline.definitions import build_definitions
from roadmap_pipeline.orchestration.resources import (
    CheckpointerResource,
    ContentGeneratorResource,
    RoadmapDatabase,
)
from roadmap_pipeline.samples import synthetic_framework
from roadmap_pipeline.store.activity import NothingRunning
from roadmap_pipeline.store.budget import ConnectionBudget, ConnectionBudgetExceeded
from roadmap_pipeline.store.database import connect
from roadmap_pipeline.store.invariants import Scope, find_violations
from roadmap_pipeline.store.writers import submit_roadmap
from roadmap_pipeline_tests.dagster.conftest import Pipeline


def test_a_pool_of_one_connection_serves_eight_concurrent_concepts(pipeline: Pipeline) -> None:
    starved = {
        "database": RoadmapDatabase(url=pipeline.url, pool_size=1, pool_timeout_s=120),
        "generator": ContentGeneratorResource(max_concurrency=8),
        "checkpointer": CheckpointerResource(),
    }
    defs = build_definitions(starved)
    submit_roadmap(pipeline.engine, synthetic_framework("starved", 12))
    context = dg.build_sensor_context(
        instance=pipeline.instance, resources=starved, definitions=defs
    )
    intake = defs.get_sensor_def("roadmap_intake")(context)
    assert isinstance(intake, dg.SensorResult)
    for request in intake.dynamic_partitions_requests:
        pipeline.instance.add_dynamic_partitions(
            request.partitions_def_name, list(request.partition_keys)
        )
    [request] = intake.run_requests
    result = defs.resolve_job_def("generate_concepts").execute_in_process(
        instance=pipeline.instance,
        tags=dict(request.tags),
        asset_selection=list(request.asset_selection or []),
    )
    assert result.success
    with connect(pipeline.engine) as conn:
        assert find_violations(conn, Scope.roadmap("starved"), NothingRunning()) == []


def test_a_budget_that_cannot_fit_is_refused_with_the_arithmetic() -> None:
    budget = ConnectionBudget(max_concurrent_runs=10, database_pool=8, checkpointer_pool=4)
    with pytest.raises(ConnectionBudgetExceeded) as refused:
        budget.check(max_connections=100, reserved=3)
    message = str(refused.value)
    assert "10 concurrent runs x 13 connections" in message
    assert "Lower max_concurrent_runs" in message
    assert (
        ConnectionBudget(max_concurrent_runs=2, database_pool=5, checkpointer_pool=4).check(100, 3)
        > 0
    )


def test_the_budget_is_checked_against_the_live_server(pipeline: Pipeline) -> None:
    database = RoadmapDatabase(url=pipeline.url)
    breakdown = database.check_budget(pipeline.instance)
    assert (
        breakdown["total"]
        == breakdown["roadmap_pipeline_total"] + breakdown["dagster_storage_total"]
    )
    if pipeline.url.startswith("postgresql"):
        assert breakdown["max_connections"] >= 20
        assert breakdown["spare_connections"] >= 0

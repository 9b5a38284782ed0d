"""Dagster-level fixtures: our database on SQLite and Postgres, an ephemeral instance or a
Postgres-backed one (dagster-postgres, one schema per test), and helpers to tick sensors and
execute their run requests in-process, exactly as the daemon would launch them."""

from __future__ import annotations

import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import dagster as dg
import psycopg
import pytest
from sqlalchemy import Engine
from sqlalchemy.engine import make_url

from roadmap_pipeline.definitions import build_definitions
from roadmap_pipeline.orchestration.recovery import RecoverySettings, RetrySettings
from roadmap_pipeline.orchestration.resources import (
    CheckpointerResource,
    ContentGeneratorResource,
    RoadmapDatabase,
)
from roadmap_pipeline.store.database import create_store_engine
from roadmap_pipeline.store.migrate import init_db
from roadmap_pipeline.testing.dagster_harness import create_database
from roadmap_pipeline_tests.conftest import IN_CI, PG_ADMIN_URL

DAGSTER_TEST_DB = "roadmap_pipeline_dagster_test"
# As dagster.yaml: the connection budget is computed from it (the default, 10 runs, does not fit
# this server's max_connections of 100 and would be refused).
TEST_CONCURRENCY = {"concurrency": {"runs": {"max_concurrent_runs": 4}}}

warnings.filterwarnings("ignore", category=dg.BetaWarning)
warnings.filterwarnings("ignore", category=dg.PreviewWarning)


@dataclass
class Pipeline:
    """Our database, an instance and the definitions wired to them."""

    url: str
    engine: Engine
    instance: dg.DagsterInstance
    faults: str = ""
    retry: RetrySettings = field(default_factory=lambda: RetrySettings(base_delay_s=0))
    recovery: RecoverySettings = field(default_factory=lambda: RecoverySettings(delay_s=0))
    defs: dg.Definitions = field(init=False)

    def __post_init__(self) -> None:
        self.defs = build_definitions(self.resources(), retry=self.retry, recovery=self.recovery)

    def resources(self) -> dict[str, Any]:
        return {
            "database": RoadmapDatabase(url=self.url),
            "generator": ContentGeneratorResource(faults=self.faults, max_concurrency=4),
            "checkpointer": CheckpointerResource(),
        }

    def with_faults(self, faults: str, **settings: Any) -> Pipeline:
        return Pipeline(self.url, self.engine, self.instance, faults, **settings)

    def tick(self, sensor_name: str, cursor: str | None = None) -> dg.SensorResult | dg.SkipReason:
        sensor = self.defs.get_sensor_def(sensor_name)
        context = dg.build_sensor_context(
            instance=self.instance, cursor=cursor, resources=self.resources(), definitions=self.defs
        )
        result = sensor(context)
        if isinstance(result, dg.SensorResult):
            for request in result.dynamic_partitions_requests or []:
                self.instance.add_dynamic_partitions(
                    request.partitions_def_name, list(request.partition_keys)
                )
            for event in result.asset_events:
                self.instance.report_runless_asset_event(event)
        return result

    def execute(self, request: dg.RunRequest, job_name: str = "generate_concepts") -> Any:
        """Execute a run request in-process as the daemon would launch it (same selection)."""
        job = self.defs.resolve_job_def(request.job_name or job_name)
        if request.asset_selection is not None or request.asset_check_keys is not None:
            job = job.get_subset(
                asset_selection=set(request.asset_selection or []),
                asset_check_selection=(
                    set(request.asset_check_keys) if request.asset_check_keys is not None else None
                ),
            )
        return job.execute_in_process(
            instance=self.instance,
            tags=dict(request.tags),
            partition_key=request.partition_key,
            raise_on_error=False,
        )

    def run_job(self, job_name: str, **kwargs: Any) -> Any:
        job = self.defs.resolve_job_def(job_name)
        return job.execute_in_process(instance=self.instance, raise_on_error=False, **kwargs)


@pytest.fixture
def data_engine(database_url: str) -> Iterator[tuple[str, Engine]]:
    engine = create_store_engine(database_url)
    init_db(engine)
    yield database_url, engine
    engine.dispose()


@pytest.fixture
def pipeline(data_engine: tuple[str, Engine]) -> Iterator[Pipeline]:
    """Our database (SQLite and Postgres) with an ephemeral Dagster instance."""
    url, engine = data_engine
    with dg.instance_for_test(overrides=TEST_CONCURRENCY) as instance:
        yield Pipeline(url, engine, instance)


def _dagster_pg_base() -> str:
    base = make_url(PG_ADMIN_URL)
    try:
        create_database(PG_ADMIN_URL, DAGSTER_TEST_DB)
    except psycopg.Error as exc:
        message = f"PostgreSQL is not usable for Dagster storage: {exc}"
        if IN_CI:
            pytest.fail(message + " (CI=true: Postgres tests must run)")
        pytest.skip(message)
    return base.set(database=DAGSTER_TEST_DB).render_as_string(hide_password=False)


@pytest.fixture
def postgres_instance() -> Iterator[dg.DagsterInstance]:
    """A Dagster instance whose run, event and schedule storage is Postgres (dagster-postgres),
    in a schema of its own that is dropped afterwards."""
    base = _dagster_pg_base()
    schema = f"dg_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    url = (
        make_url(base)
        .set(drivername="postgresql+psycopg2")
        .update_query_dict({"options": f"-csearch_path={schema}"})
        .render_as_string(hide_password=False)
    )
    try:
        with dg.instance_for_test(
            overrides={"storage": {"postgres": {"postgres_url": url}}}
        ) as instance:
            yield instance
    finally:
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')

"""Shared pieces of the daemon tests: a Postgres schema for our tables, row snapshots, waits."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import dagster as dg
import psycopg
from dagster._core.storage.tags import RUN_FAILURE_REASON_TAG, WILL_RETRY_TAG
from sqlalchemy import Engine, select, text
from sqlalchemy.engine import make_url

from roadmap_pipeline.store.database import connect, create_store_engine
from roadmap_pipeline.store.migrate import init_db
from roadmap_pipeline.store.schema import RoadmapTask
from roadmap_pipeline.testing.dagster_harness import LOCATION_NAME, wait_for

TERMINAL = ("completed", "partial_failure", "failed")


@contextmanager
def data_schema(pg_database_url: str) -> Iterator[str]:
    """A fresh schema for our tables (created by init-db), dropped afterwards."""
    schema = f"d_{uuid.uuid4().hex[:12]}"
    plain = (
        make_url(pg_database_url).set(drivername="postgresql").render_as_string(hide_password=False)
    )
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    url = make_url(pg_database_url).update_query_dict({"options": f"-csearch_path={schema}"})
    rendered = url.render_as_string(hide_password=False)
    engine = create_store_engine(rendered)
    init_db(engine)
    engine.dispose()
    try:
        yield rendered
    finally:
        with psycopg.connect(plain, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def task_of(engine: Engine, roadmap_id: str) -> Any:
    with connect(engine) as conn:
        return conn.execute(
            select(RoadmapTask)
            .where(RoadmapTask.roadmap_id == roadmap_id)
            .order_by(RoadmapTask.created_at.desc())
        ).first()


def content_rows(engine: Engine, roadmap_id: str) -> dict[tuple[str, str], list[tuple[Any, ...]]]:
    """Every content row of a roadmap, by (table, concept): ids, versions and a content hash."""
    queries = {
        "tutorial": "SELECT concept_id, tutorial_id, content_version, is_latest, summary, "
        "content_url FROM tutorial_metadata WHERE roadmap_id = :r",
        "resources": "SELECT concept_id, id, resources_count, CAST(resources AS TEXT) "
        "FROM resource_recommendation_metadata WHERE roadmap_id = :r",
        "quiz": "SELECT concept_id, quiz_id, total_questions, CAST(questions AS TEXT) "
        "FROM quiz_metadata WHERE roadmap_id = :r",
    }
    rows: dict[tuple[str, str], list[tuple[Any, ...]]] = {}
    with connect(engine) as conn:
        for table, sql in queries.items():
            for row in conn.execute(text(sql), {"r": roadmap_id}):
                values = tuple(
                    hashlib.sha256(v.encode()).hexdigest()[:16]
                    if isinstance(v, str) and len(v) > 200
                    else v
                    for v in row[1:]
                )
                rows.setdefault((table, row[0]), []).append(values)
    return rows


def run_worker_pid(instance: dg.DagsterInstance, run_id: str) -> int | None:
    """The pid of a run's worker process, from the events it emitted."""
    records = instance.all_logs(run_id, of_type=dg.DagsterEventType.RUN_START)
    for record in records:
        if record.dagster_event is not None and record.dagster_event.pid:
            return int(record.dagster_event.pid)
    return None


def graphql(url: str, query: str, variables: dict[str, Any]) -> dict[str, Any]:
    """A GraphQL request as the UI sends it (stdlib HTTP, loopback only)."""
    import urllib.request

    request = urllib.request.Request(
        url,
        data=json.dumps({"query": query, "variables": variables}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        payload: dict[str, Any] = json.loads(response.read())
    if payload.get("errors"):
        raise AssertionError(f"GraphQL errors: {payload['errors']}")
    return payload["data"]


_SENSOR = """
query Sensor($selector: SensorSelector!) {
  sensorOrError(sensorSelector: $selector) {
    __typename
    ... on Sensor { id sensorState { status ticks(limit: 1) { status } } }
  }
}
"""
_STOP_SENSOR = """
mutation Stop($id: String!) {
  stopSensor(id: $id) {
    __typename
    ... on StopSensorMutationResult { instigationState { status } }
  }
}
"""
_START_SENSOR = """
mutation Start($selector: SensorSelector!) {
  startSensor(sensorSelector: $selector) { __typename ... on Sensor { sensorState { status } } }
}
"""


def _sensor(graphql_url: str, selector: dict[str, str]) -> dict[str, Any]:
    found: dict[str, Any] = graphql(graphql_url, _SENSOR, {"selector": selector})["sensorOrError"]
    assert found["__typename"] == "Sensor", found
    return found


@contextmanager
def sensors_paused(graphql_url: str, names: list[str]) -> Iterator[None]:
    """Stop sensors the way the UI's toggle does, and start them again on leaving.

    Each has ticked first, so that its cursor holds its place: started again, it handles what
    happened while it was stopped (a sensor stopped before its first tick would start from
    then)."""
    selectors = [
        {
            "repositoryLocationName": LOCATION_NAME,
            "repositoryName": "__repository__",
            "sensorName": name,
        }
        for name in names
    ]
    for selector in selectors:
        wait_for(
            lambda selector=selector: _sensor(graphql_url, selector)["sensorState"]["ticks"],
            120,
            1,
            f"sensor {selector['sensorName']} to tick",
        )
        sensor_id = _sensor(graphql_url, selector)["id"]
        stopped = graphql(graphql_url, _STOP_SENSOR, {"id": sensor_id})["stopSensor"]
        assert stopped["instigationState"]["status"] == "STOPPED", stopped
    try:
        yield
    finally:
        for selector in selectors:
            started = graphql(graphql_url, _START_SENSOR, {"selector": selector})["startSensor"]
            assert started["sensorState"]["status"] == "RUNNING", started


def describe_runs(instance: dg.DagsterInstance, roadmap_id: str) -> str:
    """A roadmap's runs, oldest first, with their tags and the failures they logged: what a
    failing daemon test prints so that CI's log says why."""
    runs = instance.get_runs(filters=dg.RunsFilter(tags={"roadmap_pipeline/roadmap": roadmap_id}))
    failures = (
        dg.DagsterEventType.STEP_FAILURE,
        dg.DagsterEventType.RUN_FAILURE,
        dg.DagsterEventType.ASSET_FAILED_TO_MATERIALIZE,
        dg.DagsterEventType.ENGINE_EVENT,
    )
    lines = []
    for run in reversed(runs):
        tags = {
            k.split("/")[-1]: v
            for k, v in run.tags.items()
            if "roadmap_pipeline" in k or k in (WILL_RETRY_TAG, RUN_FAILURE_REASON_TAG)
        }
        lines.append(f"run {run.run_id[:8]} {run.status.value} parent={run.parent_run_id} {tags}")
        for record in instance.all_logs(run.run_id):
            event = record.dagster_event
            if event is None or event.event_type not in failures:
                continue
            # Engine events about errors and about Dagster's run retries (why it did not retry).
            if event.event_type is dg.DagsterEventType.ENGINE_EVENT and not any(
                word in (event.message or "") for word in ("rror", "etry")
            ):
                continue
            lines.append(f"    {event.event_type_value}: {(event.message or '')[:300]}")
    return "\n".join(lines)

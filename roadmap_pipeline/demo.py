"""``make demo``: the main job on the embedded default, end to end, in a few seconds.

Under ``./.roadmap_pipeline/`` (reset on every run): an SQLite database holding the bundled sample
roadmaps (one waiting in the queue, one fresh, and the incident's roadmap as the incident left
it) and an SQLite-backed Dagster instance. The demo then does what the daemon would do, in this
process: the intake sensor picks the roadmaps up, their runs generate with the offline generator
(two quizzes fail on purpose, by fault injection), the settlement sensor rolls the failed roadmap
up, the fleet check runs. It prints the consistency report and where to look in the UI
(``make dev`` serves this same instance and database).
"""

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
from rich import box
from rich.console import Console
from rich.table import Table
from sqlalchemy import select

from roadmap_pipeline import environment as env
from roadmap_pipeline.definitions import build_definitions
from roadmap_pipeline.orchestration.resources import (
    CheckpointerResource,
    ContentGeneratorResource,
    RoadmapDatabase,
    dispose_engines,
)
from roadmap_pipeline.samples import INCIDENT_ROADMAP, build_incident, load_sample
from roadmap_pipeline.store.activity import NothingRunning
from roadmap_pipeline.store.database import connect, create_store_engine
from roadmap_pipeline.store.invariants import Scope, counts_by_rule, find_violations, item_states
from roadmap_pipeline.store.migrate import init_db
from roadmap_pipeline.store.schema import RoadmapTask
from roadmap_pipeline.store.writers import submit_roadmap

EMBEDDED_INSTANCE = Path(__file__).parent / "instance" / "embedded.yaml"
FAILING_QUIZZES = ("sql-for-analysts-q4r7t1/c5", "sql-for-analysts-q4r7t1/c11")
FRESH_SAMPLES = ("sql-for-analysts-q4r7t1", "dagster-essentials-m2n8p5")
QUIET = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}


@dataclass(frozen=True)
class EmbeddedPaths:
    root: Path

    @property
    def home(self) -> Path:
        return self.root / env.EMBEDDED_DIR

    @property
    def dagster_home(self) -> Path:
        return self.home / "dagster_home"

    @property
    def database_url(self) -> str:
        return env.embedded_database_url(self.root)


def prepare_embedded(paths: EmbeddedPaths, *, reset: bool) -> None:
    """The embedded instance's home (Dagster's SQLite storage) and our SQLite database."""
    if reset and paths.home.exists():
        shutil.rmtree(paths.home)
    paths.dagster_home.mkdir(parents=True, exist_ok=True)
    target = paths.dagster_home / "dagster.yaml"
    if not target.exists():
        shutil.copyfile(EMBEDDED_INSTANCE, target)
    engine = create_store_engine(paths.database_url)
    init_db(engine)
    engine.dispose()


class LocalDriver:
    """Evaluates sensors and executes their run requests in this process, as the daemon would."""

    def __init__(
        self, defs: dg.Definitions, instance: dg.DagsterInstance, resources: dict[str, Any]
    ):
        self.defs, self.instance, self.resources = defs, instance, resources
        self.cursors: dict[str, str | None] = {}

    def tick(self, sensor_name: str) -> list[dg.RunRequest]:
        sensor = self.defs.get_sensor_def(sensor_name)
        context = dg.build_sensor_context(
            instance=self.instance,
            cursor=self.cursors.get(sensor_name),
            resources=self.resources,
            definitions=self.defs,
        )
        result = sensor(context)
        if not isinstance(result, dg.SensorResult):
            return []
        self.cursors[sensor_name] = result.cursor or self.cursors.get(sensor_name)
        for request in result.dynamic_partitions_requests or []:
            self.instance.add_dynamic_partitions(
                request.partitions_def_name, list(request.partition_keys)
            )
        for event in result.asset_events:
            self.instance.report_runless_asset_event(event)
        return list(result.run_requests or [])

    def execute(self, request: dg.RunRequest) -> bool:
        job = self.defs.resolve_job_def(request.job_name or "generate_concepts")
        if request.asset_selection is not None or request.asset_check_keys is not None:
            job = job.get_subset(
                asset_selection=set(request.asset_selection or []),
                asset_check_selection=(
                    set(request.asset_check_keys) if request.asset_check_keys is not None else None
                ),
            )
        result = job.execute_in_process(
            instance=self.instance,
            tags=dict(request.tags),
            partition_key=request.partition_key,
            raise_on_error=False,
            # The run's events are stored in the instance (the UI shows them); keep the
            # terminal for the demo's own report.
            run_config=QUIET,
        )
        return bool(result.success)


def run_demo(console: Console, root: Path) -> int:
    paths = EmbeddedPaths(root)
    prepare_embedded(paths, reset=True)
    engine = create_store_engine(paths.database_url)
    console.print(f"embedded database: {paths.database_url}")
    console.print(f"embedded Dagster instance: {paths.dagster_home}")
    for roadmap_id in FRESH_SAMPLES:
        submit_roadmap(engine, load_sample(roadmap_id), user_id="user-demo")
    incident = build_incident(engine)
    console.print(
        f"submitted {', '.join(FRESH_SAMPLES)}; rebuilt the incident on {incident.roadmap_id} "
        f"(rows for {len(incident.completed_concepts)} of 30 concepts, framework_data all "
        f"pending, task {incident.task_id} stuck in processing)"
    )
    console.rule("before: the fleet check")
    _print_fleet(console, engine)

    faults = {
        "fail": [
            {"concept": key, "item": "quiz", "times": 1000, "kind": "permanent"}
            for key in FAILING_QUIZZES
        ]
    }
    resources = {
        "database": RoadmapDatabase(url=paths.database_url),
        "generator": ContentGeneratorResource(faults=json.dumps(faults), max_concurrency=4),
        "checkpointer": CheckpointerResource(),
    }
    defs = build_definitions(resources, automatic_retries=False)
    with dg.DagsterInstance.from_config(str(paths.dagster_home)) as instance:
        driver = LocalDriver(defs, instance, resources)
        console.rule("the main job: intake, generation, settlement")
        for step, request in _drain(driver, "roadmap_intake"):
            outcome = "ok" if driver.execute(request) else "failed (as injected: see the UI)"
            console.print(f"  {step}: {_describe(request)} -> {outcome}")
        for step, request in _drain(driver, "roadmap_settlement"):
            console.print(
                f"  {step}: {_describe(request)} -> {'ok' if driver.execute(request) else 'failed'}"
            )
        fleet = defs.resolve_job_def("fleet_consistency_check").execute_in_process(
            instance=instance, run_config=QUIET
        )
        console.print(f"  fleet_consistency check run: {'ok' if fleet.success else 'failed'}")
    dispose_engines()  # the next demo in this process starts from a fresh database file
    console.rule("after: tasks and items")
    _print_tasks(console, engine)
    console.rule("after: the fleet check")
    _print_fleet(console, engine)
    console.print(
        "\nWhere to look: `make dev`, then http://127.0.0.1:3000\n"
        "  - Assets > quiz > Partitions: 2 failed partitions (the injected failures), "
        f"{', '.join(FAILING_QUIZZES)}\n"
        "  - Assets > framework_data > Checks: roadmap_complete warns for sql-for-analysts-q4r7t1 "
        "and names the concepts to retry\n"
        "  - Retry: quiz > Materialize > Backfill 'Failed and missing'; the settlement sensor "
        "rolls the roadmap up and the task becomes completed\n"
        "  - The incident's roadmap was adopted (its 81 rows recorded, not regenerated), its 3 "
        "missing concepts generated, its task settled."
    )
    engine.dispose()
    return 0


def _drain(driver: LocalDriver, sensor_name: str) -> Iterator[tuple[str, dg.RunRequest]]:
    for request in driver.tick(sensor_name):
        yield sensor_name, request


def _describe(request: dg.RunRequest) -> str:
    assets = ", ".join(k.to_user_string() for k in request.asset_selection or [])
    start = request.tags.get("dagster/asset_partition_range_start", request.partition_key or "")
    end = request.tags.get("dagster/asset_partition_range_end", "")
    where = f"{start} .. {end}" if end and end != start else start
    return f"{assets} over {where}"


def _print_tasks(console: Console, engine: Any) -> None:
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for column in (
        "roadmap",
        "task",
        "status",
        "items completed",
        "items failed",
        "failed concepts",
    ):
        table.add_column(column, overflow="fold")
    with connect(engine) as conn:
        tasks = conn.execute(select(RoadmapTask).order_by(RoadmapTask.roadmap_id)).all()
        states = item_states(conn, Scope.fleet())
    for task in tasks:
        mine = [s for s in states if s.roadmap_id == task.roadmap_id]
        failed = sorted({s.concept_id for s in mine if s.status == "failed"})
        table.add_row(
            task.roadmap_id,
            str(task.task_id)[:8],
            task.status,
            str(sum(1 for s in mine if s.status == "completed")),
            str(sum(1 for s in mine if s.status == "failed")),
            ", ".join(failed),
        )
    console.print(table)


def _print_fleet(console: Console, engine: Any) -> None:
    with connect(engine) as conn:
        violations = find_violations(conn, Scope.fleet(), NothingRunning())
    counts = {rule: n for rule, n in counts_by_rule(violations).items() if n}
    if not violations:
        console.print("consistent: no violation in the fleet")
        return
    console.print(
        f"{len(violations)} violation(s): " + ", ".join(f"{r} {n}" for r, n in counts.items())
    )
    for roadmap_id in sorted({v.roadmap_id for v in violations}):
        mine = [v for v in violations if v.roadmap_id == roadmap_id]
        console.print(f"  {roadmap_id}: {len(mine)}, e.g. {mine[0].rule}: {mine[0].detail}")
    if any(v.roadmap_id == INCIDENT_ROADMAP for v in violations):
        console.print("  (the incident: rows committed, bookkeeping never written)")

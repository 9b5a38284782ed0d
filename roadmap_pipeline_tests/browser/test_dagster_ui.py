"""The operator's view in a real browser: dagster-webserver and the daemon on Postgres storage,
two roadmaps of 15 concepts, 3 of whose quizzes fail on their first attempt (27 of 30 quiz
partitions materialized, the incident's numbers). The test reads the graph, the partitions and
the failing check like an operator, backfills the failed partitions with the UI's own
Materialize dialog, and waits until the UI shows them and the roadmap's checks green. Each step
leaves a screenshot in test-artifacts/browser/.

The code location is ``roadmap_pipeline.testing.ui_defs``: no automatic retries, so the failed
partitions wait for the backfill launched here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from playwright.sync_api import Page, expect
from sqlalchemy import Engine, select

from roadmap_pipeline.domain.statuses import TaskStatus
from roadmap_pipeline.orchestration.keys import FRAMEWORK_DATA, QUIZ, ROADMAP_COMPLETE
from roadmap_pipeline.orchestration.partitions import CONCEPTS, registered_concept_keys
from roadmap_pipeline.samples import synthetic_framework
from roadmap_pipeline.store.database import connect, create_store_engine
from roadmap_pipeline.store.schema import RoadmapTask
from roadmap_pipeline.store.writers import submit_roadmap
from roadmap_pipeline.testing.dagster_harness import Deployment, dagster_deployment, wait_for
from roadmap_pipeline_tests.browser.dagster_ui import DagsterUI
from roadmap_pipeline_tests.conftest import PG_ADMIN_URL
from roadmap_pipeline_tests.dagster.daemon_support import data_schema

pytestmark = [
    pytest.mark.browser,
    pytest.mark.daemon,
    pytest.mark.postgres,
    pytest.mark.slow,
    pytest.mark.timeout(600),
]

CLEAN = "ui-clean-r1"
FAILING = "ui-failing-r2"
CONCEPTS_PER_ROADMAP = 15
FAILING_CONCEPTS = [f"{FAILING}/c-1-1-2", f"{FAILING}/c-1-2-1", f"{FAILING}/c-2-1-2"]
ASSET_CHECKS = {
    "roadmap_framework": 0,
    "tutorial": 1,
    "resource_recommendations": 1,
    "quiz": 1,
    "framework_entry": 1,
    "framework_data": 3,
    "roadmap_fleet": 1,
}
ROADMAP_CHECKS = ("roadmap_complete", "roadmap_consistent", "task_status_agrees")
ROADMAP_COMPLETE_KEY = dg.AssetCheckKey(FRAMEWORK_DATA, ROADMAP_COMPLETE)
TERMINAL = {TaskStatus.COMPLETED.value, TaskStatus.PARTIAL_FAILURE.value}


@pytest.fixture(scope="module")
def data_url(pg_database_url: str) -> Iterator[str]:
    """Our tables in a fresh schema of the Postgres test database."""
    with data_schema(pg_database_url) as url:
        yield url


@pytest.fixture(scope="module")
def deployment(data_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """dagster-daemon and dagster-webserver on 127.0.0.1; three quizzes fail once.

    The fault counters live in files, so the backfill's runs (other processes) see that the
    first attempt happened and pass.
    """
    faults = {
        "fail": [
            {"concept": key, "item": "quiz", "times": 1, "kind": "permanent"}
            for key in FAILING_CONCEPTS
        ],
        "counter_dir": str(tmp_path_factory.mktemp("fault-counters")),
    }
    with dagster_deployment(
        database_url=data_url,
        admin_url=PG_ADMIN_URL,
        module="roadmap_pipeline.testing.ui_defs",
        extra_env={"ROADMAP_FAULTS": json.dumps(faults)},
        webserver=True,
    ) as deployment:
        yield deployment


def task_of(engine: Engine, roadmap_id: str) -> Any:
    with connect(engine) as conn:
        return conn.execute(select(RoadmapTask).where(RoadmapTask.roadmap_id == roadmap_id)).one()


def quiz_statuses(instance: dg.DagsterInstance) -> dict[str, str]:
    keys = registered_concept_keys(instance, CLEAN) + registered_concept_keys(instance, FAILING)
    statuses = instance.get_status_by_partition(QUIZ, keys, CONCEPTS) or {}
    return {k: s.value if s else "MISSING" for k, s in statuses.items()}


def roadmap_complete_status(instance: dg.DagsterInstance, roadmap_id: str) -> str | None:
    infos = instance.event_log_storage.get_asset_check_partition_info([ROADMAP_COMPLETE_KEY])
    return next(
        (i.latest_execution_status.value for i in infos if i.partition_key == roadmap_id), None
    )


def deployment_report(deployment: Deployment) -> str:
    """What the daemon did: recent runs, their step failures, backfills, its last log lines."""
    instance = deployment.instance
    recent = instance.get_runs(limit=20)
    runs = [
        (r.run_id[:8], r.job_name, r.status.value, r.tags.get("dagster/run_key")) for r in recent
    ]
    errors = [
        f"{r.run_id[:8]} {e.step_key}: {e.dagster_event.step_failure_data.error.message}"
        for r in recent
        if r.status == dg.DagsterRunStatus.FAILURE
        for e in instance.all_logs(r.run_id, of_type=dg.DagsterEventType.STEP_FAILURE)
        if e.dagster_event and e.dagster_event.step_failure_data.error
    ]
    backfills = [(b.backfill_id, b.status.value, b.error) for b in instance.get_backfills()]
    daemon = deployment.logs("daemon")[-4000:]
    return f"runs: {runs}\nstep failures: {errors}\nbackfills: {backfills}\ndaemon: {daemon}"


@contextmanager
def reported(deployment: Deployment, state: Callable[[], object] = dict) -> Iterator[None]:
    """A failed wait says where the deployment got to."""
    try:
        yield
    except (AssertionError, TimeoutError) as exc:
        raise AssertionError(f"{exc}\nstate: {state()}\n{deployment_report(deployment)}") from exc


def test_an_operator_sees_failed_concepts_in_the_ui_and_backfills_them_to_green(
    deployment: Deployment, data_url: str, page: Page, artifacts: Path
) -> None:
    engine = create_store_engine(data_url)
    instance = deployment.instance
    submit_roadmap(engine, synthetic_framework(CLEAN, CONCEPTS_PER_ROADMAP))
    submit_roadmap(engine, synthetic_framework(FAILING, CONCEPTS_PER_ROADMAP))

    def tasks() -> dict[str, str]:
        return {r: task_of(engine, r).status for r in (CLEAN, FAILING)}

    with reported(deployment, tasks):
        wait_for(
            lambda: (
                all(status in TERMINAL for status in tasks().values())
                and roadmap_complete_status(instance, FAILING) == "FAILED"
            ),
            timeout_s=240,
            every_s=2,
            what="both roadmaps to settle, roadmap_complete failing for the failing one",
        )
    assert task_of(engine, CLEAN).status == TaskStatus.COMPLETED
    assert task_of(engine, FAILING).status == TaskStatus.PARTIAL_FAILURE
    before = quiz_statuses(instance)
    assert sorted(k for k, s in before.items() if s == "FAILED") == sorted(FAILING_CONCEPTS)
    assert sum(1 for s in before.values() if s == "MATERIALIZED") == 27

    ui = DagsterUI(page, f"http://127.0.0.1:{deployment.webserver_port}", artifacts)

    # a. The global asset graph shows every asset, and each asset's checks.
    ui.open_asset_graph()
    for asset, checks in ASSET_CHECKS.items():
        expect(ui.graph_node_title(asset)).to_be_visible()
        if checks:
            expect(ui.graph_checks_summary(asset)).to_have_text(
                re.compile(rf"\d+ / {checks} Passed")
            )
    expect(ui.graph_partitions_summary("quiz")).to_have_text("90% filled (3 failed)")
    ui.screenshot("01-asset-graph")

    # b. The quiz asset's partitions: 27 materialized, 3 failed, and which.
    ui.open_partitions("quiz")
    expect(ui.partition_status_filter("Materialized", 27)).to_be_visible()
    expect(ui.partition_status_filter("Failed", 3)).to_be_visible()
    ui.hide_partitions("Materialized")
    for key in FAILING_CONCEPTS:
        expect(ui.partition_row(key)).to_be_visible()
    expect(ui.partition_row(f"{FAILING}/c-1-1-1")).to_be_hidden()
    ui.screenshot("02-quiz-partitions-failed")

    # c. The failing check: roadmap_complete of the failing roadmap names the concepts to retry.
    ui.open_check_history("framework_data", ROADMAP_COMPLETE)
    for check in ROADMAP_CHECKS:
        expect(ui.page.get_by_text(check, exact=True).first).to_be_visible()
    failing_run = ui.history_rows(FAILING).first
    expect(failing_run).to_contain_text("Failed")
    ui.screenshot("03-failing-check-history")
    failing_run.get_by_role("button", name="metadata").click()
    metadata = ui.page.get_by_role("dialog").filter(has_text="concepts_to_retry")
    expect(metadata).to_contain_text("failed_items")
    metadata.get_by_text("[Show JSON]").first.click()
    concepts = ui.page.get_by_role("dialog").filter(has_text=FAILING_CONCEPTS[0].replace("/", ":"))
    for key in FAILING_CONCEPTS:
        expect(concepts.get_by_text(key.replace("/", ":"))).to_be_visible()
    ui.screenshot("04-failing-check-concepts-to-retry")
    ui.page.keyboard.press("Escape")
    ui.page.keyboard.press("Escape")

    # d. Backfill the failed partitions with the UI's Materialize dialog.
    ui.open_partitions("quiz")
    ui.page.get_by_role("button", name="Materialize…").click()
    dialog = ui.page.get_by_role("dialog").filter(has_text="Launch runs to materialize quiz")
    dialog.get_by_role("button", name="Failed and missing", exact=True).click()
    expect(dialog.get_by_text("3 partitions", exact=True)).to_be_visible()
    for key in FAILING_CONCEPTS:
        expect(dialog).to_contain_text(key)
    ui.screenshot("05-backfill-dialog")
    dialog.get_by_role("button", name="Launch backfill").click()
    toast = ui.page.get_by_role("region", name=re.compile("Notifications"))
    expect(toast.get_by_text(re.compile(r"Created backfill \w+"))).to_be_visible()
    toast.get_by_role("link", name="View").click()
    expect(ui.page.get_by_text("Partitions targeted")).to_be_visible()
    for key in FAILING_CONCEPTS:
        expect(ui.page.get_by_text(key, exact=True).first).to_be_visible()
    ui.screenshot("06-backfill-launched")

    backfills = instance.get_backfills()
    assert len(backfills) == 1
    backfill = backfills[0]
    assert backfill.tags.get("dagster/from_ui") == "true"
    assert backfill.asset_backfill_data is not None
    targeted = backfill.asset_backfill_data.target_subset.iterate_asset_partitions()
    assert sorted((p.asset_key, p.partition_key) for p in targeted) == [
        (QUIZ, key) for key in sorted(FAILING_CONCEPTS)
    ]

    # e. The UI turns green: every quiz partition, then the roadmap's checks after its roll-up.
    def quiz_all_materialized() -> None:
        ui.open_partitions("quiz")
        expect(ui.partition_status_filter("Materialized", 30)).to_be_visible(timeout=10_000)
        expect(ui.partition_status_filter("Failed", 0)).to_be_visible()

    with reported(deployment, lambda: quiz_statuses(instance)):
        ui.eventually(quiz_all_materialized, 300, "30 quiz partitions materialized, none failed")
    ui.screenshot("07-quiz-partitions-all-materialized")

    def roadmap_complete_passed() -> None:
        ui.open_check_history("framework_data", ROADMAP_COMPLETE)
        expect(ui.history_rows(FAILING).first).to_contain_text("Passed", timeout=10_000)

    with reported(deployment, tasks):
        ui.eventually(roadmap_complete_passed, 180, f"roadmap_complete passing for {FAILING}")
    ui.open_check_overview("framework_data", ROADMAP_COMPLETE)
    failed_items = ui.page.get_by_role("row").filter(
        has=ui.page.get_by_role("cell", name="failed_items", exact=True)
    )
    expect(failed_items).to_have_text(re.compile(r"^failed_items\s*0$"))
    ui.screenshot("08-roadmap-complete-passed")

    def graph_green() -> None:
        ui.open_asset_graph()
        expect(ui.graph_checks_summary("framework_data")).to_have_text(
            re.compile(r"3 / 3 Passed"), timeout=10_000
        )
        expect(ui.page.get_by_text(re.compile(r"filled \(\d+ failed\)"))).to_have_count(0)
        for asset in ("tutorial", "resource_recommendations", "quiz", "framework_entry"):
            expect(ui.graph_partitions_summary(asset)).to_have_text("100% filled")

    ui.eventually(graph_green, 60, "the graph: roadmap checks passed, every partition filled")
    ui.screenshot("09-asset-graph-after-backfill")

    # Cross-check with the instance and our database.
    after = quiz_statuses(instance)
    assert len(after) == 2 * CONCEPTS_PER_ROADMAP
    assert set(after.values()) == {"MATERIALIZED"}
    assert roadmap_complete_status(instance, FAILING) == "SUCCEEDED"
    wait_for(
        lambda: task_of(engine, FAILING).status == TaskStatus.COMPLETED,
        timeout_s=60,
        what="the failing roadmap's task to complete",
    )
    assert not task_of(engine, FAILING).failed_concepts
    engine.dispose()

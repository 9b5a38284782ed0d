"""The code location: every asset, check, job, schedule and sensor, with their resources.

Policy that concerns every asset lives here, in one place. Configuration resolves at launch
(``dg.EnvVar``); importing this module reads no environment variable and opens no connection.
"""

import dagster as dg

from roadmap_pipeline import environment as env
from roadmap_pipeline.orchestration.assets import (
    concept_content,
    framework_data,
    framework_entry,
    roadmap_fleet,
    roadmap_framework,
)
from roadmap_pipeline.orchestration.checks import (
    content_valid,
    entry_agrees_with_rows,
    fleet_consistency,
    roadmap_checks,
)
from roadmap_pipeline.orchestration.jobs import (
    check_concepts_job,
    check_roadmap_job,
    fleet_check_job,
    generate_concepts_job,
    regenerate_item_jobs,
    register_roadmap_job,
    roll_up_job,
)
from roadmap_pipeline.orchestration.recovery import (
    RecoverySettings,
    RetrySettings,
    failed_partition_retry_sensor,
    stuck_task_recovery_sensor,
)
from roadmap_pipeline.orchestration.resources import (
    CheckpointerResource,
    ContentGeneratorResource,
    RoadmapDatabase,
)
from roadmap_pipeline.orchestration.schedules import (
    DEFAULT_FLEET_CHECK_CRON,
    fleet_check_schedule,
)
from roadmap_pipeline.orchestration.sensors import (
    intake_sensor,
    repair_sensor,
    settlement_sensor,
)


def default_resources() -> dict[str, dg.ConfigurableResource]:
    return {
        "database": RoadmapDatabase(url=dg.EnvVar(env.DATABASE_URL)),
        "generator": ContentGeneratorResource(
            kind=dg.EnvVar(env.GENERATOR),
            base_url=dg.EnvVar(env.LLM_BASE_URL),
            model=dg.EnvVar(env.LLM_MODEL),
            api_key=dg.EnvVar(env.LLM_API_KEY),
            faults=dg.EnvVar(env.FAULTS),
        ),
        "checkpointer": CheckpointerResource(),
    }


def build_definitions(
    resources: dict[str, dg.ConfigurableResource] | None = None,
    fleet_check_cron: str = DEFAULT_FLEET_CHECK_CRON,
    full_pass_every_hours: float = 24.0,
    automatic_retries: bool = True,
    retry: RetrySettings | None = None,
    recovery: RecoverySettings | None = None,
    sensor_interval_s: int = 10,
) -> dg.Definitions:
    """The whole code location; tests and deployments pass their own resources and cadence.

    ``automatic_retries=False`` leaves failed partitions to a human (the UI's backfill of
    failed partitions), e.g. for the browser test that drives exactly that.
    """
    return dg.Definitions(
        assets=[roadmap_framework, concept_content, framework_entry, framework_data, roadmap_fleet],
        asset_checks=[content_valid, entry_agrees_with_rows, roadmap_checks, fleet_consistency],
        jobs=[
            generate_concepts_job,
            roll_up_job,
            register_roadmap_job,
            fleet_check_job,
            check_roadmap_job,
            check_concepts_job,
            *regenerate_item_jobs,
        ],
        schedules=[fleet_check_schedule(fleet_check_cron, full_pass_every_hours)],
        sensors=[
            intake_sensor(sensor_interval_s),
            settlement_sensor(sensor_interval_s),
            repair_sensor(),
            failed_partition_retry_sensor(retry or RetrySettings(), running=automatic_retries),
            stuck_task_recovery_sensor(recovery or RecoverySettings()),
        ],
        resources=resources or default_resources(),
        # Steps of a run execute in the run's own process: a roadmap's steps are sequential
        # anyway (content -> checks -> entry), and a process per step costs seconds of imports.
        # Concurrency inside the content step is the generator's (threads, bounded).
        executor=dg.in_process_executor,
    )


defs = build_definitions()

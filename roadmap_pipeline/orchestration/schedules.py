"""Schedules: the fleet-wide consistency pass, hourly by default."""

import dagster as dg

from roadmap_pipeline.orchestration.jobs import fleet_check_job

DEFAULT_FLEET_CHECK_CRON = "0 * * * *"


def fleet_check_schedule(
    cron: str = DEFAULT_FLEET_CHECK_CRON, full_pass_every_hours: float = 24.0
) -> dg.ScheduleDefinition:
    """Incremental passes on ``cron``; a full pass whenever the last one is older than
    ``full_pass_every_hours`` (both settable through ``build_definitions``)."""
    return dg.ScheduleDefinition(
        name="fleet_consistency_schedule",
        job=fleet_check_job,
        cron_schedule=cron,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        run_config={
            "ops": {
                "roadmap_fleet_fleet_consistency": {
                    "config": {"full_pass_every_hours": full_pass_every_hours}
                }
            }
        },
        description="Checks the whole fleet's consistency; see the fleet_consistency check.",
    )

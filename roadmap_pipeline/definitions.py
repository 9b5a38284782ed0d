"""The code location: every asset, check, job, schedule and sensor, with their resources.

Policy that concerns every asset lives here, in one place. Configuration resolves at launch
(``dg.EnvVar``); importing this module reads no environment variable and opens no connection.
"""

from __future__ import annotations

import dagster as dg

from roadmap_pipeline import environment as env
from roadmap_pipeline.orchestration.assets import (
    concept_content,
    framework_data,
    framework_entry,
    roadmap_framework,
)
from roadmap_pipeline.orchestration.jobs import (
    generate_concepts_job,
    regenerate_item_jobs,
    register_roadmap_job,
    roll_up_job,
)
from roadmap_pipeline.orchestration.resources import (
    CheckpointerResource,
    ContentGeneratorResource,
    RoadmapDatabase,
)
from roadmap_pipeline.orchestration.sensors import (
    roadmap_intake,
    roadmap_settlement,
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
) -> dg.Definitions:
    """The whole code location; tests pass their own resources."""
    return dg.Definitions(
        assets=[roadmap_framework, concept_content, framework_entry, framework_data],
        jobs=[generate_concepts_job, roll_up_job, register_roadmap_job, *regenerate_item_jobs],
        sensors=[roadmap_intake, roadmap_settlement],
        resources=resources or default_resources(),
        # Steps of a run execute in the run's own process: a roadmap's steps are sequential
        # anyway (content -> checks -> entry), and a process per step costs seconds of imports.
        # Concurrency inside the content step is the generator's (threads, bounded).
        executor=dg.in_process_executor,
    )


defs = build_definitions()

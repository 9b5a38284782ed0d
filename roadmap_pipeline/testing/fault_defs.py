"""The code location as the fault tests load it: production definitions whose generator
records every call in a file (so calls made by a killed process still count), can be slowed
down, and answers to fault plans; retry and recovery settings are shortened for test time.

Settings come from the environment at launch, like production's (``dg.EnvVar``):
``ROADMAP_TEST_CALL_LOG``, ``ROADMAP_TEST_DELAY_MS``, ``ROADMAP_TEST_CONCURRENCY``.
"""

import dagster as dg

from roadmap_pipeline import environment as env
from roadmap_pipeline.definitions import build_definitions
from roadmap_pipeline.generation.faults import FaultInjectingGenerator, FaultPlan
from roadmap_pipeline.generation.generator import ContentGenerator
from roadmap_pipeline.generation.offline import OfflineGenerator
from roadmap_pipeline.orchestration.recovery import RecoverySettings, RetrySettings
from roadmap_pipeline.orchestration.resources import (
    CheckpointerResource,
    ContentGeneratorResource,
    RoadmapDatabase,
)
from roadmap_pipeline.testing.counting import RecordingGenerator


class RecordingGeneratorResource(ContentGeneratorResource):
    """The offline generator, recorded call by call and optionally slowed down."""

    call_log: str = ""
    delay_ms: int = 0

    def build(self, plan: FaultPlan | None = None) -> ContentGenerator:
        generator: ContentGenerator = OfflineGenerator()
        if self.call_log:
            generator = RecordingGenerator(generator, self.call_log, self.delay_ms / 1000)
        return FaultInjectingGenerator(generator, plan) if plan else generator


defs = build_definitions(
    resources={
        "database": RoadmapDatabase(url=dg.EnvVar(env.DATABASE_URL)),
        "generator": RecordingGeneratorResource(
            faults=dg.EnvVar(env.FAULTS),
            call_log=dg.EnvVar("ROADMAP_TEST_CALL_LOG"),
            delay_ms=dg.EnvVar.int("ROADMAP_TEST_DELAY_MS"),
            max_concurrency=dg.EnvVar.int("ROADMAP_TEST_CONCURRENCY"),
        ),
        "checkpointer": CheckpointerResource(),
    },
    retry=RetrySettings(interval_s=3, max_retries=2, base_delay_s=3, max_delay_s=10),
    # Long enough for a test to look at a stuck task (the incident replayed) before recovery.
    recovery=RecoverySettings(interval_s=5, delay_s=30, max_concurrent_recoveries=4),
    sensor_interval_s=3,
)

"""The code location as the browser test loads it: production definitions without automatic
retries, so that failed partitions wait for the backfill the test launches from the UI."""

from roadmap_pipeline.definitions import build_definitions

defs = build_definitions(automatic_retries=False, sensor_interval_s=3)

"""The code location as the daemon tests load it: production definitions, with the fleet check
scheduled every minute so that a test sees its tick within its time budget."""

from roadmap_pipeline.definitions import build_definitions

defs = build_definitions(fleet_check_cron="* * * * *", sensor_interval_s=3)

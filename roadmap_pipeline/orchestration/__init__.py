"""The Dagster layer: partitions, resources, assets, checks, sensors, schedules and jobs.

Thin by design: every asset, check and sensor calls plain functions of ``store`` and
``generation`` that are tested on their own.
"""

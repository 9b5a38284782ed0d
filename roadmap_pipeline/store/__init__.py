"""The data layer: schema, idempotent writers, invariant queries and repair. No Dagster here."""

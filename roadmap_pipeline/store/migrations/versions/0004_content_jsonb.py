"""jsonb for the content documents that the invariants read (quiz questions, resources).

The fleet check parses every quiz and resources document (invariant 7); from a json column each
one is parsed again on every check (measured on 10,000 roadmaps: about 9 s of the check), from
jsonb it is read as stored. Applied with the other constraints: to databases roadmap_pipeline
creates, and to an adopted service database only through ``roadmap-pipeline upgrade-db``.
Readers and writers work with either type (PostgreSQL casts json <-> jsonb on assignment).

Revision ID: 0004
Revises: 0003
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

COLUMNS = (("resource_recommendation_metadata", "resources"), ("quiz_metadata", "questions"))


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, column in COLUMNS:
        op.execute(f"ALTER TABLE {table} ALTER COLUMN {column} TYPE jsonb USING {column}::jsonb")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, column in COLUMNS:
        op.execute(f"ALTER TABLE {table} ALTER COLUMN {column} TYPE json USING {column}::json")

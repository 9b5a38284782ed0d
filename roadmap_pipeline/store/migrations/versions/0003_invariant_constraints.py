"""The constraints and indexes the invariants need, and jsonb for framework_data on PostgreSQL.

Applied to databases roadmap_pipeline creates. An adopted service database gets it only through
an explicit ``roadmap-pipeline upgrade-db`` (which first refuses, with the offending rows named,
when duplicates would make a unique index fail).

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

CONTENT_TABLES = ("tutorial_metadata", "resource_recommendation_metadata", "quiz_metadata")


def upgrade() -> None:
    # Indexed (roadmap_id, concept_id) turns the per-roadmap checks from minutes into milliseconds.
    op.create_index(
        "ix_tutorial_metadata_roadmap_id_concept_id",
        "tutorial_metadata",
        ["roadmap_id", "concept_id"],
    )
    op.create_index(
        "uq_tutorial_metadata_roadmap_id_concept_id_content_version",
        "tutorial_metadata",
        ["roadmap_id", "concept_id", "content_version"],
        unique=True,
    )
    op.create_index(
        "uq_tutorial_metadata_latest",
        "tutorial_metadata",
        ["roadmap_id", "concept_id"],
        unique=True,
        postgresql_where=sa.text("is_latest"),
        sqlite_where=sa.text("is_latest"),
    )
    op.create_index(
        "uq_resource_recommendation_metadata_roadmap_id_concept_id",
        "resource_recommendation_metadata",
        ["roadmap_id", "concept_id"],
        unique=True,
    )
    op.create_index(
        "uq_quiz_metadata_roadmap_id_concept_id",
        "quiz_metadata",
        ["roadmap_id", "concept_id"],
        unique=True,
    )
    op.create_index(
        "ix_roadmap_tasks_roadmap_id_created_at", "roadmap_tasks", ["roadmap_id", "created_at"]
    )
    op.create_index("ix_roadmap_tasks_status", "roadmap_tasks", ["status"])
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "ALTER TABLE roadmap_metadata "
            "ALTER COLUMN framework_data TYPE jsonb USING framework_data::jsonb"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "ALTER TABLE roadmap_metadata "
            "ALTER COLUMN framework_data TYPE json USING framework_data::json"
        )
    for name, table in (
        ("ix_roadmap_tasks_status", "roadmap_tasks"),
        ("ix_roadmap_tasks_roadmap_id_created_at", "roadmap_tasks"),
        ("uq_quiz_metadata_roadmap_id_concept_id", "quiz_metadata"),
        (
            "uq_resource_recommendation_metadata_roadmap_id_concept_id",
            "resource_recommendation_metadata",
        ),
        ("uq_tutorial_metadata_latest", "tutorial_metadata"),
        ("uq_tutorial_metadata_roadmap_id_concept_id_content_version", "tutorial_metadata"),
        ("ix_tutorial_metadata_roadmap_id_concept_id", "tutorial_metadata"),
    ):
        op.drop_index(name, table_name=table)

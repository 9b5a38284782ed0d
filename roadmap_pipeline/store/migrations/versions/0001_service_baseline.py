"""The five tables exactly as the service built them: json columns, no unique constraints.

An adopted service database is stamped at this revision without running it.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

ID = sa.String(255)


def upgrade() -> None:
    op.create_table(
        "roadmap_tasks",
        sa.Column("task_id", ID, primary_key=True),
        sa.Column("user_id", ID),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("current_step", sa.String(64)),
        sa.Column("user_request", sa.JSON),
        sa.Column("roadmap_id", ID),
        sa.Column("task_type", sa.String(32), nullable=False),
        sa.Column("concept_id", ID),
        sa.Column("content_type", sa.String(32)),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("updated_at", sa.DateTime, nullable=False),
        sa.Column("completed_at", sa.DateTime),
        sa.Column("error_message", sa.Text),
        sa.Column("failed_concepts", sa.JSON),
        sa.Column("execution_summary", sa.JSON),
        sa.PrimaryKeyConstraint("task_id", name="pk_roadmap_tasks"),
    )
    op.create_table(
        "roadmap_metadata",
        sa.Column("roadmap_id", ID, primary_key=True),
        sa.Column("user_id", ID),
        sa.Column("title", sa.String(500), nullable=False),
        sa.Column("total_estimated_hours", sa.Float),
        sa.Column("recommended_completion_weeks", sa.Integer),
        sa.Column("framework_data", sa.JSON, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("deleted_at", sa.DateTime),
        sa.Column("deleted_by", ID),
        sa.PrimaryKeyConstraint("roadmap_id", name="pk_roadmap_metadata"),
    )
    op.create_table(
        "tutorial_metadata",
        sa.Column("tutorial_id", ID, primary_key=True),
        sa.Column("roadmap_id", ID, nullable=False),
        sa.Column("concept_id", ID, nullable=False),
        sa.Column("title", sa.String(500), nullable=False),
        sa.Column("summary", sa.Text),
        sa.Column("content_url", sa.String(1024), nullable=False),
        sa.Column("content_status", sa.String(32), nullable=False),
        sa.Column("content_version", sa.Integer, nullable=False),
        sa.Column("is_latest", sa.Boolean, nullable=False),
        sa.Column("estimated_completion_time", sa.Integer),
        sa.Column("generated_at", sa.DateTime, nullable=False),
        sa.PrimaryKeyConstraint("tutorial_id", name="pk_tutorial_metadata"),
    )
    op.create_table(
        "resource_recommendation_metadata",
        sa.Column("id", ID, primary_key=True),
        sa.Column("roadmap_id", ID, nullable=False),
        sa.Column("concept_id", ID, nullable=False),
        sa.Column("resources", sa.JSON, nullable=False),
        sa.Column("resources_count", sa.Integer, nullable=False),
        sa.Column("search_queries_used", sa.JSON),
        sa.Column("generated_at", sa.DateTime, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_resource_recommendation_metadata"),
    )
    op.create_table(
        "quiz_metadata",
        sa.Column("quiz_id", ID, primary_key=True),
        sa.Column("roadmap_id", ID, nullable=False),
        sa.Column("concept_id", ID, nullable=False),
        sa.Column("questions", sa.JSON, nullable=False),
        sa.Column("total_questions", sa.Integer, nullable=False),
        sa.Column("easy_count", sa.Integer, nullable=False),
        sa.Column("medium_count", sa.Integer, nullable=False),
        sa.Column("hard_count", sa.Integer, nullable=False),
        sa.Column("generated_at", sa.DateTime, nullable=False),
        sa.PrimaryKeyConstraint("quiz_id", name="pk_quiz_metadata"),
    )


def downgrade() -> None:
    for table in (
        "quiz_metadata",
        "resource_recommendation_metadata",
        "tutorial_metadata",
        "roadmap_metadata",
        "roadmap_tasks",
    ):
        op.drop_table(table)

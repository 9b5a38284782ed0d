"""Partial indexes over the content rows whose document is SQL NULL.

A service database whose ``questions`` or ``resources`` column allows NULL can hold a row
without a document: it breaks invariant 7 (not a list). The full parse reports it on both
dialects; the indexed check of 0005 narrows the rows to those its row functions flag, and a
function given NULL answers NULL, so these indexes name the NULL rows for it. Additive only,
and cheap to build (no document is parsed).

Applied with the other constraints: to databases roadmap_pipeline creates, and to an adopted
service database only through ``roadmap-pipeline upgrade-db``.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

# Frozen here (not imported from the schema) so that this revision always builds the same thing.
NULL_DOCUMENTS = (
    ("ix_resource_recommendation_metadata_resources_null", "resource_recommendation_metadata",
     "resources"),
    ("ix_quiz_metadata_questions_null", "quiz_metadata", "questions"),
)  # fmt: skip


def upgrade() -> None:
    for name, table, column in NULL_DOCUMENTS:
        op.create_index(
            name,
            table,
            ["roadmap_id"],
            postgresql_where=sa.text(f"{column} IS NULL"),
            sqlite_where=sa.text(f"{column} IS NULL"),
        )


def downgrade() -> None:
    for name, table, _column in reversed(NULL_DOCUMENTS):
        op.drop_index(name, table_name=table)

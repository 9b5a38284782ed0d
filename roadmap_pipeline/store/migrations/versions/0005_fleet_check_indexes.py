"""Indexes for the fleet check: what changed since a moment, current rows, invalid content.

Additive only (indexes, and on PostgreSQL two functions; no table or column changes):

- ``generated_at`` of the content tables, ``updated_at`` of the tasks, ``created_at`` and
  ``deleted_at`` of the roadmaps: the incremental pass asks which roadmaps changed since the
  previous pass (store.changes); without them that question reads every row.
- each item's current-row fields in index order (and the tutorial versions that are not latest):
  the checks join them to framework_data from the index alone, without the documents' pages.
- PostgreSQL: invariant 7 as two immutable row functions, built from store.invariants (which owns
  the rule), and a partial index over the rows each function finds invalid. The database keeps
  them current on every write; the fleet check then parses only those rows again instead of every
  quiz and resources document. A later change to the rule is a new function name and a new index
  (``_v2``), never ``CREATE OR REPLACE`` under an index built with the old body: the check uses
  the index only while the function's body is exactly today's (invariants.content_checks_indexed).

Applied with the other constraints: to databases roadmap_pipeline creates, and to an adopted
service database only through ``roadmap-pipeline upgrade-db``. Building the partial indexes reads
every quiz and resources document once (7.6 s for 300,000 of each on this machine).

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

from roadmap_pipeline.store.invariants import content_function_sql
from roadmap_pipeline.store.schema import (
    IX_QUIZ_CURRENT,
    IX_QUIZ_INVALID,
    IX_RESOURCES_CURRENT,
    IX_RESOURCES_INVALID,
    IX_TUTORIAL_CURRENT,
    IX_TUTORIAL_NOT_LATEST,
    QUIZ_CHECK_ARGS,
    QUIZ_CHECK_FUNCTION,
    RESOURCES_CHECK_ARGS,
    RESOURCES_CHECK_FUNCTION,
    content_check_call,
)

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

CHANGED_AT = (
    ("tutorial_metadata", "generated_at"),
    ("resource_recommendation_metadata", "generated_at"),
    ("quiz_metadata", "generated_at"),
    ("roadmap_tasks", "updated_at"),
    ("roadmap_metadata", "created_at"),
    ("roadmap_metadata", "deleted_at"),
)
INVALID_ROWS = (
    (IX_RESOURCES_INVALID, "resource_recommendation_metadata", RESOURCES_CHECK_FUNCTION,
     RESOURCES_CHECK_ARGS),
    (IX_QUIZ_INVALID, "quiz_metadata", QUIZ_CHECK_FUNCTION, QUIZ_CHECK_ARGS),
)  # fmt: skip


def upgrade() -> None:
    for table, column in CHANGED_AT:
        op.create_index(f"ix_{table}_{column}", table, [column])
    op.create_index(
        IX_TUTORIAL_CURRENT,
        "tutorial_metadata",
        ["roadmap_id", "concept_id", "tutorial_id", "content_version", "content_url"],
        postgresql_where=sa.text("is_latest"),
        sqlite_where=sa.text("is_latest"),
    )
    op.create_index(
        IX_TUTORIAL_NOT_LATEST,
        "tutorial_metadata",
        ["roadmap_id", "concept_id"],
        postgresql_where=sa.text("NOT is_latest"),
        sqlite_where=sa.text("NOT is_latest"),
    )
    op.create_index(
        IX_RESOURCES_CURRENT,
        "resource_recommendation_metadata",
        ["roadmap_id", "concept_id", "id", "resources_count"],
    )
    op.create_index(
        IX_QUIZ_CURRENT, "quiz_metadata", ["roadmap_id", "concept_id", "quiz_id", "total_questions"]
    )
    postgres = op.get_bind().dialect.name == "postgresql"
    if postgres:
        for statement in content_function_sql():
            op.execute(sa.text(statement))
    for name, table, function, args in INVALID_ROWS:
        # SQLite has no such function: the index exists there too (one schema) and holds no row.
        op.create_index(
            name,
            table,
            ["roadmap_id"],
            postgresql_where=sa.text(content_check_call(function, args)),
            sqlite_where=sa.text("0"),
        )


def downgrade() -> None:
    for name, table, _function, _args in INVALID_ROWS:
        op.drop_index(name, table_name=table)
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"DROP FUNCTION {QUIZ_CHECK_FUNCTION}")
        op.execute(f"DROP FUNCTION {RESOURCES_CHECK_FUNCTION}")
    op.drop_index(IX_QUIZ_CURRENT, table_name="quiz_metadata")
    op.drop_index(IX_RESOURCES_CURRENT, table_name="resource_recommendation_metadata")
    op.drop_index(IX_TUTORIAL_NOT_LATEST, table_name="tutorial_metadata")
    op.drop_index(IX_TUTORIAL_CURRENT, table_name="tutorial_metadata")
    for table, column in reversed(CHANGED_AT):
        op.drop_index(f"ix_{table}_{column}", table_name=table)

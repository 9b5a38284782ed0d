"""roadmap_pipeline's own tables: tutorial bodies and the generation ledger.

Purely additive, so ``init-db`` applies it to an adopted service database too: the service's
tables are not touched.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

ID = sa.String(255)


def upgrade() -> None:
    op.create_table(
        "tutorial_objects",
        sa.Column("content_url", sa.String(1024), nullable=False),
        sa.Column("roadmap_id", ID, nullable=False),
        sa.Column("concept_id", ID, nullable=False),
        sa.Column("markdown", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.PrimaryKeyConstraint("content_url", name="pk_tutorial_objects"),
    )
    op.create_table(
        "content_generations",
        sa.Column("generation_id", ID, nullable=False),
        sa.Column("roadmap_id", ID, nullable=False),
        sa.Column("concept_id", ID, nullable=False),
        sa.Column("item", sa.String(16), nullable=False),
        sa.Column("row_id", ID, nullable=False),
        sa.Column("content_version", sa.Integer),
        sa.Column("generator", sa.String(128)),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.PrimaryKeyConstraint("generation_id", name="pk_content_generations"),
    )
    op.create_index(
        "ix_content_generations_roadmap_id_concept_id",
        "content_generations",
        ["roadmap_id", "concept_id"],
    )


def downgrade() -> None:
    op.drop_table("content_generations")
    op.drop_table("tutorial_objects")

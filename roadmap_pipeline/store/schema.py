"""The service's five tables (names and columns as the service has them) and our two own tables.

These mappings describe what a database that roadmap_pipeline creates looks like after the last
migration (``store/migrations``). Code reads and writes through them in SQLAlchemy 2.0 style and
must also work against an adopted service database, where:

- ids may be ``uuid`` or ``varchar`` columns (compare them as text in SQL; :class:`RowId` binds
  them untyped, so that the server casts a written id to whichever the column is),
- ``framework_data`` and the other documents are ``json`` rather than ``jsonb``,
- timestamps are naive (we always write naive UTC),
- no unique constraint exists beyond the primary keys (writers lock instead of relying on them).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import UserDefinedType

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "pk": "pk_%(table_name)s",
}

# framework_data, quiz questions and resources are read as documents by the set-based checks:
# jsonb on Postgres (2.8x faster than json there; no re-parse per check), JSON text on SQLite.
Document = JSON().with_variant(JSONB(), "postgresql")
ID_LENGTH = 255


class RowId(UserDefinedType[str]):
    """``VARCHAR(255)`` in the tables we create, but bound without a type: the service's own
    tables may declare these ids ``uuid``, and SQLAlchemy's psycopg dialect casts every String
    parameter to ``VARCHAR``, which PostgreSQL refuses to store in (or compare with) a ``uuid``
    column. Untyped, the server reads the text as the column's type, either of them."""

    cache_ok = True

    def __init__(self, length: int = ID_LENGTH) -> None:
        self.length = length

    def get_col_spec(self, **_: Any) -> str:
        return f"VARCHAR({self.length})"


# The unique indexes that enforce invariant 3 in a database roadmap_pipeline created or upgraded.
# Where all of them exist, the rules need not look for duplicates the database cannot hold.
UQ_TUTORIAL_VERSION = "uq_tutorial_metadata_roadmap_id_concept_id_content_version"
UQ_TUTORIAL_LATEST = "uq_tutorial_metadata_latest"
UQ_RESOURCES = "uq_resource_recommendation_metadata_roadmap_id_concept_id"
UQ_QUIZ = "uq_quiz_metadata_roadmap_id_concept_id"
UNIQUENESS_INDEXES = (UQ_TUTORIAL_VERSION, UQ_TUTORIAL_LATEST, UQ_RESOURCES, UQ_QUIZ)


# Invariant 7 (content validity) as a row function per content table (PostgreSQL; created by
# migration 0005 from store.invariants, which owns the rule) and a partial index over the rows it
# finds invalid. The database keeps that index current on every write, so the fleet check reads
# the (few) invalid rows from it instead of parsing every document. A changed rule is a new
# function under a new name and a new index, never a replaced body under an index built with the
# old one.
QUIZ_CHECK_FUNCTION = "roadmap_pipeline_quiz_invalid_v1"
RESOURCES_CHECK_FUNCTION = "roadmap_pipeline_resources_invalid_v1"
QUIZ_CHECK_ARGS = ("questions", "total_questions", "easy_count", "medium_count", "hard_count")
RESOURCES_CHECK_ARGS = ("resources", "resources_count")
IX_QUIZ_INVALID = "ix_quiz_metadata_invalid_v1"
IX_RESOURCES_INVALID = "ix_resource_recommendation_metadata_invalid_v1"
# The rows whose document is SQL NULL (the functions cannot call them invalid: NULL in, NULL out).
IX_QUIZ_NULL = "ix_quiz_metadata_questions_null"
IX_RESOURCES_NULL = "ix_resource_recommendation_metadata_resources_null"
CONTENT_CHECK_INDEXES = (IX_QUIZ_INVALID, IX_RESOURCES_INVALID, IX_QUIZ_NULL, IX_RESOURCES_NULL)
# Each item's current-row fields in index order (index-only scans for the fleet check: the rows
# it joins to framework_data without reading the documents' heap pages, already sorted).
IX_RESOURCES_CURRENT = "ix_resource_recommendation_metadata_current"
IX_QUIZ_CURRENT = "ix_quiz_metadata_current"
IX_TUTORIAL_CURRENT = "ix_tutorial_metadata_current"
IX_TUTORIAL_NOT_LATEST = "ix_tutorial_metadata_not_latest"


def content_check_call(function: str, args: tuple[str, ...], alias: str = "") -> str:
    """``function(col, ...)``: the partial index's predicate, and the fleet statement's filter."""
    prefix = f"{alias}." if alias else ""
    return f"{function}({', '.join(prefix + a for a in args)})"


def _invalid_rows_index(name: str, function: str, args: tuple[str, ...]) -> Index:
    # SQLite has no such function: there the index exists (the schema is one for both dialects)
    # and holds no row.
    return Index(
        name,
        "roadmap_id",
        postgresql_where=text(content_check_call(function, args)),
        sqlite_where=text("0"),
    )


def utcnow() -> datetime:
    """Naive UTC, as the service's timestamp columns are naive."""
    return datetime.now(UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class RoadmapTask(Base):
    __tablename__ = "roadmap_tasks"

    task_id: Mapped[str] = mapped_column(RowId(), primary_key=True)
    user_id: Mapped[str | None] = mapped_column(String(ID_LENGTH))
    status: Mapped[str] = mapped_column(String(32))
    current_step: Mapped[str | None] = mapped_column(String(64))
    user_request: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    roadmap_id: Mapped[str | None] = mapped_column(String(ID_LENGTH))
    task_type: Mapped[str] = mapped_column(String(32), default="creation")
    concept_id: Mapped[str | None] = mapped_column(String(ID_LENGTH))
    content_type: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    completed_at: Mapped[datetime | None] = mapped_column(DateTime)
    error_message: Mapped[str | None] = mapped_column(Text)
    failed_concepts: Mapped[Any | None] = mapped_column(JSON)
    execution_summary: Mapped[dict[str, Any] | None] = mapped_column(JSON)

    __table_args__ = (
        Index(None, "roadmap_id", "created_at"),
        Index(None, "status"),
        Index(None, "updated_at"),  # what changed since the last fleet pass (store.changes)
    )


class RoadmapMetadata(Base):
    __tablename__ = "roadmap_metadata"

    roadmap_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    user_id: Mapped[str | None] = mapped_column(String(ID_LENGTH))
    title: Mapped[str] = mapped_column(String(500))
    total_estimated_hours: Mapped[float | None] = mapped_column(Float)
    recommended_completion_weeks: Mapped[int | None] = mapped_column(Integer)
    framework_data: Mapped[dict[str, Any]] = mapped_column(Document)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime)
    deleted_by: Mapped[str | None] = mapped_column(String(ID_LENGTH))

    __table_args__ = (Index(None, "created_at"), Index(None, "deleted_at"))


class TutorialMetadata(Base):
    __tablename__ = "tutorial_metadata"

    tutorial_id: Mapped[str] = mapped_column(RowId(), primary_key=True)
    roadmap_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    concept_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    title: Mapped[str] = mapped_column(String(500))
    summary: Mapped[str | None] = mapped_column(Text)
    content_url: Mapped[str] = mapped_column(String(1024))
    content_status: Mapped[str] = mapped_column(String(32), default="completed")
    content_version: Mapped[int] = mapped_column(Integer)
    is_latest: Mapped[bool] = mapped_column(Boolean)
    estimated_completion_time: Mapped[int | None] = mapped_column(Integer)
    generated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    __table_args__ = (
        Index(None, "roadmap_id", "concept_id"),
        Index(
            UQ_TUTORIAL_VERSION,
            "roadmap_id",
            "concept_id",
            "content_version",
            unique=True,
        ),
        # At most one latest version per concept (invariant 3).
        Index(
            UQ_TUTORIAL_LATEST,
            "roadmap_id",
            "concept_id",
            unique=True,
            postgresql_where=text("is_latest"),
            sqlite_where=text("is_latest"),
        ),
        Index(
            IX_TUTORIAL_CURRENT,
            "roadmap_id",
            "concept_id",
            "tutorial_id",
            "content_version",
            "content_url",
            postgresql_where=text("is_latest"),
            sqlite_where=text("is_latest"),
        ),
        Index(
            IX_TUTORIAL_NOT_LATEST,
            "roadmap_id",
            "concept_id",
            postgresql_where=text("NOT is_latest"),
            sqlite_where=text("NOT is_latest"),
        ),
        Index(None, "generated_at"),
    )


class ResourceRecommendationMetadata(Base):
    __tablename__ = "resource_recommendation_metadata"

    id: Mapped[str] = mapped_column(RowId(), primary_key=True)
    roadmap_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    concept_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    resources: Mapped[list[Any]] = mapped_column(Document)
    resources_count: Mapped[int] = mapped_column(Integer)
    search_queries_used: Mapped[list[Any] | None] = mapped_column(JSON)
    generated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    __table_args__ = (
        Index(
            UQ_RESOURCES,
            "roadmap_id",
            "concept_id",
            unique=True,
        ),
        Index(IX_RESOURCES_CURRENT, "roadmap_id", "concept_id", "id", "resources_count"),
        _invalid_rows_index(IX_RESOURCES_INVALID, RESOURCES_CHECK_FUNCTION, RESOURCES_CHECK_ARGS),
        Index(
            IX_RESOURCES_NULL,
            "roadmap_id",
            postgresql_where=text("resources IS NULL"),
            sqlite_where=text("resources IS NULL"),
        ),
        Index(None, "generated_at"),
    )


class QuizMetadata(Base):
    __tablename__ = "quiz_metadata"

    quiz_id: Mapped[str] = mapped_column(RowId(), primary_key=True)
    roadmap_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    concept_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    questions: Mapped[list[Any]] = mapped_column(Document)
    total_questions: Mapped[int] = mapped_column(Integer)
    easy_count: Mapped[int] = mapped_column(Integer, default=0)
    medium_count: Mapped[int] = mapped_column(Integer, default=0)
    hard_count: Mapped[int] = mapped_column(Integer, default=0)
    generated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    __table_args__ = (
        Index(UQ_QUIZ, "roadmap_id", "concept_id", unique=True),
        Index(IX_QUIZ_CURRENT, "roadmap_id", "concept_id", "quiz_id", "total_questions"),
        _invalid_rows_index(IX_QUIZ_INVALID, QUIZ_CHECK_FUNCTION, QUIZ_CHECK_ARGS),
        Index(
            IX_QUIZ_NULL,
            "roadmap_id",
            postgresql_where=text("questions IS NULL"),
            sqlite_where=text("questions IS NULL"),
        ),
        Index(None, "generated_at"),
    )


class TutorialObject(Base):
    """Our own table: the tutorial Markdown, keyed by the row's ``content_url`` (its object key).

    Kept in the database so that the body and its metadata row commit in one transaction and
    all state lives in one store.
    """

    __tablename__ = "tutorial_objects"

    content_url: Mapped[str] = mapped_column(String(1024), primary_key=True)
    roadmap_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    concept_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    markdown: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class ContentGeneration(Base):
    """Our own table: the ledger that makes item writes idempotent.

    One row per generation request of one item, written in the same transaction as the item.
    A replay of the same generation (a node re-run after a crash) finds its ledger row and
    changes nothing; the workflow also looks here before calling the generator at all.
    """

    __tablename__ = "content_generations"

    generation_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    roadmap_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    concept_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    item: Mapped[str] = mapped_column(String(16))
    row_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    content_version: Mapped[int | None] = mapped_column(Integer)
    generator: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    __table_args__ = (Index(None, "roadmap_id", "concept_id"),)


SERVICE_TABLE_NAMES = (
    "roadmap_tasks",
    "roadmap_metadata",
    "tutorial_metadata",
    "resource_recommendation_metadata",
    "quiz_metadata",
)
OWN_TABLE_NAMES = ("tutorial_objects", "content_generations")

"""Store fixtures: databases shaped like the service's (to adopt), on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from roadmap_pipeline.samples import IncidentState, build_incident
from roadmap_pipeline.store.database import create_store_engine, transaction
from roadmap_pipeline.store.migrate import init_db
from roadmap_pipeline_tests.store.helpers import copy_service_rows

# The service's tables as it built them, without migrations: json (not jsonb), no unique
# constraint beyond the primary keys, naive timestamps. On PostgreSQL the task and content ids are
# native uuid columns, as in the service; roadmap and concept ids are text (with ':').
_SERVICE_DDL = """
CREATE TABLE roadmap_tasks (
    task_id {uuid} PRIMARY KEY, user_id VARCHAR(64), status VARCHAR(32) NOT NULL,
    current_step VARCHAR(64), user_request JSON, roadmap_id VARCHAR(255),
    task_type VARCHAR(32) NOT NULL, concept_id VARCHAR(255), content_type VARCHAR(32),
    created_at {ts} NOT NULL, updated_at {ts} NOT NULL, completed_at {ts},
    error_message TEXT, failed_concepts JSON, execution_summary JSON);
CREATE TABLE roadmap_metadata (
    roadmap_id VARCHAR(255) PRIMARY KEY, user_id VARCHAR(64), title VARCHAR(500) NOT NULL,
    total_estimated_hours {float}, recommended_completion_weeks INTEGER,
    framework_data JSON NOT NULL, created_at {ts} NOT NULL, deleted_at {ts},
    deleted_by VARCHAR(64));
CREATE TABLE tutorial_metadata (
    tutorial_id {uuid} PRIMARY KEY, roadmap_id VARCHAR(255) NOT NULL,
    concept_id VARCHAR(255) NOT NULL, title VARCHAR(500) NOT NULL, summary TEXT,
    content_url VARCHAR(1024) NOT NULL, content_status VARCHAR(32) NOT NULL,
    content_version INTEGER NOT NULL, is_latest BOOLEAN NOT NULL,
    estimated_completion_time INTEGER, generated_at {ts} NOT NULL);
CREATE TABLE resource_recommendation_metadata (
    id {uuid} PRIMARY KEY, roadmap_id VARCHAR(255) NOT NULL, concept_id VARCHAR(255) NOT NULL,
    resources JSON NOT NULL, resources_count INTEGER NOT NULL, search_queries_used JSON,
    generated_at {ts} NOT NULL);
CREATE TABLE quiz_metadata (
    quiz_id {uuid} PRIMARY KEY, roadmap_id VARCHAR(255) NOT NULL,
    concept_id VARCHAR(255) NOT NULL, questions JSON NOT NULL, total_questions INTEGER NOT NULL,
    easy_count INTEGER NOT NULL, medium_count INTEGER NOT NULL, hard_count INTEGER NOT NULL,
    generated_at {ts} NOT NULL);
CREATE INDEX idx_tutorial_roadmap ON tutorial_metadata (roadmap_id);
"""


def create_service_tables(engine: Engine) -> None:
    postgres = engine.dialect.name == "postgresql"
    ddl = _SERVICE_DDL.format(
        ts="TIMESTAMP WITHOUT TIME ZONE" if postgres else "DATETIME",
        float="DOUBLE PRECISION" if postgres else "FLOAT",
        uuid="UUID" if postgres else "VARCHAR(36)",
    )
    with transaction(engine) as conn:
        for statement in filter(str.strip, ddl.split(";")):
            conn.execute(text(statement))


@pytest.fixture
def service_engine(database_url: str) -> Iterator[Engine]:
    """An empty database holding the service's five tables only (not yet adopted)."""
    engine = create_store_engine(database_url)
    create_service_tables(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def service_incident(service_engine: Engine, tmp_path: Path) -> IncidentState:
    """The incident's state in the service-shaped database: built through our writers in a
    scratch database, then copied in as the service's own rows."""
    scratch = create_store_engine(f"sqlite:///{tmp_path / 'scratch.db'}")
    init_db(scratch)
    state = build_incident(scratch)
    copy_service_rows(scratch, service_engine)
    scratch.dispose()
    return state


@pytest.fixture
def pg_engine(pg_schema_url: str) -> Iterator[Engine]:
    """A database created by roadmap_pipeline on PostgreSQL only (for concurrency)."""
    engine = create_store_engine(pg_schema_url)
    init_db(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def adopt(service_engine: Engine, tmp_path: Path) -> Callable[[Callable[[Engine], None]], Engine]:
    """``adopt(build)``: run ``build`` on a scratch database, copy its service rows into the
    service-shaped database, adopt that (init_db) and return its engine."""

    def _adopt(build: Callable[[Engine], None]) -> Engine:
        scratch = create_store_engine(f"sqlite:///{tmp_path / 'adopt-scratch.db'}")
        init_db(scratch)
        build(scratch)
        copy_service_rows(scratch, service_engine)
        scratch.dispose()
        init_db(service_engine)
        return service_engine

    return _adopt

"""Creating, adopting and upgrading a database, through Alembic.

- An empty database gets every revision (the service's tables with the constraints the invariants
  need, and our own tables).
- A service database that already holds the five tables is **adopted**: it is stamped at the
  baseline and receives only our own, additive tables; its tables, columns and data are left as
  they are. ``upgrade_db`` (the operator's explicit choice) then adds the constraints and jsonb.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, Engine, inspect, text

from roadmap_pipeline.store.database import connect, transaction
from roadmap_pipeline.store.schema import SERVICE_TABLE_NAMES

MIGRATIONS = Path(__file__).parent / "migrations"
BASELINE = "0001"
OWN_TABLES_REVISION = "0002"
HEAD = "0006"


class DatabaseState(StrEnum):
    EMPTY = "empty"
    ADOPTABLE = "adoptable"  # the service's tables, never touched by roadmap_pipeline
    ADOPTED = "adopted"  # the service's tables plus our own, constraints not applied
    MANAGED = "managed"  # created or upgraded by roadmap_pipeline: every constraint applied
    OUTDATED = "outdated"  # managed, with newer migrations to apply
    INCOMPLETE = "incomplete"  # some service tables exist, others not


@dataclass(frozen=True)
class MigrationReport:
    before: DatabaseState
    after: DatabaseState
    message: str


class UpgradeBlocked(RuntimeError):
    """Rows that a unique index of the upgrade would reject; repair them first."""


class IncompleteDatabase(RuntimeError):
    """Some of the service's tables exist and others do not: neither empty nor adoptable."""


def _config(conn: Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = conn
    return config


def database_state(engine: Engine) -> tuple[DatabaseState, str | None]:
    with connect(engine) as conn:
        revision = MigrationContext.configure(conn).get_current_revision()
        tables = set(inspect(conn).get_table_names())
    service = set(SERVICE_TABLE_NAMES)
    present = service & tables
    if revision is None:
        if not present:
            return DatabaseState.EMPTY, None
        if present == service:
            return DatabaseState.ADOPTABLE, None
        return DatabaseState.INCOMPLETE, None
    if revision == HEAD:
        return DatabaseState.MANAGED, revision
    if revision in (BASELINE, OWN_TABLES_REVISION):
        return DatabaseState.ADOPTED, revision
    return DatabaseState.OUTDATED, revision


def init_db(engine: Engine) -> MigrationReport:
    """Create an empty database, or adopt a service database without altering its tables."""
    state, _ = database_state(engine)
    if state is DatabaseState.INCOMPLETE:
        missing = sorted(set(SERVICE_TABLE_NAMES) - _table_names(engine))
        raise IncompleteDatabase(
            f"the database holds some of the service's tables but not {', '.join(missing)}; "
            "refusing to guess: point ROADMAP_DATABASE_URL at the service database or an empty one"
        )
    if state is DatabaseState.EMPTY:
        _run(engine, lambda cfg: command.upgrade(cfg, HEAD))
        return MigrationReport(state, DatabaseState.MANAGED, "created every table and constraint")
    if state is DatabaseState.ADOPTABLE:
        _run(engine, lambda cfg: command.stamp(cfg, BASELINE))
        _run(engine, lambda cfg: command.upgrade(cfg, OWN_TABLES_REVISION))
        return MigrationReport(
            state,
            DatabaseState.ADOPTED,
            "adopted the service database: its tables were left as they are; added our own "
            "tables (tutorial_objects, content_generations). `roadmap-pipeline upgrade-db` adds "
            "the unique constraints and jsonb when you choose to.",
        )
    if state is DatabaseState.ADOPTED:
        _run(engine, lambda cfg: command.upgrade(cfg, OWN_TABLES_REVISION))
        return MigrationReport(state, state, "adopted database: nothing to do")
    if state is DatabaseState.OUTDATED:
        # The operator chose every constraint already (the database went past the adoption
        # revisions); newer migrations of the same kind follow.
        _run(engine, lambda cfg: command.upgrade(cfg, HEAD))
        return MigrationReport(state, DatabaseState.MANAGED, "applied the newer migrations")
    return MigrationReport(state, state, "database is up to date")


def upgrade_db(engine: Engine) -> MigrationReport:
    """Apply every revision, adopted service databases included; refuse when duplicates exist."""
    state, _ = database_state(engine)
    if state is DatabaseState.EMPTY:
        return init_db(engine)
    if state is DatabaseState.INCOMPLETE:
        return init_db(engine)  # raises with the names of the missing tables
    if state in (DatabaseState.ADOPTABLE, DatabaseState.ADOPTED):
        _refuse_duplicates(engine)  # before anything is written, the stamp included
    if state is DatabaseState.ADOPTABLE:
        _run(engine, lambda cfg: command.stamp(cfg, BASELINE))
    _run(engine, lambda cfg: command.upgrade(cfg, HEAD))
    return MigrationReport(state, DatabaseState.MANAGED, "applied every constraint and index")


def _run(engine: Engine, action: object) -> None:
    with transaction(engine) as conn:
        action(_config(conn))  # type: ignore[operator]


def _table_names(engine: Engine) -> set[str]:
    with connect(engine) as conn:
        return set(inspect(conn).get_table_names())


_DUPLICATE_QUERIES = {
    "latest tutorial": (
        "SELECT roadmap_id, concept_id, COUNT(*) FROM tutorial_metadata WHERE is_latest "
        "GROUP BY roadmap_id, concept_id HAVING COUNT(*) > 1"
    ),
    "tutorial version": (
        "SELECT roadmap_id, concept_id, COUNT(*) FROM tutorial_metadata "
        "GROUP BY roadmap_id, concept_id, content_version HAVING COUNT(*) > 1"
    ),
    "resources row": (
        "SELECT roadmap_id, concept_id, COUNT(*) FROM resource_recommendation_metadata "
        "GROUP BY roadmap_id, concept_id HAVING COUNT(*) > 1"
    ),
    "quiz row": (
        "SELECT roadmap_id, concept_id, COUNT(*) FROM quiz_metadata "
        "GROUP BY roadmap_id, concept_id HAVING COUNT(*) > 1"
    ),
}


def _refuse_duplicates(engine: Engine) -> None:
    problems: list[str] = []
    with connect(engine) as conn:
        for what, sql in _DUPLICATE_QUERIES.items():
            for roadmap_id, concept_id, count in conn.execute(text(sql)).all()[:20]:
                problems.append(f"{count} x {what} for {roadmap_id} / {concept_id}")
    if problems:
        raise UpgradeBlocked(
            "the unique constraints cannot be added while duplicates exist "
            "(run `roadmap-pipeline repair` and resolve what it reports):\n"
            + "\n".join(f"- {p}" for p in problems)
        )

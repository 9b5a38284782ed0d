"""One bounded engine per process, on SQLite (embedded default) or PostgreSQL (psycopg 3).

The incident began with a connection pool that ran dry, so every engine here is bounded
(``max_overflow=0``), waits a bounded time for a connection, and checks connections before use so
that a database restart costs a retry rather than a broken write.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError

DATABASE_URL_ENV = "ROADMAP_DATABASE_URL"
DEFAULT_SQLITE_FILE = "roadmap_pipeline.db"


class DatabaseUnavailable(RuntimeError):
    """The database cannot be reached; the message names it without its password."""


class DatabaseUrlError(ValueError):
    """A database URL that is not SQLite or PostgreSQL, or does not parse."""


@dataclass(frozen=True)
class PoolSettings:
    size: int = 5
    timeout_s: float = 30.0
    recycle_s: int = 1800


def default_database_url(cwd: Path | None = None) -> str:
    return f"sqlite:///{(cwd or Path.cwd()) / DEFAULT_SQLITE_FILE}"


def database_url_from_env() -> str:
    """The operator CLI's database: ``ROADMAP_DATABASE_URL`` or an SQLite file in the cwd."""
    return os.environ.get(DATABASE_URL_ENV) or default_database_url()


def normalize_url(url: str | URL) -> URL:
    """Parse a URL and select psycopg 3 for PostgreSQL (``postgresql://`` or ``postgres://``)."""
    try:
        parsed = make_url(url) if isinstance(url, str) else url
    except (ArgumentError, ValueError) as exc:
        # The messages never repeat the URL (it may hold a password).
        raise DatabaseUrlError(f"cannot parse the database URL: {exc}") from None
    backend = parsed.get_backend_name()
    if backend in ("postgresql", "postgres"):
        return parsed.set(drivername="postgresql+psycopg")
    if backend == "sqlite":
        return parsed
    raise DatabaseUrlError(f"unsupported database {backend!r}: use sqlite:/// or postgresql://")


def safe_url(url: str | URL) -> str:
    """The URL as it may appear in logs and messages: password hidden."""
    try:
        return normalize_url(url).render_as_string(hide_password=True)
    except DatabaseUrlError:
        return "<unparseable database URL>"


def create_store_engine(
    url: str | URL, pool: PoolSettings | None = None, application_name: str = "roadmap_pipeline"
) -> Engine:
    """A bounded engine; on SQLite, write transactions take the lock at BEGIN (no upgrade races)."""
    parsed = normalize_url(url)
    pool = pool or PoolSettings()
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(parsed, pool)
    return create_engine(
        parsed,
        pool_size=pool.size,
        max_overflow=0,
        pool_timeout=pool.timeout_s,
        pool_recycle=pool.recycle_s,
        pool_pre_ping=True,
        connect_args={"connect_timeout": 10, "application_name": application_name},
    )


def _sqlite_engine(url: URL, pool: PoolSettings) -> Engine:
    if url.database and url.database != ":memory:":
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        url,
        pool_size=pool.size,
        max_overflow=0,
        pool_timeout=pool.timeout_s,
        connect_args={"timeout": 60, "check_same_thread": False},
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event issue BEGIN IMMEDIATE itself (pysqlite's own implicit
        # BEGIN is deferred, and a deferred reader that later writes can fail with "locked").
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=60000")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def is_postgres(bind: Connection | Engine) -> bool:
    return bind.dialect.name == "postgresql"


def check_reachable(engine: Engine) -> None:
    """Raise DatabaseUnavailable, naming the database safely, when it cannot be reached."""
    with connect(engine) as conn:
        conn.execute(text("SELECT 1"))


@contextmanager
def connect(engine: Engine) -> Iterator[Connection]:
    """A connection; an unreachable server becomes DatabaseUnavailable with a clear message."""
    try:
        conn = engine.connect()
    except (OperationalError, DBAPIError) as exc:
        raise DatabaseUnavailable(_unavailable_message(engine, exc)) from None
    with conn:
        yield conn


@contextmanager
def transaction(engine: Engine) -> Iterator[Connection]:
    """One transaction: everything inside commits together or not at all."""
    with connect(engine) as conn, conn.begin():
        yield conn


def _unavailable_message(engine: Engine, exc: Exception) -> str:
    reason = str(getattr(exc, "orig", exc)).strip().splitlines()[0] if str(exc) else type(exc)
    return f"cannot reach the database {safe_url(engine.url)}: {reason}"


def advisory_key_sql(parameter: str) -> str:
    """The SQL of an advisory-lock key for ``parameter`` (a bound text), scoped to the session's
    schema: advisory locks belong to the whole database, and two deployments whose tables live in
    separate schemas of one database must not block each other (nor two test processes)."""
    return f"hashtextextended(coalesce(current_schema(), '') || chr(31) || {parameter}, 0)"


def lock_concept(conn: Connection, roadmap_id: str, concept_id: str) -> None:
    """Serialise writers of one concept's rows until the transaction ends.

    PostgreSQL: a transaction-level advisory lock (released on commit, rollback or death of the
    holder). SQLite: every write transaction already holds the database's write lock.
    """
    if is_postgres(conn):
        conn.execute(
            text(f"SELECT pg_advisory_xact_lock({advisory_key_sql(':key')})"),
            {"key": f"roadmap_pipeline:concept:{roadmap_id}\x1f{concept_id}"},
        )

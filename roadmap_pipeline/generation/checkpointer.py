"""LangGraph checkpointers: SqliteSaver (embedded default) and PostgresSaver (production).

Each checkpointer owns its connections (its own sqlite3 connection, or its own bounded
``psycopg_pool.ConnectionPool``), separate from the store's engine, so that a slow checkpoint
write can never take the connection a content write needs (the incident was a pool running dry).

Deserialization is restricted. LangGraph's default serializer revives any ``module.name`` stored
in a msgpack extension (it imports and calls it), so whoever can write the checkpoint tables could
make a worker execute code. We pass ``allowed_msgpack_modules=None``, which is LangGraph's strict
msgpack mode (the same as ``LANGGRAPH_STRICT_MSGPACK=true``, without depending on the process
environment): only ``SAFE_MSGPACK_TYPES`` are revived, anything else comes back as inert data. Our
workflow state is JSON-like (str, int, list, dict), so it needs nothing more. On top of that we
refuse the legacy ``json`` (LangChain constructor revival) and ``pickle`` payload types outright:
our own writes never produce them.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import psycopg
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.postgres import PostgresSaver
from langgraph.checkpoint.serde.base import SerializerProtocol
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from langgraph.checkpoint.sqlite import SqliteSaver
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool
from sqlalchemy.engine import URL, make_url

from roadmap_pipeline.generation.polling import poll_until

_SETUP_LOCK_KEY = "roadmap_pipeline:checkpoint-setup"
_ACCEPTED_TYPES = frozenset({"null", "bytes", "bytearray", "msgpack"})


class UnsafeCheckpointError(ValueError):
    """A stored checkpoint uses a payload type that could execute code when loaded."""


class StrictCheckpointSerializer(JsonPlusSerializer):
    """LangGraph's serializer in strict msgpack mode, refusing ``json`` and ``pickle`` payloads."""

    def __init__(self) -> None:
        # None (not the default sentinel) selects strict mode: SAFE_MSGPACK_TYPES only.
        super().__init__(
            pickle_fallback=False, allowed_json_modules=None, allowed_msgpack_modules=None
        )

    def loads_typed(self, data: tuple[str, bytes]) -> Any:
        type_, _ = data
        if type_ not in _ACCEPTED_TYPES:
            raise UnsafeCheckpointError(
                f"refusing to load a checkpoint payload of type {type_!r}: roadmap_pipeline "
                "only writes msgpack checkpoints, so this one was planted or is corrupt"
            )
        return super().loads_typed(data)


def checkpoint_serializer() -> StrictCheckpointSerializer:
    return StrictCheckpointSerializer()


class PooledPostgresSaver(PostgresSaver):
    """PostgresSaver whose operations run in parallel on its pool.

    LangGraph's saver wraps every operation in one process-wide lock, which a single shared
    connection needs but a pool does not: each operation checks out its own connection. With the
    lock, concurrent concepts queue behind each other's checkpoint round trips (measured with
    ``benchmarks/generation_concurrency.py`` at concurrency 10: 0.1-0.2 s less wall time in three
    of three paired runs). The pool bounds the connections; each operation is one statement or
    transaction on the connection it checked out.
    """

    def __init__(self, pool: ConnectionPool[Any], serde: SerializerProtocol) -> None:
        super().__init__(pool, serde=serde)
        self.lock = nullcontext()  # type: ignore[assignment]


def default_checkpoint_url(database_url: str) -> str:
    """Where checkpoints go by default: next to an SQLite database, or in the same Postgres."""
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite":
        return database_url
    if not url.database or url.database == ":memory:":
        return "sqlite:///:memory:"
    path = Path(url.database)
    return f"sqlite:///{path.with_name(path.stem + '.checkpoints.db')}"


def psycopg_conninfo(url: str | URL) -> str:
    """A libpq URI for psycopg from an SQLAlchemy URL (``postgresql+psycopg://`` accepted)."""
    parsed = make_url(url) if isinstance(url, str) else url
    if parsed.get_backend_name() not in ("postgresql", "postgres"):
        raise ValueError(f"not a PostgreSQL URL: {parsed.render_as_string(hide_password=True)}")
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


@contextmanager
def open_checkpointer(url: str, *, pool_size: int = 4) -> Iterator[BaseCheckpointSaver]:
    """A set-up checkpointer for ``sqlite:///path`` or ``postgresql://...``, closed on exit."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        with _sqlite_checkpointer(parsed.database or ":memory:") as saver:
            yield saver
    elif backend in ("postgresql", "postgres"):
        with _postgres_checkpointer(psycopg_conninfo(parsed), pool_size) as saver:
            yield saver
    else:
        raise ValueError(f"unsupported checkpoint database {backend!r}: use sqlite or postgresql")


@contextmanager
def _sqlite_checkpointer(database: str) -> Iterator[SqliteSaver]:
    if database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    # SqliteSaver serialises its own use of the connection with a lock, so one connection may be
    # shared by every thread; the timeout lets two processes share the file.
    conn = sqlite3.connect(database, check_same_thread=False, timeout=60)
    try:
        saver = SqliteSaver(conn, serde=checkpoint_serializer())
        saver.setup()  # also switches the file to WAL
        # In WAL mode NORMAL still survives a killed process (only an OS crash can lose the last
        # commits, and a lost checkpoint costs a re-run that the content ledger makes idempotent);
        # FULL would fsync every checkpoint write.
        conn.execute("PRAGMA synchronous=NORMAL")
        yield saver
    finally:
        conn.close()


@contextmanager
def _postgres_checkpointer(conninfo: str, pool_size: int) -> Iterator[PostgresSaver]:
    if pool_size < 1:
        raise ValueError("the checkpoint pool needs at least one connection")
    pool: ConnectionPool[Any] = ConnectionPool(
        conninfo,
        min_size=1,
        max_size=pool_size,
        # PostgresSaver expects autocommit connections that return dict rows; setup() creates
        # indexes CONCURRENTLY, which cannot run inside a transaction.
        kwargs={"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row},
        name="roadmap_pipeline-checkpoints",
        timeout=30,
        open=False,
    )
    pool.open(wait=True, timeout=30)
    try:
        saver = PooledPostgresSaver(pool, checkpoint_serializer())
        _setup_serialised(conninfo, saver)
        yield saver
    finally:
        pool.close()


def _setup_serialised(conninfo: str, saver: PostgresSaver) -> None:
    """Run the saver's migrations under an advisory lock: workers starting together on a fresh
    database would otherwise race on its migration table.

    The lock is waited for by polling ``pg_try_advisory_lock``, never by a blocking
    ``pg_advisory_lock``: the migrations create indexes CONCURRENTLY, which wait for every
    statement running in the database to end, and a worker blocked inside ``pg_advisory_lock``
    would be such a statement, waiting in turn for the holder, whose index waits for it: a
    deadlock that the server cannot see (it runs through the holder's two connections)."""
    with psycopg.connect(conninfo, autocommit=True, connect_timeout=10) as conn:
        poll_until(lambda: try_setup_lock(conn))
        try:
            saver.setup()
        finally:
            release_setup_lock(conn)


# The setup lock is one per database, not per schema as the concept locks are: index builds
# CONCURRENTLY wait on every transaction of the database, so setups of separate schemas are
# kept from running at once as well.
def try_setup_lock(conn: psycopg.Connection[Any]) -> bool:
    """Take the checkpoint setup lock on this session if it is free; never waits."""
    row = conn.execute(
        "SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", (_SETUP_LOCK_KEY,)
    ).fetchone()
    return bool(row and row[0])


def release_setup_lock(conn: psycopg.Connection[Any]) -> None:
    conn.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", (_SETUP_LOCK_KEY,))

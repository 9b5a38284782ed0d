"""Per-concept (per-thread) locks: two workers never run the same concept's workflow at once.

LangGraph does not stop two workers on one thread id from both running every node, so the
workflow holds one of these around a whole run. Both implementations are released by the
operating system or the server when their holder dies, so a killed worker never leaves a concept
locked:

- ``PostgresAdvisoryLocks``: session-level advisory locks on ONE dedicated connection per
  process, shared by all its threads behind a mutex, so running many concepts concurrently does
  not cost a connection each. Because a session's advisory locks are re-entrant, threads of the
  same process are excluded by an in-process lock first. Waiting is done by polling
  ``pg_try_advisory_lock`` so a waiting thread never blocks the shared connection.
- ``FileLocks``: an OS file lock per concept (the ``filelock`` package) in a directory next to
  the SQLite database, for the embedded default.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Protocol

import psycopg
from filelock import FileLock, Timeout
from sqlalchemy.engine import make_url

from roadmap_pipeline.generation.checkpointer import psycopg_conninfo
from roadmap_pipeline.generation.polling import POLL_START_S, poll_until
from roadmap_pipeline.store.database import advisory_key_sql

logger = logging.getLogger(__name__)

_PG_NAMESPACE = "roadmap_pipeline:thread:"


class ConceptLocks(Protocol):
    def hold(self, thread_id: str, wait: bool) -> AbstractContextManager[bool]:
        """Hold the concept's lock for the ``with`` block; yields False when not acquired
        (``wait=False`` and another worker holds it)."""
        ...


class _LocalLocks:
    """In-process exclusion per key, with entries dropped when nobody uses them."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._locks: dict[str, tuple[threading.Lock, int]] = {}

    @contextmanager
    def hold(self, key: str, wait: bool) -> Iterator[bool]:
        with self._mutex:
            lock, users = self._locks.get(key, (threading.Lock(), 0))
            self._locks[key] = (lock, users + 1)
        acquired = lock.acquire(blocking=wait)
        try:
            yield acquired
        finally:
            if acquired:
                lock.release()
            with self._mutex:
                lock, users = self._locks[key]
                if users == 1:
                    del self._locks[key]
                else:
                    self._locks[key] = (lock, users - 1)


class PostgresAdvisoryLocks:
    """Session-level advisory locks on one dedicated connection, shared by the process."""

    def __init__(self, url: str) -> None:
        self._conninfo = psycopg_conninfo(url)
        self._mutex = threading.Lock()
        self._conn: psycopg.Connection[Any] | None = None
        self._local = _LocalLocks()

    @contextmanager
    def hold(self, thread_id: str, wait: bool) -> Iterator[bool]:
        with self._local.hold(thread_id, wait) as local:
            if not local:
                yield False
                return
            if not self._acquire(thread_id, wait):
                yield False
                return
            try:
                yield True
            finally:
                self._release(thread_id)

    def close(self) -> None:
        with self._mutex:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> PostgresAdvisoryLocks:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _connection(self) -> psycopg.Connection[Any]:
        # Called under the mutex. A broken connection has lost its locks with it; reconnect.
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = psycopg.connect(
                self._conninfo,
                autocommit=True,
                connect_timeout=10,
                application_name="roadmap_pipeline-locks",
            )
        return self._conn

    def _try(self, thread_id: str) -> bool:
        with self._mutex:
            row = (
                self._connection()
                .execute(
                    f"SELECT pg_try_advisory_lock({advisory_key_sql('%s')})",
                    (_PG_NAMESPACE + thread_id,),
                )
                .fetchone()
            )
        return bool(row and row[0])

    def _acquire(self, thread_id: str, wait: bool) -> bool:
        if not wait:
            return self._try(thread_id)
        poll_until(lambda: self._try(thread_id))
        return True

    def _release(self, thread_id: str) -> None:
        with self._mutex:
            conn = self._conn
            if conn is None or conn.closed or conn.broken:
                return  # the session is gone, and its locks with it
            try:
                conn.execute(
                    f"SELECT pg_advisory_unlock({advisory_key_sql('%s')})",
                    (_PG_NAMESPACE + thread_id,),
                )
            except psycopg.OperationalError:
                if not conn.broken:
                    raise
                # The connection died under us: the server released the lock already. Failing
                # here would turn a finished run into an error.
                logger.warning("lock connection lost while releasing %s", thread_id)


class FileLocks:
    """One OS file lock per concept in ``directory``; the OS releases it when the holder dies."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def path_for(self, thread_id: str) -> Path:
        # Thread ids contain '/' and ':'; a digest is a safe, fixed-length file name.
        digest = hashlib.sha256(thread_id.encode()).hexdigest()[:32]
        return self.directory / f"{digest}.lock"

    @contextmanager
    def hold(self, thread_id: str, wait: bool) -> Iterator[bool]:
        # A new FileLock per hold opens its own file description, so threads of one process
        # exclude each other as separate processes do.
        lock = FileLock(self.path_for(thread_id))
        try:
            lock.acquire(timeout=-1 if wait else 0, poll_interval=POLL_START_S)
        except Timeout:
            yield False
            return
        try:
            yield True
        finally:
            lock.release()


def locks_for(database_url: str) -> ConceptLocks:
    """Advisory locks on PostgreSQL; file locks next to an SQLite database."""
    url = make_url(database_url)
    if url.get_backend_name() in ("postgresql", "postgres"):
        return PostgresAdvisoryLocks(database_url)
    if not url.database or url.database == ":memory:":
        return FileLocks(Path(tempfile.gettempdir()) / "roadmap_pipeline.locks")
    path = Path(url.database)
    return FileLocks(path.with_name(path.stem + ".locks"))

"""Per-concept locks: file locks (embedded) and Postgres advisory locks (production)."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from roadmap_pipeline.generation.checkpointer import psycopg_conninfo
from roadmap_pipeline.generation.locks import FileLocks, PostgresAdvisoryLocks, locks_for
from roadmap_pipeline.generation.polling import poll_until
from roadmap_pipeline.store.database import advisory_key_sql, create_store_engine, lock_concept
from roadmap_pipeline_tests.generation.support import new_locks

# Advisory locks are per database, not per schema: each test process (an xdist worker) takes
# keys of its own, so that tests running at once on two workers never hold each other's locks.
ROADMAP = f"roadmap-{uuid.uuid4().hex[:8]}"
KEY = f"{ROADMAP}/c-1-1-1"

_HOLDER = """
import sys, time
from roadmap_pipeline.generation.locks import FileLocks, PostgresAdvisoryLocks
kind, where, key = sys.argv[1:4]
locks = FileLocks(where) if kind == "file" else PostgresAdvisoryLocks(where)
with locks.hold(key, wait=False) as held:
    print("held" if held else "busy", flush=True)
    time.sleep(60)
"""


def test_a_second_holder_is_refused_without_waiting(database_url):
    first, second = new_locks(database_url), new_locks(database_url)
    with first.hold(KEY, wait=False) as held:
        assert held
        with second.hold(KEY, wait=False) as other:
            assert not other
        with second.hold(f"{ROADMAP}/c-1-1-2", wait=False) as unrelated:
            assert unrelated
    with second.hold(KEY, wait=False) as after:
        assert after


def test_a_waiting_holder_gets_the_lock_when_it_is_released(database_url):
    first, second = new_locks(database_url), new_locks(database_url)
    acquired_at: list[float] = []

    def wait_for_it() -> None:
        with second.hold(KEY, wait=True) as held:
            assert held
            acquired_at.append(time.monotonic())

    with first.hold(KEY, wait=False):
        waiter = threading.Thread(target=wait_for_it)
        waiter.start()
        time.sleep(0.3)
        assert acquired_at == []
        released_at = time.monotonic()
    waiter.join(timeout=10)
    assert len(acquired_at) == 1
    assert acquired_at[0] >= released_at


def test_threads_sharing_one_locks_object_exclude_each_other(database_url):
    """Session-level advisory locks are re-entrant per session: one shared connection must not
    let two threads of the process in."""
    locks = new_locks(database_url)
    inside = 0
    peak = 0
    mutex = threading.Lock()

    def work() -> None:
        nonlocal inside, peak
        with locks.hold(KEY, wait=True) as held:
            assert held
            with mutex:
                inside += 1
                peak = max(peak, inside)
            time.sleep(0.05)
            with mutex:
                inside -= 1

    threads = [threading.Thread(target=work) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert peak == 1


def test_advisory_locks_of_many_concepts_share_one_connection(pg_schema_url):
    locks = PostgresAdvisoryLocks(pg_schema_url)
    barrier = threading.Barrier(6)
    release = threading.Event()
    results: list[bool] = []

    def hold(n: int) -> None:
        with locks.hold(f"{ROADMAP}/c-{n}", wait=False) as held:
            results.append(held)
            barrier.wait(timeout=10)
            release.wait(timeout=10)

    threads = [threading.Thread(target=hold, args=(n,)) for n in range(5)]
    for thread in threads:
        thread.start()
    barrier.wait(timeout=10)  # all five held at once here
    thread_key = advisory_key_sql("'roadmap_pipeline:thread:' || k")
    with psycopg.connect(psycopg_conninfo(pg_schema_url)) as conn:
        # advisory locks on these five keys (objid holds the low 32 bits of the bigint key)
        held_by = conn.execute(
            "SELECT count(DISTINCT l.pid), count(*) FROM pg_locks l "
            "WHERE l.locktype = 'advisory' AND l.objid::bigint IN ("
            f"  SELECT {thread_key} & 4294967295"
            "  FROM unnest(%s::text[]) AS k)",
            ([f"{ROADMAP}/c-{n}" for n in range(5)],),
        ).fetchone()
    release.set()
    for thread in threads:
        thread.join(timeout=10)
    locks.close()
    assert results == [True] * 5
    assert held_by == (1, 5)  # five locks, one session


def _start_holder(kind: str, where: str) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, kind, where, KEY],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "held"
    return process


@pytest.mark.parametrize("kind", ["file", "postgres"])
def test_a_lock_dies_with_its_holder_process(kind, tmp_path, request):
    where = str(tmp_path / "locks") if kind == "file" else request.getfixturevalue("pg_schema_url")
    locks = FileLocks(where) if kind == "file" else PostgresAdvisoryLocks(where)
    holder = _start_holder(kind, where)
    try:
        with locks.hold(KEY, wait=False) as held:
            assert not held
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=10)
        deadline = time.monotonic() + 10
        while True:  # the server notices the closed socket at once; allow it a moment
            with locks.hold(KEY, wait=False) as held:
                if held or time.monotonic() > deadline:
                    break
            time.sleep(0.05)
        assert held
    finally:
        holder.kill()
        holder.wait(timeout=10)


def test_locks_for_picks_the_backend(tmp_path, pg_database_url):
    file_locks = locks_for(f"sqlite:///{tmp_path / 'roadmaps.db'}")
    assert isinstance(file_locks, FileLocks)
    assert file_locks.directory == Path(tmp_path / "roadmaps.locks")
    pg_locks = locks_for(pg_database_url)
    assert isinstance(pg_locks, PostgresAdvisoryLocks)


def test_a_lost_lock_session_neither_fails_the_release_nor_later_holds(pg_schema_url, caplog):
    locks = PostgresAdvisoryLocks(pg_schema_url)
    with locks.hold(KEY, wait=False) as held:
        assert held
        with psycopg.connect(psycopg_conninfo(pg_schema_url), autocommit=True) as admin:
            row = admin.execute(
                "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND objid::bigint = "
                f"{advisory_key_sql('%s')} & 4294967295",
                ("roadmap_pipeline:thread:" + KEY,),
            ).fetchone()
            assert row is not None
            admin.execute("SELECT pg_terminate_backend(%s)", (row[0],))
            deadline = time.monotonic() + 10
            while admin.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", row).fetchone():
                assert time.monotonic() < deadline
                time.sleep(0.02)
    assert "lock connection lost while releasing" in caplog.text
    # the server released the lock with the session; the next hold reconnects
    with locks.hold(KEY, wait=False) as again:
        assert again
    locks.close()


def test_poll_until_retries_with_a_growing_delay_until_the_attempt_succeeds():
    calls: list[float] = []

    def attempt() -> bool:
        calls.append(time.monotonic())
        return len(calls) == 4

    poll_until(attempt, start_s=0.01, max_s=0.02)
    gaps = [later - earlier for earlier, later in itertools.pairwise(calls)]
    assert len(calls) == 4
    # Sleeps of 0.01, then 0.02 capped twice: every gap at least its sleep.
    assert gaps[0] >= 0.01
    assert gaps[1] >= 0.02
    assert gaps[2] >= 0.02


def test_advisory_locks_are_scoped_to_the_schema(pg_schema_url, pg_database_url):
    # Advisory locks belong to the database: two deployments whose tables live in separate
    # schemas of one database must not serialise on each other's concepts.
    ours, neighbours, ours_again = (
        PostgresAdvisoryLocks(pg_schema_url),
        PostgresAdvisoryLocks(pg_database_url),
        PostgresAdvisoryLocks(pg_schema_url),
    )
    try:
        with ours.hold(KEY, wait=False) as held:
            assert held
            with neighbours.hold(KEY, wait=False) as other_schema:
                assert other_schema
            with ours_again.hold(KEY, wait=False) as same_schema:
                assert not same_schema
    finally:
        for locks in (ours, neighbours, ours_again):
            locks.close()


def test_the_write_lock_of_a_concept_is_scoped_to_the_schema(pg_schema_url, pg_database_url):
    first = create_store_engine(pg_schema_url)
    same_schema, other_schema = (
        create_store_engine(pg_schema_url),
        create_store_engine(pg_database_url),
    )
    try:
        with first.begin() as holder:
            lock_concept(holder, ROADMAP, "c-1-1-1")
            with other_schema.begin() as conn:
                conn.execute(text("SET LOCAL lock_timeout = '2s'"))
                lock_concept(conn, ROADMAP, "c-1-1-1")  # not blocked
            with same_schema.begin() as conn:
                conn.execute(text("SET LOCAL lock_timeout = '200ms'"))
                with pytest.raises(OperationalError, match="lock timeout"):
                    lock_concept(conn, ROADMAP, "c-1-1-1")
    finally:
        for engine in (first, same_schema, other_schema):
            engine.dispose()

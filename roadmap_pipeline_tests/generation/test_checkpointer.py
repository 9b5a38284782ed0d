"""Checkpointers: where they live, their pools, and strict deserialization."""

from __future__ import annotations

import pickle
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import ormsgpack
import psycopg
import pytest
from langgraph.checkpoint.base import empty_checkpoint
from langgraph.checkpoint.postgres import PostgresSaver
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from langgraph.checkpoint.sqlite import SqliteSaver

from roadmap_pipeline.domain.keys import concept_key
from roadmap_pipeline.generation.checkpointer import (
    PooledPostgresSaver,
    StrictCheckpointSerializer,
    UnsafeCheckpointError,
    default_checkpoint_url,
    open_checkpointer,
    psycopg_conninfo,
    release_setup_lock,
    try_setup_lock,
)
from roadmap_pipeline.testing.dagster_harness import wait_for

# msgpack extension code LangGraph uses for "import module.name and call it with *args"
EXT_CONSTRUCTOR_POS_ARGS = 1


class _OpensAFile:
    """A pickle payload that creates a file when unpickled (harmless stand-in for code)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> Any:
        return (open, (str(self.path), "w"))


def ext_payload(marker: Path) -> bytes:
    """A msgpack checkpoint value asking the loader to call ``builtins.open(marker, "w")``."""
    inner = ormsgpack.packb(("builtins", "open", (str(marker), "w")))
    return ormsgpack.packb(ormsgpack.Ext(EXT_CONSTRUCTOR_POS_ARGS, inner))


def pickle_payload(marker: Path) -> bytes:
    return pickle.dumps(_OpensAFile(marker))


def test_default_checkpoint_url_sits_beside_sqlite_and_shares_postgres():
    assert (
        default_checkpoint_url("sqlite:////srv/data/roadmaps.db")
        == "sqlite:////srv/data/roadmaps.checkpoints.db"
    )
    assert default_checkpoint_url("sqlite:///roadmaps") == "sqlite:///roadmaps.checkpoints.db"
    assert default_checkpoint_url("sqlite://") == "sqlite:///:memory:"
    pg = "postgresql+psycopg://app@db:5432/roadmaps"
    assert default_checkpoint_url(pg) == pg


def test_psycopg_conninfo_drops_the_sqlalchemy_driver_and_keeps_options():
    url = "postgresql+psycopg://u:pw@h:5433/db?options=-csearch_path%3Ds1"
    assert psycopg_conninfo(url) == "postgresql://u:pw@h:5433/db?options=-csearch_path%3Ds1"
    with pytest.raises(ValueError, match="not a PostgreSQL URL"):
        psycopg_conninfo("sqlite:///x.db")


def test_sqlite_checkpointer_owns_a_thread_shareable_connection(tmp_path):
    url = f"sqlite:///{tmp_path / 'deep' / 'cp.db'}"
    with open_checkpointer(url) as saver:
        assert isinstance(saver, SqliteSaver)
        assert isinstance(saver.serde, StrictCheckpointSerializer)
        assert saver.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert (tmp_path / "deep" / "cp.db").exists()


@pytest.mark.parametrize("driver", ["postgresql", "postgresql+psycopg"])
def test_postgres_checkpointer_has_its_own_bounded_pool(pg_schema_url, driver):
    url = pg_schema_url.replace("postgresql+psycopg://", f"{driver}://", 1)
    with open_checkpointer(url, pool_size=3) as saver:
        assert isinstance(saver, PooledPostgresSaver)
        assert isinstance(saver, PostgresSaver)
        assert isinstance(saver.serde, StrictCheckpointSerializer)
        assert saver.conn.max_size == 3
        saver.setup()  # idempotent: a second worker starting up is harmless
        with saver.conn.connection() as conn:
            tables = {
                row["table_name"]
                for row in conn.execute(
                    "SELECT table_name FROM information_schema.tables "
                    "WHERE table_schema = current_schema()"
                )
            }
    assert {"checkpoints", "checkpoint_blobs", "checkpoint_writes"} <= tables


def test_a_worker_waiting_to_set_up_checkpoints_holds_back_no_concurrent_index_build(
    pg_schema_url,
):
    """Workers setting up checkpoint tables at once in one database: while one waits for the
    setup lock, the holder's migrations build indexes CONCURRENTLY, which wait for every running
    statement of the database. A waiter blocked inside pg_advisory_lock would be one, waiting in
    turn for the holder: a deadlock the server cannot see. The waiter polls instead."""
    conninfo = psycopg_conninfo(pg_schema_url)
    started = time.time()
    outcome: list[BaseException | None] = []

    def second_worker() -> None:
        try:
            with open_checkpointer(pg_schema_url, pool_size=1):
                outcome.append(None)
        except BaseException as exc:  # reported by the assertion below
            outcome.append(exc)

    with psycopg.connect(conninfo, autocommit=True) as holder:
        # Taken by polling too: a test worker blocked here would itself deadlock with another
        # test worker's real checkpoint setup (the very shape under test).
        wait_for(
            lambda: try_setup_lock(holder),
            timeout_s=60,
            every_s=0.05,
            what="the checkpoint setup lock",
        )
        worker = threading.Thread(target=second_worker, daemon=True)
        worker.start()
        wait_for(
            lambda: holder.execute(
                "SELECT 1 FROM pg_stat_activity WHERE pid <> pg_backend_pid() "
                "AND query LIKE '%%advisory_lock(hashtextextended%%' "
                "AND backend_start >= to_timestamp(%s)",
                (started,),
            ).fetchone(),
            timeout_s=30,
            every_s=0.05,
            what="the second worker to wait for the setup lock",
        )
        with psycopg.connect(conninfo, autocommit=True) as builder:
            # Long enough for other test workers' transactions to end, short of a hang.
            builder.execute("SET statement_timeout = '60s'")
            builder.execute("CREATE TABLE concurrent_build (x int)")
            # The holder's own migrations, in effect: it must not wait for the waiting worker.
            builder.execute("CREATE INDEX CONCURRENTLY ON concurrent_build (x)")
        release_setup_lock(holder)
        worker.join(60)
    assert outcome == [None]


def _plant_write(saver: Any, url: str, thread_id: str, type_: str, payload: bytes) -> None:
    """Write a pending write straight into the checkpoint tables, as an attacker with database
    access could."""
    config = {"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}}
    saved = saver.put(config, empty_checkpoint(), {}, {})
    checkpoint_id = saved["configurable"]["checkpoint_id"]
    row = (thread_id, "", checkpoint_id, "planted-task", 0, "items", type_, payload)
    if isinstance(saver, SqliteSaver):
        with saver.lock:
            saver.conn.execute(
                "INSERT INTO writes (thread_id, checkpoint_ns, checkpoint_id, task_id, idx, "
                "channel, type, value) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                row,
            )
            saver.conn.commit()
        return
    with psycopg.connect(psycopg_conninfo(url), autocommit=True) as conn:
        conn.execute(
            "INSERT INTO checkpoint_writes (thread_id, checkpoint_ns, checkpoint_id, task_id, "
            "idx, channel, type, blob) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
            row,
        )


def test_the_planted_payloads_would_run_under_permissive_loading(tmp_path):
    """Control: the payloads are live, so the strict tests below prove something."""
    ext_marker, pickle_marker = tmp_path / "ext-ran", tmp_path / "pickle-ran"
    permissive = JsonPlusSerializer(pickle_fallback=True, allowed_msgpack_modules=True)
    permissive.loads_typed(("msgpack", ext_payload(ext_marker)))
    permissive.loads_typed(("pickle", pickle_payload(pickle_marker)))
    assert ext_marker.exists()
    assert pickle_marker.exists()


def test_a_planted_msgpack_extension_is_not_executed(checkpointer, checkpoint_url, tmp_path):
    marker = tmp_path / "ext-ran"
    _plant_write(checkpointer, checkpoint_url, "evil/c-1", "msgpack", ext_payload(marker))

    loaded = checkpointer.get_tuple({"configurable": {"thread_id": "evil/c-1"}})

    assert not marker.exists()
    planted = [w for w in loaded.pending_writes if w[0] == "planted-task"]
    assert planted == [("planted-task", "items", [str(marker), "w"])]  # inert data


def test_a_planted_pickle_is_refused_and_not_executed(checkpointer, checkpoint_url, tmp_path):
    marker = tmp_path / "pickle-ran"
    _plant_write(checkpointer, checkpoint_url, "evil/c-2", "pickle", pickle_payload(marker))

    with pytest.raises(UnsafeCheckpointError, match="'pickle'"):
        checkpointer.get_tuple({"configurable": {"thread_id": "evil/c-2"}})
    assert not marker.exists()


def test_a_worker_refuses_to_resume_a_tampered_thread(
    roadmap, workflow, checkpointer, checkpoint_url, tmp_path
):
    marker = tmp_path / "pickle-ran"
    concept = roadmap.concept_ids[0]
    thread = concept_key(roadmap.roadmap_id, concept)
    _plant_write(checkpointer, checkpoint_url, thread, "pickle", pickle_payload(marker))

    with pytest.raises(UnsafeCheckpointError):
        workflow.run(roadmap.roadmap_id, concept, request_id="r")
    assert not marker.exists()


def test_legacy_json_payloads_are_refused():
    serializer = StrictCheckpointSerializer()
    document = b'{"lc": 2, "type": "constructor", "id": ["os", "system"], "args": ["true"]}'
    with pytest.raises(UnsafeCheckpointError, match="'json'"):
        serializer.loads_typed(("json", document))
    # what our own workflow state looks like round-trips unchanged
    state = {"items": ["quiz"], "outcomes": {"quiz": {"status": "completed", "attempts": 1}}}
    assert serializer.loads_typed(serializer.dumps_typed(state)) == state


def test_sqlite_checkpoints_survive_reopening(tmp_path):
    url = f"sqlite:///{tmp_path / 'cp.db'}"
    config = {"configurable": {"thread_id": "r/c", "checkpoint_ns": ""}}
    with open_checkpointer(url) as saver:
        saver.put(config, empty_checkpoint(), {}, {})
    with open_checkpointer(url) as saver:
        assert saver.get_tuple({"configurable": {"thread_id": "r/c"}}) is not None
    with sqlite3.connect(tmp_path / "cp.db") as conn:
        assert conn.execute("SELECT count(*) FROM checkpoints").fetchone()[0] == 1

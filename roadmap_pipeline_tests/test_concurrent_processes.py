"""Many concepts of one roadmap finishing at the same moment, each in its own OS process:
every process syncs its concept's entry at once (a barrier), and no update is lost."""

from __future__ import annotations

import multiprocessing
from typing import Any

from sqlalchemy import select

from roadmap_pipeline.samples import synthetic_framework, write_concept_rows
from roadmap_pipeline.store.activity import NothingRunning
from roadmap_pipeline.store.database import PoolSettings, connect, create_store_engine
from roadmap_pipeline.store.invariants import Scope, find_violations
from roadmap_pipeline.store.migrate import init_db
from roadmap_pipeline.store.schema import RoadmapMetadata
from roadmap_pipeline.store.sync import sync_concept
from roadmap_pipeline.store.writers import submit_roadmap

ROADMAP = "processes"
WRITERS = 16


def _finish_concept(url: str, document: dict[str, Any], concept_id: str, barrier: Any) -> None:
    engine = create_store_engine(url, PoolSettings(size=1))
    write_concept_rows(engine, document, [concept_id], attempt="processes")
    barrier.wait(timeout=120)  # every process syncs at the same moment
    sync_concept(engine, ROADMAP, concept_id, NothingRunning())
    engine.dispose()


def test_concurrent_entry_syncs_from_separate_processes_lose_no_update(pg_schema_url: str) -> None:
    engine = create_store_engine(pg_schema_url)
    init_db(engine)
    document = synthetic_framework(ROADMAP, WRITERS)
    submit_roadmap(engine, document)
    ids = [c["concept_id"] for s in document["stages"] for m in s["modules"] for c in m["concepts"]]
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(WRITERS)
    processes = [
        context.Process(target=_finish_concept, args=(pg_schema_url, document, cid, barrier))
        for cid in ids
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(180)
    assert [p.exitcode for p in processes] == [0] * WRITERS

    with connect(engine) as conn:
        stored = conn.execute(
            select(RoadmapMetadata.framework_data).where(RoadmapMetadata.roadmap_id == ROADMAP)
        ).scalar_one()
        violations = find_violations(conn, Scope.roadmap(ROADMAP), NothingRunning())
    nodes = [c for s in stored["stages"] for m in s["modules"] for c in m["concepts"]]
    statuses = {(n["content_status"], n["resources_status"], n["quiz_status"]) for n in nodes}
    assert statuses == {("completed", "completed", "completed")}
    assert all(n["tutorial_id"] and n["resources_id"] and n["quiz_id"] for n in nodes)
    assert violations == []
    engine.dispose()

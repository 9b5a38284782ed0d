"""Concurrent writers of one roadmap (separate connections, PostgreSQL) lose no update."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import Engine

from roadmap_pipeline.samples import synthetic_framework, write_concept_rows
from roadmap_pipeline.store.activity import NothingRunning
from roadmap_pipeline.store.database import PoolSettings, create_store_engine
from roadmap_pipeline.store.sync import sync_concept
from roadmap_pipeline.store.writers import submit_roadmap
from roadmap_pipeline_tests.store.helpers import concept_ids, keys, read_document, scalar, verify

RID = "rm-concurrent"
CONCEPTS = 30


def test_thirty_concurrent_entry_syncs_on_one_roadmap_lose_no_update(pg_schema_url: str) -> None:
    engine: Engine = create_store_engine(pg_schema_url, PoolSettings(size=CONCEPTS + 2))
    try:
        from roadmap_pipeline.store.migrate import init_db

        init_db(engine)
        document = synthetic_framework(RID, CONCEPTS)
        submit_roadmap(engine, document)
        ids = concept_ids(document)
        start = threading.Barrier(CONCEPTS)

        def generate_then_sync(concept_id: str) -> int:
            write_concept_rows(engine, document, [concept_id], attempt="concurrent")
            start.wait(timeout=60)  # every sync starts together: 30 writers of one document
            return len(sync_concept(engine, RID, concept_id, NothingRunning()).entries)

        with ThreadPoolExecutor(max_workers=CONCEPTS) as pool:
            changed = list(pool.map(generate_then_sync, ids))

        stored = read_document(engine, RID)
        nodes = [c for s in stored["stages"] for m in s["modules"] for c in m["concepts"]]
        assert all(n > 0 for n in changed)
        assert [(n["content_status"], n["resources_status"], n["quiz_status"]) for n in nodes] == [
            ("completed",) * 3
        ] * CONCEPTS
        for entry in nodes:
            assert entry["quiz_id"] == scalar(
                engine,
                "SELECT CAST(quiz_id AS TEXT) FROM quiz_metadata WHERE concept_id = :c",
                c=entry["concept_id"],
            )
            assert entry["x_service_note"] == {"kept": True}
        assert keys(verify(engine)) == set()  # the pending task is queued work: no zombies
    finally:
        engine.dispose()

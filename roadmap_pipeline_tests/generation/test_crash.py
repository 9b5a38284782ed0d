"""Crash tests: a worker process is SIGKILLed at each named point and the concept is rerun.

Each run is a separate OS process (``roadmap_pipeline.testing.concept_worker``) on the same
database and checkpoints. Generator calls are recorded in a file before each call, so calls of a
killed process count too.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from sqlalchemy import select

from roadmap_pipeline.domain.keys import concept_key
from roadmap_pipeline.domain.statuses import ItemType
from roadmap_pipeline.generation.workflow import generation_id_for
from roadmap_pipeline.store.database import connect
from roadmap_pipeline.store.schema import ContentGeneration, TutorialMetadata
from roadmap_pipeline.testing.counting import count_calls, read_calls
from roadmap_pipeline_tests.generation.support import assert_consistent, row_counts, thread_exists

KILL_POINTS = [
    (item.value, point) for item in ItemType for point in ("before_write", "after_write")
]


def run_worker(
    database_url: str,
    checkpoint_url: str,
    roadmap_id: str,
    concept_id: str,
    request_id: str,
    *extra: str,
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "roadmap_pipeline.testing.concept_worker",
            "--database-url",
            database_url,
            "--checkpoint-url",
            checkpoint_url,
            "--roadmap",
            roadmap_id,
            "--concept",
            concept_id,
            "--request-id",
            request_id,
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen[str]) -> tuple[int, dict[str, Any] | None]:
    stdout, stderr = process.communicate(timeout=120)
    if process.returncode not in (0, -signal.SIGKILL):
        raise AssertionError(f"worker failed ({process.returncode}):\n{stderr}")
    return process.returncode, (json.loads(stdout) if stdout.strip() else None)


def test_a_worker_killed_at_every_point_loses_and_duplicates_nothing(
    engine, roadmap, database_url, checkpoint_url, checkpointer, call_log, tmp_path
):
    """One kill per named point of every item, in order (each fires once: its count lives in
    counter_dir), each followed by a rerun in a new process with a new request id."""
    concept = roadmap.concept_ids[1]
    thread = concept_key(roadmap.roadmap_id, concept)
    plan = json.dumps(
        {
            "kill": [
                {"concept": thread, "item": item, "point": point, "occurrence": 1}
                for item, point in KILL_POINTS
            ],
            "counter_dir": str(tmp_path / "fault-counts"),
        }
    )
    # after each run: (exit code, generator calls per item so far, rows t/r/q/ledger)
    expected = [
        (-9, {"tutorial": 1}, (0, 0, 0, 0)),  # killed before the tutorial's write
        (-9, {"tutorial": 2}, (1, 0, 0, 1)),  # regenerated it, killed after its write
        (-9, {"tutorial": 2, "resources": 1}, (1, 0, 0, 1)),  # tutorial found in the ledger
        (-9, {"tutorial": 2, "resources": 2}, (1, 1, 0, 2)),
        (-9, {"tutorial": 2, "resources": 2, "quiz": 1}, (1, 1, 0, 2)),
        (-9, {"tutorial": 2, "resources": 2, "quiz": 2}, (1, 1, 1, 3)),
        (0, {"tutorial": 2, "resources": 2, "quiz": 2}, (1, 1, 1, 3)),  # done, nothing redone
    ]
    outcome = None
    for run, (code, calls, rows) in enumerate(expected, start=1):
        process = run_worker(
            database_url,
            checkpoint_url,
            roadmap.roadmap_id,
            concept,
            f"attempt-{run}",
            "--faults",
            plan,
            "--call-log",
            str(call_log),
        )
        returncode, outcome = finish(process)
        counts = row_counts(engine, roadmap.roadmap_id, concept)
        observed = (counts["tutorial"], counts["resources"], counts["quiz"], counts["ledger"])
        assert (returncode, dict(count_calls(call_log)), observed) == (code, calls, rows), run
        assert thread_exists(checkpointer, thread) == (code != 0)

    assert outcome is not None
    assert outcome["resumed"] is True
    assert [o["generated"] for o in outcome["items"].values()] == [False, False, False]
    assert {i: o["status"] for i, o in outcome["items"].items()} == {
        "tutorial": "completed",
        "resources": "completed",
        "quiz": "completed",
    }
    assert len({call["pid"] for call in read_calls(call_log)}) == 6  # six processes generated
    with connect(engine) as conn:
        generations = {
            row.item: row.generation_id
            for row in conn.execute(
                select(ContentGeneration.item, ContentGeneration.generation_id).where(
                    ContentGeneration.concept_id == concept
                )
            )
        }
        versions = conn.execute(
            select(TutorialMetadata.content_version).where(TutorialMetadata.concept_id == concept)
        ).scalars()
        assert list(versions) == [1]
    # every write belongs to the generation fixed when the first, killed, run started
    assert generations == {
        item.value: generation_id_for("attempt-1", thread, item) for item in ItemType
    }
    assert_consistent(engine, roadmap.roadmap_id)


def _wait_for_first_call(call_log: Path, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    while not read_calls(call_log):
        if process.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"the worker never started generating: {finish(process)}")
        time.sleep(0.02)


def test_a_second_process_on_the_same_concept_skips_or_waits(
    engine, roadmap, database_url, checkpoint_url, workflow, call_log
):
    """A worker process is generating slowly; this process (its own lock objects) asks for the
    same concept: without waiting it skips, waiting it gets the lock afterwards and finds every
    item of the request already written."""
    concept = roadmap.concept_ids[2]
    first = run_worker(
        database_url,
        checkpoint_url,
        roadmap.roadmap_id,
        concept,
        "req-1",
        "--call-log",
        str(call_log),
        "--delay-s",
        "0.4",
    )
    _wait_for_first_call(call_log, first)

    skipped = workflow.run(roadmap.roadmap_id, concept, request_id="req-1", wait_for_lock=False)
    assert skipped.skipped_locked
    waited = workflow.run(roadmap.roadmap_id, concept, request_id="req-1", wait_for_lock=True)
    returncode, generated = finish(first)

    assert returncode == 0
    assert generated is not None
    assert not waited.skipped_locked
    assert [o.generated for o in waited.items.values()] == [False, False, False]
    assert {i.value: o.row_id for i, o in waited.items.items()} == {
        name: o["row_id"] for name, o in generated["items"].items()
    }
    assert count_calls(call_log) == {"tutorial": 1, "resources": 1, "quiz": 1}
    assert {call["pid"] for call in read_calls(call_log)} == {first.pid}
    assert row_counts(engine, roadmap.roadmap_id, concept) == {
        "tutorial": 1,
        "resources": 1,
        "quiz": 1,
        "ledger": 3,
    }
    assert_consistent(engine, roadmap.roadmap_id)

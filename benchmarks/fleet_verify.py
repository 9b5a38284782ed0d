"""Fleet verify vs a per-roadmap loop, on PostgreSQL (a script, not a test).

    .venv/bin/python -m benchmarks.fleet_verify [--roadmaps 10000] [--concepts 30] [--rebuild]

Builds ``--roadmaps`` roadmaps of ``--concepts`` concepts (three content rows per concept) in a
dedicated database (``roadmap_pipeline_bench`` by default; created when missing, reused when it
already holds that fleet) with set-based bulk loading (COPY), plants a few violations of several
rules, and prints in one run:

- the floor: counting the three content tables and reading every framework_data document;
- the fleet verify: one set-based statement over every roadmap (``Scope.fleet()``);
- the per-roadmap loop: the same checks, ``Scope.roadmap(id)`` for each roadmap in turn;
- the ratio, and whether both found exactly the same violations.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import Connection, text
from sqlalchemy.engine import make_url

from benchmarks.measuring import measure
from roadmap_pipeline.domain.framework import load_framework
from roadmap_pipeline.generation.generator import ConceptContext
from roadmap_pipeline.generation.offline import OfflineGenerator
from roadmap_pipeline.samples import synthetic_framework
from roadmap_pipeline.store.activity import NothingRunning
from roadmap_pipeline.store.database import create_store_engine, safe_url
from roadmap_pipeline.store.invariants import Scope, Violation, counts_by_rule, find_violations
from roadmap_pipeline.store.migrate import init_db

ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DATABASE = "roadmap_pipeline_bench"
TEMPLATES = 40  # distinct generated contents, reused round-robin (the checks read every row)
PLANT_EVERY = 100  # one roadmap in PLANT_EVERY gets a planted violation


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--roadmaps", type=int, default=10_000)
    parser.add_argument("--concepts", type=int, default=30)
    parser.add_argument("--admin-url", default=ADMIN_URL, help="a database to CREATE DATABASE from")
    parser.add_argument("--database", default=DATABASE)
    parser.add_argument("--rebuild", action="store_true", help="drop and rebuild the fleet")
    args = parser.parse_args(argv)

    url = make_url(args.admin_url).set(database=args.database)
    engine = create_store_engine(url)
    if args.rebuild or not _holds_fleet(args.admin_url, args.database, args.roadmaps):
        started = time.perf_counter()
        _create_database(args.admin_url, args.database)
        init_db(engine)
        rows = _load_fleet(url.render_as_string(hide_password=False), args.roadmaps, args.concepts)
        print(
            f"built {args.roadmaps} roadmaps x {args.concepts} concepts ({rows:,} rows) in "
            f"{safe_url(url)} in {time.perf_counter() - started:.1f} s"
        )
    else:
        print(f"reusing the fleet in {safe_url(url)} (--rebuild to build it again)")

    activity = NothingRunning()
    with engine.connect() as conn:
        cpu = _server_cpu(conn)
        floor = measure(cpu, lambda: _floor(conn))
        fleet_runs = [
            measure(cpu, lambda: find_violations(conn, Scope.fleet(), activity)) for _ in range(3)
        ]
        ids = list(
            conn.execute(
                text(
                    "SELECT roadmap_id FROM roadmap_metadata "
                    "WHERE deleted_at IS NULL ORDER BY roadmap_id"
                )
            ).scalars()
        )
        loop = measure(
            cpu,
            lambda: [v for rid in ids for v in find_violations(conn, Scope.roadmap(rid), activity)],
        )
    engine.dispose()

    fleet = min(fleet_runs, key=lambda m: m.wall)
    fleet_found: list[Violation] = fleet_runs[-1].result
    loop_found: list[Violation] = loop.result
    counts = {rule: n for rule, n in counts_by_rule(fleet_found).items() if n}
    print(f"floor (count content rows, read every framework_data): {floor}  ({floor.result})")
    print(
        "fleet verify, one statement:                           "
        + ", ".join(str(m) for m in fleet_runs)
        + f"  ({len(fleet_found)} violations)"
    )
    print(
        f"per-roadmap loop over {len(ids)} roadmaps:                {loop}  "
        f"({len(loop_found)} violations)"
    )
    ratio = f"ratio loop / fleet: {loop.wall / fleet.wall:.1f}x wall"
    if loop.cpu is not None and fleet.cpu:
        ratio += f", {loop.cpu / fleet.cpu:.1f}x server CPU"
    print(f"{ratio};  fleet / floor: {fleet.wall / floor.wall:.1f}x wall")
    print(f"violations by rule: {counts}")
    same = sorted(fleet_found, key=repr) == sorted(loop_found, key=repr)
    print(f"fleet and loop found the same violations: {same}")
    return 0 if same else 1


def _server_cpu(conn: Connection) -> Callable[[], float | None]:
    """Reads the connection's backend CPU time from /proc when the server is local."""
    pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
    stat = Path(f"/proc/{pid}/stat")
    ticks = os.sysconf("SC_CLK_TCK")

    def read() -> float | None:
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None  # a remote server: wall time only
        return (int(fields[11]) + int(fields[12])) / ticks  # utime + stime

    return read


def _floor(conn: Connection) -> str:
    counts = [
        conn.execute(text(f"SELECT COUNT(*) FROM {table}")).scalar_one()
        for table in ("tutorial_metadata", "resource_recommendation_metadata", "quiz_metadata")
    ]
    # jsonb_array_length forces every document to be fetched, detoasted and looked into.
    stages = conn.execute(
        text("SELECT SUM(jsonb_array_length(framework_data -> 'stages')) FROM roadmap_metadata")
    ).scalar_one()
    return f"{sum(counts):,} content rows, {stages:,} stages"


def _holds_fleet(admin_url: str, database: str, roadmaps: int) -> bool:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone():
            return False
    target = make_url(admin_url).set(database=database).render_as_string(hide_password=False)
    try:
        with psycopg.connect(target) as conn:
            row = conn.execute("SELECT COUNT(*) FROM roadmap_metadata").fetchone()
    except psycopg.Error:
        return False
    return row is not None and row[0] == roadmaps


def _create_database(admin_url: str, database: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{database}"')


# --- the fleet -------------------------------------------------------------------------------


def _templates() -> list[dict[str, Any]]:
    """Generated contents of a few concepts, serialised once and reused for every row."""
    framework = load_framework(synthetic_framework("template", TEMPLATES))
    generator = OfflineGenerator()
    result = []
    for concept in framework.concepts():
        context = ConceptContext.from_framework(framework, concept.concept_id)
        tutorial = generator.tutorial(context)
        resources = generator.resources(context)
        quiz = generator.quiz(context)
        counts = quiz.difficulty_counts()
        result.append(
            {
                "title": tutorial.title,
                "summary": tutorial.summary,
                "minutes": tutorial.estimated_completion_time,
                "resources": json.dumps([r.model_dump(mode="json") for r in resources.resources]),
                "resources_count": len(resources.resources),
                "queries": json.dumps(resources.search_queries_used),
                "questions": json.dumps([q.model_dump(mode="json") for q in quiz.questions]),
                "total": len(quiz.questions),
                "counts": (counts["easy"], counts["medium"], counts["hard"]),
            }
        )
    return result


def _load_fleet(url: str, roadmaps: int, concepts: int) -> int:
    """COPY every table in one transaction; returns the number of content rows."""
    rng = random.Random(7)
    templates = _templates()
    now = datetime(2026, 11, 1, 12, 0, 0)
    plain = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(plain) as conn, conn.cursor() as cur:
        content_rows = _copy_all(cur, rng, templates, now, roadmaps, concepts)
        conn.commit()
        conn.autocommit = True
        conn.execute("ANALYZE")
    return content_rows


def _fleet(
    rng: random.Random,
    templates: list[dict[str, Any]],
    now: datetime,
    roadmaps: int,
    concepts: int,
) -> Iterator[tuple[str, dict[str, Any], list[tuple[str, str, dict[str, Any], dict[str, str]]]]]:
    """Per roadmap: id, document, and per concept (concept_id, short, template, row ids)."""
    for n in range(roadmaps):
        roadmap_id = f"bench-{n:06d}-{rng.getrandbits(32):08x}"
        document = synthetic_framework(roadmap_id, concepts)
        items = []
        for stage in document["stages"]:
            for module in stage["modules"]:
                for node in module["concepts"]:
                    template = templates[rng.randrange(len(templates))]
                    ids = {
                        k: str(uuid.UUID(int=rng.getrandbits(128), version=4))
                        for k in ("tutorial", "resources", "quiz")
                    }
                    concept_id = node["concept_id"]
                    node.update(
                        content_status="completed",
                        tutorial_id=ids["tutorial"],
                        content_ref=f"{roadmap_id}/concepts/{concept_id}/v1.md",
                        content_version="v1",
                        content_summary=template["summary"],
                        resources_status="completed",
                        resources_id=ids["resources"],
                        resources_count=template["resources_count"],
                        quiz_status="completed",
                        quiz_id=ids["quiz"],
                        quiz_questions_count=template["total"],
                    )
                    items.append((concept_id, node, template, ids))
        yield roadmap_id, document, items


def _copy_all(
    cur: psycopg.Cursor[Any],
    rng: random.Random,
    templates: list[dict[str, Any]],
    now: datetime,
    roadmaps: int,
    concepts: int,
) -> int:
    fleet = list(_fleet(rng, templates, now, roadmaps, concepts))
    _plant(fleet)
    generated = now - timedelta(hours=1)
    with cur.copy(
        "COPY roadmap_metadata (roadmap_id, user_id, title, total_estimated_hours, "
        "recommended_completion_weeks, framework_data, created_at) FROM STDIN"
    ) as copy:
        for roadmap_id, document, _ in fleet:
            copy.write_row(
                (
                    roadmap_id,
                    "bench-user",
                    document["title"],
                    document["total_estimated_hours"],
                    document["recommended_completion_weeks"],
                    json.dumps(document),
                    now,
                )
            )
    with cur.copy(
        "COPY roadmap_tasks (task_id, user_id, status, current_step, roadmap_id, "
        "task_type, created_at, updated_at, completed_at, failed_concepts) "
        "FROM STDIN"
    ) as copy:
        for roadmap_id, _, _ in fleet:
            copy.write_row(
                (
                    str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                    "bench-user",
                    "completed",
                    "done",
                    roadmap_id,
                    "creation",
                    now,
                    now,
                    now,
                    "[]",
                )
            )
    rows = 0
    with cur.copy(
        "COPY tutorial_metadata (tutorial_id, roadmap_id, concept_id, title, summary, "
        "content_url, content_status, content_version, is_latest, "
        "estimated_completion_time, generated_at) FROM STDIN"
    ) as copy:
        for roadmap_id, _, items in fleet:
            for concept_id, _node, template, ids in items:
                if "tutorial" in ids:
                    copy.write_row(
                        (
                            ids["tutorial"],
                            roadmap_id,
                            concept_id,
                            template["title"],
                            template["summary"],
                            f"{roadmap_id}/concepts/{concept_id}/v1.md",
                            "completed",
                            1,
                            True,
                            template["minutes"],
                            generated,
                        )
                    )
                    rows += 1
    with cur.copy(
        "COPY resource_recommendation_metadata (id, roadmap_id, concept_id, "
        "resources, resources_count, search_queries_used, generated_at) "
        "FROM STDIN"
    ) as copy:
        for roadmap_id, _, items in fleet:
            for concept_id, _node, template, ids in items:
                if "resources" in ids:
                    copy.write_row(
                        (
                            ids["resources"],
                            roadmap_id,
                            concept_id,
                            template["resources"],
                            template["resources_count"],
                            template["queries"],
                            generated,
                        )
                    )
                    rows += 1
    with cur.copy(
        "COPY quiz_metadata (quiz_id, roadmap_id, concept_id, questions, "
        "total_questions, easy_count, medium_count, hard_count, generated_at) "
        "FROM STDIN"
    ) as copy:
        for roadmap_id, _, items in fleet:
            for concept_id, _node, template, ids in items:
                if "quiz" in ids:
                    copy.write_row(
                        (
                            ids["quiz"],
                            roadmap_id,
                            concept_id,
                            template["questions"],
                            template["total"],
                            *template["counts"],
                            generated,
                        )
                    )
                    rows += 1
    return rows


def _plant(fleet: list[Any]) -> None:
    """A few violations of several rules, spread over the fleet (1 roadmap in PLANT_EVERY)."""
    for index, (_roadmap_id, _document, items) in enumerate(fleet):
        if index % PLANT_EVERY:
            continue
        kind = (index // PLANT_EVERY) % 4
        _concept_id, node, _template, ids = items[index % len(items)]
        if kind == 0:  # the incident: rows exist, the document still says pending
            for key in ("content_status", "resources_status", "quiz_status"):
                node[key] = "pending"
        elif kind == 1:  # a row that vanished
            del ids["quiz"]
        elif kind == 2:  # a stale count
            node["resources_count"] = 99
        else:  # an item stuck in generating with no row, and nothing running
            node["content_status"] = "generating"
            del ids["tutorial"]


if __name__ == "__main__":
    sys.exit(main())

"""The fleet consistency check as Dagster runs it, on PostgreSQL (a script, not a test).

    .venv/bin/python -m benchmarks.fleet_check [--roadmaps 10000] [--concepts 30] [--changed 100]
                                                [--loop-sample N] [--rebuild]

Uses the fleet of ``benchmarks.fleet_verify`` (``roadmap_pipeline_bench``: built when missing or
with ``--rebuild``, and brought to the current migration like any managed database), and prints
in one run, as wall time next to the CPU time of the server processes serving this benchmark's
connections, with the machine's load average:

1. the floor: counting the three content tables and reading every framework_data document;
2. the full fleet check: ``evaluate_fleet(force_full_pass=True)``, the code path of the
   scheduled check's full pass (best of three), and the same check as one statement on one
   connection;
3. the per-roadmap loop: the same checks, ``find_violations(Scope.roadmap(id))`` per roadmap
   (``--loop-sample N``: N roadmaps spread over the fleet, the total extrapolated);
4. the incremental pass: a full pass recorded by executing the ``fleet_consistency_check`` job
   in-process on a real (temporary) Dagster instance; then ``--changed`` roadmaps change the way
   they do in service (a regenerated quiz row: new questions and ``generated_at``; every tenth a
   task update instead), and the next pass reads only what changed: its SQL (what changed, then
   the rules over those roadmaps), ``evaluate_fleet`` as a whole, and the job's whole run.

The ratios compare them; the full check's and the loop's findings are compared too.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
import warnings
from datetime import datetime
from pathlib import Path
from typing import Any

import dagster as dg
from sqlalchemy import Connection, Engine, bindparam, text
from sqlalchemy.engine import make_url

from benchmarks.fleet_verify import (
    ADMIN_URL,
    DATABASE,
    _create_database,
    _floor,
    _holds_fleet,
    _load_fleet,
)
from benchmarks.measuring import machine_load, measure
from roadmap_pipeline.definitions import build_definitions
from roadmap_pipeline.orchestration.activity import DagsterActivity
from roadmap_pipeline.orchestration.fleet import FULL_PASS_WORKERS, evaluate_fleet, previous_pass
from roadmap_pipeline.orchestration.resources import (
    CheckpointerResource,
    ContentGeneratorResource,
    RoadmapDatabase,
    dispose_engines,
)
from roadmap_pipeline.store.changes import roadmaps_changed_since
from roadmap_pipeline.store.database import create_store_engine, safe_url
from roadmap_pipeline.store.invariants import (
    Scope,
    Violation,
    content_checks_indexed,
    counts_by_rule,
    enforces_uniqueness,
    find_violations,
)
from roadmap_pipeline.store.migrate import init_db
from roadmap_pipeline.store.schema import utcnow

# The connection budget is computed from the instance's run limit (as in dagster.yaml).
INSTANCE_OVERRIDES = {"concurrency": {"runs": {"max_concurrent_runs": 4}}}
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}

warnings.filterwarnings("ignore", category=dg.BetaWarning)
warnings.filterwarnings("ignore", category=dg.PreviewWarning)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--roadmaps", type=int, default=10_000)
    parser.add_argument("--concepts", type=int, default=30)
    parser.add_argument(
        "--changed", type=int, default=100, help="roadmaps changed before the incremental pass"
    )
    parser.add_argument(
        "--loop-sample",
        type=int,
        default=0,
        help="time the per-roadmap loop on this many roadmaps and extrapolate (0: every roadmap)",
    )
    parser.add_argument("--admin-url", default=ADMIN_URL, help="a database to CREATE DATABASE from")
    parser.add_argument("--database", default=DATABASE)
    parser.add_argument("--rebuild", action="store_true", help="drop and rebuild the fleet")
    args = parser.parse_args(argv)

    url = make_url(args.admin_url).set(database=args.database)
    plain_url = url.render_as_string(hide_password=False)
    if args.rebuild or not _holds_fleet(args.admin_url, args.database, args.roadmaps):
        started = time.perf_counter()
        _create_database(args.admin_url, args.database)
        init_db(create_store_engine(url))
        rows = _load_fleet(plain_url, args.roadmaps, args.concepts)
        print(
            f"built {args.roadmaps} roadmaps x {args.concepts} concepts ({rows:,} rows) "
            f"in {time.perf_counter() - started:.1f} s"
        )
    engine = create_store_engine(url)
    report = init_db(engine)  # a fleet built before the latest migration gets it here
    with engine.connect() as conn:
        if report.before != report.after:  # as autovacuum would, in time
            conn.execution_options(isolation_level="AUTOCOMMIT").execute(text("VACUUM ANALYZE"))
        indexed, constrained = content_checks_indexed(conn), enforces_uniqueness(conn)
    print(
        f"fleet in {safe_url(url)}: {report.message}; unique indexes: {constrained}, "
        f"content-check indexes: {indexed}; server CPU: every backend of that database"
    )

    cpu = ServerCpu(engine)
    database = RoadmapDatabase(url=plain_url)
    with dg.instance_for_test(overrides=INSTANCE_OVERRIDES) as instance:
        defs = build_definitions(
            {
                "database": database,
                "generator": ContentGeneratorResource(),
                "checkpointer": CheckpointerResource(),
            }
        )
        job = defs.resolve_job_def("fleet_consistency_check")
        activity = DagsterActivity(instance)

        print(f"load average before: {machine_load()}")
        with engine.connect() as conn:
            floor = measure(cpu, lambda: _floor(conn))
        print(
            f"1. floor (count content rows, read every framework_data): {floor}  ({floor.result})"
        )

        full_runs = [
            measure(cpu, lambda: evaluate_fleet(instance, database, 24.0, force_full_pass=True))
            for _ in range(3)
        ]
        full = min(full_runs, key=lambda m: m.wall)
        fleet_found: list[Violation] = full.result.violations
        print(
            f"2. full fleet check, evaluate_fleet ({FULL_PASS_WORKERS} slices at once): "
            + ", ".join(str(m) for m in full_runs)
            + f"  ({len(fleet_found)} violations)"
        )
        with engine.connect() as conn:
            single = measure(cpu, lambda: _one_statement(conn, activity))
        print(
            f"   the same, one statement on one connection:          {single}  "
            f"({len(single.result)} violations)"
        )

        with engine.connect() as conn:
            ids = list(
                conn.execute(
                    text(
                        "SELECT roadmap_id FROM roadmap_metadata WHERE deleted_at IS NULL "
                        "ORDER BY roadmap_id"
                    )
                ).scalars()
            )
            looped = _sample(ids, args.loop_sample)
            loop = measure(cpu, lambda: _loop(conn, looped, activity))
        loop_found: list[Violation] = loop.result
        scale = len(ids) / len(looped)
        loop_label = (
            f"per-roadmap loop over {len(ids)} roadmaps"
            if scale == 1
            else f"per-roadmap loop over {len(looped)} of {len(ids)} roadmaps, x{scale:.1f}"
        )
        print(f"3. {loop_label}: {loop.scaled(scale)}  ({len(loop_found)} violations)")

        # 4. the incremental pass, after a full pass recorded by the scheduled job's own run.
        recorded = measure(cpu, lambda: job.execute_in_process(run_config=QUIET, instance=instance))
        first = previous_pass(instance) or {}
        print(
            f"4. fleet_consistency_check job, full pass (recorded):  {recorded}  "
            f"({first.get('pass_kind')}, {first.get('violating_roadmaps')} violating roadmaps)"
        )
        since = datetime.fromisoformat(str(first["checked_at"]))
        with engine.begin() as conn:
            changed = _change(conn, ids, args.changed)
        with engine.connect() as conn:
            sql = measure(cpu, lambda: _incremental_sql(conn, instance, since, activity))
        read, found = sql.result
        print(
            f"   after {len(changed)} roadmaps changed: what changed, then the rules over {read} "
            f"roadmaps (the changed and the previous violators) as one statement: {sql}  "
            f"({len(found)} violations)"
        )
        incremental_runs = [
            measure(cpu, lambda: evaluate_fleet(instance, database, 24.0)) for _ in range(3)
        ]
        incremental = min(incremental_runs, key=lambda m: m.wall)
        result = incremental.result
        print(
            f"   evaluate_fleet, incremental ({result.kind}, {result.roadmaps_checked} roadmaps "
            f"read, in {FULL_PASS_WORKERS} shares at once): "
            + ", ".join(str(m) for m in incremental_runs)
        )
        step = measure(cpu, lambda: job.execute_in_process(run_config=QUIET, instance=instance))
        latest = previous_pass(instance) or {}
        print(
            f"   fleet_consistency_check job, incremental (whole run in-process): {step}  "
            f"({latest.get('pass_kind')}, {latest.get('roadmaps_checked')} roadmaps read, "
            f"check step {latest.get('duration_s')} s)"
        )

    dispose_engines()
    engine.dispose()
    print(f"load average after: {machine_load()}")
    print(
        f"ratios: loop / full check {loop.wall * scale / full.wall:.1f}x wall"
        + (f", {loop.cpu * scale / full.cpu:.1f}x server CPU" if loop.cpu and full.cpu else "")
        + f"; full check / floor {full.wall / floor.wall:.1f}x wall"
        + f"; full check / one statement {full.wall / single.wall:.2f}x wall"
        + f"; incremental / full check {incremental.wall / full.wall:.3f}x wall"
    )
    counts = {rule: n for rule, n in counts_by_rule(fleet_found).items() if n}
    print(f"violations by rule: {counts}")
    sampled = set(looped)
    same_as_loop = sorted((v for v in fleet_found if v.roadmap_id in sampled), key=repr) == sorted(
        loop_found, key=repr
    )
    same_as_single = sorted(fleet_found, key=repr) == sorted(single.result, key=repr)
    print(
        f"full check, one statement and loop found the same violations: "
        f"{same_as_loop and same_as_single}"
    )
    return 0 if same_as_loop and same_as_single else 1


# --- measuring -------------------------------------------------------------------------------


class ServerCpu:
    """CPU seconds (user + system) of the server processes connected to the benchmark's database
    (every pool of this process: the check's, the workers', this one), read from /proc; None when
    the server is not local."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def __call__(self) -> float | None:
        with self.engine.connect() as conn:
            pids = conn.execute(
                text(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                    "AND backend_type = 'client backend'"
                )
            ).scalars()
            ticks = os.sysconf("SC_CLK_TCK")
            total = 0.0
            for pid in pids:
                try:
                    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    return None
                total += (int(fields[11]) + int(fields[12])) / ticks
        return total


# --- the measured actions ----------------------------------------------------------------------


def _one_statement(conn: Connection, activity: DagsterActivity) -> list[Violation]:
    found = find_violations(conn, Scope.fleet(), activity)
    conn.rollback()
    return found


def _sample(ids: list[str], n: int) -> list[str]:
    if n <= 0 or n >= len(ids):
        return ids
    step = len(ids) / n
    return [ids[int(k * step)] for k in range(n)]


def _loop(conn: Connection, ids: list[str], activity: DagsterActivity) -> list[Violation]:
    found: list[Violation] = []
    for roadmap_id in ids:
        found += find_violations(conn, Scope.roadmap(roadmap_id), activity)
        conn.rollback()
    return found


def _change(conn: Connection, ids: list[str], n: int) -> list[str]:
    """``n`` roadmaps change as in service: nine in ten get a regenerated quiz row (its questions
    rewritten, same shape and counts, ``generated_at`` now); the others a task update."""
    chosen = random.Random(time.time_ns()).sample(ids, n)
    now = utcnow()
    quizzes, tasks = chosen[: n - n // 10], chosen[n - n // 10 :]
    conn.execute(
        text(
            "UPDATE quiz_metadata q SET generated_at = :now, questions = ("
            "  SELECT jsonb_agg(jsonb_set(e, '{question}', to_jsonb("
            "      CAST(:label AS TEXT) || split_part(e ->> 'question', ': ', -1))) ORDER BY o)"
            "  FROM jsonb_array_elements(q.questions) WITH ORDINALITY AS a(e, o))"
            " WHERE q.quiz_id IN (SELECT DISTINCT ON (roadmap_id) quiz_id FROM quiz_metadata"
            "                     WHERE roadmap_id IN :ids ORDER BY roadmap_id, concept_id)"
        ).bindparams(_expanding("ids")),
        {"now": now, "label": f"Regenerated at {now:%H%M%S}: ", "ids": quizzes},
    )
    if tasks:
        conn.execute(
            text("UPDATE roadmap_tasks SET updated_at = :now WHERE roadmap_id IN :ids").bindparams(
                _expanding("ids")
            ),
            {"now": now, "ids": tasks},
        )
    return chosen


def _expanding(name: str) -> Any:
    return bindparam(name, expanding=True)


def _incremental_sql(
    conn: Connection, instance: dg.DagsterInstance, since: datetime, activity: DagsterActivity
) -> tuple[int, list[Violation]]:
    """What the incremental pass asks the database: what changed, then the rules over it (the
    previous violators included, as evaluate_fleet does)."""
    previous = previous_pass(instance) or {}
    changed = roadmaps_changed_since(conn, since) | set(previous.get("violating_roadmap_ids") or [])
    found = find_violations(conn, Scope.roadmaps(sorted(changed)), activity)
    conn.rollback()
    return len(changed), found


if __name__ == "__main__":
    sys.exit(main())

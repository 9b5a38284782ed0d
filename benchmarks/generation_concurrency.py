"""Concept generation throughput against a slow LLM (a script, not a test).

    .venv/bin/python -m benchmarks.generation_concurrency [--concepts 30] [--latency 0.2]
        [--levels 1,5,10] [--database-url postgresql://postgres@127.0.0.1:5432/roadmap_pipeline_test]

Runs the real stack: ``run_concepts`` over a roadmap of ``--concepts`` concepts, the LangGraph
workflow with its checkpointer and per-concept locks, the OpenAI-compatible generator over HTTP
against the loopback chat-completions server answering each call after ``--latency`` seconds.
For each concurrency level it prints the wall time next to the ideal (calls x latency /
concurrency) and their ratio. The goal is a ratio within 1.3 at concurrency 10. A one-concept
warm-up runs first, so that no level pays the process's one-time start-up costs.

The server runs in its own process by default, as a remote LLM would: in this process its
request handling would compete with the workflow for the GIL (``--in-process-server`` measures
that too).

The default database is a fresh SQLite file; with a PostgreSQL URL every level runs in a fresh
schema of that database (dropped afterwards), checkpoints and advisory locks included.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

import psycopg
from sqlalchemy.engine import make_url

from roadmap_pipeline.domain.statuses import ItemType
from roadmap_pipeline.generation.checkpointer import (
    default_checkpoint_url,
    open_checkpointer,
    psycopg_conninfo,
)
from roadmap_pipeline.generation.locks import PostgresAdvisoryLocks, locks_for
from roadmap_pipeline.generation.openai_compat import OpenAICompatibleGenerator
from roadmap_pipeline.generation.workflow import ConceptWorkflow, run_concepts
from roadmap_pipeline.samples import synthetic_framework
from roadmap_pipeline.store.database import PoolSettings, create_store_engine
from roadmap_pipeline.store.migrate import init_db
from roadmap_pipeline.store.writers import submit_roadmap
from roadmap_pipeline.testing.llm_server import LLMServer


@contextmanager
def fresh_database(base_url: str | None, workdir: Path, level: int) -> Iterator[str]:
    """An empty database for one level: an SQLite file, or a new Postgres schema."""
    if base_url is None:
        yield f"sqlite:///{workdir / f'level-{level}.db'}"
        return
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    conninfo = psycopg_conninfo(base_url)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        url = make_url(base_url).set(drivername="postgresql+psycopg")
        yield url.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(
            hide_password=False
        )
    finally:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


class ServerProcess:
    """The loopback server in a child process; its counters come from ``GET /v1/_stats``."""

    def __init__(self, latency_s: float) -> None:
        command = [sys.executable, "-m", "roadmap_pipeline.testing.llm_server"]
        self.process = subprocess.Popen(  # noqa: S603 - our interpreter, fixed arguments
            [*command, "--latency", str(latency_s)], stdout=subprocess.PIPE, text=True
        )
        assert self.process.stdout is not None
        self.base_url = self.process.stdout.readline().strip()

    @property
    def calls(self) -> int:
        stats = f"{self.base_url}/_stats"  # http://127.0.0.1:<port>, printed by our child
        with urllib.request.urlopen(stats, timeout=10) as reply:  # noqa: S310
            return int(json.load(reply)["calls"])

    def stop(self) -> None:
        self.process.kill()
        self.process.wait(timeout=10)


class Server(Protocol):
    @property
    def base_url(self) -> str: ...

    @property
    def calls(self) -> int: ...


@contextmanager
def llm_server(latency_s: float, in_process: bool) -> Iterator[Server]:
    if in_process:
        with LLMServer(latency_s) as server:
            yield server
        return
    child = ServerProcess(latency_s)
    try:
        yield child
    finally:
        child.stop()


def run_level(
    server: Server, database_url: str, concepts: int, concurrency: int
) -> tuple[float, float, int, int]:
    """Wall time, CPU time of this process, LLM calls and failed items of one roadmap."""
    engine = create_store_engine(database_url, PoolSettings(size=min(concurrency, 10)))
    init_db(engine)
    roadmap_id = f"bench-c{concurrency}"
    document = synthetic_framework(roadmap_id, concepts)
    submit_roadmap(engine, document)
    targets = [
        (roadmap_id, c["concept_id"])
        for s in document["stages"]
        for m in s["modules"]
        for c in m["concepts"]
    ]
    generator = OpenAICompatibleGenerator(
        server.base_url, "bench", "sk-bench", timeout_s=10, max_concurrency=concurrency
    )
    locks = locks_for(database_url)
    calls_before = server.calls
    with open_checkpointer(default_checkpoint_url(database_url), pool_size=4) as checkpointer:
        workflow = ConceptWorkflow(engine, generator, checkpointer, locks)
        started, cpu_started = time.perf_counter(), time.process_time()
        outcomes = run_concepts(
            workflow, targets, ItemType, request_id="bench", concurrency=concurrency
        )
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    if isinstance(locks, PostgresAdvisoryLocks):
        locks.close()
    generator.close()
    engine.dispose()
    failed = sum(1 for o in outcomes for i in o.items.values() if i.status == "failed")
    return wall, cpu, server.calls - calls_before, failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concepts", type=int, default=30)
    parser.add_argument("--latency", type=float, default=0.2, help="seconds per LLM call")
    parser.add_argument("--levels", default="1,5,10")
    parser.add_argument("--database-url", help="PostgreSQL URL (default: a temporary SQLite)")
    parser.add_argument("--in-process-server", action="store_true")
    args = parser.parse_args(argv)
    levels = [int(level) for level in args.levels.split(",")]

    backend = "postgresql" if args.database_url else "sqlite"
    where = "in this process" if args.in_process_server else "in its own process"
    print(
        f"{args.concepts} concepts x 3 items, {args.latency * 1000:.0f} ms per LLM call "
        f"(loopback server {where}), store and checkpoints on {backend}"
    )
    print(
        f"{'concurrency':>11} {'calls':>6} {'wall s':>8} {'ideal s':>8} {'ratio':>6} "
        f"{'cpu s':>6} failed"
    )
    worst = 0.0
    with (
        tempfile.TemporaryDirectory() as tmp,
        llm_server(args.latency, args.in_process_server) as server,
    ):
        # The process's first concept pays one-time costs (lazy imports in the OpenAI SDK and
        # LangGraph, the first connections): outside the timed levels, shown on their own.
        with fresh_database(args.database_url, Path(tmp), 0) as url:
            warmup, _, _, _ = run_level(server, url, 1, 1)
        print(f"{'warm-up':>11} {'':>6} {warmup:>8.2f}  (one concept, before the timed levels)")
        for level in levels:
            with fresh_database(args.database_url, Path(tmp), level) as url:
                wall, cpu, calls, failed = run_level(server, url, args.concepts, level)
            ideal = calls * args.latency / level
            ratio = wall / ideal
            if level == max(levels):
                worst = ratio
            print(
                f"{level:>11} {calls:>6} {wall:>8.2f} {ideal:>8.2f} {ratio:>6.2f} {cpu:>6.2f} "
                f"{failed}"
            )
    goal = "met" if worst <= 1.3 else "NOT met"
    print(f"goal (ratio <= 1.3 at concurrency {max(levels)}): {goal}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

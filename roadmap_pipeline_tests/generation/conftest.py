"""Fixtures for the generation tests: a submitted roadmap, a checkpointer and locks on the same
backend as the ``engine`` (SQLite and PostgreSQL), a recording generator, a loopback LLM server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from roadmap_pipeline.generation.checkpointer import open_checkpointer
from roadmap_pipeline.generation.locks import ConceptLocks, PostgresAdvisoryLocks
from roadmap_pipeline.generation.offline import OfflineGenerator
from roadmap_pipeline.generation.workflow import ConceptWorkflow
from roadmap_pipeline.testing.counting import RecordingGenerator
from roadmap_pipeline.testing.llm_server import LLMServer
from roadmap_pipeline_tests.generation.support import FAST_RETRY, Roadmap, new_locks, submit


@pytest.fixture
def roadmap(engine: Engine) -> Roadmap:
    """A submitted roadmap of three concepts (ids ``gen-roadmap:c-1-1-n``)."""
    return submit(engine, "gen-roadmap", 3)


@pytest.fixture
def checkpoint_url(database_url: str, tmp_path: Path) -> str:
    """Checkpoints beside the store: their own SQLite file, or the same Postgres schema."""
    if database_url.startswith("sqlite"):
        return f"sqlite:///{tmp_path / 'checkpoints.db'}"
    return database_url


@pytest.fixture
def checkpointer(checkpoint_url: str) -> Iterator[Any]:
    with open_checkpointer(checkpoint_url, pool_size=2) as saver:
        yield saver


@pytest.fixture
def locks(database_url: str) -> Iterator[ConceptLocks]:
    made = new_locks(database_url)
    yield made
    if isinstance(made, PostgresAdvisoryLocks):
        made.close()


@pytest.fixture
def call_log(tmp_path: Path) -> Path:
    return tmp_path / "calls.jsonl"


@pytest.fixture
def recording(call_log: Path) -> RecordingGenerator:
    """The offline generator, every call recorded in ``call_log``."""
    return RecordingGenerator(OfflineGenerator(), call_log)


@pytest.fixture
def workflow(engine: Engine, recording: RecordingGenerator, checkpointer: Any, locks: Any):
    return ConceptWorkflow(engine, recording, checkpointer, locks, node_retry=FAST_RETRY)


@pytest.fixture
def llm_server() -> Iterator[LLMServer]:
    with LLMServer() as server:
        yield server

"""Resources: the database, the content generator and the LangGraph checkpointer.

All configuration resolves at launch: the database URL and the API key through ``EnvVar`` in
``definitions.py``, everything else through resource config (defaults below, run config in the
Launchpad). Nothing here reads the environment when the module is imported.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import dagster as dg
from pydantic import Field
from sqlalchemy import Engine

from roadmap_pipeline.generation.checkpointer import default_checkpoint_url, open_checkpointer
from roadmap_pipeline.generation.faults import FaultInjectingGenerator, FaultPlan
from roadmap_pipeline.generation.generator import ContentGenerator
from roadmap_pipeline.generation.offline import OfflineGenerator
from roadmap_pipeline.generation.openai_compat import OpenAICompatibleGenerator
from roadmap_pipeline.store.budget import ConnectionBudget, server_limits
from roadmap_pipeline.store.database import PoolSettings, create_store_engine, safe_url

# One engine per process and configuration: resources are re-instantiated per run and per sensor
# tick, pools must not be (the budget counts one pool per process).
_ENGINES: dict[tuple[str, int, float], Engine] = {}
_ENGINES_LOCK = threading.Lock()


def dispose_engines() -> None:
    """Close this process's pools (a long-lived process that is done with a database)."""
    with _ENGINES_LOCK:
        for engine in _ENGINES.values():
            engine.dispose()
        _ENGINES.clear()


class RoadmapDatabase(dg.ConfigurableResource):
    """The service's tables (content, framework_data, tasks): SQLite or PostgreSQL."""

    url: str = Field(description="sqlite:///path or postgresql://...; set ROADMAP_DATABASE_URL.")
    pool_size: int = Field(default=5, ge=1, description="Bounded pool of this process.")
    pool_timeout_s: float = Field(default=30.0, gt=0, description="Wait for a free connection.")
    checkpointer_pool_size: int = Field(default=4, ge=1, description="LangGraph's own pool.")

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        """Refuse to start a run or a sensor tick whose pools cannot fit the server."""
        if context.instance is not None:
            self.check_budget(context.instance)

    def get_engine(self) -> Engine:
        key = (self.url, self.pool_size, self.pool_timeout_s)
        with _ENGINES_LOCK:
            if key not in _ENGINES:
                _ENGINES[key] = create_store_engine(
                    self.url, PoolSettings(size=self.pool_size, timeout_s=self.pool_timeout_s)
                )
            return _ENGINES[key]

    @property
    def display_url(self) -> str:
        return safe_url(self.url)

    def pool_metadata(self) -> dict[str, Any]:
        """Pool usage for materialization metadata (the incident was a pool running dry)."""
        pool: Any = self.get_engine().pool
        status = {"pool_size": self.pool_size}
        for name in ("checkedout", "checkedin", "overflow"):
            method = getattr(pool, name, None)
            if callable(method):
                status[f"pool_{name}"] = int(method())
        return status

    def budget(self, instance: dg.DagsterInstance) -> ConnectionBudget:
        return ConnectionBudget(
            max_concurrent_runs=max_concurrent_runs(instance),
            database_pool=self.pool_size,
            checkpointer_pool=self.checkpointer_pool_size,
        )

    def check_budget(self, instance: dg.DagsterInstance) -> dict[str, int]:
        """Refuse to start (ConnectionBudgetExceeded) when the pools cannot fit the server."""
        budget = self.budget(instance)
        limits = server_limits(self.get_engine())
        breakdown = budget.breakdown()
        if limits is not None:
            breakdown["spare_connections"] = budget.check(*limits)
            breakdown["max_connections"] = limits[0]
        return breakdown


def max_concurrent_runs(instance: dg.DagsterInstance) -> int:
    """The instance's limit on runs in progress (``concurrency.runs.max_concurrent_runs``)."""
    queue = instance.get_concurrency_config().run_queue_config
    value = getattr(queue, "max_concurrent_runs", None)
    # -1 disables the limit: count the pools of one run per CPU, the most a machine can run.
    if isinstance(value, int) and value > 0:
        return value
    return os.cpu_count() or 1


class ContentGeneratorResource(dg.ConfigurableResource):
    """Which generator writes the content: the offline one (default) or an OpenAI-compatible API."""

    kind: str = Field(default="offline", description="offline or openai")
    base_url: str = Field(default="", description="OpenAI-compatible endpoint, e.g. .../v1")
    model: str = Field(default="", description="Model name sent with every request.")
    api_key: str = Field(default="", description="From ROADMAP_LLM_API_KEY; never logged.")
    timeout_s: float = Field(default=60.0, gt=0)
    # No pydantic bounds on fields that may come from EnvVar: they are checked where used.
    max_concurrency: int = Field(
        default=8, description="Concepts generated at once in a step, and LLM requests (>= 1)."
    )
    max_retries: int = Field(default=3, ge=0, description="HTTP-level retries per request.")
    faults: str = Field(default="", description="A FaultPlan as JSON (fault injection; off).")

    def fault_plan(self) -> FaultPlan | None:
        return FaultPlan.model_validate_json(self.faults) if self.faults.strip() else None

    def build(self, plan: FaultPlan | None = None) -> ContentGenerator:
        """The generator, wrapped by ``plan`` (pass the same plan to the workflow so that
        generator faults and kill points share their counts)."""
        generator: ContentGenerator
        if self.kind not in ("offline", "openai"):
            raise dg.Failure(
                f"unknown generator kind {self.kind!r}: use offline or openai",
                allow_retries=False,
            )
        if self.kind == "openai":
            if not self.base_url or not self.model:
                raise dg.Failure(
                    "the openai generator needs base_url and model (resource config)",
                    allow_retries=False,
                )
            generator = OpenAICompatibleGenerator(
                base_url=self.base_url,
                model=self.model,
                api_key=self.api_key,
                timeout_s=self.timeout_s,
                max_concurrency=self.max_concurrency,
                max_retries=self.max_retries,
            )
        else:
            generator = OfflineGenerator()
        return FaultInjectingGenerator(generator, plan) if plan else generator


class CheckpointerResource(dg.ConfigurableResource):
    """Where LangGraph keeps each concept's checkpoints (default: beside our database)."""

    url: str = Field(default="", description="Empty: derived from the database URL.")

    @contextmanager
    def open(self, database: RoadmapDatabase) -> Iterator[Any]:
        url = self.url or default_checkpoint_url(database.url)
        with open_checkpointer(url, pool_size=database.checkpointer_pool_size) as saver:
            yield saver

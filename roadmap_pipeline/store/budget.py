"""The connection budget: every pool of every process the instance may run, against the server.

The incident started with a pool that ran dry. Here pools are bounded per process, and the sum
over the processes that can exist at once must fit the server's ``max_connections`` (less the
connections reserved for superusers) with room to spare, or the pipeline refuses to start.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine, text

from roadmap_pipeline.store.database import connect, is_postgres

# Dagster's Postgres storage opens connections per operation (NullPool): a run process holds one
# or two at a time, the daemon one per active daemon thread, the webserver a few.
DAGSTER_STORAGE_PER_RUN = 2
DAGSTER_STORAGE_SERVICES = 12  # daemon threads + webserver + code server
HEADROOM_FRACTION = 0.10


class ConnectionBudgetExceeded(RuntimeError):
    """The configured pools cannot all be open at once on this server."""


@dataclass(frozen=True)
class ConnectionBudget:
    max_concurrent_runs: int
    database_pool: int  # our engine, per process
    checkpointer_pool: int  # LangGraph's own pool, per run process
    lock_connections: int = 1  # the per-process advisory-lock holder
    code_servers: int = 2  # processes that evaluate sensors and checks outside runs

    @property
    def per_run(self) -> int:
        return self.database_pool + self.checkpointer_pool + self.lock_connections

    @property
    def ours(self) -> int:
        return self.max_concurrent_runs * self.per_run + self.code_servers * self.database_pool

    @property
    def dagster(self) -> int:
        return self.max_concurrent_runs * DAGSTER_STORAGE_PER_RUN + DAGSTER_STORAGE_SERVICES

    @property
    def total(self) -> int:
        return self.ours + self.dagster

    def breakdown(self) -> dict[str, int]:
        return {
            "max_concurrent_runs": self.max_concurrent_runs,
            "per_run_process": self.per_run,
            "roadmap_pipeline_total": self.ours,
            "dagster_storage_total": self.dagster,
            "total": self.total,
        }

    def check(self, max_connections: int, reserved: int) -> int:
        """Return the spare connections, or raise with the arithmetic spelled out."""
        usable = max_connections - reserved
        limit = int(usable * (1 - HEADROOM_FRACTION))
        if self.total > limit:
            raise ConnectionBudgetExceeded(
                f"connection budget exceeded: {self.max_concurrent_runs} concurrent runs x "
                f"{self.per_run} connections (pool {self.database_pool} + checkpointer "
                f"{self.checkpointer_pool} + lock {self.lock_connections}) + "
                f"{self.code_servers} code servers x {self.database_pool} + Dagster storage "
                f"{self.dagster} = {self.total}, but the server allows {max_connections} - "
                f"{reserved} reserved, less {int(HEADROOM_FRACTION * 100)}% headroom = {limit}. "
                "Lower max_concurrent_runs or the pool sizes, or raise max_connections."
            )
        return limit - self.total


def server_limits(engine: Engine) -> tuple[int, int] | None:
    """(max_connections, superuser_reserved_connections) of a PostgreSQL server; None on SQLite."""
    if not is_postgres(engine):
        return None
    with connect(engine) as conn:
        max_connections = int(conn.execute(text("SHOW max_connections")).scalar_one())
        reserved = int(conn.execute(text("SHOW superuser_reserved_connections")).scalar_one())
    return max_connections, reserved

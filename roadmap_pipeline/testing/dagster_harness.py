"""A real Dagster deployment for tests and benchmarks: daemon (and webserver) as subprocesses,
Postgres-backed instance storage in a schema of its own, our code location loaded from a module.

Used by the daemon tests, the browser test and the end-to-end benchmark, so that what they
measure and assert is what `dagster dev` would do, not an in-process shortcut.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import yaml
from sqlalchemy.engine import make_url

from roadmap_pipeline import environment as env

T = TypeVar("T")
# The code location a deployment loads (its name in GraphQL selectors).
LOCATION_NAME = "roadmap_pipeline"


def instance_config(
    postgres_url: str, max_concurrent_runs: int, run_retries: int = 2
) -> dict[str, Any]:
    """Like the production dagster.yaml, with short polling intervals for tests."""
    return {
        "storage": {"postgres": {"postgres_url": postgres_url}},
        "run_coordinator": {
            "module": "dagster.core.run_coordinator",
            "class": "QueuedRunCoordinator",
            "config": {"dequeue_interval_seconds": 1},
        },
        "concurrency": {
            "runs": {
                "max_concurrent_runs": max_concurrent_runs,
                "tag_concurrency_limits": [
                    {
                        "key": "roadmap_pipeline/roadmap",
                        "value": {"applyLimitPerUniqueValue": True},
                        "limit": 1,
                    }
                ],
            },
            "pools": {"default_limit": 4},
        },
        "run_retries": {
            "enabled": run_retries > 0,
            "max_retries": run_retries,
            "retry_on_asset_or_op_failure": False,
        },
        "run_monitoring": {
            "enabled": True,
            "start_timeout_seconds": 120,
            "poll_interval_seconds": 5,
            # As in dagster.yaml: free the pool slots a crashed run worker could not release.
            "free_slots_after_run_end_seconds": 5,
        },
        "telemetry": {"enabled": False},
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(
    predicate: Callable[[], T], timeout_s: float, every_s: float = 1.0, what: str = ""
) -> T:
    """Poll until ``predicate`` returns something truthy; TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f}s waiting for {what or predicate}")
        time.sleep(every_s)


@dataclass
class Deployment:
    home: Path
    env: dict[str, str]
    schema: str
    admin_url: str
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    webserver_port: int | None = None

    @property
    def instance(self) -> Any:
        import dagster as dg

        if not hasattr(self, "_instance"):
            self._instance = dg.DagsterInstance.from_config(str(self.home))
        return self._instance

    @property
    def graphql_url(self) -> str:
        return f"http://127.0.0.1:{self.webserver_port}/graphql"

    def logs(self, name: str) -> str:
        path = self.home / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""


def create_database(admin_url: str, name: str) -> None:
    """Create a database when it is missing. Two test workers may both find it missing: the
    loser's CREATE fails on the catalog's unique name, which means it exists now."""
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            return
        with suppress(psycopg.errors.DuplicateDatabase, psycopg.errors.UniqueViolation):
            conn.execute(f'CREATE DATABASE "{name}"')


def _pg_database(admin_url: str, name: str) -> str:
    create_database(admin_url, name)
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


@contextmanager
def dagster_deployment(
    *,
    database_url: str,
    admin_url: str = "postgresql://postgres@127.0.0.1:5432/postgres",
    storage_database: str = "roadmap_pipeline_dagster_test",
    module: str = "roadmap_pipeline.definitions",
    extra_env: Mapping[str, str] | None = None,
    webserver: bool = False,
    daemon: bool = True,
    max_concurrent_runs: int = 4,
    run_retries: int = 2,
) -> Iterator[Deployment]:
    """Start a daemon (and optionally a webserver on 127.0.0.1) against fresh Postgres storage."""
    storage_base = _pg_database(admin_url, storage_database)
    schema = f"dg_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(storage_base, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    postgres_url = (
        make_url(storage_base)
        .set(drivername="postgresql+psycopg2")
        .update_query_dict({"options": f"-csearch_path={schema}"})
        .render_as_string(hide_password=False)
    )
    home = Path(tempfile.mkdtemp(prefix="dagster-home-"))
    (home / "dagster.yaml").write_text(
        yaml.safe_dump(instance_config(postgres_url, max_concurrent_runs, run_retries))
    )
    (home / "workspace.yaml").write_text(
        yaml.safe_dump(
            {
                "load_from": [
                    {"python_module": {"module_name": module, "location_name": LOCATION_NAME}}
                ]
            }
        )
    )
    process_env = dict(os.environ)
    env.with_defaults(process_env, home)
    process_env.update({env.DATABASE_URL: database_url, "DAGSTER_HOME": str(home)})
    process_env.update(extra_env or {})
    deployment = Deployment(home, process_env, schema, storage_base)
    bindir = Path(sys.executable).parent
    try:
        if daemon:
            deployment.processes.append(
                _start(
                    [str(bindir / "dagster-daemon"), "run", "-w", "workspace.yaml"],
                    home,
                    process_env,
                    "daemon",
                )
            )
        if webserver:
            deployment.webserver_port = free_port()
            deployment.processes.append(
                _start(
                    [
                        str(bindir / "dagster-webserver"),
                        "-h",
                        "127.0.0.1",
                        "-p",
                        str(deployment.webserver_port),
                        "-w",
                        "workspace.yaml",
                    ],
                    home,
                    process_env,
                    "webserver",
                )
            )
            wait_for(
                lambda: _listening(deployment.webserver_port), 120, 1, "the webserver to listen"
            )
        yield deployment
    finally:
        for process in deployment.processes:
            _signal_group(process, signal.SIGTERM)
        for process in deployment.processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                _signal_group(process, signal.SIGKILL)
        for process in deployment.processes:
            # The daemon's and webserver's code servers and run workers are in their session:
            # none may outlive the deployment (they hold connections and memory).
            _signal_group(process, signal.SIGKILL)
        if hasattr(deployment, "_instance"):
            deployment._instance.dispose()
        with psycopg.connect(storage_base, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
        shutil.rmtree(home, ignore_errors=True)


def _signal_group(process: subprocess.Popen[bytes], sig: int) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)


def _start(
    command: list[str], cwd: Path, process_env: dict[str, str], name: str
) -> subprocess.Popen[bytes]:
    log = (cwd / f"{name}.log").open("wb")
    # The command is our own venv's dagster executable with fixed arguments; a session of its
    # own puts it and everything it starts in one process group.
    return subprocess.Popen(  # noqa: S603
        command,
        cwd=cwd,
        env=process_env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _listening(port: int | None) -> bool:
    if port is None:
        return False
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0

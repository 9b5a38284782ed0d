"""Shared fixtures: a fresh database per test on SQLite and on PostgreSQL.

PostgreSQL tests use one schema per test in the ``roadmap_pipeline_test`` database (created when
missing). When the server is not reachable they fail in CI (``CI=true``) and are skipped, with
the reason, elsewhere.

``make test`` runs the suite on two pytest-xdist workers (``--dist loadgroup``): the tests that
start Dagster's daemon or a browser share one group, so that one deployment runs at a time and
their module fixtures are built once, while the in-process tests fill the other core. Tests
marked ``exclusive`` (restarting the PostgreSQL server) run afterwards, alone.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from sqlalchemy import Engine
from sqlalchemy.engine import make_url

from roadmap_pipeline.orchestration.resources import dispose_engines
from roadmap_pipeline.store.database import create_store_engine
from roadmap_pipeline.store.migrate import init_db
from roadmap_pipeline.testing.dagster_harness import create_database

PG_ADMIN_URL = os.environ.get(
    "ROADMAP_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres"
)
PG_TEST_DB = os.environ.get("ROADMAP_TEST_PG_DB", "roadmap_pipeline_test")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """xdist groups: daemon and browser tests together on one worker (the daemon runs are what
    cost time, and two deployments at once would fight over two cores); a module whose tests
    share a module fixture (the demo) stays on one worker so that the fixture is built once."""
    for item in items:
        if item.get_closest_marker("daemon") or item.get_closest_marker("browser"):
            item.add_marker(pytest.mark.xdist_group("daemon"))
        elif "demo" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group(item.module.__name__ if item.module else ""))


@pytest.fixture(scope="session", autouse=True)
def _xdist_groups_applied(request: pytest.FixtureRequest) -> None:
    """Fail loudly, not slowly, when pytest-xdist could not apply the groups above (it rewrites
    node ids, which pytest 9.2 no longer honours): two deployments would then run at once."""
    if not getattr(request.config.option, "loadgroup", False):
        return
    ungrouped = [
        item.nodeid
        for item in request.session.items
        if item.get_closest_marker("xdist_group") and "@" not in item.nodeid
    ]
    if ungrouped:
        pytest.fail(
            f"pytest-xdist did not apply its groups (e.g. {ungrouped[0]}): this pytest and "
            "pytest-xdist do not work together; install the versions pyproject.toml pins"
        )


def _pg_problem() -> str | None:
    try:
        create_database(PG_ADMIN_URL, PG_TEST_DB)
    except psycopg.Error as exc:
        where = make_url(PG_ADMIN_URL).render_as_string(hide_password=True)
        return f"PostgreSQL at {where} is not usable: {exc}"
    return None


@pytest.fixture(autouse=True)
def _close_resource_pools() -> Iterator[None]:
    """Resources keep one engine per process and URL, as a long-lived code server should; every
    test has URLs of its own, so the pools it opened are closed after it (else they pile up
    until the server runs out of connections)."""
    yield
    dispose_engines()


@pytest.fixture(scope="session")
def pg_database_url() -> str:
    """URL of the test database (the server is required in CI)."""
    problem = _pg_problem()
    if problem:
        if IN_CI:
            pytest.fail(problem + " (CI=true: Postgres tests must run)")
        pytest.skip(problem)
    return str(make_url(PG_ADMIN_URL).set(database=PG_TEST_DB, drivername="postgresql+psycopg"))


@pytest.fixture
def pg_schema_url(pg_database_url: str) -> Iterator[str]:
    """A URL whose connections see only a fresh, empty schema (dropped afterwards)."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    base = make_url(pg_database_url)
    plain = base.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield base.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(
            hide_password=False
        )
    finally:
        with psycopg.connect(plain, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path) -> str:
    """An empty database, once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'roadmaps.db'}"
    return request.getfixturevalue("pg_schema_url")


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """A database created by roadmap_pipeline (every constraint), on SQLite and PostgreSQL."""
    engine = create_store_engine(database_url)
    init_db(engine)
    yield engine
    engine.dispose()

"""A service database (json columns, no unique constraints, naive timestamps, ids with ':', native
uuid ids on PostgreSQL) is adopted as it is; only ``upgrade-db`` changes it, and not while
duplicates exist."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, text

from roadmap_pipeline.cli import main
from roadmap_pipeline.domain.statuses import ItemType
from roadmap_pipeline.generation.generator import ConceptContext, generate_item
from roadmap_pipeline.generation.offline import OfflineGenerator
from roadmap_pipeline.samples import IncidentState
from roadmap_pipeline.store.activity import NothingRunning
from roadmap_pipeline.store.database import connect
from roadmap_pipeline.store.invariants import Scope, find_violations
from roadmap_pipeline.store.migrate import DatabaseState, database_state, init_db
from roadmap_pipeline.store.schema import OWN_TABLE_NAMES, SERVICE_TABLE_NAMES
from roadmap_pipeline.store.sync import sync_roadmaps
from roadmap_pipeline.store.writers import require_roadmap, save_item
from roadmap_pipeline_tests.store.helpers import execute, scalar, snapshot

CONTENT_TABLES = ("tutorial_metadata", "resource_recommendation_metadata", "quiz_metadata")


def schema_of(engine: Engine) -> dict[str, list[Any]]:
    """Columns, types, nullability, defaults, indexes and constraints of the service tables."""
    names = list(SERVICE_TABLE_NAMES)
    with connect(engine) as conn:
        if engine.dialect.name == "postgresql":
            queries = {
                "columns": "SELECT table_name, column_name, data_type, is_nullable, "
                "column_default FROM information_schema.columns WHERE table_schema = "
                "current_schema() AND table_name IN :names",
                "indexes": "SELECT tablename, indexname, indexdef FROM pg_indexes "
                "WHERE schemaname = current_schema() AND tablename IN :names",
                "constraints": "SELECT table_name, constraint_name, constraint_type FROM "
                "information_schema.table_constraints WHERE table_schema = current_schema() "
                "AND table_name IN :names",
            }
        else:
            queries = {
                "objects": "SELECT type, name, tbl_name, sql FROM sqlite_master "
                "WHERE tbl_name IN :names",
            }
        from sqlalchemy import bindparam

        return {
            what: sorted(
                tuple(row)
                for row in conn.execute(
                    text(sql).bindparams(bindparam("names", expanding=True)), {"names": names}
                )
            )
            for what, sql in queries.items()
        }


def column_type(engine: Engine, table: str, column: str) -> str:
    return str(
        scalar(
            engine,
            "SELECT data_type FROM information_schema.columns WHERE table_schema = "
            "current_schema() AND table_name = :t AND column_name = :c",
            t=table,
            c=column,
        )
    )


def run(url: str, *args: str) -> Any:
    return CliRunner().invoke(main, list(args), env={"ROADMAP_DATABASE_URL": url, "COLUMNS": "250"})


def plant_duplicate_quiz(engine: Engine, concept_id: str) -> str:
    new_id = str(uuid.uuid4())
    id_value = "CAST(:id AS uuid)" if engine.dialect.name == "postgresql" else ":id"
    execute(
        engine,
        "INSERT INTO quiz_metadata (quiz_id, roadmap_id, concept_id, questions, total_questions, "
        "easy_count, medium_count, hard_count, generated_at) "
        f"SELECT {id_value}, roadmap_id, concept_id, questions, total_questions, easy_count, "
        "medium_count, hard_count, generated_at FROM quiz_metadata WHERE concept_id = :c",
        id=new_id,
        c=concept_id,
    )
    return new_id


def test_a_service_database_is_adopted_verified_repaired_and_upgraded_on_request(
    service_engine: Engine, service_incident: IncidentState, database_url: str
) -> None:
    engine = service_engine
    before = schema_of(engine)
    content_rows = snapshot(engine, CONTENT_TABLES)
    if engine.dialect.name == "postgresql":
        assert column_type(engine, "quiz_metadata", "quiz_id") == "uuid"
        assert column_type(engine, "roadmap_metadata", "framework_data") == "json"
    assert database_state(engine)[0] is DatabaseState.ADOPTABLE

    adopted = run(database_url, "init-db")

    assert adopted.exit_code == 0, adopted.output
    assert "adopted the service database" in adopted.output
    assert schema_of(engine) == before
    with connect(engine) as conn:
        tables = set(conn.dialect.get_table_names(conn))
    assert set(OWN_TABLE_NAMES) <= tables
    assert run(database_url, "init-db").exit_code == 0
    assert schema_of(engine) == before

    verified = run(database_url, "verify", "--json")
    assert verified.exit_code == 1
    found = json.loads(verified.stdout)
    assert sorted({v["rule"] for v in found}) == ["item_not_marked", "zombie_status"]
    assert sum(v["rule"] == "item_not_marked" for v in found) == 81

    repaired = run(database_url, "repair")
    assert repaired.exit_code == 0, repaired.output
    assert snapshot(engine, CONTENT_TABLES) == content_rows
    assert run(database_url, "verify").exit_code == 0
    assert schema_of(engine) == before

    duplicate = plant_duplicate_quiz(engine, service_incident.completed_concepts[0])
    refused = run(database_url, "upgrade-db")
    assert refused.exit_code == 2
    assert "quiz row" in refused.stderr
    assert service_incident.completed_concepts[0] in refused.stderr
    assert schema_of(engine) == before
    assert database_state(engine)[0] is DatabaseState.ADOPTED

    execute(engine, "DELETE FROM quiz_metadata WHERE CAST(quiz_id AS TEXT) = :id", id=duplicate)
    upgraded = run(database_url, "upgrade-db")

    assert upgraded.exit_code == 0, upgraded.output
    assert database_state(engine)[0] is DatabaseState.MANAGED
    indexes = {row[1] for row in schema_of(engine).get("indexes", [])} | {
        row[1] for row in schema_of(engine).get("objects", []) if row[0] == "index"
    }
    assert {
        "uq_tutorial_metadata_latest",
        "uq_tutorial_metadata_roadmap_id_concept_id_content_version",
        "uq_resource_recommendation_metadata_roadmap_id_concept_id",
        "uq_quiz_metadata_roadmap_id_concept_id",
    } <= indexes
    if engine.dialect.name == "postgresql":
        for table, column in (
            ("roadmap_metadata", "framework_data"),
            ("quiz_metadata", "questions"),
            ("resource_recommendation_metadata", "resources"),
        ):
            assert column_type(engine, table, column) == "jsonb"
        assert column_type(engine, "quiz_metadata", "quiz_id") == "uuid"  # ids stay as they are
    assert snapshot(engine, CONTENT_TABLES) == content_rows
    assert run(database_url, "verify").exit_code == 0


def test_a_partial_service_database_is_refused(service_engine: Engine, database_url: str) -> None:
    execute(service_engine, "DROP TABLE quiz_metadata")
    before = schema_of(service_engine)

    result = run(database_url, "init-db")

    assert result.exit_code == 2
    assert "but not quiz_metadata" in result.stderr
    assert schema_of(service_engine) == before


@pytest.mark.parametrize("command", ["verify", "repair"])
def test_verify_and_repair_work_on_a_service_database_before_adoption(
    service_engine: Engine, service_incident: IncidentState, database_url: str, command: str
) -> None:
    before = schema_of(service_engine)

    result = run(database_url, command)

    assert result.exit_code == (1 if command == "verify" else 0), result.output
    assert schema_of(service_engine) == before
    assert database_state(service_engine)[0] is DatabaseState.ADOPTABLE


def test_an_adopted_service_database_takes_new_rows_under_its_uuid_ids(
    service_engine: Engine, service_incident: IncidentState
) -> None:
    """The writers insert into the service's tables as they are: on PostgreSQL their ids are
    native ``uuid`` columns, and new rows, replays and new versions work there too."""
    engine = service_engine
    init_db(engine)
    roadmap_id = service_incident.roadmap_id
    missing = service_incident.missing_concepts[0]
    completed = service_incident.completed_concepts[0]
    with connect(engine) as conn:
        framework = require_roadmap(conn, roadmap_id)
    generator = OfflineGenerator()

    def generate(concept_id: str, item: ItemType) -> Any:
        return generate_item(generator, item, ConceptContext.from_framework(framework, concept_id))

    written = {
        item: save_item(engine, roadmap_id, missing, generate(missing, item), f"adopted-{item}")
        for item in ItemType
    }
    replayed = save_item(
        engine, roadmap_id, missing, generate(missing, ItemType.QUIZ), f"adopted-{ItemType.QUIZ}"
    )
    version_2 = save_item(
        engine, roadmap_id, completed, generate(completed, ItemType.TUTORIAL), "adopted-v2"
    )

    assert not any(w.replayed for w in written.values())
    assert replayed.replayed
    assert replayed.row_id == written[ItemType.QUIZ].row_id
    assert version_2.content_version == 2
    for table, id_column, item in (
        ("tutorial_metadata", "tutorial_id", ItemType.TUTORIAL),
        ("resource_recommendation_metadata", "id", ItemType.RESOURCES),
        ("quiz_metadata", "quiz_id", ItemType.QUIZ),
    ):
        ids = scalar(
            engine,
            f"SELECT COUNT(*) FROM {table} WHERE CAST({id_column} AS TEXT) = :id",
            id=written[item].row_id,
        )
        assert ids == 1
        if engine.dialect.name == "postgresql":
            assert column_type(engine, table, id_column) == "uuid"
    latest = scalar(
        engine,
        "SELECT COUNT(*) FROM tutorial_metadata WHERE concept_id = :c AND is_latest",
        c=completed,
    )
    assert latest == 1
    sync_roadmaps(engine, [roadmap_id], NothingRunning())
    with connect(engine) as conn:
        found = find_violations(conn, Scope.concept(roadmap_id, missing), NothingRunning())
    assert found == []

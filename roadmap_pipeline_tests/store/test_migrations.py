"""The Alembic head matches the ORM metadata, on SQLite and PostgreSQL."""

from __future__ import annotations

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, text

from roadmap_pipeline.store.database import connect, transaction
from roadmap_pipeline.store.migrate import HEAD, DatabaseState, _config, database_state, init_db
from roadmap_pipeline.store.schema import Base


def differences(engine: Engine) -> list[object]:
    with connect(engine) as conn:
        context = MigrationContext.configure(
            conn, opts={"compare_type": True, "compare_server_default": True}
        )
        return list(compare_metadata(context, Base.metadata))


def test_the_migrated_schema_is_exactly_the_orm_metadata(engine: Engine) -> None:
    assert database_state(engine) == (DatabaseState.MANAGED, HEAD)
    assert differences(engine) == []


def test_the_comparison_sees_a_missing_index(engine: Engine) -> None:
    with transaction(engine) as conn:
        conn.execute(text("DROP INDEX uq_quiz_metadata_roadmap_id_concept_id"))

    found = differences(engine)

    assert [(d[0], d[1].name) for d in found] == [  # type: ignore[index, attr-defined]
        ("add_index", "uq_quiz_metadata_roadmap_id_concept_id")
    ]


def test_a_managed_database_behind_head_is_brought_up_to_date_by_init_db(engine: Engine) -> None:
    with transaction(engine) as conn:
        command.downgrade(_config(conn), "0003")
    assert database_state(engine)[0] is DatabaseState.OUTDATED

    report = init_db(engine)

    assert (report.before, report.after) == (DatabaseState.OUTDATED, DatabaseState.MANAGED)
    assert differences(engine) == []

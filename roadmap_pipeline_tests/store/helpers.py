"""Builders and probes shared by the store tests (plain functions; fixtures are in conftest)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from sqlalchemy import Engine, Text, cast, select, text, update

from roadmap_pipeline.domain.statuses import TaskStatus
from roadmap_pipeline.samples import synthetic_framework, write_concept_rows
from roadmap_pipeline.store.activity import NothingRunning, WorkInProgress
from roadmap_pipeline.store.database import connect, transaction
from roadmap_pipeline.store.invariants import Scope, Violation, find_violations
from roadmap_pipeline.store.schema import SERVICE_TABLE_NAMES, Base, RoadmapMetadata, RoadmapTask
from roadmap_pipeline.store.sync import sync_roadmaps
from roadmap_pipeline.store.writers import creation_task_id, submit_roadmap

CONTENT_TABLES = ("tutorial_metadata", "resource_recommendation_metadata", "quiz_metadata")
Key = tuple[str, str | None, str | None, str]


def complete_roadmap(
    engine: Engine, roadmap_id: str, concepts: int = 4, *, task: bool = True
) -> dict[str, Any]:
    """A roadmap generated to the end and synced: consistent, its task ``completed``.

    ``task=False`` removes the creation task, so that a planted item-level violation is the only
    finding (no task roll-up disagrees with it).
    """
    document = synthetic_framework(roadmap_id, concepts)
    submit_roadmap(engine, document)
    task_id = creation_task_id(roadmap_id)
    with transaction(engine) as conn:
        conn.execute(
            update(RoadmapTask)
            .where(RoadmapTask.task_id == task_id)
            .values(status=TaskStatus.PROCESSING.value)
        )
    write_concept_rows(engine, document, concept_ids(document), attempt="test")
    sync_roadmaps(engine, [roadmap_id], NothingRunning())
    if not task:
        with transaction(engine) as conn:
            conn.execute(text("DELETE FROM roadmap_tasks WHERE task_id = :t"), {"t": task_id})
    return read_document(engine, roadmap_id)


def concept_ids(document: dict[str, Any]) -> list[str]:
    return [
        c["concept_id"] for s in document["stages"] for m in s["modules"] for c in m["concepts"]
    ]


def node(document: dict[str, Any], concept_id: str) -> dict[str, Any]:
    for stage in document["stages"]:
        for module in stage["modules"]:
            for concept in module["concepts"]:
                if concept["concept_id"] == concept_id:
                    return concept  # type: ignore[no-any-return]
    raise KeyError(concept_id)


def read_document(engine: Engine, roadmap_id: str) -> dict[str, Any]:
    with connect(engine) as conn:
        raw = conn.execute(
            text("SELECT framework_data FROM roadmap_metadata WHERE roadmap_id = :r"),
            {"r": roadmap_id},
        ).scalar_one()
    return json.loads(raw) if isinstance(raw, str) else raw


def write_document(engine: Engine, roadmap_id: str, document: Any) -> None:
    with transaction(engine) as conn:
        conn.execute(
            update(RoadmapMetadata)
            .where(RoadmapMetadata.roadmap_id == roadmap_id)
            .values(framework_data=document)
        )


def edit_document(
    engine: Engine, roadmap_id: str, change: Callable[[dict[str, Any]], None]
) -> dict[str, Any]:
    document = read_document(engine, roadmap_id)
    change(document)
    write_document(engine, roadmap_id, document)
    return document


def execute(engine: Engine, sql: str, **params: Any) -> None:
    with transaction(engine) as conn:
        conn.execute(text(sql), params)


def scalar(engine: Engine, sql: str, **params: Any) -> Any:
    with connect(engine) as conn:
        return conn.execute(text(sql), params).scalar()


def task_row(engine: Engine, task_id: str) -> Any:
    """The task's row; its id compared as text (an adopted database may keep it as uuid)."""
    with connect(engine) as conn:
        return conn.execute(
            select(RoadmapTask).where(cast(RoadmapTask.task_id, Text) == task_id)
        ).one()


def verify(
    engine: Engine, scope: Scope | None = None, activity: WorkInProgress | None = None
) -> list[Violation]:
    with connect(engine) as conn:
        return find_violations(conn, scope or Scope.fleet(), activity or NothingRunning())


def keys(violations: Iterable[Violation]) -> set[Key]:
    """What a violation is about, without its wording: (roadmap, concept, item, rule)."""
    return {(v.roadmap_id, v.concept_id, v.item, v.rule.value) for v in violations}


def snapshot(engine: Engine, tables: Iterable[str] = SERVICE_TABLE_NAMES) -> dict[str, list[Any]]:
    """Every row of ``tables``, as comparable tuples in a stable order."""
    result: dict[str, list[Any]] = {}
    with connect(engine) as conn:
        for name in tables:
            rows = conn.execute(text(f"SELECT * FROM {name}")).all()
            result[name] = sorted((tuple(_plain(v) for v in row) for row in rows), key=repr)
    return result


def _plain(value: Any) -> Any:
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except ValueError:
            return value
        return json.dumps(parsed, sort_keys=True) if isinstance(parsed, dict | list) else value
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True)
    return str(value) if value is not None and not isinstance(value, int | float) else value


def copy_service_rows(source: Engine, target: Engine) -> None:
    """Copy the five service tables as plain SQL inserts (ids as text, documents as JSON text),
    the way the service's own code would have written them into a database of its shape."""
    with connect(source) as src, transaction(target) as dst:
        for name in SERVICE_TABLE_NAMES:
            table = Base.metadata.tables[name]
            columns = [c.name for c in table.columns]
            rows = src.execute(select(table)).mappings().all()
            if not rows:
                continue
            insert = text(
                f"INSERT INTO {name} ({', '.join(columns)}) "
                f"VALUES ({', '.join(':' + c for c in columns)})"
            )
            dst.execute(
                insert,
                [
                    {
                        c: json.dumps(r[c]) if isinstance(r[c], dict | list) else r[c]
                        for c in columns
                    }
                    for r in rows
                ],
            )

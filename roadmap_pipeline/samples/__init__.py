"""Bundled sample roadmaps, a synthetic roadmap builder, and the incident's state rebuilt.

The incident (DOMAIN.md): task 49961d40-... of roadmap agent-performance-tuning-x5y9z2w8 stuck in
``processing`` at ``content_generation``; content rows for 27 of its 30 concepts committed, but
framework_data still ``pending`` everywhere, and nothing running.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, insert, update

from roadmap_pipeline.domain.framework import load_framework, validate_submission
from roadmap_pipeline.domain.statuses import ItemType, TaskStatus
from roadmap_pipeline.generation.generator import ConceptContext, generate_item
from roadmap_pipeline.generation.offline import OfflineGenerator
from roadmap_pipeline.store.activity import NothingRunning
from roadmap_pipeline.store.database import transaction
from roadmap_pipeline.store.schema import RoadmapMetadata, RoadmapTask, utcnow
from roadmap_pipeline.store.sync import sync_roadmaps
from roadmap_pipeline.store.writers import (
    creation_task_id,
    roadmap_row,
    save_item,
    submit_frameworks,
)

INCIDENT_ROADMAP = "agent-performance-tuning-x5y9z2w8"
INCIDENT_TASK = "49961d40-0cac-4255-abba-adad0b901056"
INCIDENT_FAILED = 3


def sample_paths() -> list[Path]:
    folder = resources.files(__package__)
    return sorted(Path(str(p)) for p in folder.iterdir() if p.name.endswith(".json"))


def load_sample(roadmap_id: str) -> dict[str, Any]:
    path = resources.files(__package__) / f"{roadmap_id}.json"
    document: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return document


def synthetic_framework(
    roadmap_id: str,
    concepts: int = 30,
    *,
    prefixed: bool = True,
    modules_per_stage: int = 2,
    concepts_per_module: int = 5,
) -> dict[str, Any]:
    """A roadmap of ``concepts`` concepts shaped like the service's (ids ``<rid>:c-s-m-n``)."""
    stages: list[dict[str, Any]] = []
    previous: str | None = None
    for n in range(concepts):
        s, rest = divmod(n, modules_per_stage * concepts_per_module)
        m, c = divmod(rest, concepts_per_module)
        if m == 0 and c == 0:
            stages.append(
                {
                    "stage_id": f"stage-{s + 1}",
                    "name": f"Stage {s + 1}",
                    "order": s + 1,
                    "modules": [],
                }
            )
        stage = stages[-1]
        if c == 0:
            stage["modules"].append(
                {
                    "module_id": f"module-{s + 1}-{m + 1}",
                    "name": f"Module {s + 1}.{m + 1}",
                    "concepts": [],
                }
            )
        short = f"c-{s + 1}-{m + 1}-{c + 1}" if prefixed else f"c{n + 1}"
        concept_id = f"{roadmap_id}:{short}" if prefixed else short
        stage["modules"][-1]["concepts"].append(
            {
                "concept_id": concept_id,
                "name": f"Concept {n + 1} of {roadmap_id}",
                "description": f"Synthetic concept {n + 1}.",
                "estimated_hours": 2.0,
                "prerequisites": [previous] if previous else [],
                "difficulty": ("beginner", "intermediate", "advanced")[n % 3],
                "keywords": [f"topic-{n % 7}", f"skill-{n % 5}"],
                "content_status": "pending",
                "resources_status": "pending",
                "quiz_status": "pending",
                "x_service_note": {"kept": True},
            }
        )
        previous = concept_id
    return {
        "roadmap_id": roadmap_id,
        "title": f"Synthetic roadmap {roadmap_id}",
        "total_estimated_hours": 2.0 * concepts,
        "recommended_completion_weeks": max(1, concepts // 5),
        "stages": stages,
    }


def generation_id_for(roadmap_id: str, concept_id: str, item: ItemType, attempt: str) -> str:
    return f"{attempt}:{roadmap_id}/{concept_id}:{item.value}"


def write_concept_rows(
    engine: Engine, document: dict[str, Any], concept_ids: list[str], attempt: str = "sample"
) -> None:
    """Generate (offline) and store all three items for each concept, as a finished run would."""
    framework = load_framework(document)
    generator = OfflineGenerator()
    for concept_id in concept_ids:
        context = ConceptContext.from_framework(framework, concept_id)
        for item in ItemType:
            content = generate_item(generator, item, context)
            gid = generation_id_for(framework.roadmap_id, concept_id, item, attempt)
            save_item(engine, framework.roadmap_id, concept_id, content, gid, generator.name)


@dataclass(frozen=True)
class IncidentState:
    roadmap_id: str
    task_id: str
    completed_concepts: list[str]
    missing_concepts: list[str]


def build_incident(
    engine: Engine,
    roadmap_id: str = INCIDENT_ROADMAP,
    task_id: str = INCIDENT_TASK,
    document: dict[str, Any] | None = None,
    failed: int = INCIDENT_FAILED,
) -> IncidentState:
    """Rebuild the incident: rows for all but ``failed`` concepts, framework_data all pending,
    the task ``processing`` at ``content_generation``, nothing running."""
    doc = copy.deepcopy(document if document is not None else load_sample(INCIDENT_ROADMAP))
    doc["roadmap_id"] = roadmap_id
    framework = validate_submission(doc)
    concept_ids = [c.concept_id for c in framework.concepts()]
    done, missing = (
        concept_ids[: len(concept_ids) - failed],
        concept_ids[len(concept_ids) - failed :],
    )
    now = utcnow()
    with transaction(engine) as conn:
        # Written as the service wrote them: its own task id, stuck where the incident left it.
        conn.execute(insert(RoadmapMetadata).values(roadmap_row(framework, "user-incident", now)))
        conn.execute(
            insert(RoadmapTask).values(
                task_id=task_id,
                user_id="user-incident",
                status=TaskStatus.PROCESSING.value,
                current_step="content_generation",
                user_request={"goal": framework.title},
                roadmap_id=roadmap_id,
                task_type="creation",
                created_at=now,
                updated_at=now,
            )
        )
    # The rows committed; framework_data and the task were never updated (separate commits).
    write_concept_rows(engine, doc, done, attempt="incident")
    return IncidentState(roadmap_id, task_id, done, missing)


FINISHED_SAMPLE = "sql-for-analysts-q4r7t1"
QUEUED_SAMPLE = "dagster-essentials-m2n8p5"


@dataclass(frozen=True)
class DemoRoadmap:
    roadmap_id: str
    concepts: int
    state: str


def load_demo(engine: Engine) -> list[DemoRoadmap]:
    """The bundled samples in three states: one finished and consistent, one submitted and
    waiting in the queue, and the incident's roadmap as the incident left it."""
    finished = validate_submission(load_sample(FINISHED_SAMPLE))
    queued = validate_submission(load_sample(QUEUED_SAMPLE))
    submit_frameworks(engine, [finished, queued], user_id="user-demo")
    concept_ids = [c.concept_id for c in finished.concepts()]
    with transaction(engine) as conn:
        conn.execute(
            update(RoadmapTask)
            .where(RoadmapTask.task_id == creation_task_id(finished.roadmap_id))
            .values(status=TaskStatus.PROCESSING.value, current_step="content_generation")
        )
    write_concept_rows(engine, finished.to_document(), concept_ids, attempt="demo")
    sync_roadmaps(engine, [finished.roadmap_id], NothingRunning())
    incident = build_incident(engine)
    return [
        DemoRoadmap(finished.roadmap_id, len(concept_ids), "generated and consistent"),
        DemoRoadmap(queued.roadmap_id, len(queued.concepts()), "submitted, waiting in the queue"),
        DemoRoadmap(
            incident.roadmap_id,
            len(incident.completed_concepts) + len(incident.missing_concepts),
            f"the incident: rows for {len(incident.completed_concepts)} concepts, "
            "framework_data all pending, task stuck in processing",
        ),
    ]

"""framework_data: the roadmap tree, with every concept's item statuses and references.

Every model keeps unknown keys (``extra="allow"``) and dumps only what was set, so a document the
service wrote survives load/dump untouched at every level. The incident's second bug was a model
that lacked ``tutorial_id`` and silently dropped it on re-save; this cannot happen here.

Loading is lenient (whatever the service already stored loads); :func:`validate_submission`
applies the rules for documents that we write, and names the place of every problem.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from roadmap_pipeline.domain.content import SUMMARY_MAX
from roadmap_pipeline.domain.keys import (
    UnsafeIdError,
    check_concept_id,
    check_roadmap_id,
    short_concept_id,
)
from roadmap_pipeline.domain.statuses import ITEM_FIELDS, ItemStatus, ItemType


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    def to_document(self) -> dict[str, Any]:
        """The JSON document: exactly the keys that were loaded or set, unknown ones included."""
        return self.model_dump(mode="json", exclude_unset=True)


class Concept(_Open):
    concept_id: str
    name: str
    description: str | None = None
    estimated_hours: float | None = None
    prerequisites: list[str] = Field(default_factory=list)
    difficulty: str | None = None
    keywords: list[str] = Field(default_factory=list)
    content_status: str = ItemStatus.PENDING
    tutorial_id: str | None = None
    content_ref: str | None = None
    content_version: str | None = None
    content_summary: str | None = None
    resources_status: str = ItemStatus.PENDING
    resources_id: str | None = None
    resources_count: int | None = None
    quiz_status: str = ItemStatus.PENDING
    quiz_id: str | None = None
    quiz_questions_count: int | None = None

    def item_status(self, item: ItemType) -> str:
        return str(getattr(self, ITEM_FIELDS[item].status))


class Module(_Open):
    module_id: str
    name: str
    description: str | None = None
    concepts: list[Concept] = Field(default_factory=list)


class Stage(_Open):
    stage_id: str
    name: str
    description: str | None = None
    order: int | None = None
    modules: list[Module] = Field(default_factory=list)


class Framework(_Open):
    roadmap_id: str
    title: str
    total_estimated_hours: float | None = None
    recommended_completion_weeks: int | None = None
    stages: list[Stage] = Field(default_factory=list)

    def located_concepts(self) -> Iterator[LocatedConcept]:
        for stage in self.stages:
            for module in stage.modules:
                for concept in module.concepts:
                    yield LocatedConcept(stage, module, concept)

    def concepts(self) -> list[Concept]:
        return [located.concept for located in self.located_concepts()]

    def concept(self, concept_id: str) -> LocatedConcept:
        for located in self.located_concepts():
            if located.concept.concept_id == concept_id:
                return located
        raise KeyError(f"roadmap {self.roadmap_id!r} has no concept {concept_id!r}")


@dataclass(frozen=True)
class LocatedConcept:
    stage: Stage
    module: Module
    concept: Concept

    @property
    def place(self) -> str:
        return (
            f"stage {self.stage.stage_id!r} > module {self.module.module_id!r} > "
            f"concept {self.concept.concept_id!r}"
        )


class FrameworkError(ValueError):
    """A framework document that cannot be accepted; ``problems`` name place and rule each."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid framework document:\n" + "\n".join(f"- {p}" for p in problems))


def load_framework(document: Any) -> Framework:
    """Load a stored document leniently; FrameworkError names the place of a structural problem."""
    if not isinstance(document, dict):
        raise FrameworkError([f"the document is a {type(document).__name__}, not a JSON object"])
    try:
        return Framework.model_validate(document)
    except ValidationError as exc:
        raise FrameworkError([_describe_error(document, err) for err in exc.errors()]) from None


def well_formed(document: Any) -> bool:
    """The tree's shape (stages > modules > concepts with string ids), read without validating
    anything else: cheap enough for every write."""
    if not isinstance(document, dict) or not isinstance(document.get("stages"), list):
        return False
    for stage in document["stages"]:
        if not isinstance(stage, dict) or not isinstance(stage.get("modules"), list):
            return False
        for module in stage["modules"]:
            if not isinstance(module, dict) or not isinstance(module.get("concepts"), list):
                return False
            for concept in module["concepts"]:
                if not isinstance(concept, dict) or not isinstance(concept.get("concept_id"), str):
                    return False
    return True


def concept_nodes(document: Any) -> Iterator[dict[str, Any]]:
    """The concept dicts of a well-formed document, in document order (mutable in place)."""
    if not well_formed(document):
        return
    for stage in document["stages"]:
        for module in stage["modules"]:
            yield from module["concepts"]


def validate_submission(document: Any) -> Framework:
    """The rules for a document we write: ids, uniqueness, references, statuses and limits."""
    framework = load_framework(document)
    problems: list[str] = []
    try:
        check_roadmap_id(framework.roadmap_id)
    except UnsafeIdError as exc:
        problems.append(str(exc))
    located = list(framework.located_concepts())
    if not located:
        problems.append(f"roadmap {framework.roadmap_id!r} has no concepts")
    shorts: Counter[str] = Counter()
    for item in located:
        try:
            shorts[check_concept_id(framework.roadmap_id, item.concept.concept_id)] += 1
        except UnsafeIdError as exc:
            problems.append(f"{item.place}: {exc}")
    for short, count in shorts.items():
        if count > 1:
            problems.append(f"concept {short!r} appears {count} times")
    # A prerequisite may name a concept by its stored id or by its id within the roadmap.
    known = {item.concept.concept_id for item in located}
    known |= {f"{framework.roadmap_id}:{cid}" for cid in known}
    known |= {short_concept_id(framework.roadmap_id, cid) for cid in known}
    for item in located:
        problems.extend(
            f"{item.place}: {p}"
            for p in _concept_problems(framework.roadmap_id, item.concept, known)
        )
    for kind, ids in (
        ("stage", [s.stage_id for s in framework.stages]),
        ("module", [m.module_id for s in framework.stages for m in s.modules]),
    ):
        problems.extend(
            f"{kind} id {i!r} appears {n} times" for i, n in Counter(ids).items() if n > 1
        )
    if problems:
        raise FrameworkError(problems)
    return framework


def _concept_problems(roadmap_id: str, concept: Concept, known_ids: set[str]) -> Iterator[str]:
    if not concept.name.strip():
        yield "name is empty"
    own = short_concept_id(roadmap_id, concept.concept_id)
    for prerequisite in concept.prerequisites:
        if prerequisite not in known_ids:
            yield f"prerequisite {prerequisite!r} points to no concept of this roadmap"
        elif short_concept_id(roadmap_id, prerequisite) == own:
            yield "lists itself as a prerequisite"
    for item in ItemType:
        status = concept.item_status(item)
        if status not in ItemStatus.__members__.values():
            allowed = [s.value for s in ItemStatus]
            yield f"{ITEM_FIELDS[item].status} {status!r} is not one of {allowed}"
    if concept.content_summary is not None and len(concept.content_summary) > SUMMARY_MAX:
        yield f"content_summary is longer than {SUMMARY_MAX} characters"


def _describe_error(document: dict[str, Any], error: Any) -> str:
    """Turn a Pydantic error location into the place an operator recognises."""
    names: list[str] = []
    node: Any = document
    loc = list(error["loc"])
    i = 0
    while i < len(loc):
        part = loc[i]
        if part in ("stages", "modules", "concepts") and i + 1 < len(loc):
            index = loc[i + 1]
            children = node.get(part) if isinstance(node, dict) else None
            child = children[index] if isinstance(children, list) else None
            id_key = {"stages": "stage_id", "modules": "module_id", "concepts": "concept_id"}[part]
            ident = child.get(id_key) if isinstance(child, dict) else None
            label = part[:-1]
            names.append(f"{label} {ident!r}" if ident else f"{label} #{index + 1}")
            node = child
            i += 2
            continue
        names.append(f"field {part!r}")
        i += 1
    place = " > ".join(names) or "document"
    return f"{place}: {error['msg']}"

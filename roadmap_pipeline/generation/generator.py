"""The content generator interface: three operations, each given a concept and its context."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from roadmap_pipeline.domain.content import (
    ItemContent,
    QuizContent,
    ResourcesContent,
    TutorialContent,
)
from roadmap_pipeline.domain.framework import Concept, Framework
from roadmap_pipeline.domain.statuses import ItemType


class GenerationError(Exception):
    """An item could not be generated. ``transient`` errors are worth retrying."""

    transient = False


class TransientGenerationError(GenerationError):
    """Timeouts, connection errors, 429 and 5xx: retried with backoff."""

    transient = True


class PermanentGenerationError(GenerationError):
    """4xx, or content that does not validate even after one repair round-trip."""


@dataclass(frozen=True)
class ConceptContext:
    """What a generator knows about the concept it writes for."""

    roadmap_id: str
    roadmap_title: str
    stage_name: str
    module_name: str
    concept: Concept
    prerequisite_names: tuple[str, ...] = ()
    preferences: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_framework(
        cls,
        framework: Framework,
        concept_id: str,
        preferences: dict[str, Any] | None = None,
    ) -> ConceptContext:
        located = framework.concept(concept_id)
        names = {c.concept_id: c.name for c in framework.concepts()}
        names |= {f"{framework.roadmap_id}:{cid}": name for cid, name in list(names.items())}
        prerequisites = tuple(names.get(p, p) for p in located.concept.prerequisites)
        return cls(
            roadmap_id=framework.roadmap_id,
            roadmap_title=framework.title,
            stage_name=located.stage.name,
            module_name=located.module.name,
            concept=located.concept,
            prerequisite_names=prerequisites,
            preferences=dict(preferences or {}),
        )


class ContentGenerator(Protocol):
    """Produces validated content (invariant 7) for one item of one concept."""

    @property
    def name(self) -> str:
        """Recorded with every row it produces (the ledger's ``generator``)."""
        ...

    def tutorial(self, context: ConceptContext) -> TutorialContent: ...

    def resources(self, context: ConceptContext) -> ResourcesContent: ...

    def quiz(self, context: ConceptContext) -> QuizContent: ...


def generate_item(
    generator: ContentGenerator, item: ItemType, context: ConceptContext
) -> ItemContent:
    if item is ItemType.TUTORIAL:
        return generator.tutorial(context)
    if item is ItemType.RESOURCES:
        return generator.resources(context)
    return generator.quiz(context)

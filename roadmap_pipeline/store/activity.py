"""The seam for invariant 5: is work for an item queued or running?

The data layer cannot know; only the orchestrator can. Dagster fills this seam from its own run
status (``orchestration.activity``). Without an orchestrator nothing is taken to be running, and
every report that depends on it says so.

A ``pending`` task in ``roadmap_tasks`` is queued work by definition (the service's queue), which
the store itself handles; this seam answers for everything that has left that queue.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from roadmap_pipeline.domain.keys import short_concept_id


@dataclass(frozen=True)
class ActiveWork:
    """Work that is queued or running: whole roadmaps, or single concepts.

    Concepts are ``(roadmap_id, short concept id)``, the two halves of a concept partition key;
    ``covers_concept`` accepts a stored concept id in either of the service's forms.
    """

    roadmaps: frozenset[str] = field(default_factory=frozenset)
    concepts: frozenset[tuple[str, str]] = field(default_factory=frozenset)

    def covers_concept(self, roadmap_id: str, concept_id: str) -> bool:
        short = short_concept_id(roadmap_id, concept_id)
        return roadmap_id in self.roadmaps or (roadmap_id, short) in self.concepts

    def covers_roadmap(self, roadmap_id: str) -> bool:
        return roadmap_id in self.roadmaps or any(r == roadmap_id for r, _ in self.concepts)


class WorkInProgress(Protocol):
    """Answers which roadmaps and concepts have work queued or running."""

    def describe(self) -> str: ...

    def active(self, roadmap_ids: Iterable[str] | None) -> ActiveWork:
        """Active work among ``roadmap_ids`` (None: the whole fleet)."""
        ...


class NothingRunning:
    """No orchestrator consulted: nothing is taken to be queued or running."""

    def describe(self) -> str:
        return "no orchestrator was consulted: nothing is taken to be queued or running"

    def active(self, roadmap_ids: Iterable[str] | None) -> ActiveWork:
        return ActiveWork()


@dataclass(frozen=True)
class KnownWork:
    """A fixed answer: used by tests and by callers that already know what runs."""

    work: ActiveWork
    source: str = "a fixed list of active work"

    def describe(self) -> str:
        return self.source

    def active(self, roadmap_ids: Iterable[str] | None) -> ActiveWork:
        return self.work

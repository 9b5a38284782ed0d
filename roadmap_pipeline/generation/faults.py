"""Fault injection for tests, the demo and the incident replay. Off unless a plan is given.

A ``FaultPlan`` (from a dict or JSON, e.g. Dagster config) can:

- ``fail``: make the generator fail item X of concept Y the first ``times`` times it is asked,
  transiently (retried) or permanently;
- ``random``: make any item fail with probability ``p``, decided by a seeded hash of (seed,
  concept, item, attempt number), so the same plan fails the same items in every run;
- ``kill``: SIGKILL the process at a named point of a node, ``before_write`` (content generated,
  not stored) or ``after_write`` (stored, the node not yet checkpointed as finished).

Concept selectors accept the stored concept id, the short id or the partition key, or ``*``.

Counting, and how a rerun survives a kill: every fault counts how often its (concept, item,
point) has been reached. With ``counter_dir`` set the counts live in files there (one per key,
updated under a file lock), so they survive the killed process and are shared by every worker
process: a kill with ``occurrence: 1`` fires the first time only, and the rerun passes the same
point. Without ``counter_dir`` counts live in the process, which suits in-process tests.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import threading
from pathlib import Path
from typing import Annotated, Any, Literal

from filelock import FileLock
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from roadmap_pipeline.domain.content import QuizContent, ResourcesContent, TutorialContent
from roadmap_pipeline.domain.keys import concept_key, short_concept_id
from roadmap_pipeline.domain.statuses import ItemType
from roadmap_pipeline.generation.generator import (
    ConceptContext,
    ContentGenerator,
    GenerationError,
    PermanentGenerationError,
    TransientGenerationError,
)

FaultKind = Literal["transient", "permanent"]
KillPoint = Literal["before_write", "after_write"]
ANY: Literal["*"] = "*"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ItemFault(_Model):
    """Fail ``item`` of ``concept`` the first ``times`` times the generator is asked for it."""

    concept: str
    item: ItemType | Literal["*"] = ANY
    times: Annotated[int, Field(ge=1)] = 1
    kind: FaultKind = "transient"


class RandomFault(_Model):
    """Fail any generator call with probability ``probability`` (seeded, deterministic)."""

    probability: Annotated[float, Field(ge=0.0, le=1.0)]
    seed: int = 0
    kind: FaultKind = "transient"
    items: list[ItemType] | None = None  # None: every item


class KillFault(_Model):
    """SIGKILL the process at ``point`` of ``item`` of ``concept``.

    ``occurrence``: die only the Nth time the point is reached (counted in ``counter_dir`` across
    processes when it is set); None: every time.
    """

    concept: str
    item: ItemType | Literal["*"] = ANY
    point: KillPoint
    occurrence: Annotated[int, Field(ge=1)] | None = 1


class FaultPlan(_Model):
    fail: list[ItemFault] = Field(default_factory=list)
    random: RandomFault | None = None
    kill: list[KillFault] = Field(default_factory=list)
    counter_dir: Path | None = None

    _counts: dict[str, int] = PrivateAttr(default_factory=dict)
    _mutex: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    @classmethod
    def from_json(cls, text: str) -> FaultPlan:
        return cls.model_validate_json(text)

    @classmethod
    def parse(cls, value: FaultPlan | str | dict[str, Any] | None) -> FaultPlan | None:
        """A plan from config: a plan, a dict, JSON text, or nothing (no faults)."""
        if value is None or value == "" or value == {}:
            return None
        if isinstance(value, FaultPlan):
            return value
        if isinstance(value, str):
            return cls.from_json(value)
        return cls.model_validate(value)

    @property
    def enabled(self) -> bool:
        return bool(self.fail or self.kill or (self.random and self.random.probability > 0))

    # --- generator faults -------------------------------------------------------------------

    def check_generation(self, roadmap_id: str, concept_id: str, item: ItemType) -> None:
        """Called before each generator call: raise the planned failure, if any."""
        if not (self.fail or self.random):
            return
        key = concept_key(roadmap_id, concept_id)
        attempt = self._bump(f"generate|{key}|{item.value}")
        for fault in self.fail:
            matched = _matches(fault.concept, fault.item, roadmap_id, concept_id, item)
            if matched and attempt <= fault.times:
                raise _error(
                    fault.kind,
                    f"{item.value}: injected {fault.kind} fault "
                    f"({attempt} of {fault.times}) for {key}",
                )
        if self.random and self.would_fail_randomly(key, item, attempt):
            raise _error(
                self.random.kind,
                f"{item.value}: injected random {self.random.kind} fault "
                f"(p={self.random.probability}, seed={self.random.seed}, attempt {attempt}) "
                f"for {key}",
            )

    def would_fail_randomly(self, key: str, item: ItemType, attempt: int) -> bool:
        """The seeded decision for one attempt: the same inputs always give the same answer."""
        plan = self.random
        if plan is None or (plan.items is not None and item not in plan.items):
            return False
        token = f"{plan.seed}\x1f{key}\x1f{item.value}\x1f{attempt}".encode()
        draw = int.from_bytes(hashlib.sha256(token).digest()[:8], "big") / 2**64
        return draw < plan.probability

    # --- process kills ----------------------------------------------------------------------

    def kill_point(
        self, point: KillPoint, roadmap_id: str, concept_id: str, item: ItemType
    ) -> None:
        """Called by the workflow around each node's write: SIGKILL here if the plan says so."""
        for index, fault in enumerate(self.kill):
            if fault.point != point:
                continue
            if not _matches(fault.concept, fault.item, roadmap_id, concept_id, item):
                continue
            key = concept_key(roadmap_id, concept_id)
            reached = self._bump(f"kill{index}|{point}|{key}|{item.value}")
            if fault.occurrence is None or reached == fault.occurrence:
                os.kill(os.getpid(), signal.SIGKILL)

    # --- counting ---------------------------------------------------------------------------

    def _bump(self, name: str) -> int:
        """Count one more arrival at ``name`` and return the new count."""
        if self.counter_dir is None:
            with self._mutex:
                self._counts[name] = self._counts.get(name, 0) + 1
                return self._counts[name]
        directory = Path(self.counter_dir)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / (hashlib.sha256(name.encode()).hexdigest()[:32] + ".count")
        with FileLock(str(path) + ".lock"):
            count = int(path.read_text() or 0) if path.exists() else 0
            count += 1
            # Written before any kill that follows, so the count survives the SIGKILL (the page
            # cache outlives the process).
            path.write_text(str(count))
        return count


def _matches(
    selector: str,
    item_selector: ItemType | str,
    roadmap_id: str,
    concept_id: str,
    item: ItemType,
) -> bool:
    if item_selector != ANY and item_selector != item:
        return False
    if selector == ANY:
        return True
    names = {concept_id, short_concept_id(roadmap_id, concept_id)}
    names.add(concept_key(roadmap_id, concept_id))
    return selector in names


def _error(kind: FaultKind, message: str) -> GenerationError:
    if kind == "transient":
        return TransientGenerationError(message)
    return PermanentGenerationError(message)


class FaultInjectingGenerator:
    """Wraps a generator: each call first asks the plan whether it should fail."""

    def __init__(self, generator: ContentGenerator, plan: FaultPlan) -> None:
        self.inner = generator
        self.plan = plan

    @property
    def name(self) -> str:
        return self.inner.name

    def _check(self, context: ConceptContext, item: ItemType) -> None:
        self.plan.check_generation(context.roadmap_id, context.concept.concept_id, item)

    def tutorial(self, context: ConceptContext) -> TutorialContent:
        self._check(context, ItemType.TUTORIAL)
        return self.inner.tutorial(context)

    def resources(self, context: ConceptContext) -> ResourcesContent:
        self._check(context, ItemType.RESOURCES)
        return self.inner.resources(context)

    def quiz(self, context: ConceptContext) -> QuizContent:
        self._check(context, ItemType.QUIZ)
        return self.inner.quiz(context)


def describe(plan: FaultPlan | None) -> str:
    """A one-line description for logs and run metadata."""
    if plan is None or not plan.enabled:
        return "no faults"
    return json.dumps(plan.model_dump(mode="json", exclude_defaults=True), sort_keys=True)

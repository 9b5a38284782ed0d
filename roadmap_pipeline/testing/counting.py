"""A generator wrapper that records every call in a file, so that calls made by a process that
was killed are still counted (one appended line per call, written before generating)."""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from pathlib import Path

from roadmap_pipeline.domain.content import QuizContent, ResourcesContent, TutorialContent
from roadmap_pipeline.domain.statuses import ItemType
from roadmap_pipeline.generation.generator import ConceptContext, ContentGenerator


class RecordingGenerator:
    """Delegates to ``inner``; appends ``{"concept", "item", "pid"}`` to ``log_path`` per call."""

    def __init__(self, inner: ContentGenerator, log_path: str | Path, delay_s: float = 0.0):
        self.inner = inner
        self.log_path = Path(log_path)
        self.delay_s = delay_s

    @property
    def name(self) -> str:
        return self.inner.name

    def _record(self, context: ConceptContext, item: ItemType) -> None:
        line = json.dumps(
            {"concept": context.concept.concept_id, "item": item.value, "pid": os.getpid()}
        )
        # One O_APPEND write per line: lines of concurrent writers never interleave.
        fd = os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (line + "\n").encode())
        finally:
            os.close(fd)
        if self.delay_s:
            time.sleep(self.delay_s)

    def tutorial(self, context: ConceptContext) -> TutorialContent:
        self._record(context, ItemType.TUTORIAL)
        return self.inner.tutorial(context)

    def resources(self, context: ConceptContext) -> ResourcesContent:
        self._record(context, ItemType.RESOURCES)
        return self.inner.resources(context)

    def quiz(self, context: ConceptContext) -> QuizContent:
        self._record(context, ItemType.QUIZ)
        return self.inner.quiz(context)


def read_calls(log_path: str | Path) -> list[dict[str, str]]:
    path = Path(log_path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def count_calls(log_path: str | Path) -> Counter[str]:
    """Calls per item name."""
    return Counter(call["item"] for call in read_calls(log_path))

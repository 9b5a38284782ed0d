"""The status words of the service, and which framework_data keys belong to each content item."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class ItemStatus(StrEnum):
    PENDING = "pending"
    GENERATING = "generating"
    COMPLETED = "completed"
    FAILED = "failed"


ACTIVE_ITEM_STATUSES = frozenset({ItemStatus.PENDING, ItemStatus.GENERATING})


class TaskStatus(StrEnum):
    PENDING = "pending"
    PROCESSING = "processing"
    HUMAN_REVIEW_PENDING = "human_review_pending"
    COMPLETED = "completed"
    PARTIAL_FAILURE = "partial_failure"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL_TASK_STATUSES = frozenset(
    {TaskStatus.COMPLETED, TaskStatus.PARTIAL_FAILURE, TaskStatus.FAILED, TaskStatus.CANCELLED}
)


class TaskType(StrEnum):
    CREATION = "creation"
    RETRY_TUTORIAL = "retry_tutorial"
    RETRY_RESOURCES = "retry_resources"
    RETRY_QUIZ = "retry_quiz"


class ItemType(StrEnum):
    """The three generated items of a concept, in generation order."""

    TUTORIAL = "tutorial"
    RESOURCES = "resources"
    QUIZ = "quiz"


@dataclass(frozen=True)
class ItemFields:
    """The framework_data keys of one item inside a concept node.

    ``status`` and ``ref_id`` exist for every item; ``extra_refs`` are the other keys that mirror
    the current row (all of them are owned by the pipeline: a sync writes them, nothing else).
    """

    status: str
    ref_id: str
    extra_refs: tuple[str, ...]

    @property
    def owned(self) -> tuple[str, ...]:
        return (self.status, self.ref_id, *self.extra_refs)


ITEM_FIELDS: dict[ItemType, ItemFields] = {
    ItemType.TUTORIAL: ItemFields(
        "content_status", "tutorial_id", ("content_ref", "content_version", "content_summary")
    ),
    ItemType.RESOURCES: ItemFields("resources_status", "resources_id", ("resources_count",)),
    ItemType.QUIZ: ItemFields("quiz_status", "quiz_id", ("quiz_questions_count",)),
}

RETRY_TASK_ITEM: dict[TaskType, ItemType] = {
    TaskType.RETRY_TUTORIAL: ItemType.TUTORIAL,
    TaskType.RETRY_RESOURCES: ItemType.RESOURCES,
    TaskType.RETRY_QUIZ: ItemType.QUIZ,
}

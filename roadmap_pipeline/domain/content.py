"""The three generated items of a concept, validated by invariant 7 before anything is written.

These are the models at the edge where generated content enters the system (from an LLM or the
offline generator). Limits apply here, to what we write; rows the service already holds are
checked by the ``invalid_content`` rule instead and never rejected on load.
"""

from __future__ import annotations

from collections import Counter
from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, HttpUrl, model_validator

from roadmap_pipeline.domain.statuses import ItemType

ResourceType = Literal["article", "video", "book", "course", "documentation", "tool"]
QuestionType = Literal["single_choice", "multiple_choice", "true_false"]
Difficulty = Literal["easy", "medium", "hard"]

SUMMARY_MAX = 300


class _Content(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class TutorialContent(_Content):
    title: Annotated[str, Field(min_length=1, max_length=200)]
    summary: Annotated[str, Field(min_length=1, max_length=SUMMARY_MAX)]
    markdown: Annotated[str, Field(min_length=1)]
    estimated_completion_time: Annotated[int, Field(ge=1, le=24 * 60, description="minutes")]


class Resource(_Content):
    title: Annotated[str, Field(min_length=1, max_length=300)]
    url: HttpUrl
    type: ResourceType
    description: Annotated[str, Field(max_length=1000)] = ""
    relevance_score: Annotated[float, Field(ge=0.0, le=1.0)]


class ResourcesContent(_Content):
    resources: Annotated[list[Resource], Field(min_length=1, max_length=20)]
    search_queries_used: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_urls(self) -> Self:
        urls = [str(r.url) for r in self.resources]
        if len(set(urls)) != len(urls):
            raise ValueError("the same url is recommended twice")
        return self


class QuizQuestion(_Content):
    question_id: Annotated[str, Field(min_length=1, max_length=64)]
    question_type: QuestionType
    question: Annotated[str, Field(min_length=1)]
    options: Annotated[list[str], Field(min_length=2, max_length=8)]
    correct_answer: Annotated[list[int], Field(min_length=1)]
    explanation: str = ""
    difficulty: Difficulty

    @model_validator(mode="after")
    def _answers_index_options(self) -> Self:
        bad = [i for i in self.correct_answer if not 0 <= i < len(self.options)]
        if bad:
            raise ValueError(
                f"question {self.question_id}: correct_answer {bad} does not index its "
                f"{len(self.options)} options"
            )
        if len(set(self.correct_answer)) != len(self.correct_answer):
            raise ValueError(f"question {self.question_id}: correct_answer repeats an option")
        if self.question_type != "multiple_choice" and len(self.correct_answer) != 1:
            raise ValueError(
                f"question {self.question_id}: a {self.question_type} question has exactly one "
                f"answer, not {len(self.correct_answer)}"
            )
        if self.question_type == "true_false" and len(self.options) != 2:
            raise ValueError(f"question {self.question_id}: true_false needs exactly two options")
        return self


class QuizContent(_Content):
    questions: Annotated[list[QuizQuestion], Field(min_length=1, max_length=20)]

    @model_validator(mode="after")
    def _unique_question_ids(self) -> Self:
        ids = [q.question_id for q in self.questions]
        if len(set(ids)) != len(ids):
            raise ValueError("question ids repeat")
        return self

    def difficulty_counts(self) -> dict[str, int]:
        counts = Counter(q.difficulty for q in self.questions)
        return {level: counts.get(level, 0) for level in ("easy", "medium", "hard")}


ItemContent = TutorialContent | ResourcesContent | QuizContent

CONTENT_MODEL: dict[
    ItemType, type[TutorialContent] | type[ResourcesContent] | type[QuizContent]
] = {
    ItemType.TUTORIAL: TutorialContent,
    ItemType.RESOURCES: ResourcesContent,
    ItemType.QUIZ: QuizContent,
}

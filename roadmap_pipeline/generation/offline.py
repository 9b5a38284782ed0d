"""The embedded default generator: deterministic, no network, valid and readable content.

Everything is derived from the concept itself (name, description, keywords, difficulty,
prerequisites) and its place in the roadmap, so two concepts never get the same text and the
same concept always gets the same text. Every item says that it was generated offline.
"""

from __future__ import annotations

import hashlib
from urllib.parse import quote

from roadmap_pipeline.domain.content import (
    QuizContent,
    QuizQuestion,
    Resource,
    ResourcesContent,
    TutorialContent,
)
from roadmap_pipeline.generation.generator import ConceptContext

OFFLINE_MARK = "generated offline by roadmap_pipeline (no LLM was called)"
_DIFFICULTY_MINUTES = {"beginner": 30, "intermediate": 45, "advanced": 60}


def _seed(context: ConceptContext, salt: str) -> int:
    key = f"{context.roadmap_id}\x1f{context.concept.concept_id}\x1f{salt}"
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")


class OfflineGenerator:
    """Deterministic content from the concept's own fields."""

    @property
    def name(self) -> str:
        return "offline"

    def tutorial(self, context: ConceptContext) -> TutorialContent:
        concept = context.concept
        keywords = concept.keywords or [concept.name]
        prerequisites = context.prerequisite_names
        difficulty = concept.difficulty or "intermediate"
        sections = [
            f"# {concept.name}",
            f"> {OFFLINE_MARK}.",
            f"Part of **{context.roadmap_title}**, stage *{context.stage_name}*, "
            f"module *{context.module_name}*. Level: {difficulty}.",
            "## Why it matters",
            concept.description or f"{concept.name} is a building block of {context.module_name}.",
            "## Before you start",
            (
                "Make sure you are comfortable with: " + ", ".join(prerequisites) + "."
                if prerequisites
                else "No prerequisites: this is a starting point."
            ),
            "## Key ideas",
            *[f"- **{k}**: how {k} shapes {concept.name}." for k in keywords],
            "## Practice",
            f"1. Explain {concept.name} in your own words.",
            f"2. Apply {keywords[0]} to a small example of your own.",
            f"3. Compare your result with the resources recommended for {concept.name}.",
        ]
        minutes = _DIFFICULTY_MINUTES.get(difficulty, 40) + 5 * len(keywords)
        summary = f"{concept.name}: {', '.join(keywords[:4])} ({difficulty}). {OFFLINE_MARK}."
        return TutorialContent(
            title=f"{concept.name}: a guided tutorial"[:200],
            summary=summary[:300],
            markdown="\n\n".join(sections) + "\n",
            estimated_completion_time=min(minutes, 24 * 60),
        )

    def resources(self, context: ConceptContext) -> ResourcesContent:
        concept = context.concept
        keywords = concept.keywords or [concept.name]
        kinds = ("documentation", "article", "video", "course", "book", "tool")
        start = _seed(context, "resources") % len(kinds)
        count = 5 + _seed(context, "count") % 3
        resources = []
        for i in range(count):
            kind = kinds[(start + i) % len(kinds)]
            topic = keywords[i % len(keywords)]
            slug = quote(f"{concept.name}-{topic}-{i}".lower().replace(" ", "-"), safe="-")
            resources.append(
                Resource(
                    title=f"{topic} for {concept.name} ({kind})",
                    url=f"https://learn.example.org/{context.roadmap_id}/{slug}",  # type: ignore[arg-type]
                    type=kind,
                    description=f"A {kind} about {topic}, chosen for {concept.name}. "
                    f"{OFFLINE_MARK}.",
                    relevance_score=round(0.95 - 0.07 * i, 2),
                )
            )
        return ResourcesContent(
            resources=resources,
            search_queries_used=[f"{concept.name} {k}" for k in keywords[:3]] + ["offline"],
        )

    def quiz(self, context: ConceptContext) -> QuizContent:
        concept = context.concept
        keywords = concept.keywords or [concept.name]
        levels = ("easy", "medium", "hard")
        n = 5 + _seed(context, "quiz") % 4
        questions = []
        for i in range(n):
            topic = keywords[i % len(keywords)]
            if i % 3 == 2:
                questions.append(
                    QuizQuestion(
                        question_id=f"q{i + 1}",
                        question_type="true_false",
                        question=f"{topic} is part of {concept.name}.",
                        options=["True", "False"],
                        correct_answer=[0],
                        explanation=f"The tutorial on {concept.name} covers {topic}. "
                        f"{OFFLINE_MARK}.",
                        difficulty=levels[i % 3],
                    )
                )
                continue
            options = [
                f"It is central to {concept.name}",
                f"It is covered in the module {context.module_name}",
                "It is unrelated",
                f"It replaces {context.module_name}",
            ]
            multiple = i % 3 == 1
            questions.append(
                QuizQuestion(
                    question_id=f"q{i + 1}",
                    question_type="multiple_choice" if multiple else "single_choice",
                    question=f"What is true about {topic} in {concept.name}?",
                    options=options,
                    correct_answer=[0, 1] if multiple else [0],
                    explanation=f"{topic} is one of the key ideas of {concept.name}. "
                    f"{OFFLINE_MARK}.",
                    difficulty=levels[i % 3],
                )
            )
        return QuizContent(questions=questions)

"""Domain models: documents survive untouched, errors name their place, content obeys rule 7,
and partition keys are safe."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from pydantic import ValidationError

from roadmap_pipeline.domain.content import (
    QuizContent,
    QuizQuestion,
    Resource,
    ResourcesContent,
    TutorialContent,
)
from roadmap_pipeline.domain.framework import FrameworkError, load_framework, validate_submission
from roadmap_pipeline.domain.keys import (
    UnsafeIdError,
    check_roadmap_id,
    concept_key,
    resolve_concept_id,
    short_concept_id,
    split_concept_key,
)
from roadmap_pipeline.generation.generator import ConceptContext
from roadmap_pipeline.generation.offline import OfflineGenerator
from roadmap_pipeline.samples import load_sample, synthetic_framework

RID = "rm-1"


def document_with_unknown_keys() -> dict[str, Any]:
    doc = synthetic_framework(RID, 4)
    doc["x_roadmap"] = {"nested": [1, {"deep": None}]}
    doc["stages"][0]["x_stage"] = "kept"
    doc["stages"][0]["modules"][0]["x_module"] = [True, 2.5]
    concept = doc["stages"][0]["modules"][0]["concepts"][1]
    concept["x_concept"] = {"a": "b"}
    concept["tutorial_id"] = "t-1"  # the field the incident's model dropped
    del concept["quiz_status"]  # absent stays absent: nothing is added on dump
    return doc


def test_unknown_keys_survive_a_round_trip_at_every_level() -> None:
    doc = document_with_unknown_keys()
    original = copy.deepcopy(doc)

    assert load_framework(doc).to_document() == original
    assert validate_submission(doc).to_document() == original
    assert doc == original  # loading does not mutate the input


def test_the_bundled_samples_round_trip_exactly() -> None:
    for roadmap_id in ("agent-performance-tuning-x5y9z2w8", "sql-for-analysts-q4r7t1"):
        doc = load_sample(roadmap_id)
        assert validate_submission(doc).to_document() == doc


def test_a_structural_error_names_stage_module_and_concept() -> None:
    doc = synthetic_framework(RID, 4)
    del doc["stages"][0]["modules"][0]["concepts"][2]["name"]

    with pytest.raises(FrameworkError) as caught:
        load_framework(doc)

    assert caught.value.problems == [
        f"stage 'stage-1' > module 'module-1-1' > concept '{RID}:c-1-1-3' > field 'name': "
        "Field required"
    ]


def test_an_unnamed_node_is_placed_by_its_position() -> None:
    doc = synthetic_framework(RID, 4)
    doc["stages"][0]["modules"][0]["concepts"][0] = {"name": "no id"}

    with pytest.raises(FrameworkError) as caught:
        load_framework(doc)

    assert caught.value.problems == [
        "stage 'stage-1' > module 'module-1-1' > concept #1 > field 'concept_id': Field required"
    ]


@pytest.mark.parametrize("document", [[], "text", None, 3])
def test_a_document_that_is_not_an_object_is_refused(document: Any) -> None:
    with pytest.raises(FrameworkError, match="not a JSON object"):
        load_framework(document)


def _submission_problems(doc: dict[str, Any]) -> list[str]:
    with pytest.raises(FrameworkError) as caught:
        validate_submission(doc)
    return caught.value.problems


def test_submission_rules_name_place_and_rule() -> None:
    doc = synthetic_framework(RID, 4)
    concepts = doc["stages"][0]["modules"][0]["concepts"]
    concepts[1]["prerequisites"] = ["nowhere"]
    concepts[3]["prerequisites"] = []
    concepts[2]["concept_id"] = concepts[3]["concept_id"]
    concepts[3]["content_status"] = "done"
    concepts[0]["content_summary"] = "s" * 301

    problems = _submission_problems(doc)

    place = "stage 'stage-1' > module 'module-1-1' > concept"
    assert problems == [
        "concept 'c-1-1-4' appears 2 times",
        f"{place} '{RID}:c-1-1-1': content_summary is longer than 300 characters",
        f"{place} '{RID}:c-1-1-2': prerequisite 'nowhere' points to no concept of this roadmap",
        f"{place} '{RID}:c-1-1-4': content_status 'done' is not one of "
        "['pending', 'generating', 'completed', 'failed']",
    ]


def test_a_roadmap_without_concepts_is_refused() -> None:
    doc = synthetic_framework(RID, 4)
    doc["stages"][0]["modules"][0]["concepts"] = []

    assert _submission_problems(doc) == [f"roadmap {RID!r} has no concepts"]


def test_unsafe_ids_are_refused_with_the_offending_characters() -> None:
    doc = synthetic_framework("bad|id", 2)
    doc["stages"][0]["modules"][0]["concepts"][1]["concept_id"] = "c 2,x"

    problems = _submission_problems(doc)

    assert any("roadmap id 'bad|id'" in p and "'|'" in p for p in problems)
    assert any("concept 'c 2,x'" in p and "' '" in p and "','" in p for p in problems)


def test_a_prerequisite_may_use_the_short_or_the_prefixed_id() -> None:
    doc = synthetic_framework(RID, 3)
    concepts = doc["stages"][0]["modules"][0]["concepts"]
    concepts[2]["prerequisites"] = ["c-1-1-1", f"{RID}:c-1-1-2"]

    assert len(validate_submission(doc).concepts()) == 3


def test_a_stored_summary_longer_than_300_loads_and_round_trips() -> None:
    doc = synthetic_framework(RID, 2)
    doc["stages"][0]["modules"][0]["concepts"][0]["content_summary"] = "s" * 450

    framework = load_framework(doc)

    assert framework.concepts()[0].content_summary == "s" * 450
    assert framework.to_document() == doc


# --- invariant 7 on generated content --------------------------------------------------------


def _question(**overrides: Any) -> dict[str, Any]:
    base = {
        "question_id": "q1",
        "question_type": "single_choice",
        "question": "Which?",
        "options": ["a", "b", "c"],
        "correct_answer": [1],
        "difficulty": "easy",
    }
    return base | overrides


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"correct_answer": [3]}, "does not index its 3 options"),
        ({"correct_answer": [-1]}, "does not index its 3 options"),
        ({"correct_answer": [0, 1]}, "a single_choice question has exactly one answer"),
        ({"correct_answer": [1, 1], "question_type": "multiple_choice"}, "repeats an option"),
        ({"question_type": "true_false"}, "true_false needs exactly two options"),
        ({"correct_answer": []}, "at least 1 item"),
        ({"difficulty": "extreme"}, "Input should be 'easy', 'medium' or 'hard'"),
    ],
)
def test_invalid_quiz_questions_are_refused(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        QuizQuestion.model_validate(_question(**overrides))


def test_quiz_question_ids_must_be_unique_and_counts_follow_difficulty() -> None:
    with pytest.raises(ValidationError, match="question ids repeat"):
        QuizContent.model_validate({"questions": [_question(), _question()]})

    quiz = QuizContent.model_validate(
        {"questions": [_question(), _question(question_id="q2", difficulty="hard")]}
    )
    assert quiz.difficulty_counts() == {"easy": 1, "medium": 0, "hard": 1}


def _resource(**overrides: Any) -> dict[str, Any]:
    base = {
        "title": "Docs",
        "url": "https://example.org/a",
        "type": "documentation",
        "relevance_score": 0.5,
    }
    return base | overrides


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"relevance_score": 1.5}, "less than or equal to 1"),
        ({"relevance_score": -0.1}, "greater than or equal to 0"),
        ({"type": "podcast"}, "Input should be 'article'"),
        ({"url": "not a url"}, "URL"),
    ],
)
def test_invalid_resources_are_refused(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Resource.model_validate(_resource(**overrides))


def test_a_url_recommended_twice_is_refused() -> None:
    with pytest.raises(ValidationError, match="the same url is recommended twice"):
        ResourcesContent.model_validate({"resources": [_resource(), _resource()]})


def test_a_generated_summary_is_limited_to_300_characters() -> None:
    with pytest.raises(ValidationError, match="at most 300 characters"):
        TutorialContent(title="t", summary="s" * 301, markdown="# t", estimated_completion_time=5)


def test_offline_content_is_valid_and_deterministic() -> None:
    framework = validate_submission(synthetic_framework(RID, 3))
    context = ConceptContext.from_framework(framework, f"{RID}:c-1-1-2")
    generator = OfflineGenerator()

    quiz = generator.quiz(context)
    again = QuizContent.model_validate(quiz.model_dump(mode="json"))

    assert again == generator.quiz(context)
    assert ResourcesContent.model_validate(generator.resources(context).model_dump(mode="json"))
    assert len(generator.tutorial(context).summary) <= 300


# --- partition keys --------------------------------------------------------------------------


def test_a_service_concept_id_loses_its_roadmap_prefix_in_the_key_only() -> None:
    assert short_concept_id("rm:1", "rm:1:c-1-2-3") == "c-1-2-3"
    assert short_concept_id("rm", "other:c1") == "other:c1"
    assert concept_key("rm", "rm:c-1-2-3") == "rm/c-1-2-3"
    assert concept_key("rm", "c7") == "rm/c7"
    assert concept_key("rm", "a/b@c.d") == "rm/a/b@c.d"
    assert split_concept_key("rm/a/b") == ("rm", "a/b")


@pytest.mark.parametrize(
    ("roadmap_id", "concept_id", "message"),
    [
        ("a|b", "c1", "unsafe in a partition key ('|')"),
        ("a,b", "c1", "(',')"),
        ("a b", "c1", "(' ')"),
        ("a/b", "c1", "('/')"),
        ("rm", "c|1", "concept id 'c|1' of roadmap 'rm' contains characters"),
        ("rm", "c,1", "(',')"),
        ("rm", "c 1", "(' ')"),
        ("rm", "c...1", "'...', which Dagster reads as a key range"),
        ("rm...x", "c1", "'...'"),
        ("", "c1", "roadmap id '' is empty"),
        ("rm", "rm:", "is empty"),
        ("rm", "é", "('é')"),
        ("rm", "c" * 300, "longer than 255"),
    ],
)
def test_unsafe_keys_are_rejected_with_a_clear_error(
    roadmap_id: str, concept_id: str, message: str
) -> None:
    with pytest.raises(UnsafeIdError) as caught:
        concept_key(roadmap_id, concept_id)
    assert message in str(caught.value)


def test_roadmap_ids_and_keys_round_trip() -> None:
    assert check_roadmap_id("agent-performance-tuning-x5y9z2w8") == (
        "agent-performance-tuning-x5y9z2w8"
    )
    with pytest.raises(UnsafeIdError, match="not a concept partition key"):
        split_concept_key("no-slash")
    with pytest.raises(UnsafeIdError, match="not a concept partition key"):
        split_concept_key("/c1")


def test_a_key_resolves_to_the_stored_concept_id() -> None:
    assert resolve_concept_id("rm", "c1", ["rm:c1", "rm:c2"]) == "rm:c1"
    assert resolve_concept_id("rm", "c1", ["c1", "c2"]) == "c1"
    with pytest.raises(KeyError, match="has no concept 'c3'"):
        resolve_concept_id("rm", "c3", ["c1"])
    with pytest.raises(KeyError, match="has both"):
        resolve_concept_id("rm", "c1", ["c1", "rm:c1"])

"""Fault plans: selectors, N-times, transient vs permanent, seeded probability, kills."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest
from pydantic import ValidationError

from roadmap_pipeline.domain.framework import load_framework
from roadmap_pipeline.domain.keys import concept_key
from roadmap_pipeline.domain.statuses import ItemType
from roadmap_pipeline.generation.faults import FaultInjectingGenerator, FaultPlan, describe
from roadmap_pipeline.generation.generator import (
    ConceptContext,
    PermanentGenerationError,
    TransientGenerationError,
)
from roadmap_pipeline.generation.offline import OfflineGenerator
from roadmap_pipeline.generation.workflow import ConceptWorkflow, run_concepts
from roadmap_pipeline.samples import synthetic_framework
from roadmap_pipeline.testing.counting import RecordingGenerator, count_calls
from roadmap_pipeline_tests.generation.support import FAST_RETRY, submit

R = "fault-roadmap"
C = f"{R}:c-1-1-2"
TUTORIAL, RESOURCES, QUIZ = ItemType.TUTORIAL, ItemType.RESOURCES, ItemType.QUIZ


def outcomes_of(plan: FaultPlan, item: ItemType, calls: int, concept: str = C) -> list[str]:
    """What ``calls`` successive generator calls for the item meet: ok / transient / permanent."""
    seen = []
    for _ in range(calls):
        try:
            plan.check_generation(R, concept, item)
            seen.append("ok")
        except TransientGenerationError:
            seen.append("transient")
        except PermanentGenerationError:
            seen.append("permanent")
    return seen


def test_no_plan_means_no_faults():
    assert FaultPlan.parse(None) is None
    assert FaultPlan.parse("") is None
    assert FaultPlan.parse({}) is None
    assert not FaultPlan().enabled
    assert describe(None) == "no faults"
    assert outcomes_of(FaultPlan(), QUIZ, 3) == ["ok", "ok", "ok"]


def test_a_plan_comes_from_json_or_a_dict_and_rejects_unknown_keys():
    text = '{"fail": [{"concept": "c-1-1-2", "item": "quiz", "times": 2}]}'
    plan = FaultPlan.parse(text)
    assert plan is not None
    assert plan.enabled
    from_dict = FaultPlan.parse({"fail": [{"concept": "c-1-1-2", "item": "quiz", "times": 2}]})
    assert from_dict is not None
    assert plan.model_dump() == from_dict.model_dump()
    assert describe(plan) == ('{"fail": [{"concept": "c-1-1-2", "item": "quiz", "times": 2}]}')
    with pytest.raises(ValidationError):
        FaultPlan.parse('{"fail": [{"concept": "c", "tiems": 2}]}')
    with pytest.raises(ValidationError):
        FaultPlan.parse({"kill": [{"concept": "c", "point": "during_lunch"}]})


@pytest.mark.parametrize("selector", [C, "c-1-1-2", f"{R}/c-1-1-2", "*"])
def test_a_concept_is_selected_by_stored_id_short_id_partition_key_or_star(selector):
    plan = FaultPlan.model_validate({"fail": [{"concept": selector, "item": "quiz"}]})
    assert outcomes_of(plan, QUIZ, 1) == ["transient"]


def test_other_concepts_and_items_are_not_affected():
    plan = FaultPlan.model_validate({"fail": [{"concept": "c-1-1-2", "item": "quiz", "times": 5}]})
    assert outcomes_of(plan, QUIZ, 1, concept=f"{R}:c-1-1-3") == ["ok"]
    assert outcomes_of(plan, TUTORIAL, 1) == ["ok"]


def test_an_item_fails_n_times_then_succeeds():
    plan = FaultPlan.model_validate({"fail": [{"concept": "c-1-1-2", "item": "quiz", "times": 2}]})
    assert outcomes_of(plan, QUIZ, 4) == ["transient", "transient", "ok", "ok"]


def test_permanent_faults_raise_the_permanent_error():
    plan = FaultPlan.model_validate(
        {"fail": [{"concept": "*", "item": "*", "times": 1, "kind": "permanent"}]}
    )
    assert outcomes_of(plan, TUTORIAL, 2) == ["permanent", "ok"]
    assert outcomes_of(plan, RESOURCES, 2) == ["permanent", "ok"]


def test_counts_in_a_counter_dir_are_shared_by_plans_of_different_processes(tmp_path):
    text = (
        '{"fail": [{"concept": "c-1-1-2", "item": "quiz", "times": 2}], '
        f'"counter_dir": "{tmp_path / "counts"}"}}'
    )
    first, second = FaultPlan.from_json(text), FaultPlan.from_json(text)
    assert outcomes_of(first, QUIZ, 1) == ["transient"]
    assert outcomes_of(second, QUIZ, 2) == ["transient", "ok"]


def test_probability_faults_are_seeded_and_deterministic():
    def decisions(seed: int, probability: float) -> list[bool]:
        plan = FaultPlan.model_validate({"random": {"probability": probability, "seed": seed}})
        return [
            plan.would_fail_randomly(f"{R}/c-{n}", item, attempt)
            for n in range(100)
            for item in ItemType
            for attempt in (1, 2)
        ]

    assert decisions(7, 0.3) == decisions(7, 0.3)
    assert decisions(7, 0.3) != decisions(8, 0.3)
    assert 0.25 < sum(decisions(7, 0.3)) / 600 < 0.35
    assert not any(decisions(7, 0.0))
    assert all(decisions(7, 1.0))


def test_probability_faults_can_be_limited_to_some_items():
    plan = FaultPlan.model_validate(
        {"random": {"probability": 1.0, "items": ["quiz"], "kind": "permanent"}}
    )
    assert outcomes_of(plan, TUTORIAL, 1) == ["ok"]
    assert outcomes_of(plan, QUIZ, 1) == ["permanent"]


def test_the_wrapper_fails_before_the_inner_generator_is_called(tmp_path):
    log = tmp_path / "calls.jsonl"
    plan = FaultPlan.model_validate({"fail": [{"concept": "*", "item": "resources"}]})
    generator = FaultInjectingGenerator(RecordingGenerator(OfflineGenerator(), log), plan)
    context = ConceptContext.from_framework(load_framework(synthetic_framework(R, 3)), C)
    assert generator.name == "offline"
    generator.tutorial(context)
    with pytest.raises(TransientGenerationError, match=r"^resources: injected transient fault"):
        generator.resources(context)
    generator.resources(context)
    assert count_calls(log) == {"tutorial": 1, "resources": 1}


def test_random_permanent_faults_fail_exactly_the_predicted_items(engine, checkpointer, locks):
    roadmap = submit(engine, "fault-random", 6)
    spec = {"random": {"probability": 0.4, "seed": 11, "kind": "permanent"}}
    plan = FaultPlan.model_validate(spec)
    predictor = FaultPlan.model_validate(spec)
    workflow = ConceptWorkflow(
        engine, OfflineGenerator(), checkpointer, locks, faults=plan, node_retry=FAST_RETRY
    )
    outcomes = run_concepts(
        workflow,
        [(roadmap.roadmap_id, c) for c in roadmap.concept_ids],
        ItemType,
        request_id="random-1",
        concurrency=3,
    )
    failed = {
        (o.concept_id, i) for o in outcomes for i, x in o.items.items() if x.status == "failed"
    }
    predicted = {
        (c, item)
        for c in roadmap.concept_ids
        for item in ItemType
        if predictor.would_fail_randomly(concept_key(roadmap.roadmap_id, c), item, 1)
    }
    assert failed == predicted
    assert 0 < len(failed) < 18


_KILLER = """
import sys
from roadmap_pipeline.domain.statuses import ItemType
from roadmap_pipeline.generation.faults import FaultPlan
plan = FaultPlan.from_json(sys.argv[1])
plan.kill_point("after_write", "fault-roadmap", "fault-roadmap:c-1-1-2", ItemType.QUIZ)
print("survived", flush=True)
"""


def _kill_run(plan_json: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _KILLER, plan_json],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_kill_point_sigkills_the_process_only_on_its_occurrence(tmp_path):
    plan = (
        '{"kill": [{"concept": "fault-roadmap/c-1-1-2", "item": "quiz", '
        f'"point": "after_write", "occurrence": 1}}], "counter_dir": "{tmp_path}"}}'
    )
    first = _kill_run(plan)
    assert first.returncode == -signal.SIGKILL
    assert first.stdout == ""
    second = _kill_run(plan)  # the count in counter_dir says this is the 2nd time: live on
    assert second.returncode == 0
    assert second.stdout.strip() == "survived"


def test_kill_points_of_other_items_or_points_do_nothing(tmp_path):
    plan = (
        '{"kill": [{"concept": "*", "item": "tutorial", "point": "after_write"}, '
        '{"concept": "*", "item": "quiz", "point": "before_write"}]}'
    )
    assert _kill_run(plan).stdout.strip() == "survived"

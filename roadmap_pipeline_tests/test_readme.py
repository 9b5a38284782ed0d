"""The README's commands cannot drift from the code: every make target, CLI command and option,
benchmark module, configuration variable and fault plan it names exists and parses. (What the
walkthrough says the demo shows is asserted by test_cli's demo and status tests.)"""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from roadmap_pipeline import environment
from roadmap_pipeline.cli import main
from roadmap_pipeline.generation.faults import FaultPlan

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
# Variables Dagster itself reads, documented beside ours.
DAGSTER_VARIABLES = {"DAGSTER_HOME", "DAGSTER_POSTGRES_URL"}


def make_targets() -> set[str]:
    makefile = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([a-z][a-z-]*):", makefile, flags=re.MULTILINE))


def cli_invocations() -> list[list[str]]:
    """Every ``roadmap-pipeline ...`` in the README, as argument lists (placeholders such as
    ``[--roadmap ID]`` reduced to their option names)."""
    found = []
    for match in re.finditer(r"roadmap-pipeline ([^`|#\n]+)", README):
        words = shlex.split(match.group(1).replace("[", " ").replace("]", " "))
        if words and re.fullmatch(r"[a-z][a-z-]*", words[0]):
            found.append(words)
    return found


def test_every_make_target_in_the_readme_exists() -> None:
    named = set(re.findall(r"\bmake ([a-z][a-z-]*)", README))
    assert {"demo", "test"} <= named
    assert named - make_targets() == set()


def test_every_cli_command_and_option_in_the_readme_exists() -> None:
    invocations = cli_invocations()
    commands = {words[0] for words in invocations}
    # Every command the CLI has is documented, and every documented one exists.
    assert commands == set(main.commands), commands ^ set(main.commands)
    for words in invocations:
        command = main.commands[words[0]]
        options = {opt for param in command.params for opt in getattr(param, "opts", [])}
        named = {w for w in words[1:] if w.startswith("--")}
        assert named <= options, (words, options)
        shown = CliRunner().invoke(main, [words[0], "--help"])
        assert shown.exit_code == 0, shown.output


@pytest.mark.parametrize("module", sorted(set(re.findall(r"-m (benchmarks\.\w+)", README))))
def test_every_benchmark_in_the_readme_is_a_module(module: str) -> None:
    assert importlib.util.find_spec(module) is not None, module


def test_the_configuration_table_lists_exactly_the_variables_the_code_reads() -> None:
    table = set(re.findall(r"^\| `([A-Z_]+)` \|", README, flags=re.MULTILINE))
    assert table == set(environment.DESCRIPTIONS) | DAGSTER_VARIABLES
    for name in environment.DESCRIPTIONS:
        assert name in environment.defaults(ROOT)


def test_the_fault_plan_in_the_walkthrough_parses() -> None:
    plans = re.findall(r"ROADMAP_FAULTS='([^']+)'", README)
    assert plans
    for plan in plans:
        parsed = FaultPlan.parse(json.loads(plan))
        assert parsed is not None, plan
        assert parsed.kill, plan


def test_the_definitions_module_the_readme_names_loads() -> None:
    for module in set(re.findall(r"-m (roadmap_pipeline\.\w+)", README)):
        assert importlib.util.find_spec(module) is not None, module

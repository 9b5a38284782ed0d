"""The code location loads, validates with Dagster's own CLI, and keeps its names: a rename of
an asset, check, job, schedule or sensor breaks this snapshot on purpose (UIs, backfills,
schedules and operators' habits refer to them). Regenerate with UPDATE_SNAPSHOT=1."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import dagster as dg

from roadmap_pipeline.definitions import build_definitions

SNAPSHOT = Path(__file__).with_name("definitions_snapshot.json")


def describe(defs: dg.Definitions) -> dict[str, Any]:
    repo = defs.get_repository_def()
    graph = repo.asset_graph
    assets = {}
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node = graph.get(key)
        partitions = node.partitions_def
        assets[key.to_user_string()] = {
            "partitions": getattr(partitions, "name", None),
            "deps": sorted(d.to_user_string() for d in node.parent_keys),
            "checks": sorted(c.name for c in node.check_keys),
        }
    return {
        "assets": assets,
        "jobs": sorted(j.name for j in repo.get_all_jobs() if not j.name.startswith("__")),
        "schedules": sorted(s.name for s in repo.schedule_defs),
        "sensors": sorted(s.name for s in repo.sensor_defs),
    }


def test_definitions_match_the_snapshot() -> None:
    current = describe(build_definitions())
    if os.environ.get("UPDATE_SNAPSHOT"):
        SNAPSHOT.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")
    assert current == json.loads(SNAPSHOT.read_text())


def test_make_validate_passes() -> None:
    """The README's validation command: ``dagster definitions validate`` through make."""
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        ["make", "--no-print-directory", "validate"],
        cwd=root,
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"},
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "All code locations passed validation" in result.stdout + result.stderr


def test_importing_the_definitions_reads_no_environment(monkeypatch: Any) -> None:
    for name in ("ROADMAP_DATABASE_URL", "ROADMAP_LLM_API_KEY", "ROADMAP_GENERATOR"):
        monkeypatch.delenv(name, raising=False)
    defs = build_definitions()
    database = defs.resources["database"]
    assert isinstance(database.url, dg.EnvVar)  # resolved at launch, not now

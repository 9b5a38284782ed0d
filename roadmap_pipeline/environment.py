"""The environment variables the code location resolves at launch (through ``dg.EnvVar``).

``definitions.py`` reads none of them at import; Dagster resolves them when a run or a sensor
starts. The CLI commands that start Dagster (``roadmap-pipeline demo``/``dev``) fill in these
defaults for whatever is unset, so a newcomer needs to set nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from pathlib import Path

DATABASE_URL = "ROADMAP_DATABASE_URL"
GENERATOR = "ROADMAP_GENERATOR"
LLM_BASE_URL = "ROADMAP_LLM_BASE_URL"
LLM_MODEL = "ROADMAP_LLM_MODEL"
LLM_API_KEY = "ROADMAP_LLM_API_KEY"  # a secret: never logged, never in config files
FAULTS = "ROADMAP_FAULTS"

EMBEDDED_DIR = ".roadmap_pipeline"

DESCRIPTIONS: Mapping[str, str] = {
    DATABASE_URL: "our database: sqlite:///path (embedded default) or postgresql://...",
    GENERATOR: "offline (default, deterministic, no network) or openai (OpenAI-compatible API)",
    LLM_BASE_URL: "OpenAI-compatible endpoint for ROADMAP_GENERATOR=openai, e.g. https://.../v1",
    LLM_MODEL: "model name for ROADMAP_GENERATOR=openai",
    LLM_API_KEY: "API key for ROADMAP_GENERATOR=openai (secret; may be empty offline)",
    FAULTS: "a fault-injection plan as JSON (tests, demo); empty: off",
}


def embedded_database_url(root: Path) -> str:
    return f"sqlite:///{(root / EMBEDDED_DIR / 'roadmap_pipeline.db').resolve()}"


def defaults(root: Path) -> dict[str, str]:
    return {
        DATABASE_URL: embedded_database_url(root),
        GENERATOR: "offline",
        LLM_BASE_URL: "",
        LLM_MODEL: "",
        LLM_API_KEY: "",
        FAULTS: "",
    }


def with_defaults(env: MutableMapping[str, str], root: Path) -> MutableMapping[str, str]:
    """Fill in the default of every variable that is unset (set ones are kept)."""
    for name, value in defaults(root).items():
        env.setdefault(name, value)
    return env

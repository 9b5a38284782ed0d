"""Dagster partition keys for roadmaps and concepts.

Dagster does not validate dynamic partition keys, and some characters break it silently: ``|``
splits multi-partition keys, ``,`` breaks selection in the UI and ``...`` is range syntax. Keys
made of ``[A-Za-z0-9_.:@/-]`` are safe, so ids outside that alphabet are rejected with a clear
error instead of being encoded into something an operator cannot read back.

A concept key is ``<roadmap_id>/<concept id within the roadmap>``: the service's ids look like
``<roadmap_id>:c-1-2-3`` (globally unique), older ones are short and unique only per roadmap. The
``<roadmap_id>:`` prefix is stripped for the key; the stored concept_id is never changed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_ROADMAP_ID = re.compile(r"[A-Za-z0-9_.:@-]+")
_CONCEPT_PART = re.compile(r"[A-Za-z0-9_.:@/-]+")
MAX_KEY_LENGTH = 255


class UnsafeIdError(ValueError):
    """An id that cannot become a Dagster partition key."""


def _check(value: str, pattern: re.Pattern[str], label: str) -> None:
    if not value:
        raise UnsafeIdError(f"{label} is empty")
    if not pattern.fullmatch(value):
        bad = sorted({ch for ch in value if not pattern.fullmatch(ch)})
        shown = ", ".join(repr(ch) for ch in bad)
        allowed = "letters, digits and _ . : @ -" + (" /" if pattern is _CONCEPT_PART else "")
        raise UnsafeIdError(
            f"{label} contains characters that are unsafe in a partition key ({shown}); "
            f"allowed are {allowed}"
        )
    if "..." in value:
        raise UnsafeIdError(f"{label} contains '...', which Dagster reads as a key range")
    if len(value) > MAX_KEY_LENGTH:
        raise UnsafeIdError(f"{label} is longer than {MAX_KEY_LENGTH} characters")


def check_roadmap_id(roadmap_id: str) -> str:
    """Return the roadmap id, which is also its partition key, or raise UnsafeIdError."""
    _check(roadmap_id, _ROADMAP_ID, f"roadmap id {roadmap_id!r}")
    return roadmap_id


def short_concept_id(roadmap_id: str, concept_id: str) -> str:
    """The concept's id within its roadmap: the service's ``<roadmap_id>:`` prefix removed."""
    prefix = f"{roadmap_id}:"
    return concept_id[len(prefix) :] if concept_id.startswith(prefix) else concept_id


def check_concept_id(roadmap_id: str, concept_id: str) -> str:
    """The concept's id within its roadmap (the key's second half), or UnsafeIdError.

    Only the concept's part is checked, so a bad roadmap id is reported once, not per concept.
    """
    short = short_concept_id(roadmap_id, concept_id)
    _check(short, _CONCEPT_PART, f"concept id {concept_id!r} of roadmap {roadmap_id!r}")
    return short


def concept_key(roadmap_id: str, concept_id: str) -> str:
    """The partition key of a concept, or UnsafeIdError naming the offending id."""
    check_roadmap_id(roadmap_id)
    short = check_concept_id(roadmap_id, concept_id)
    key = f"{roadmap_id}/{short}"
    if len(key) > MAX_KEY_LENGTH:
        raise UnsafeIdError(f"partition key {key!r} is longer than {MAX_KEY_LENGTH} characters")
    return key


def split_concept_key(key: str) -> tuple[str, str]:
    """``(roadmap_id, short concept id)`` of a concept partition key."""
    roadmap_id, sep, short = key.partition("/")
    if not sep or not roadmap_id or not short:
        raise UnsafeIdError(f"{key!r} is not a concept partition key (<roadmap_id>/<concept>)")
    return roadmap_id, short


def resolve_concept_id(roadmap_id: str, short: str, stored_ids: Iterable[str]) -> str:
    """The stored concept_id that a key's short id stands for, among a roadmap's concept ids."""
    candidates = {short, f"{roadmap_id}:{short}"}
    found = [cid for cid in stored_ids if cid in candidates]
    if not found:
        raise KeyError(f"roadmap {roadmap_id!r} has no concept {short!r}")
    if len(found) > 1:
        raise KeyError(f"roadmap {roadmap_id!r} has both {found[0]!r} and {found[1]!r}")
    return found[0]

"""The consistency rules (DOMAIN.md's invariants), each written once, as set-based SQL.

One statement evaluates every rule for a scope: one concept, one roadmap, a set of roadmaps or
the whole fleet; only the ``WHERE`` on roadmap_id (and concept_id) changes, never the rules. The
checks, the repair and the tests all call :func:`find_violations`.

Layout of the statement:

- document CTEs (dialect-specific, because JSON functions differ): flatten framework_data into
  one row per concept (``entries``), structural problems (``framework_problems``), the names in
  each task's failed_concepts (``task_failed_names``) and invalid content rows
  (``content_problems``);
- portable CTEs: the concept's three items in long form (``item_refs``), the *current* row of
  each item (``item_rows``, the one definition of "current" that sync uses too), all row ids
  (``item_ids``) and each task's outcome (``task_outcome``);
- one portable ``SELECT`` per rule, joined by ``UNION ALL``.

Ids are compared as text (an adopted database may keep them as ``uuid``), framework_data is read
as ``jsonb`` on PostgreSQL whether the column is ``json`` or ``jsonb``.

On PostgreSQL the fleet can also be checked in slices of roadmap ids on several connections at
once, in one snapshot (:func:`find_fleet_violations`): the same findings as the one statement.
"""

from __future__ import annotations

import functools
import itertools
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pydantic import BaseModel
from sqlalchemy import Connection, Engine, String, bindparam, text

from roadmap_pipeline.store.activity import ActiveWork, WorkInProgress
from roadmap_pipeline.store.database import connect
from roadmap_pipeline.store.schema import (
    CONTENT_CHECK_INDEXES,
    QUIZ_CHECK_ARGS,
    QUIZ_CHECK_FUNCTION,
    RESOURCES_CHECK_ARGS,
    RESOURCES_CHECK_FUNCTION,
    UNIQUENESS_INDEXES,
    content_check_call,
)


class Rule(StrEnum):
    ITEM_NOT_MARKED = "item_not_marked"
    REF_MISSING = "ref_missing"
    REF_MISMATCH = "ref_mismatch"
    MULTIPLE_CURRENT = "multiple_current"
    ORPHAN_CONTENT = "orphan_content"
    TASK_STATUS_MISMATCH = "task_status_mismatch"
    INVALID_CONTENT = "invalid_content"
    ZOMBIE_STATUS = "zombie_status"
    MALFORMED_FRAMEWORK = "malformed_framework"


RULE_DESCRIPTIONS: dict[Rule, str] = {
    Rule.ITEM_NOT_MARKED: "a current row exists but framework_data does not say completed",
    Rule.REF_MISSING: "framework_data says completed but the row (or the referenced id) is missing",
    Rule.REF_MISMATCH: "a reference, version, content_ref or count differs from the current row",
    Rule.MULTIPLE_CURRENT: "more than one latest tutorial, resources row or quiz row (or a "
    "tutorial version stored twice)",
    Rule.ORPHAN_CONTENT: "content rows for a concept that framework_data does not contain",
    Rule.TASK_STATUS_MISMATCH: "the task's status or failed_concepts disagree with its items",
    Rule.INVALID_CONTENT: "a stored item breaks invariant 7 (answers, scores, counts)",
    Rule.ZOMBIE_STATUS: "pending/generating/processing with no work queued or running for it",
    Rule.MALFORMED_FRAMEWORK: "framework_data does not have the shape of a roadmap tree",
}

# Rules that rematerializing framework_entry / framework_data (the repair) fixes. The others need
# a human: content that is invalid must be regenerated or corrected, orphan rows and duplicate
# resources/quiz rows may be read by learners, a malformed document must be rewritten.
REPAIRABLE_RULES = frozenset(
    {
        Rule.ITEM_NOT_MARKED,
        Rule.REF_MISSING,
        Rule.REF_MISMATCH,
        Rule.TASK_STATUS_MISMATCH,
        Rule.ZOMBIE_STATUS,
    }
)


# The detail of a multiple_current violation about several rows claiming to be current. For a
# tutorial the repair demotes all but the highest version (rows kept); for resources and quiz rows,
# and for a tutorial version stored twice, a human decides which row learners keep.
LATEST_DUPLICATE = " rows are current"


def is_repairable(violation: Violation) -> bool:
    """Whether ``repair`` fixes this violation without deleting or rewriting content."""
    if violation.rule in REPAIRABLE_RULES:
        return True
    return (
        violation.rule is Rule.MULTIPLE_CURRENT
        and violation.item == "tutorial"
        and violation.detail.endswith(LATEST_DUPLICATE)
    )


class Violation(BaseModel, frozen=True):
    roadmap_id: str
    concept_id: str | None
    item: str | None
    rule: Rule
    detail: str


@dataclass(frozen=True)
class Scope:
    """What to check: the fleet (``roadmap_ids is None``), some roadmaps, or one concept; a fleet
    scope may be cut to the roadmap ids in ``[from_id, to_id)`` (a slice, see fleet_slices)."""

    roadmap_ids: tuple[str, ...] | None = None
    concept_id: str | None = None
    from_id: str | None = None
    to_id: str | None = None

    @classmethod
    def fleet(cls) -> Scope:
        return cls()

    @classmethod
    def fleet_slice(cls, from_id: str | None, to_id: str | None) -> Scope:
        return cls(from_id=from_id, to_id=to_id)

    @classmethod
    def roadmaps(cls, roadmap_ids: Iterable[str]) -> Scope:
        return cls(roadmap_ids=tuple(dict.fromkeys(roadmap_ids)))

    @classmethod
    def roadmap(cls, roadmap_id: str) -> Scope:
        return cls(roadmap_ids=(roadmap_id,))

    @classmethod
    def concept(cls, roadmap_id: str, concept_id: str) -> Scope:
        return cls(roadmap_ids=(roadmap_id,), concept_id=concept_id)

    def params(self) -> dict[str, Any]:
        return {
            "fleet": self.roadmap_ids is None,
            "roadmap_ids": list(self.roadmap_ids or ()),
            "concept_id": self.concept_id,
            "from_id": self.from_id,
            "to_id": self.to_id,
        }


# --- scope predicates (bound parameters; CAST lets PostgreSQL type a NULL parameter) ----------
IN_SCOPE = (
    "(:fleet OR {col} IN :roadmap_ids)"
    " AND (CAST(:from_id AS TEXT) IS NULL OR {col} >= CAST(:from_id AS TEXT))"
    " AND (CAST(:to_id AS TEXT) IS NULL OR {col} < CAST(:to_id AS TEXT))"
)
CONCEPT_IN_SCOPE = "(CAST(:concept_id AS TEXT) IS NULL OR {col} = CAST(:concept_id AS TEXT))"
# Soft-deleted roadmaps in scope, listed once per statement (a handful of rows): every content
# table tests its rows against this list (a hashed lookup), never joins roadmap_metadata again.
DELETED_ROADMAPS = f"""
deleted_roadmaps AS MATERIALIZED (
    SELECT roadmap_id FROM roadmap_metadata
    WHERE deleted_at IS NOT NULL AND {IN_SCOPE.format(col="roadmap_id")}
)"""
NOT_DELETED = "{col} NOT IN (SELECT roadmap_id FROM deleted_roadmaps)"


def _content_scope(alias: str) -> str:
    """Rows of a content table (aliased ``alias``) that belong to the scope."""
    return " AND ".join(
        (
            IN_SCOPE.format(col=f"{alias}.roadmap_id"),
            CONCEPT_IN_SCOPE.format(col=f"{alias}.concept_id"),
            NOT_DELETED.format(col=f"{alias}.roadmap_id"),
        )
    )


# --- document CTEs, PostgreSQL -------------------------------------------------------------------
# Built for the fleet: every document is expanded once, in one pass that yields each concept's
# fields or the structural problem of its branch (``nodes``, the one materialised CTE of size);
# every content document is parsed once (an ``OFFSET 0`` subquery keeps a json -> jsonb cast from
# being repeated per reference) and reduced to its problems in the same pass, so only problem rows
# are kept. Where migration 0005's row functions and partial indexes hold, only the rows they
# name as invalid are parsed at all (the database judged every row when it was written). JIT is
# switched off for the statement (see find_violations).
_PG_CONCEPT_FIELD = "n.value ->> '{key}'"
_RESOURCE_TYPES = "'article', 'video', 'book', 'course', 'documentation', 'tool'"
# A content document as jsonb, decompressed once: ``#> '{}'`` returns the (detoasted) document
# itself, and the OFFSET 0 subquery keeps it from being recomputed per reference. Otherwise every
# function applied to a compressed jsonb value decompresses it again.
_PG_DOCUMENT = "SELECT CAST({column} AS jsonb) #> '{{}}' AS doc OFFSET 0"
# The first problem of a document, by position, without an ordered aggregate (which would sort
# once per row): the position, zero-padded, sorts the problems as text and is cut off again.
# The label ("question #3: ") is composed here, for problems only: composing it per element would
# cost a conversion and three concatenations for every valid element too.
_PG_FIRST_PROBLEM = (
    "SUBSTR(MIN(LPAD(CAST(p.ord AS TEXT), 10, '0') || '{label} #' || p.ord || ': ' || p.problem) "
    "FILTER (WHERE p.problem IS NOT NULL), 11)"
)
# The valid answers of a question with n options, for n < 33: [[], [0], [0, 1], ...]. A
# containment test against it replaces a per-question subquery; longer lists take the subquery.
_PG_OPTION_INDEXES = (
    "'[" + ",".join("[" + ",".join(str(i) for i in range(n)) + "]" for n in range(33)) + "]'::jsonb"
)

# Invariant 7 on one content row ``x`` (its document ``x.doc``, ``x.is_list``, its stored
# counts): the elements reduced to their problems (``e``), and whether the row breaks the rule.
# The fleet statement and the row functions of migration 0005 (see content_function_sql) share
# these texts, so a row is judged the same way in both.
_PG_RESOURCE_ELEMENTS = f"""(
        SELECT COUNT(p.problem) AS n_bad,
               {_PG_FIRST_PROBLEM.format(label="resource")} AS first_bad
        FROM (
            SELECT el.ord,
                   CASE WHEN (el.value -> 'relevance_score') BETWEEN '0'::jsonb AND '1'::jsonb
                         AND el.value ->> 'type' IN ({_RESOURCE_TYPES})
                        THEN NULL  -- the usual case first: jsonb orders numbers after strings
                                   -- and nulls, before booleans, arrays and objects
                        WHEN jsonb_typeof(el.value) IS DISTINCT FROM 'object'
                        THEN 'is not an object'
                        WHEN jsonb_typeof(el.value -> 'relevance_score')
                             IS DISTINCT FROM 'number'
                        THEN 'relevance_score ' || COALESCE(el.value ->> 'relevance_score', 'null')
                             || ' is not a number'
                        WHEN el.value -> 'relevance_score' < '0'::jsonb
                          OR el.value -> 'relevance_score' > '1'::jsonb
                        THEN 'relevance_score ' || (el.value ->> 'relevance_score')
                             || ' is not within 0..1'
                        WHEN COALESCE(el.value ->> 'type', '') NOT IN
                             ('article', 'video', 'book', 'course', 'documentation', 'tool')
                        THEN 'type ' || COALESCE(el.value ->> 'type', 'null') || ' is not allowed'
                   END AS problem
            FROM jsonb_array_elements(CASE WHEN x.is_list THEN x.doc END)
                 WITH ORDINALITY AS el(value, ord)
            OFFSET 0  -- not pulled up: each problem is computed once, not once per aggregate
        ) AS p
    )"""
_PG_RESOURCES_INVALID = (
    "NOT x.is_list OR e.n_bad > 0 OR x.resources_count IS DISTINCT FROM jsonb_array_length(x.doc)"
)
_PG_QUIZ_ELEMENTS = f"""(
        SELECT COUNT(*) AS n,
               COUNT(*) FILTER (WHERE p.difficulty = 'easy') AS n_easy,
               COUNT(*) FILTER (WHERE p.difficulty = 'medium') AS n_medium,
               COUNT(*) FILTER (WHERE p.difficulty = 'hard') AS n_hard,
               COUNT(p.problem) AS n_bad,
               {_PG_FIRST_PROBLEM.format(label="question")} AS first_bad
        FROM (
            SELECT el.ord, el.value ->> 'difficulty' AS difficulty,
                   CASE WHEN jsonb_typeof(el.value -> 'options') IS DISTINCT FROM 'array'
                          OR jsonb_typeof(el.value -> 'correct_answer') IS DISTINCT FROM 'array'
                        THEN 'options or correct_answer is not a list'
                        WHEN COALESCE(el.value ->> 'question_type', '') NOT IN
                             ('single_choice', 'multiple_choice', 'true_false')
                        THEN 'question_type ' || COALESCE(el.value ->> 'question_type', 'null')
                             || ' is not allowed'
                        WHEN jsonb_array_length(el.value -> 'correct_answer') = 0
                        THEN 'has no correct answer'
                        WHEN el.value ->> 'question_type' <> 'multiple_choice'
                         AND jsonb_array_length(el.value -> 'correct_answer') <> 1
                        THEN 'a ' || (el.value ->> 'question_type') || ' question has '
                             || jsonb_array_length(el.value -> 'correct_answer') || ' answers'
                        WHEN NOT COALESCE(
                            (el.value -> 'correct_answer') <@ (
                                {_PG_OPTION_INDEXES} -> jsonb_array_length(el.value -> 'options')),
                            NOT EXISTS (
                                SELECT 1
                                FROM jsonb_array_elements(el.value -> 'correct_answer') AS a(v)
                                WHERE jsonb_typeof(a.v) IS DISTINCT FROM 'number'
                                   OR CAST(a.v #>> '{{}}' AS numeric)
                                      <> TRUNC(CAST(a.v #>> '{{}}' AS numeric))
                                   OR CAST(a.v #>> '{{}}' AS numeric) NOT BETWEEN 0
                                      AND jsonb_array_length(el.value -> 'options') - 1))
                        THEN 'correct_answer ' || (el.value ->> 'correct_answer')
                             || ' does not index its '
                             || jsonb_array_length(el.value -> 'options') || ' options'
                   END AS problem
            FROM jsonb_array_elements(CASE WHEN x.is_list THEN x.doc END)
                 WITH ORDINALITY AS el(value, ord)
            OFFSET 0  -- not pulled up: each problem is computed once, not once per aggregate
        ) AS p
    )"""
_PG_QUIZ_INVALID = (
    "NOT x.is_list OR e.n_bad > 0"
    " OR x.total_questions IS DISTINCT FROM e.n OR x.easy_count IS DISTINCT FROM e.n_easy"
    " OR x.medium_count IS DISTINCT FROM e.n_medium OR x.hard_count IS DISTINCT FROM e.n_hard"
)

# A document with no structural problem, asked in one path evaluation: strict mode raises (the
# operator then yields NULL) where a stage, module or concept list is missing or not a list, or a
# stage or module is not an object; the filter selects a concept whose concept_id is not a string
# (``is unknown``: the concept is not an object or has no concept_id at all). Only false is clean.
_PG_TREE_PROBLEM = (
    "strict $.stages[*].modules[*].concepts[*] ? "
    '(!(@.concept_id.type() == "string") || (@.concept_id.type() == "string") is unknown)'
)
_PG_CONCEPTS_PATH = "strict $.stages[*].modules[*].concepts[*]"

# A well-formed document's concepts come from one path evaluation. Any other document is expanded
# level by level, each level in an OFFSET 0 subquery (never pulled up) so that its checks and the
# child list it hands down are computed once per element; a branch yields its concepts or the
# structural problem that ends it.
_PG_DOCUMENTS = f"""
nodes AS (
    SELECT r.roadmap_id, n.problem, n.concept_id,
           {_PG_CONCEPT_FIELD.format(key="content_status")} AS tutorial_status,
           {_PG_CONCEPT_FIELD.format(key="tutorial_id")} AS tutorial_ref,
           {_PG_CONCEPT_FIELD.format(key="content_ref")} AS content_ref,
           {_PG_CONCEPT_FIELD.format(key="content_version")} AS content_version,
           {_PG_CONCEPT_FIELD.format(key="resources_status")} AS resources_status,
           {_PG_CONCEPT_FIELD.format(key="resources_id")} AS resources_ref,
           {_PG_CONCEPT_FIELD.format(key="resources_count")} AS resources_count,
           {_PG_CONCEPT_FIELD.format(key="quiz_status")} AS quiz_status,
           {_PG_CONCEPT_FIELD.format(key="quiz_id")} AS quiz_ref,
           {_PG_CONCEPT_FIELD.format(key="quiz_questions_count")} AS quiz_count
    FROM (SELECT d.roadmap_id, d.doc,
                 COALESCE(NOT (d.doc @? '{_PG_TREE_PROBLEM}'), FALSE) AS well_formed
          FROM (SELECT roadmap_id, CAST(framework_data AS jsonb) #> '{{}}' AS doc
                FROM roadmap_metadata
                WHERE deleted_at IS NULL AND {IN_SCOPE.format(col="roadmap_id")}
                OFFSET 0) AS d
          OFFSET 0) AS r
    CROSS JOIN LATERAL (
        SELECT CAST(NULL AS TEXT) AS problem, c.value, c.value ->> 'concept_id' AS concept_id
        FROM jsonb_path_query(CASE WHEN r.well_formed THEN r.doc END,
                              '{_PG_CONCEPTS_PATH}') AS c(value)
        UNION ALL
        SELECT CASE
                 WHEN x.stages IS NULL THEN 'framework_data is not an object with a stages list'
                 WHEN s.ord IS NOT NULL AND NOT s.is_list
                 THEN 'stage #' || s.ord || ' has no modules list'
                 WHEN m.ord IS NOT NULL AND NOT m.is_list
                 THEN 'stage #' || s.ord || ' module #' || m.ord || ' has no concepts list'
                 WHEN c.value IS NOT NULL AND c.concept_id IS NULL
                 THEN 'a concept in stage #' || s.ord || ' module #' || m.ord
                      || ' has no concept_id'
               END,
               c.value, c.concept_id
        FROM (SELECT CASE WHEN jsonb_typeof(r.doc -> 'stages') = 'array'
                          THEN r.doc -> 'stages' END AS stages
              WHERE NOT r.well_formed OFFSET 0) AS x
        LEFT JOIN LATERAL (
            SELECT e.ord, y.children IS NOT NULL AS is_list, y.children
            FROM jsonb_array_elements(x.stages) WITH ORDINALITY AS e(value, ord)
            CROSS JOIN LATERAL (
                SELECT CASE WHEN jsonb_typeof(e.value -> 'modules') = 'array'
                            THEN e.value -> 'modules' END AS children OFFSET 0) AS y
            OFFSET 0) AS s ON TRUE
        LEFT JOIN LATERAL (
            SELECT e.ord, y.children IS NOT NULL AS is_list, y.children
            FROM jsonb_array_elements(s.children) WITH ORDINALITY AS e(value, ord)
            CROSS JOIN LATERAL (
                SELECT CASE WHEN jsonb_typeof(e.value -> 'concepts') = 'array'
                            THEN e.value -> 'concepts' END AS children OFFSET 0) AS y
            OFFSET 0) AS m ON TRUE
        LEFT JOIN LATERAL (
            SELECT e.value,
                   CASE WHEN jsonb_typeof(e.value -> 'concept_id') = 'string'
                        THEN e.value ->> 'concept_id' END AS concept_id
            FROM jsonb_array_elements(m.children) AS e(value)
            OFFSET 0) AS c ON TRUE
    ) AS n
),
entries AS NOT MATERIALIZED (
    SELECT roadmap_id, concept_id, tutorial_status, tutorial_ref, content_ref, content_version,
           resources_status, resources_ref, resources_count, quiz_status, quiz_ref, quiz_count
    FROM nodes
    WHERE problem IS NULL AND concept_id IS NOT NULL
      AND {CONCEPT_IN_SCOPE.format(col="concept_id")}
),
framework_problems AS NOT MATERIALIZED (
    SELECT roadmap_id, CAST(NULL AS TEXT) AS concept_id, problem AS detail
    FROM nodes WHERE problem IS NOT NULL
),
task_failed_names AS (
    SELECT t.task_id,
           CASE jsonb_typeof(f.value) WHEN 'string' THEN f.value #>> '{{}}'
                ELSE f.value ->> 'concept_id' END AS name
    FROM roadmap_tasks t
    CROSS JOIN LATERAL jsonb_array_elements(
        CASE WHEN jsonb_typeof(CAST(t.failed_concepts AS jsonb)) = 'array'
             THEN CAST(t.failed_concepts AS jsonb) ELSE '[]'::jsonb END) AS f(value)
    WHERE {IN_SCOPE.format(col="t.roadmap_id")}
),
resource_checks AS (
    SELECT x.roadmap_id, x.concept_id, x.row_id, x.resources_count, x.is_list,
           CASE WHEN x.is_list THEN jsonb_array_length(x.doc) END AS n, e.n_bad, e.first_bad
    FROM (SELECT d.roadmap_id, d.concept_id, CAST(d.id AS TEXT) AS row_id, d.resources_count,
                 COALESCE(jsonb_typeof(y.doc) = 'array', FALSE) AS is_list, y.doc
          FROM resource_recommendation_metadata d
          CROSS JOIN LATERAL ({_PG_DOCUMENT.format(column="d.resources")}) AS y
          WHERE {_content_scope("d")}{{resources_candidates}}) AS x
    CROSS JOIN LATERAL {_PG_RESOURCE_ELEMENTS} AS e
    WHERE {_PG_RESOURCES_INVALID}
),
quiz_checks AS (
    SELECT x.roadmap_id, x.concept_id, x.row_id, x.total_questions, x.easy_count,
           x.medium_count, x.hard_count, x.is_list,
           e.n, e.n_easy, e.n_medium, e.n_hard, e.n_bad, e.first_bad
    FROM (SELECT d.roadmap_id, d.concept_id, CAST(d.quiz_id AS TEXT) AS row_id,
                 d.total_questions, d.easy_count, d.medium_count, d.hard_count,
                 COALESCE(jsonb_typeof(y.doc) = 'array', FALSE) AS is_list, y.doc
          FROM quiz_metadata d
          CROSS JOIN LATERAL ({_PG_DOCUMENT.format(column="d.questions")}) AS y
          WHERE {_content_scope("d")}{{quiz_candidates}}) AS x
    CROSS JOIN LATERAL {_PG_QUIZ_ELEMENTS} AS e
    WHERE {_PG_QUIZ_INVALID}
),
{{content_problems}}"""

# --- document CTEs, SQLite -----------------------------------------------------------------------
# json_each over a non-array would iterate an object's members, and json_type() of text that is
# not JSON raises: every level is guarded by CASE before it is expanded.
_SQLITE_DOCUMENTS = f"""
roadmaps AS (
    SELECT roadmap_id, framework_data AS doc
    FROM roadmap_metadata
    WHERE deleted_at IS NULL AND json_valid(framework_data)
      AND {IN_SCOPE.format(col="roadmap_id")}
),
stage_nodes AS (
    SELECT r.roadmap_id, s.value AS node, s.type AS node_type, s.key + 1 AS stage_no
    FROM roadmaps r,
         json_each(CASE WHEN json_type(r.doc, '$.stages') = 'array'
                        THEN json_extract(r.doc, '$.stages') ELSE '[]' END) AS s
),
module_nodes AS (
    SELECT st.roadmap_id, m.value AS node, m.type AS node_type, st.stage_no,
           m.key + 1 AS module_no
    FROM stage_nodes st,
         json_each(CASE WHEN st.node_type = 'object'
                         AND json_type(st.node, '$.modules') = 'array'
                        THEN json_extract(st.node, '$.modules') ELSE '[]' END) AS m
),
concept_nodes AS (
    SELECT mo.roadmap_id, c.value AS node, c.type AS node_type, mo.stage_no, mo.module_no
    FROM module_nodes mo,
         json_each(CASE WHEN mo.node_type = 'object'
                         AND json_type(mo.node, '$.concepts') = 'array'
                        THEN json_extract(mo.node, '$.concepts') ELSE '[]' END) AS c
),
entries AS (
    SELECT roadmap_id,
           json_extract(node, '$.concept_id') AS concept_id,
           json_extract(node, '$.content_status') AS tutorial_status,
           CAST(json_extract(node, '$.tutorial_id') AS TEXT) AS tutorial_ref,
           json_extract(node, '$.content_ref') AS content_ref,
           json_extract(node, '$.content_version') AS content_version,
           json_extract(node, '$.resources_status') AS resources_status,
           CAST(json_extract(node, '$.resources_id') AS TEXT) AS resources_ref,
           CAST(json_extract(node, '$.resources_count') AS TEXT) AS resources_count,
           json_extract(node, '$.quiz_status') AS quiz_status,
           CAST(json_extract(node, '$.quiz_id') AS TEXT) AS quiz_ref,
           CAST(json_extract(node, '$.quiz_questions_count') AS TEXT) AS quiz_count
    FROM concept_nodes
    WHERE node_type = 'object' AND json_type(node, '$.concept_id') = 'text'
      AND {CONCEPT_IN_SCOPE.format(col="json_extract(node, '$.concept_id')")}
),
framework_problems AS (
    SELECT roadmap_id, CAST(NULL AS TEXT) AS concept_id,
           'framework_data is not valid JSON' AS detail
    FROM roadmap_metadata
    WHERE deleted_at IS NULL AND NOT json_valid(framework_data)
      AND {IN_SCOPE.format(col="roadmap_id")}
    UNION ALL
    SELECT roadmap_id, NULL, 'framework_data is not an object with a stages list'
    FROM roadmaps
    WHERE json_type(doc) <> 'object' OR COALESCE(json_type(doc, '$.stages'), '') <> 'array'
    UNION ALL
    SELECT roadmap_id, NULL, 'stage #' || stage_no || ' has no modules list'
    FROM stage_nodes
    WHERE node_type <> 'object' OR COALESCE(json_type(node, '$.modules'), '') <> 'array'
    UNION ALL
    SELECT roadmap_id, NULL,
           'stage #' || stage_no || ' module #' || module_no || ' has no concepts list'
    FROM module_nodes
    WHERE node_type <> 'object' OR COALESCE(json_type(node, '$.concepts'), '') <> 'array'
    UNION ALL
    SELECT roadmap_id, NULL,
           'a concept in stage #' || stage_no || ' module #' || module_no || ' has no concept_id'
    FROM concept_nodes
    WHERE node_type <> 'object' OR COALESCE(json_type(node, '$.concept_id'), '') <> 'text'
),
task_failed_names AS (
    SELECT t.task_id,
           CASE f.type WHEN 'text' THEN f.value
                WHEN 'object' THEN json_extract(f.value, '$.concept_id') END AS name
    FROM roadmap_tasks t,
         json_each(CASE WHEN json_valid(t.failed_concepts)
                         AND json_type(t.failed_concepts) = 'array'
                        THEN t.failed_concepts ELSE '[]' END) AS f
    WHERE {IN_SCOPE.format(col="t.roadmap_id")}
),
resource_docs AS (
    SELECT d.roadmap_id, d.concept_id, CAST(d.id AS TEXT) AS row_id, d.resources_count,
           CASE WHEN json_valid(d.resources) THEN d.resources END AS doc
    FROM resource_recommendation_metadata d WHERE {_content_scope("d")}
),
resource_elements AS (
    SELECT x.row_id, e.key + 1 AS ord,
           CASE WHEN e.type <> 'object' THEN 'is not an object'
                WHEN COALESCE(json_type(e.value, '$.relevance_score'), '')
                     NOT IN ('integer', 'real')
                THEN 'relevance_score '
                     || COALESCE(json_extract(e.value, '$.relevance_score'), 'null')
                     || ' is not a number'
                WHEN json_extract(e.value, '$.relevance_score') NOT BETWEEN 0 AND 1
                THEN 'relevance_score ' || json_extract(e.value, '$.relevance_score')
                     || ' is not within 0..1'
                WHEN COALESCE(json_extract(e.value, '$.type'), '') NOT IN
                     ('article', 'video', 'book', 'course', 'documentation', 'tool')
                THEN 'type ' || COALESCE(json_extract(e.value, '$.type'), 'null')
                     || ' is not allowed'
           END AS problem
    FROM resource_docs x,
         json_each(CASE WHEN json_type(x.doc) = 'array' THEN x.doc ELSE '[]' END) AS e
),
resource_checks AS (
    SELECT x.roadmap_id, x.concept_id, x.row_id, x.resources_count,
           COALESCE(json_type(x.doc), '') = 'array' AS is_list,
           CASE WHEN json_type(x.doc) = 'array' THEN json_array_length(x.doc) END AS n,
           COALESCE(b.n_bad, 0) AS n_bad,
           'resource #' || CAST(SUBSTR(b.first, 1, 10) AS INTEGER) || ': '
           || SUBSTR(b.first, 11) AS first_bad
    FROM resource_docs x
    LEFT JOIN (SELECT row_id, COUNT(*) AS n_bad, MIN(printf('%010d', ord) || problem) AS first
               FROM resource_elements WHERE problem IS NOT NULL GROUP BY row_id) AS b
           ON b.row_id = x.row_id
),
quiz_docs AS (
    SELECT d.roadmap_id, d.concept_id, CAST(d.quiz_id AS TEXT) AS row_id, d.total_questions,
           d.easy_count, d.medium_count, d.hard_count,
           CASE WHEN json_valid(d.questions) THEN d.questions END AS doc
    FROM quiz_metadata d WHERE {_content_scope("d")}
),
quiz_elements AS (
    SELECT x.row_id, q.key + 1 AS ord,
           CASE WHEN q.type = 'object' THEN json_extract(q.value, '$.difficulty') END
               AS difficulty,
           CASE WHEN q.type <> 'object'
                  OR COALESCE(json_type(q.value, '$.options'), '') <> 'array'
                  OR COALESCE(json_type(q.value, '$.correct_answer'), '') <> 'array'
                THEN 'options or correct_answer is not a list'
                WHEN COALESCE(json_extract(q.value, '$.question_type'), '') NOT IN
                     ('single_choice', 'multiple_choice', 'true_false')
                THEN 'question_type '
                     || COALESCE(json_extract(q.value, '$.question_type'), 'null')
                     || ' is not allowed'
                WHEN json_array_length(q.value, '$.correct_answer') = 0
                THEN 'has no correct answer'
                WHEN json_extract(q.value, '$.question_type') IN ('single_choice', 'true_false')
                 AND json_array_length(q.value, '$.correct_answer') <> 1
                THEN 'a ' || json_extract(q.value, '$.question_type') || ' question has '
                     || json_array_length(q.value, '$.correct_answer') || ' answers'
                WHEN EXISTS (
                    SELECT 1 FROM json_each(q.value, '$.correct_answer') a
                    WHERE a.type NOT IN ('integer', 'real') OR a.value <> CAST(a.value AS INTEGER)
                       OR a.value NOT BETWEEN 0 AND json_array_length(q.value, '$.options') - 1)
                THEN 'correct_answer ' || json_extract(q.value, '$.correct_answer')
                     || ' does not index its '
                     || json_array_length(q.value, '$.options') || ' options'
           END AS problem
    FROM quiz_docs x,
         json_each(CASE WHEN json_type(x.doc) = 'array' THEN x.doc ELSE '[]' END) AS q
),
quiz_checks AS (
    SELECT x.roadmap_id, x.concept_id, x.row_id, x.total_questions, x.easy_count,
           x.medium_count, x.hard_count, COALESCE(json_type(x.doc), '') = 'array' AS is_list,
           COALESCE(c.n, 0) AS n, COALESCE(c.n_easy, 0) AS n_easy,
           COALESCE(c.n_medium, 0) AS n_medium, COALESCE(c.n_hard, 0) AS n_hard,
           COALESCE(c.n_bad, 0) AS n_bad,
           'question #' || CAST(SUBSTR(c.first, 1, 10) AS INTEGER) || ': '
           || SUBSTR(c.first, 11) AS first_bad
    FROM quiz_docs x
    LEFT JOIN (SELECT row_id, COUNT(*) AS n,
                      SUM(CASE WHEN difficulty = 'easy' THEN 1 ELSE 0 END) AS n_easy,
                      SUM(CASE WHEN difficulty = 'medium' THEN 1 ELSE 0 END) AS n_medium,
                      SUM(CASE WHEN difficulty = 'hard' THEN 1 ELSE 0 END) AS n_hard,
                      SUM(CASE WHEN problem IS NOT NULL THEN 1 ELSE 0 END) AS n_bad,
                      MIN(CASE WHEN problem IS NOT NULL
                               THEN printf('%010d', ord) || problem END) AS first
               FROM quiz_elements GROUP BY row_id) AS c
           ON c.row_id = x.row_id
),
{{content_problems}}"""

# Both dialects reduce every content row to (is_list, n, n_bad, first_bad, counts); the wording
# of the problems is shared.
_CONTENT_PROBLEMS = """content_problems AS (
    SELECT roadmap_id, concept_id, 'resources' AS item, row_id,
           'resources is not a list' AS detail
    FROM resource_checks WHERE NOT is_list
    UNION ALL
    SELECT roadmap_id, concept_id, 'resources', row_id,
           'resources_count is ' || COALESCE(CAST(resources_count AS TEXT), 'null') || ' but '
           || CAST(n AS TEXT) || ' resources are stored'
    FROM resource_checks WHERE is_list AND (resources_count IS NULL OR resources_count <> n)
    UNION ALL
    SELECT roadmap_id, concept_id, 'resources', row_id,
           first_bad || CASE WHEN n_bad > 1
                             THEN ' (and ' || CAST(n_bad - 1 AS TEXT) || ' more)' ELSE '' END
    FROM resource_checks WHERE n_bad > 0
    UNION ALL
    SELECT roadmap_id, concept_id, 'quiz', row_id, 'questions is not a list'
    FROM quiz_checks WHERE NOT is_list
    UNION ALL
    SELECT roadmap_id, concept_id, 'quiz', row_id,
           'counts (total ' || COALESCE(CAST(total_questions AS TEXT), 'null') || ', easy '
           || COALESCE(CAST(easy_count AS TEXT), 'null') || ', medium '
           || COALESCE(CAST(medium_count AS TEXT), 'null') || ', hard '
           || COALESCE(CAST(hard_count AS TEXT), 'null') || ') differ from the '
           || CAST(n AS TEXT) || ' stored questions'
    FROM quiz_checks
    WHERE is_list
      AND (total_questions IS NULL OR total_questions <> n
           OR easy_count IS NULL OR easy_count <> n_easy
           OR medium_count IS NULL OR medium_count <> n_medium
           OR hard_count IS NULL OR hard_count <> n_hard)
    UNION ALL
    SELECT roadmap_id, concept_id, 'quiz', row_id,
           first_bad || CASE WHEN n_bad > 1
                             THEN ' (and ' || CAST(n_bad - 1 AS TEXT) || ' more)' ELSE '' END
    FROM quiz_checks WHERE n_bad > 0
)"""


# --- portable CTEs: current rows ---------------------------------------------------------------
# The one definition of the *current* row of an item, shared by the rules and by sync/repair:
# tutorials: the is_latest row (highest version first when several claim it);
# resources and quiz: the most recently generated row (then the highest id).
# item_rows has one row per (roadmap, concept, item) that has any row at all; its row_id is NULL
# when none is current (tutorial versions of which none is latest). has_more: a second row
# claims to be current as well. It lists tutorial_rows, resources_rows and quiz_rows, which the
# PostgreSQL statement joins to framework_data one item at a time (see _ITEM_CHECKS).
_ITEM_ROWS = """item_rows AS (
    SELECT * FROM tutorial_rows UNION ALL SELECT * FROM resources_rows
    UNION ALL SELECT * FROM quiz_rows
)"""


def _ranked_rows(summary: str) -> str:
    return f"""
tutorial_ranked AS (
    SELECT d.roadmap_id, d.concept_id, CAST(d.tutorial_id AS TEXT) AS row_id, d.content_url,
           {summary} AS summary, d.content_version, d.is_latest,
           ROW_NUMBER() OVER current_first AS rank_no,
           COALESCE(LEAD(d.is_latest) OVER current_first, FALSE) AS has_more
    FROM tutorial_metadata d WHERE {_content_scope("d")}
    WINDOW current_first AS (PARTITION BY d.roadmap_id, d.concept_id
                             ORDER BY d.is_latest DESC, d.content_version DESC,
                                      d.generated_at DESC, CAST(d.tutorial_id AS TEXT) DESC)
),
resources_ranked AS (
    SELECT d.roadmap_id, d.concept_id, CAST(d.id AS TEXT) AS row_id, d.resources_count,
           ROW_NUMBER() OVER current_first AS rank_no,
           LEAD(d.roadmap_id) OVER current_first IS NOT NULL AS has_more
    FROM resource_recommendation_metadata d WHERE {_content_scope("d")}
    WINDOW current_first AS (PARTITION BY d.roadmap_id, d.concept_id
                             ORDER BY d.generated_at DESC, CAST(d.id AS TEXT) DESC)
),
quiz_ranked AS (
    SELECT d.roadmap_id, d.concept_id, CAST(d.quiz_id AS TEXT) AS row_id, d.total_questions,
           ROW_NUMBER() OVER current_first AS rank_no,
           LEAD(d.roadmap_id) OVER current_first IS NOT NULL AS has_more
    FROM quiz_metadata d WHERE {_content_scope("d")}
    WINDOW current_first AS (PARTITION BY d.roadmap_id, d.concept_id
                             ORDER BY d.generated_at DESC, CAST(d.quiz_id AS TEXT) DESC)
),
tutorial_rows AS (
    SELECT roadmap_id, concept_id, 'tutorial' AS item,
           CASE WHEN is_latest THEN row_id END AS row_id,
           CASE WHEN is_latest THEN content_url END AS ref_a,
           CASE WHEN is_latest THEN 'v' || CAST(content_version AS TEXT) END AS ref_b,
           CASE WHEN is_latest THEN content_version END AS number,
           CASE WHEN is_latest THEN summary END AS summary, has_more
    FROM tutorial_ranked WHERE rank_no = 1
),
resources_rows AS (
    SELECT roadmap_id, concept_id, 'resources' AS item, row_id,
           CAST(resources_count AS TEXT) AS ref_a, CAST(NULL AS TEXT) AS ref_b,
           resources_count AS number, CAST(NULL AS TEXT) AS summary, has_more
    FROM resources_ranked WHERE rank_no = 1
),
quiz_rows AS (
    SELECT roadmap_id, concept_id, 'quiz' AS item, row_id,
           CAST(total_questions AS TEXT) AS ref_a, CAST(NULL AS TEXT) AS ref_b,
           total_questions AS number, CAST(NULL AS TEXT) AS summary, has_more
    FROM quiz_ranked WHERE rank_no = 1
),
{_ITEM_ROWS}"""


# sync needs the summary (content_summary mirrors it); the rules do not compare it, and leaving it
# out keeps the rows they sort and join narrow.
CURRENT_ROWS = f"{DELETED_ROADMAPS},\n{_ranked_rows('d.summary')}"

# The same item_rows where the unique indexes hold (UNIQUENESS_INDEXES): at most one latest
# tutorial, one resources row and one quiz row per concept, so the current row needs no ranking
# (no sort of every row) and no row can have another claiming to be current.
_CONSTRAINED_ROWS = f"""
tutorial_rows AS (
    SELECT d.roadmap_id, d.concept_id, 'tutorial' AS item, CAST(d.tutorial_id AS TEXT) AS row_id,
           d.content_url AS ref_a, 'v' || CAST(d.content_version AS TEXT) AS ref_b,
           d.content_version AS number, CAST(NULL AS TEXT) AS summary, FALSE AS has_more
    FROM tutorial_metadata d WHERE d.is_latest AND {_content_scope("d")}
    UNION ALL
    SELECT DISTINCT d.roadmap_id, d.concept_id, 'tutorial', CAST(NULL AS TEXT),
           CAST(NULL AS TEXT), CAST(NULL AS TEXT), CAST(NULL AS INTEGER), CAST(NULL AS TEXT),
           FALSE
    FROM tutorial_metadata d
    WHERE NOT d.is_latest AND {_content_scope("d")}
      AND NOT EXISTS (SELECT 1 FROM tutorial_metadata l WHERE l.is_latest
                      AND l.roadmap_id = d.roadmap_id AND l.concept_id = d.concept_id)
),
resources_rows AS (
    SELECT d.roadmap_id, d.concept_id, 'resources' AS item, CAST(d.id AS TEXT) AS row_id,
           CAST(d.resources_count AS TEXT) AS ref_a, CAST(NULL AS TEXT) AS ref_b,
           d.resources_count AS number, CAST(NULL AS TEXT) AS summary, FALSE AS has_more
    FROM resource_recommendation_metadata d WHERE {_content_scope("d")}
),
quiz_rows AS (
    SELECT d.roadmap_id, d.concept_id, 'quiz' AS item, CAST(d.quiz_id AS TEXT) AS row_id,
           CAST(d.total_questions AS TEXT) AS ref_a, CAST(NULL AS TEXT) AS ref_b,
           d.total_questions AS number, CAST(NULL AS TEXT) AS summary, FALSE AS has_more
    FROM quiz_metadata d WHERE {_content_scope("d")}
),
{_ITEM_ROWS}"""

# Does the id that framework_data references exist among the item's rows (current or not)? Only
# asked when it differs from the current row's id (an index probe per such item).
_REF_EXISTS = """CASE f.item
    WHEN 'tutorial' THEN EXISTS (
        SELECT 1 FROM tutorial_metadata x WHERE x.roadmap_id = f.roadmap_id
        AND x.concept_id = f.concept_id AND CAST(x.tutorial_id AS TEXT) = f.ref_id)
    WHEN 'resources' THEN EXISTS (
        SELECT 1 FROM resource_recommendation_metadata x WHERE x.roadmap_id = f.roadmap_id
        AND x.concept_id = f.concept_id AND CAST(x.id AS TEXT) = f.ref_id)
    ELSE EXISTS (
        SELECT 1 FROM quiz_metadata x WHERE x.roadmap_id = f.roadmap_id
        AND x.concept_id = f.concept_id AND CAST(x.quiz_id AS TEXT) = f.ref_id)
END"""

# One pass over every item: framework_data's entry fully joined to the item's rows decides the
# item rule (orphan_content, item_not_marked, ref_missing, ref_mismatch and zombie candidates
# exclude each other), and has_more tells multiple_current. Only findings are kept.
_ITEM_RULE = f"""CASE
    WHEN f.roadmap_id IS NULL
    THEN CASE WHEN r.roadmap_id NOT IN (SELECT roadmap_id FROM malformed_roadmaps)
              THEN 'orphan_content' END
    WHEN r.row_id IS NOT NULL AND COALESCE(f.status, '') <> 'completed'
    THEN 'item_not_marked'
    WHEN f.status = 'completed' AND (r.row_id IS NULL OR f.ref_id IS NULL)
    THEN 'ref_missing'
    WHEN f.status = 'completed' AND f.ref_id <> r.row_id AND NOT {_REF_EXISTS}
    THEN 'ref_missing'
    WHEN f.status = 'completed'
     AND (f.ref_id <> r.row_id OR COALESCE(f.ref_a, '') <> COALESCE(r.ref_a, '')
          OR COALESCE(f.ref_b, '') <> COALESCE(r.ref_b, ''))
    THEN 'ref_mismatch'
    WHEN f.status IN ('pending', 'generating') AND r.row_id IS NULL
     AND NOT EXISTS (SELECT 1 FROM queued q WHERE q.roadmap_id = f.roadmap_id)
    THEN 'zombie_status'
END"""

_ITEM_DETAIL = """CASE rule
    WHEN 'item_not_marked'
    THEN 'current row ' || row_id || ' exists but the status is ' || COALESCE(status, 'missing')
    WHEN 'ref_missing'
    THEN CASE WHEN row_id IS NULL THEN 'status completed but no current row exists'
              WHEN ref_id IS NULL THEN 'status completed but no id is referenced'
              ELSE 'references ' || ref_id || ', which does not exist' END
    WHEN 'ref_mismatch'
    THEN CASE WHEN ref_id <> row_id
              THEN 'references ' || ref_id || ' but the current row is ' || row_id
              WHEN COALESCE(ref_a, '') <> COALESCE(row_a, '')
              THEN a_name || ' is ' || COALESCE(ref_a, 'null') || ', the row says '
                   || COALESCE(row_a, 'null')
              ELSE b_name || ' is ' || COALESCE(ref_b, 'null') || ', the row says '
                   || COALESCE(row_b, 'null') END
    WHEN 'zombie_status' THEN 'status ' || status || ' and no row'
    WHEN 'orphan_content'
    THEN CAST(CASE item
              WHEN 'tutorial' THEN (SELECT COUNT(*) FROM tutorial_metadata x
                                    WHERE x.roadmap_id = c.roadmap_id
                                      AND x.concept_id = c.concept_id)
              WHEN 'resources' THEN (SELECT COUNT(*) FROM resource_recommendation_metadata x
                                     WHERE x.roadmap_id = c.roadmap_id
                                       AND x.concept_id = c.concept_id)
              ELSE (SELECT COUNT(*) FROM quiz_metadata x
                    WHERE x.roadmap_id = c.roadmap_id AND x.concept_id = c.concept_id)
              END AS TEXT) || ' row(s) for a concept that framework_data does not contain'
END"""

_ITEMS = "SELECT 'tutorial' AS item UNION ALL SELECT 'resources' UNION ALL SELECT 'quiz'"


def _per_item(tutorial: str, resources: str, quiz: str) -> str:
    return (
        f"CASE k.item WHEN 'tutorial' THEN {tutorial} WHEN 'resources' THEN {resources} "
        f"ELSE {quiz} END"
    )


_PORTABLE = f"""
queued AS (
    SELECT DISTINCT roadmap_id FROM roadmap_tasks
    WHERE status = 'pending' AND roadmap_id IS NOT NULL AND {IN_SCOPE.format(col="roadmap_id")}
),
malformed_roadmaps AS MATERIALIZED (SELECT DISTINCT roadmap_id FROM framework_problems),
item_refs AS (
    SELECT e.roadmap_id, e.concept_id, k.item,
           {_per_item("e.tutorial_status", "e.resources_status", "e.quiz_status")} AS status,
           {_per_item("e.tutorial_ref", "e.resources_ref", "e.quiz_ref")} AS ref_id,
           {_per_item("e.content_ref", "e.resources_count", "e.quiz_count")} AS ref_a,
           {_per_item("e.content_version", "NULL", "NULL")} AS ref_b,
           {_per_item("'content_ref'", "'resources_count'", "'quiz_questions_count'")} AS a_name,
           {_per_item("'content_version'", "NULL", "NULL")} AS b_name
    FROM entries e CROSS JOIN ({_ITEMS}) AS k
),
{{item_rows}},
item_checks AS ({{item_checks}}),
item_findings AS (
    SELECT c.roadmap_id, c.concept_id, c.item, c.rule, c.has_more, {_ITEM_DETAIL} AS detail
    FROM item_checks c WHERE c.rule IS NOT NULL OR c.has_more
),
tasks AS (
    SELECT task_id, roadmap_id, status, task_type, concept_id, failed_concepts,
           ROW_NUMBER() OVER (PARTITION BY roadmap_id
                              ORDER BY created_at DESC, task_id DESC) AS recency
    FROM roadmap_tasks
    WHERE status <> 'cancelled' AND roadmap_id IS NOT NULL
      AND {IN_SCOPE.format(col="roadmap_id")}
),
roadmap_outcome AS (
    SELECT roadmap_id,
           SUM(CASE WHEN tutorial_status = 'completed' THEN 1 ELSE 0 END
               + CASE WHEN resources_status = 'completed' THEN 1 ELSE 0 END
               + CASE WHEN quiz_status = 'completed' THEN 1 ELSE 0 END) AS n_completed,
           SUM(CASE WHEN tutorial_status = 'failed' THEN 1 ELSE 0 END
               + CASE WHEN resources_status = 'failed' THEN 1 ELSE 0 END
               + CASE WHEN quiz_status = 'failed' THEN 1 ELSE 0 END) AS n_failed,
           SUM(CASE WHEN COALESCE(tutorial_status, '') IN ('completed', 'failed') THEN 0 ELSE 1 END
               + CASE WHEN COALESCE(resources_status, '') IN ('completed', 'failed')
                      THEN 0 ELSE 1 END
               + CASE WHEN COALESCE(quiz_status, '') IN ('completed', 'failed') THEN 0 ELSE 1 END)
               AS n_active
    FROM entries GROUP BY roadmap_id
),
retry_items AS (
    SELECT t.task_id, e.concept_id,
           CASE t.task_type WHEN 'retry_tutorial' THEN e.tutorial_status
                            WHEN 'retry_resources' THEN e.resources_status
                            ELSE e.quiz_status END AS status
    FROM tasks t
    JOIN entries e ON e.roadmap_id = t.roadmap_id
     AND (e.concept_id = t.concept_id OR e.concept_id = t.roadmap_id || ':' || t.concept_id)
    WHERE t.task_type IN ('retry_tutorial', 'retry_resources', 'retry_quiz')
),
task_outcome AS (
    SELECT t.task_id, o.n_completed, o.n_failed, o.n_active
    FROM tasks t JOIN roadmap_outcome o ON o.roadmap_id = t.roadmap_id
    WHERE t.task_type NOT IN ('retry_tutorial', 'retry_resources', 'retry_quiz')
    UNION ALL
    SELECT task_id,
           SUM(CASE WHEN status = 'completed' THEN 1 ELSE 0 END),
           SUM(CASE WHEN status = 'failed' THEN 1 ELSE 0 END),
           SUM(CASE WHEN COALESCE(status, '') IN ('completed', 'failed') THEN 0 ELSE 1 END)
    FROM retry_items GROUP BY task_id
),
task_expected AS (
    SELECT t.task_id, t.roadmap_id, t.status, t.recency, o.n_completed, o.n_failed, o.n_active,
           CASE WHEN o.task_id IS NULL OR o.n_active > 0 THEN NULL
                WHEN o.n_failed = 0 THEN 'completed'
                WHEN o.n_completed = 0 THEN 'failed'
                ELSE 'partial_failure' END AS expected
    FROM tasks t LEFT JOIN task_outcome o ON o.task_id = t.task_id
),
failed_concepts AS MATERIALIZED (
    SELECT DISTINCT roadmap_id, concept_id FROM entries
    WHERE tutorial_status = 'failed' OR resources_status = 'failed' OR quiz_status = 'failed'
),
task_failed_actual AS (
    SELECT t.task_id, f.concept_id
    FROM failed_concepts f JOIN tasks t ON t.roadmap_id = f.roadmap_id
    WHERE t.task_type NOT IN ('retry_tutorial', 'retry_resources', 'retry_quiz')
      AND t.recency = 1 AND t.status IN ('completed', 'partial_failure')
    UNION
    SELECT task_id, concept_id FROM retry_items WHERE status = 'failed'
)"""


_ITEM_CHECK_COLUMNS = f"""
    SELECT COALESCE(f.roadmap_id, r.roadmap_id) AS roadmap_id,
           COALESCE(f.concept_id, r.concept_id) AS concept_id,
           COALESCE(f.item, r.item) AS item,
           f.status, f.ref_id, f.ref_a, f.ref_b, f.a_name, f.b_name,
           r.row_id, r.ref_a AS row_a, r.ref_b AS row_b, r.has_more,
           {_ITEM_RULE} AS rule"""
_SAME_ITEM = "r.roadmap_id = f.roadmap_id AND r.concept_id = f.concept_id AND r.item = f.item"
_SAME_CONCEPT = "r.roadmap_id = f.roadmap_id AND r.concept_id = f.concept_id"
# framework_data's fields for one item of every concept, as item_refs has them.
_ITEM_FIELDS = {
    "tutorial": "e.tutorial_status, e.tutorial_ref, e.content_ref, e.content_version, "
    "'content_ref', 'content_version'",
    "resources": "e.resources_status, e.resources_ref, e.resources_count, NULL, "
    "'resources_count', NULL",
    "quiz": "e.quiz_status, e.quiz_ref, e.quiz_count, NULL, 'quiz_questions_count', NULL",
}


def _pg_item_join(item: str) -> str:
    return (
        f"{_ITEM_CHECK_COLUMNS}\n"
        f"    FROM (SELECT e.roadmap_id, e.concept_id, '{item}' AS item, {_ITEM_FIELDS[item]}\n"
        f"          FROM entries e) AS f (roadmap_id, concept_id, item, status, ref_id, ref_a,\n"
        f"                                ref_b, a_name, b_name)\n"
        f"    FULL JOIN {item}_rows AS r ON {_SAME_CONCEPT}"
    )


# Every item of framework_data and every item that has rows, matched: a full join. PostgreSQL
# runs one per item (concepts to one table's rows: three joins of a third the size each, which
# sort or hash far cheaper than one over every item); SQLite runs a FULL JOIN as nested loops, so
# there it is a left join both ways (the second half keeps only rows without an entry), each side
# indexed automatically.
_ITEM_CHECKS = {
    "postgresql": "\n    UNION ALL".join(_pg_item_join(item) for item in _ITEM_FIELDS),
    "sqlite": f"{_ITEM_CHECK_COLUMNS}\n    FROM item_refs f LEFT JOIN item_rows r ON {_SAME_ITEM}"
    f"\n    UNION ALL{_ITEM_CHECK_COLUMNS}\n"
    f"    FROM item_rows r LEFT JOIN item_refs f ON {_SAME_ITEM} WHERE f.roadmap_id IS NULL",
}


def portable_sql(dialect: str, constrained: bool = False) -> str:
    """The CTEs shared by both dialects (after the document CTEs); ``constrained``: the database
    holds the unique indexes of invariant 3."""
    rows = _CONSTRAINED_ROWS if constrained else _ranked_rows("CAST(NULL AS TEXT)")
    if dialect == "postgresql":  # read in place by the joins of _ITEM_CHECKS: never materialised
        for item in _ITEM_FIELDS:
            rows = rows.replace(f"\n{item}_rows AS (", f"\n{item}_rows AS NOT MATERIALIZED (")
    return _PORTABLE.replace("{item_rows}", rows).replace("{item_checks}", _ITEM_CHECKS[dialect])


# --- the rules -----------------------------------------------------------------------------------
def _item_rule(rule: Rule) -> str:
    return (
        f"SELECT roadmap_id, concept_id, item, rule, detail FROM item_findings "
        f"WHERE rule = '{rule.value}'"
    )


RULE_SQL: dict[Rule, str] = {
    Rule.ITEM_NOT_MARKED: _item_rule(Rule.ITEM_NOT_MARKED),
    Rule.REF_MISSING: _item_rule(Rule.REF_MISSING),
    Rule.REF_MISMATCH: _item_rule(Rule.REF_MISMATCH),
    Rule.MULTIPLE_CURRENT: f"""{{version_twice}}
SELECT f.roadmap_id, f.concept_id, f.item, 'multiple_current',
       CAST(CASE f.item
            WHEN 'tutorial' THEN (SELECT COUNT(*) FROM tutorial_metadata x WHERE x.is_latest
                                  AND x.roadmap_id = f.roadmap_id AND x.concept_id = f.concept_id)
            WHEN 'resources' THEN (SELECT COUNT(*) FROM resource_recommendation_metadata x
                                   WHERE x.roadmap_id = f.roadmap_id
                                     AND x.concept_id = f.concept_id)
            ELSE (SELECT COUNT(*) FROM quiz_metadata x
                  WHERE x.roadmap_id = f.roadmap_id AND x.concept_id = f.concept_id)
            END AS TEXT) || '{LATEST_DUPLICATE}'
FROM item_findings f WHERE f.has_more""",
    Rule.ORPHAN_CONTENT: _item_rule(Rule.ORPHAN_CONTENT),
    Rule.TASK_STATUS_MISMATCH: """
SELECT x.roadmap_id, NULL, NULL, 'task_status_mismatch',
       'task ' || x.task_id || ' is ' || x.status || ' but '
       || CASE WHEN x.expected IS NULL
               THEN CAST(COALESCE(x.n_active, 0) AS TEXT) || ' item(s) still have work'
               ELSE 'its items say ' || x.expected END
FROM task_expected x
WHERE (x.recency = 1 AND x.status IN ('completed', 'partial_failure', 'failed')
       AND (x.expected IS NULL OR x.expected <> x.status))
   OR (x.status = 'processing' AND x.expected IS NOT NULL)
UNION ALL
SELECT x.roadmap_id, NULL, NULL, 'task_status_mismatch',
       'task ' || x.task_id || ' failed_concepts lacks ' || CAST(COUNT(*) AS TEXT)
       || ' failed concept(s), e.g. ' || MIN(a.concept_id)
FROM task_expected x JOIN task_failed_actual a ON a.task_id = x.task_id
WHERE x.recency = 1 AND x.status IN ('completed', 'partial_failure')
  AND NOT EXISTS (SELECT 1 FROM task_failed_names n WHERE n.task_id = x.task_id
                  AND (n.name = a.concept_id OR x.roadmap_id || ':' || n.name = a.concept_id))
GROUP BY x.roadmap_id, x.task_id
UNION ALL
SELECT x.roadmap_id, NULL, NULL, 'task_status_mismatch',
       'task ' || x.task_id || ' failed_concepts names ' || CAST(COUNT(*) AS TEXT)
       || ' concept(s) that did not fail, e.g. ' || MIN(COALESCE(n.name, 'null'))
FROM task_expected x JOIN task_failed_names n ON n.task_id = x.task_id
WHERE x.recency = 1 AND x.status IN ('completed', 'partial_failure')
  AND NOT EXISTS (SELECT 1 FROM task_failed_actual a WHERE a.task_id = x.task_id
                  AND (n.name = a.concept_id OR x.roadmap_id || ':' || n.name = a.concept_id))
GROUP BY x.roadmap_id, x.task_id""",
    Rule.INVALID_CONTENT: """
SELECT roadmap_id, concept_id, item, 'invalid_content', 'row ' || row_id || ': ' || detail
FROM content_problems""",
    Rule.MALFORMED_FRAMEWORK: """
SELECT roadmap_id, concept_id, NULL, 'malformed_framework', detail FROM framework_problems
UNION ALL
SELECT roadmap_id, concept_id, NULL, 'malformed_framework',
       'concept ' || concept_id || ' appears ' || CAST(COUNT(*) AS TEXT) || ' times'
FROM entries GROUP BY roadmap_id, concept_id HAVING COUNT(*) > 1""",
    # Candidates only: whether work is queued or running is the orchestrator's answer (see
    # find_violations). Items with a current row are item_not_marked instead; a pending task is
    # queued work for all of its roadmap's items.
    Rule.ZOMBIE_STATUS: f"""
{_item_rule(Rule.ZOMBIE_STATUS)}
UNION ALL
SELECT roadmap_id, NULL, NULL, 'zombie_status', 'task ' || task_id || ' is processing'
FROM tasks WHERE status = 'processing'""",
}


# Where the row functions and their partial indexes hold (content_checks_indexed), only the rows
# they find invalid are parsed again, for the detail. A SQL NULL document (possible in a service
# database whose columns allow it) is not a list, as on SQLite; the functions leave it undecided
# (NULL), so those rows come from the IS NULL partial indexes of migration 0006.
_CANDIDATES = {
    "{quiz_candidates}": " AND (d.questions IS NULL OR "
    + content_check_call(QUIZ_CHECK_FUNCTION, QUIZ_CHECK_ARGS, "d")
    + ")",
    "{resources_candidates}": " AND (d.resources IS NULL OR "
    + content_check_call(RESOURCES_CHECK_FUNCTION, RESOURCES_CHECK_ARGS, "d")
    + ")",
}


def documents_sql(dialect: str, indexed: bool = False) -> str:
    documents = _PG_DOCUMENTS if dialect == "postgresql" else _SQLITE_DOCUMENTS
    documents = documents.replace("{content_problems}", _CONTENT_PROBLEMS)
    for placeholder, candidates in _CANDIDATES.items():
        documents = documents.replace(placeholder, candidates if indexed else "")
    return documents


# --- invariant 7 as row functions (PostgreSQL) ---------------------------------------------------
# The same texts as resource_checks and quiz_checks, over one row's values: true where the row
# breaks invariant 7. Not STRICT: a NULL document is judged as the statement judges it.
_CONTENT_FUNCTIONS = {
    RESOURCES_CHECK_FUNCTION: (
        "resources jsonb, resources_count integer",
        f"""
SELECT {_PG_RESOURCES_INVALID}
FROM (SELECT jsonb_typeof($1) = 'array' AS is_list, $1 AS doc, $2 AS resources_count) AS x
CROSS JOIN LATERAL {_PG_RESOURCE_ELEMENTS} AS e
""",
    ),
    QUIZ_CHECK_FUNCTION: (
        "questions jsonb, total_questions integer, easy_count integer, medium_count integer, "
        "hard_count integer",
        f"""
SELECT {_PG_QUIZ_INVALID}
FROM (SELECT jsonb_typeof($1) = 'array' AS is_list, $1 AS doc, $2 AS total_questions,
             $3 AS easy_count, $4 AS medium_count, $5 AS hard_count) AS x
CROSS JOIN LATERAL {_PG_QUIZ_ELEMENTS} AS e
""",
    ),
}


def content_function_sql() -> list[str]:
    """``CREATE FUNCTION`` of each row function (migration 0005). Immutable: the verdict depends
    on the row's values alone, which is what lets a partial index hold it."""
    return [
        f"CREATE FUNCTION {name}({params}) RETURNS boolean "
        f"LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $body${body}$body$"
        for name, (params, body) in _CONTENT_FUNCTIONS.items()
    ]


_CONTENT_INDEXED_SQL = text(
    "SELECT (SELECT COUNT(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
    "        WHERE c.relnamespace = CAST(current_schema() AS regnamespace) "
    "        AND i.indisvalid AND c.relname IN :indexes), "
    "       (SELECT COUNT(*) FROM pg_proc p "
    "        WHERE p.pronamespace = CAST(current_schema() AS regnamespace) "
    "        AND p.proname || p.prosrc IN :functions)"
).bindparams(bindparam("indexes", expanding=True), bindparam("functions", expanding=True))


def content_checks_indexed(conn: Connection) -> bool:
    """Whether the row functions exist with exactly today's texts and their partial indexes are
    valid, the NULL-document indexes included (PostgreSQL databases at migration 0006 or later);
    otherwise every document is parsed."""
    if conn.dialect.name != "postgresql":
        return False
    indexes, functions = conn.execute(
        _CONTENT_INDEXED_SQL,
        {
            "indexes": list(CONTENT_CHECK_INDEXES),
            "functions": [name + body for name, (_, body) in _CONTENT_FUNCTIONS.items()],
        },
    ).one()
    return int(indexes) == len(CONTENT_CHECK_INDEXES) and int(functions) == len(_CONTENT_FUNCTIONS)


# A tutorial version stored twice; impossible where the unique indexes hold.
_VERSION_TWICE = f"""
SELECT d.roadmap_id, d.concept_id, 'tutorial', 'multiple_current',
       'version v' || CAST(d.content_version AS TEXT) || ' is stored '
       || CAST(COUNT(*) AS TEXT) || ' times'
FROM tutorial_metadata d WHERE {_content_scope("d")}
GROUP BY d.roadmap_id, d.concept_id, d.content_version HAVING COUNT(*) > 1
UNION ALL"""


def rules_statement(
    dialect: str,
    rules: Sequence[Rule] = tuple(Rule),
    constrained: bool = False,
    indexed: bool = False,
) -> str:
    """One statement for ``rules``; ``constrained``: the database holds UNIQUENESS_INDEXES, so
    duplicates it cannot hold are not looked for; ``indexed``: the content checks' partial indexes
    hold (content_checks_indexed), so only the rows they name are parsed. The findings are the
    same."""
    version_twice = "" if constrained else _VERSION_TWICE
    body = "\nUNION ALL\n".join(
        f"SELECT * FROM ({RULE_SQL[rule].replace('{version_twice}', version_twice)}) "
        f"AS {rule.value}"
        for rule in rules
    )
    # A concept's scope holds exactly the fleet's violations about that concept: roadmap-level
    # findings (the task, the document's shape) belong to the roadmap, and a task outcome computed
    # from one concept's items would be wrong anyway.
    return (
        f"WITH {DELETED_ROADMAPS},\n{documents_sql(dialect, indexed)},\n"
        f"{portable_sql(dialect, constrained)},\n"
        f"found (roadmap_id, concept_id, item, rule, detail) AS (\n{body}\n)\n"
        f"SELECT * FROM found WHERE {CONCEPT_IN_SCOPE.format(col='found.concept_id')}"
    )


_JIT_OFF = text("SELECT set_config('jit', 'off', true), set_config('enable_memoize', 'off', true)")


@functools.lru_cache(maxsize=64)
def _statement(dialect: str, rules: tuple[Rule, ...], constrained: bool, indexed: bool) -> Any:
    return text(rules_statement(dialect, rules, constrained, indexed)).bindparams(
        bindparam("roadmap_ids", expanding=True, type_=String)
    )


_UNIQUENESS_SQL = {
    "postgresql": text(
        "SELECT COUNT(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "WHERE c.relnamespace = CAST(current_schema() AS regnamespace) "
        "AND i.indisunique AND i.indisvalid AND c.relname IN :names"
    ).bindparams(bindparam("names", expanding=True)),
    "sqlite": text(
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'index' AND name IN :names"
    ).bindparams(bindparam("names", expanding=True)),
}


def enforces_uniqueness(conn: Connection) -> bool:
    """Whether the database holds every unique index of invariant 3 (valid, on PostgreSQL)."""
    found = conn.execute(
        _UNIQUENESS_SQL[conn.dialect.name], {"names": list(UNIQUENESS_INDEXES)}
    ).scalar_one()
    return int(found) == len(UNIQUENESS_INDEXES)


def find_violations(
    conn: Connection,
    scope: Scope,
    activity: WorkInProgress,
    rules: Sequence[Rule] = tuple(Rule),
) -> list[Violation]:
    """Every violation in ``scope``, in one statement; zombies judged by ``activity``."""
    return _judged(_candidates(conn, scope, rules), activity)


def _candidates(conn: Connection, scope: Scope, rules: Sequence[Rule]) -> list[Violation]:
    if conn.dialect.name == "postgresql":
        # The planner's row estimates for JSON expansion make every call look expensive enough
        # to JIT-compile several hundred functions: 0.3-0.6 s per call, far more than the query
        # itself for one roadmap, and no gain for the fleet (measured). Off for this transaction.
        conn.execute(_JIT_OFF)
    statement = _statement(
        conn.dialect.name, tuple(rules), enforces_uniqueness(conn), content_checks_indexed(conn)
    )
    rows = conn.execute(statement, scope.params()).all()
    return [
        Violation(roadmap_id=r[0], concept_id=r[1], item=r[2], rule=r[3], detail=r[4]) for r in rows
    ]


def _judged(candidates: list[Violation], activity: WorkInProgress) -> list[Violation]:
    zombies = [v for v in candidates if v.rule is Rule.ZOMBIE_STATUS]
    found = [v for v in candidates if v.rule is not Rule.ZOMBIE_STATUS]
    if zombies:
        work = activity.active({v.roadmap_id for v in zombies})
        found.extend(_confirmed_zombies(zombies, work, activity.describe()))
    return sorted(found, key=_order)


# --- the fleet in concurrent slices (PostgreSQL) ------------------------------------------------
_SNAPSHOT_ID = re.compile(r"[0-9A-Fa-f-]+")
_SLICE_BOUNDS = text(
    "SELECT percentile_disc(CAST(:fractions AS float8[])) "
    "WITHIN GROUP (ORDER BY roadmap_id) FROM roadmap_metadata"
)


def fleet_slices(conn: Connection, n: int) -> list[Scope]:
    """The fleet cut into ``n`` slices of about as many roadmaps, by roadmap id: every roadmap
    with all of its rows (orphans included) falls in exactly one slice."""
    fractions = [k / n for k in range(1, n)]
    bounds = conn.execute(_SLICE_BOUNDS, {"fractions": fractions}).scalar_one() if n > 1 else None
    cuts = sorted({b for b in bounds or [] if b is not None})
    edges: list[str | None] = [None, *cuts, None]
    return [Scope.fleet_slice(lo, hi) for lo, hi in itertools.pairwise(edges)]


MIN_ROADMAPS_PER_SHARE = 25


def _shares(roadmap_ids: list[str], n: int) -> list[Scope]:
    """``roadmap_ids`` (sorted) in ``n`` contiguous shares of about as many roadmaps."""
    n = max(1, min(n, len(roadmap_ids) // MIN_ROADMAPS_PER_SHARE))
    size = -(-len(roadmap_ids) // n)
    return [Scope.roadmaps(roadmap_ids[k : k + size]) for k in range(0, len(roadmap_ids), size)]


def find_fleet_violations(
    engine: Engine,
    activity: WorkInProgress,
    rules: Sequence[Rule] = tuple(Rule),
    workers: int = 1,
    roadmap_ids: Iterable[str] | None = None,
) -> list[Violation]:
    """Every violation in the fleet: ``find_violations(Scope.fleet())``. On PostgreSQL with
    ``workers`` > 1, the fleet is checked in that many slices at once, each on its own connection
    and all in one snapshot (exported by the first, imported by the others), so the result is the
    single statement's, read at one moment, in a fraction of the time on a server with as many
    cores to spare. Uses up to ``workers`` connections of the engine's pool. ``roadmap_ids``:
    only those roadmaps (the incremental pass), cut into ``workers`` shares the same way."""
    ids = sorted(set(roadmap_ids)) if roadmap_ids is not None else None
    whole = Scope.fleet() if ids is None else Scope.roadmaps(ids)
    # A second connection importing the snapshot costs a few milliseconds: below this many
    # roadmaps one statement is as fast.
    small = ids is not None and len(ids) < MIN_ROADMAPS_PER_SHARE * 2
    if engine.dialect.name != "postgresql" or workers < 2 or small:
        with connect(engine) as conn:
            return find_violations(conn, whole, activity, rules) if ids != [] else []
    with connect(engine) as lead:
        lead = lead.execution_options(isolation_level="REPEATABLE READ")
        with lead.begin():
            snapshot = str(lead.execute(text("SELECT pg_export_snapshot()")).scalar_one())
            slices = fleet_slices(lead, workers) if ids is None else _shares(ids, workers)
            with ThreadPoolExecutor(max_workers=len(slices) - 1 or 1) as pool:
                others = [
                    pool.submit(_slice_candidates, engine, snapshot, scope, rules)
                    for scope in slices[1:]
                ]
                found = _candidates(lead, slices[0], rules)
                for future in others:
                    found += future.result()
    return _judged(found, activity)


def _slice_candidates(
    engine: Engine, snapshot: str, scope: Scope, rules: Sequence[Rule]
) -> list[Violation]:
    if not _SNAPSHOT_ID.fullmatch(snapshot):
        raise ValueError(f"unexpected snapshot id {snapshot!r}")
    with connect(engine) as conn:
        conn = conn.execution_options(isolation_level="REPEATABLE READ")
        with conn.begin():
            conn.execute(text(f"SET TRANSACTION SNAPSHOT '{snapshot}'"))
            return _candidates(conn, scope, rules)


def _confirmed_zombies(
    candidates: Iterable[Violation], work: ActiveWork, source: str
) -> Iterable[Violation]:
    for v in candidates:
        busy = (
            work.covers_concept(v.roadmap_id, v.concept_id)
            if v.concept_id is not None
            else work.covers_roadmap(v.roadmap_id)
        )
        if not busy:
            yield v.model_copy(
                update={"detail": f"{v.detail}, nothing queued or running ({source})"}
            )


def _order(v: Violation) -> tuple[str, str, str, str, str]:
    return (v.roadmap_id, v.concept_id or "", v.item or "", v.rule.value, v.detail)


def counts_by_rule(violations: Iterable[Violation]) -> dict[str, int]:
    counts = Counter(v.rule.value for v in violations)
    return {rule.value: counts.get(rule.value, 0) for rule in Rule}


@dataclass(frozen=True)
class ItemState:
    roadmap_id: str
    concept_id: str
    item: str
    status: str | None


def item_states(conn: Connection, scope: Scope) -> list[ItemState]:
    """Every item's status as framework_data states it (the same flattening the rules read)."""
    statement = text(
        f"WITH {DELETED_ROADMAPS},\n{documents_sql(conn.dialect.name)},\n"
        f"{portable_sql(conn.dialect.name)}\n"
        "SELECT roadmap_id, concept_id, item, status FROM item_refs"
    ).bindparams(bindparam("roadmap_ids", expanding=True, type_=String))
    return [ItemState(*row) for row in conn.execute(statement, scope.params())]

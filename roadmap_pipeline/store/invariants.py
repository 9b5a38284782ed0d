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
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pydantic import BaseModel
from sqlalchemy import Connection, String, bindparam, text

from roadmap_pipeline.store.activity import ActiveWork, WorkInProgress


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
    """What to check: the fleet (``roadmap_ids is None``), some roadmaps, or one concept."""

    roadmap_ids: tuple[str, ...] | None = None
    concept_id: str | None = None

    @classmethod
    def fleet(cls) -> Scope:
        return cls()

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
        }


# --- scope predicates (bound parameters; CAST lets PostgreSQL type a NULL parameter) ----------
IN_SCOPE = "(:fleet OR {col} IN :roadmap_ids)"
CONCEPT_IN_SCOPE = "(CAST(:concept_id AS TEXT) IS NULL OR {col} = CAST(:concept_id AS TEXT))"
NOT_DELETED = "{col} NOT IN (SELECT roadmap_id FROM roadmap_metadata WHERE deleted_at IS NOT NULL)"


def _content_scope(alias: str = "") -> str:
    prefix = f"{alias}." if alias else ""
    return " AND ".join(
        (
            IN_SCOPE.format(col=f"{prefix}roadmap_id"),
            CONCEPT_IN_SCOPE.format(col=f"{prefix}concept_id"),
            NOT_DELETED.format(col=f"{prefix}roadmap_id"),
        )
    )


# --- document CTEs, PostgreSQL -------------------------------------------------------------------
_PG_DOCUMENTS = f"""
roadmaps AS (
    SELECT roadmap_id, CAST(framework_data AS jsonb) AS doc
    FROM roadmap_metadata
    WHERE deleted_at IS NULL AND {IN_SCOPE.format(col="roadmap_id")}
),
stage_nodes AS (
    SELECT r.roadmap_id, s.value AS node, s.ord AS stage_no
    FROM roadmaps r
    CROSS JOIN LATERAL jsonb_array_elements(
        CASE WHEN jsonb_typeof(r.doc -> 'stages') = 'array' THEN r.doc -> 'stages'
             ELSE '[]'::jsonb END) WITH ORDINALITY AS s(value, ord)
),
module_nodes AS (
    SELECT st.roadmap_id, m.value AS node, st.stage_no, m.ord AS module_no
    FROM stage_nodes st
    CROSS JOIN LATERAL jsonb_array_elements(
        CASE WHEN jsonb_typeof(st.node -> 'modules') = 'array' THEN st.node -> 'modules'
             ELSE '[]'::jsonb END) WITH ORDINALITY AS m(value, ord)
),
concept_nodes AS (
    SELECT mo.roadmap_id, c.value AS node, mo.stage_no, mo.module_no
    FROM module_nodes mo
    CROSS JOIN LATERAL jsonb_array_elements(
        CASE WHEN jsonb_typeof(mo.node -> 'concepts') = 'array' THEN mo.node -> 'concepts'
             ELSE '[]'::jsonb END) AS c(value)
),
entries AS (
    SELECT roadmap_id,
           node ->> 'concept_id' AS concept_id,
           node ->> 'content_status' AS tutorial_status,
           node ->> 'tutorial_id' AS tutorial_ref,
           node ->> 'content_ref' AS content_ref,
           node ->> 'content_version' AS content_version,
           node ->> 'resources_status' AS resources_status,
           node ->> 'resources_id' AS resources_ref,
           node ->> 'resources_count' AS resources_count,
           node ->> 'quiz_status' AS quiz_status,
           node ->> 'quiz_id' AS quiz_ref,
           node ->> 'quiz_questions_count' AS quiz_count
    FROM concept_nodes
    WHERE jsonb_typeof(node -> 'concept_id') = 'string'
      AND {CONCEPT_IN_SCOPE.format(col="node ->> 'concept_id'")}
),
framework_problems AS (
    SELECT roadmap_id, CAST(NULL AS TEXT) AS concept_id,
           'framework_data is not an object with a stages list' AS detail
    FROM roadmaps
    WHERE jsonb_typeof(doc) <> 'object' OR jsonb_typeof(doc -> 'stages') IS DISTINCT FROM 'array'
    UNION ALL
    SELECT roadmap_id, NULL, 'stage #' || stage_no || ' has no modules list'
    FROM stage_nodes WHERE jsonb_typeof(node -> 'modules') IS DISTINCT FROM 'array'
    UNION ALL
    SELECT roadmap_id, NULL,
           'stage #' || stage_no || ' module #' || module_no || ' has no concepts list'
    FROM module_nodes WHERE jsonb_typeof(node -> 'concepts') IS DISTINCT FROM 'array'
    UNION ALL
    SELECT roadmap_id, NULL,
           'a concept in stage #' || stage_no || ' module #' || module_no || ' has no concept_id'
    FROM concept_nodes WHERE jsonb_typeof(node -> 'concept_id') IS DISTINCT FROM 'string'
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
quiz_docs AS (
    SELECT roadmap_id, concept_id, CAST(quiz_id AS TEXT) AS row_id, total_questions,
           easy_count, medium_count, hard_count, CAST(questions AS jsonb) AS questions
    FROM quiz_metadata WHERE {_content_scope()}
),
quiz_questions AS (
    SELECT d.row_id, q.value AS question, q.ord AS question_no
    FROM quiz_docs d
    CROSS JOIN LATERAL jsonb_array_elements(
        CASE WHEN jsonb_typeof(d.questions) = 'array' THEN d.questions ELSE '[]'::jsonb END)
        WITH ORDINALITY AS q(value, ord)
),
quiz_counts AS (
    SELECT row_id, COUNT(*) AS n,
           SUM(CASE WHEN question ->> 'difficulty' = 'easy' THEN 1 ELSE 0 END) AS n_easy,
           SUM(CASE WHEN question ->> 'difficulty' = 'medium' THEN 1 ELSE 0 END) AS n_medium,
           SUM(CASE WHEN question ->> 'difficulty' = 'hard' THEN 1 ELSE 0 END) AS n_hard
    FROM quiz_questions GROUP BY row_id
),
resource_docs AS (
    SELECT roadmap_id, concept_id, CAST(id AS TEXT) AS row_id, resources_count,
           CAST(resources AS jsonb) AS resources
    FROM resource_recommendation_metadata WHERE {_content_scope()}
),
content_problems AS (
    SELECT roadmap_id, concept_id, 'resources' AS item, row_id,
           'resources is not a list' AS detail
    FROM resource_docs WHERE jsonb_typeof(resources) IS DISTINCT FROM 'array'
    UNION ALL
    SELECT roadmap_id, concept_id, 'resources', row_id,
           'resources_count is ' || COALESCE(CAST(resources_count AS TEXT), 'null') || ' but '
           || CASE WHEN jsonb_typeof(resources) = 'array'
                   THEN jsonb_array_length(resources) END || ' resources are stored'
    FROM resource_docs
    WHERE jsonb_typeof(resources) = 'array'
      AND resources_count IS DISTINCT FROM
          CASE WHEN jsonb_typeof(resources) = 'array' THEN jsonb_array_length(resources) END
    UNION ALL
    SELECT roadmap_id, concept_id, 'resources', row_id, detail FROM (
        SELECT d.roadmap_id, d.concept_id, d.row_id,
               'resource #' || e.ord || ': ' ||
               CASE WHEN jsonb_typeof(e.value) IS DISTINCT FROM 'object'
                    THEN 'is not an object'
                    WHEN jsonb_typeof(e.value -> 'relevance_score') IS DISTINCT FROM 'number'
                    THEN 'relevance_score ' || COALESCE(e.value ->> 'relevance_score', 'null')
                         || ' is not a number'
                    WHEN CAST(e.value ->> 'relevance_score' AS double precision)
                         NOT BETWEEN 0 AND 1
                    THEN 'relevance_score ' || (e.value ->> 'relevance_score')
                         || ' is not within 0..1'
                    WHEN COALESCE(e.value ->> 'type', '') NOT IN
                         ('article', 'video', 'book', 'course', 'documentation', 'tool')
                    THEN 'type ' || COALESCE(e.value ->> 'type', 'null') || ' is not allowed'
               END AS detail
        FROM resource_docs d
        CROSS JOIN LATERAL jsonb_array_elements(
            CASE WHEN jsonb_typeof(d.resources) = 'array' THEN d.resources
                 ELSE '[]'::jsonb END) WITH ORDINALITY AS e(value, ord)
    ) AS resource_elements WHERE detail IS NOT NULL
    UNION ALL
    SELECT roadmap_id, concept_id, 'quiz', row_id, 'questions is not a list'
    FROM quiz_docs WHERE jsonb_typeof(questions) IS DISTINCT FROM 'array'
    UNION ALL
    SELECT d.roadmap_id, d.concept_id, 'quiz', d.row_id,
           'counts (total ' || COALESCE(CAST(d.total_questions AS TEXT), 'null') || ', easy '
           || COALESCE(CAST(d.easy_count AS TEXT), 'null') || ', medium '
           || COALESCE(CAST(d.medium_count AS TEXT), 'null') || ', hard '
           || COALESCE(CAST(d.hard_count AS TEXT), 'null') || ') differ from the '
           || CAST(COALESCE(c.n, 0) AS TEXT) || ' stored questions'
    FROM quiz_docs d LEFT JOIN quiz_counts c ON c.row_id = d.row_id
    WHERE jsonb_typeof(d.questions) = 'array'
      AND (d.total_questions IS DISTINCT FROM COALESCE(c.n, 0)
           OR d.easy_count IS DISTINCT FROM COALESCE(c.n_easy, 0)
           OR d.medium_count IS DISTINCT FROM COALESCE(c.n_medium, 0)
           OR d.hard_count IS DISTINCT FROM COALESCE(c.n_hard, 0))
    UNION ALL
    SELECT roadmap_id, concept_id, 'quiz', row_id, detail FROM (
        SELECT d.roadmap_id, d.concept_id, d.row_id,
               'question #' || q.question_no || ': ' ||
               CASE WHEN jsonb_typeof(q.question -> 'options') IS DISTINCT FROM 'array'
                      OR jsonb_typeof(q.question -> 'correct_answer') IS DISTINCT FROM 'array'
                    THEN 'options or correct_answer is not a list'
                    WHEN COALESCE(q.question ->> 'question_type', '') NOT IN
                         ('single_choice', 'multiple_choice', 'true_false')
                    THEN 'question_type ' || COALESCE(q.question ->> 'question_type', 'null')
                         || ' is not allowed'
                    WHEN jsonb_array_length(q.question -> 'correct_answer') = 0
                    THEN 'has no correct answer'
                    WHEN q.question ->> 'question_type' IN ('single_choice', 'true_false')
                     AND jsonb_array_length(q.question -> 'correct_answer') <> 1
                    THEN 'a ' || (q.question ->> 'question_type') || ' question has '
                         || jsonb_array_length(q.question -> 'correct_answer') || ' answers'
                    WHEN EXISTS (
                        SELECT 1 FROM jsonb_array_elements(q.question -> 'correct_answer') AS a(v)
                        WHERE CASE WHEN jsonb_typeof(a.v) = 'number'
                                   THEN CAST(a.v #>> '{{}}' AS numeric) NOT BETWEEN 0
                                        AND jsonb_array_length(q.question -> 'options') - 1
                                   ELSE TRUE END)
                    THEN 'correct_answer ' || (q.question ->> 'correct_answer')
                         || ' does not index its '
                         || jsonb_array_length(q.question -> 'options') || ' options'
               END AS detail
        FROM quiz_questions q JOIN quiz_docs d ON d.row_id = q.row_id
    ) AS quiz_elements WHERE detail IS NOT NULL
)"""

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
quiz_docs AS (
    SELECT roadmap_id, concept_id, CAST(quiz_id AS TEXT) AS row_id, total_questions,
           easy_count, medium_count, hard_count,
           CASE WHEN json_valid(questions) THEN questions END AS questions
    FROM quiz_metadata WHERE {_content_scope()}
),
quiz_questions AS (
    SELECT d.row_id, q.value AS question, q.type AS question_type_json,
           q.key + 1 AS question_no
    FROM quiz_docs d,
         json_each(CASE WHEN json_type(d.questions) = 'array' THEN d.questions ELSE '[]' END)
         AS q
),
quiz_counts AS (
    SELECT row_id, COUNT(*) AS n,
           SUM(CASE WHEN question_type_json = 'object'
                     AND json_extract(question, '$.difficulty') = 'easy' THEN 1 ELSE 0 END)
               AS n_easy,
           SUM(CASE WHEN question_type_json = 'object'
                     AND json_extract(question, '$.difficulty') = 'medium' THEN 1 ELSE 0 END)
               AS n_medium,
           SUM(CASE WHEN question_type_json = 'object'
                     AND json_extract(question, '$.difficulty') = 'hard' THEN 1 ELSE 0 END)
               AS n_hard
    FROM quiz_questions GROUP BY row_id
),
resource_docs AS (
    SELECT roadmap_id, concept_id, CAST(id AS TEXT) AS row_id, resources_count,
           CASE WHEN json_valid(resources) THEN resources END AS resources
    FROM resource_recommendation_metadata WHERE {_content_scope()}
),
content_problems AS (
    SELECT roadmap_id, concept_id, 'resources' AS item, row_id,
           'resources is not a list' AS detail
    FROM resource_docs WHERE COALESCE(json_type(resources), '') <> 'array'
    UNION ALL
    SELECT roadmap_id, concept_id, 'resources', row_id,
           'resources_count is ' || COALESCE(CAST(resources_count AS TEXT), 'null') || ' but '
           || json_array_length(resources) || ' resources are stored'
    FROM resource_docs
    WHERE json_type(resources) = 'array'
      AND resources_count IS NOT json_array_length(resources)
    UNION ALL
    SELECT roadmap_id, concept_id, 'resources', row_id, detail FROM (
        SELECT d.roadmap_id, d.concept_id, d.row_id,
               'resource #' || (e.key + 1) || ': ' ||
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
               END AS detail
        FROM resource_docs d,
             json_each(CASE WHEN json_type(d.resources) = 'array' THEN d.resources
                            ELSE '[]' END) AS e
    ) AS resource_elements WHERE detail IS NOT NULL
    UNION ALL
    SELECT roadmap_id, concept_id, 'quiz', row_id, 'questions is not a list'
    FROM quiz_docs WHERE COALESCE(json_type(questions), '') <> 'array'
    UNION ALL
    SELECT d.roadmap_id, d.concept_id, 'quiz', d.row_id,
           'counts (total ' || COALESCE(CAST(d.total_questions AS TEXT), 'null') || ', easy '
           || COALESCE(CAST(d.easy_count AS TEXT), 'null') || ', medium '
           || COALESCE(CAST(d.medium_count AS TEXT), 'null') || ', hard '
           || COALESCE(CAST(d.hard_count AS TEXT), 'null') || ') differ from the '
           || CAST(COALESCE(c.n, 0) AS TEXT) || ' stored questions'
    FROM quiz_docs d LEFT JOIN quiz_counts c ON c.row_id = d.row_id
    WHERE json_type(d.questions) = 'array'
      AND (d.total_questions IS NOT COALESCE(c.n, 0)
           OR d.easy_count IS NOT COALESCE(c.n_easy, 0)
           OR d.medium_count IS NOT COALESCE(c.n_medium, 0)
           OR d.hard_count IS NOT COALESCE(c.n_hard, 0))
    UNION ALL
    SELECT roadmap_id, concept_id, 'quiz', row_id, detail FROM (
        SELECT d.roadmap_id, d.concept_id, d.row_id,
               'question #' || q.question_no || ': ' ||
               CASE WHEN q.question_type_json <> 'object'
                      OR COALESCE(json_type(q.question, '$.options'), '') <> 'array'
                      OR COALESCE(json_type(q.question, '$.correct_answer'), '') <> 'array'
                    THEN 'options or correct_answer is not a list'
                    WHEN COALESCE(json_extract(q.question, '$.question_type'), '') NOT IN
                         ('single_choice', 'multiple_choice', 'true_false')
                    THEN 'question_type '
                         || COALESCE(json_extract(q.question, '$.question_type'), 'null')
                         || ' is not allowed'
                    WHEN json_array_length(q.question, '$.correct_answer') = 0
                    THEN 'has no correct answer'
                    WHEN json_extract(q.question, '$.question_type')
                         IN ('single_choice', 'true_false')
                     AND json_array_length(q.question, '$.correct_answer') <> 1
                    THEN 'a ' || json_extract(q.question, '$.question_type') || ' question has '
                         || json_array_length(q.question, '$.correct_answer') || ' answers'
                    WHEN EXISTS (
                        SELECT 1 FROM json_each(q.question, '$.correct_answer') a
                        WHERE a.type <> 'integer'
                           OR a.value NOT BETWEEN 0
                              AND json_array_length(q.question, '$.options') - 1)
                    THEN 'correct_answer ' || json_extract(q.question, '$.correct_answer')
                         || ' does not index its '
                         || json_array_length(q.question, '$.options') || ' options'
               END AS detail
        FROM quiz_questions q JOIN quiz_docs d ON d.row_id = q.row_id
    ) AS quiz_elements WHERE detail IS NOT NULL
)"""

# --- portable CTEs: current rows ---------------------------------------------------------------
# The one definition of the *current* row of an item, shared by the rules and by sync/repair:
# tutorials: the is_latest row (highest version first when several claim it);
# resources and quiz: the most recently generated row (then the highest id).
CURRENT_ROWS = f"""
tutorial_ranked AS (
    SELECT roadmap_id, concept_id, CAST(tutorial_id AS TEXT) AS row_id, content_url, summary,
           content_version,
           ROW_NUMBER() OVER (PARTITION BY roadmap_id, concept_id
                              ORDER BY content_version DESC, generated_at DESC,
                                       CAST(tutorial_id AS TEXT) DESC) AS rank_no,
           COUNT(*) OVER (PARTITION BY roadmap_id, concept_id) AS n_current
    FROM tutorial_metadata WHERE is_latest AND {_content_scope()}
),
resources_ranked AS (
    SELECT roadmap_id, concept_id, CAST(id AS TEXT) AS row_id, resources_count,
           ROW_NUMBER() OVER (PARTITION BY roadmap_id, concept_id
                              ORDER BY generated_at DESC, CAST(id AS TEXT) DESC) AS rank_no,
           COUNT(*) OVER (PARTITION BY roadmap_id, concept_id) AS n_current
    FROM resource_recommendation_metadata WHERE {_content_scope()}
),
quiz_ranked AS (
    SELECT roadmap_id, concept_id, CAST(quiz_id AS TEXT) AS row_id, total_questions,
           ROW_NUMBER() OVER (PARTITION BY roadmap_id, concept_id
                              ORDER BY generated_at DESC, CAST(quiz_id AS TEXT) DESC) AS rank_no,
           COUNT(*) OVER (PARTITION BY roadmap_id, concept_id) AS n_current
    FROM quiz_metadata WHERE {_content_scope()}
),
item_rows AS (
    SELECT roadmap_id, concept_id, 'tutorial' AS item, row_id, content_url AS ref_a,
           'v' || CAST(content_version AS TEXT) AS ref_b, content_version AS number,
           summary, n_current
    FROM tutorial_ranked WHERE rank_no = 1
    UNION ALL
    SELECT roadmap_id, concept_id, 'resources', row_id, CAST(resources_count AS TEXT), NULL,
           resources_count, NULL, n_current
    FROM resources_ranked WHERE rank_no = 1
    UNION ALL
    SELECT roadmap_id, concept_id, 'quiz', row_id, CAST(total_questions AS TEXT), NULL,
           total_questions, NULL, n_current
    FROM quiz_ranked WHERE rank_no = 1
)"""

_PORTABLE = f"""
item_refs AS (
    SELECT roadmap_id, concept_id, 'tutorial' AS item, tutorial_status AS status,
           tutorial_ref AS ref_id, content_ref AS ref_a, content_version AS ref_b,
           'content_ref' AS a_name, 'content_version' AS b_name
    FROM entries
    UNION ALL
    SELECT roadmap_id, concept_id, 'resources', resources_status, resources_ref,
           resources_count, NULL, 'resources_count', NULL
    FROM entries
    UNION ALL
    SELECT roadmap_id, concept_id, 'quiz', quiz_status, quiz_ref, quiz_count, NULL,
           'quiz_questions_count', NULL
    FROM entries
),
{CURRENT_ROWS},
item_ids AS (
    SELECT roadmap_id, concept_id, 'tutorial' AS item, CAST(tutorial_id AS TEXT) AS row_id
    FROM tutorial_metadata WHERE {_content_scope()}
    UNION ALL
    SELECT roadmap_id, concept_id, 'resources', CAST(id AS TEXT)
    FROM resource_recommendation_metadata WHERE {_content_scope()}
    UNION ALL
    SELECT roadmap_id, concept_id, 'quiz', CAST(quiz_id AS TEXT)
    FROM quiz_metadata WHERE {_content_scope()}
),
tasks AS (
    SELECT task_id, roadmap_id, status, task_type, concept_id, failed_concepts,
           ROW_NUMBER() OVER (PARTITION BY roadmap_id
                              ORDER BY created_at DESC, task_id DESC) AS recency
    FROM roadmap_tasks
    WHERE status <> 'cancelled' AND roadmap_id IS NOT NULL
      AND {IN_SCOPE.format(col="roadmap_id")}
),
task_items AS (
    SELECT t.task_id, f.concept_id, f.item, f.status
    FROM tasks t JOIN item_refs f ON f.roadmap_id = t.roadmap_id
    WHERE t.task_type NOT IN ('retry_tutorial', 'retry_resources', 'retry_quiz')
       OR ((f.concept_id = t.concept_id OR f.concept_id = t.roadmap_id || ':' || t.concept_id)
           AND f.item = CASE t.task_type WHEN 'retry_tutorial' THEN 'tutorial'
                                         WHEN 'retry_resources' THEN 'resources'
                                         ELSE 'quiz' END)
),
task_outcome AS (
    SELECT task_id,
           SUM(CASE WHEN status = 'completed' THEN 1 ELSE 0 END) AS n_completed,
           SUM(CASE WHEN status = 'failed' THEN 1 ELSE 0 END) AS n_failed,
           SUM(CASE WHEN status IN ('completed', 'failed') THEN 0 ELSE 1 END) AS n_active
    FROM task_items GROUP BY task_id
),
task_expected AS (
    SELECT t.task_id, t.roadmap_id, t.status, t.recency, o.n_completed, o.n_failed, o.n_active,
           CASE WHEN o.task_id IS NULL OR o.n_active > 0 THEN NULL
                WHEN o.n_failed = 0 THEN 'completed'
                WHEN o.n_completed = 0 THEN 'failed'
                ELSE 'partial_failure' END AS expected
    FROM tasks t LEFT JOIN task_outcome o ON o.task_id = t.task_id
),
task_failed_actual AS (
    SELECT DISTINCT ti.task_id, ti.concept_id
    FROM task_items ti WHERE ti.status = 'failed'
)"""

# --- the rules -----------------------------------------------------------------------------------
_SAME_ITEM = "r.roadmap_id = f.roadmap_id AND r.concept_id = f.concept_id AND r.item = f.item"
_REF_EXISTS = (
    "EXISTS (SELECT 1 FROM item_ids i WHERE i.roadmap_id = f.roadmap_id "
    "AND i.concept_id = f.concept_id AND i.item = f.item AND i.row_id = f.ref_id)"
)

RULE_SQL: dict[Rule, str] = {
    Rule.ITEM_NOT_MARKED: f"""
SELECT f.roadmap_id, f.concept_id, f.item, 'item_not_marked' AS rule,
       'current row ' || r.row_id || ' exists but the status is '
       || COALESCE(f.status, 'missing') AS detail
FROM item_refs f JOIN item_rows r ON {_SAME_ITEM}
WHERE COALESCE(f.status, '') <> 'completed'""",
    Rule.REF_MISSING: f"""
SELECT f.roadmap_id, f.concept_id, f.item, 'ref_missing',
       CASE WHEN r.row_id IS NULL THEN 'status completed but no current row exists'
            WHEN f.ref_id IS NULL THEN 'status completed but no id is referenced'
            ELSE 'references ' || f.ref_id || ', which does not exist' END
FROM item_refs f LEFT JOIN item_rows r ON {_SAME_ITEM}
WHERE f.status = 'completed' AND (r.row_id IS NULL OR f.ref_id IS NULL OR NOT {_REF_EXISTS})""",
    Rule.REF_MISMATCH: f"""
SELECT f.roadmap_id, f.concept_id, f.item, 'ref_mismatch',
       CASE WHEN f.ref_id <> r.row_id
            THEN 'references ' || f.ref_id || ' but the current row is ' || r.row_id
            WHEN COALESCE(f.ref_a, '') <> COALESCE(r.ref_a, '')
            THEN f.a_name || ' is ' || COALESCE(f.ref_a, 'null') || ', the row says '
                 || COALESCE(r.ref_a, 'null')
            ELSE f.b_name || ' is ' || COALESCE(f.ref_b, 'null') || ', the row says '
                 || COALESCE(r.ref_b, 'null') END
FROM item_refs f JOIN item_rows r ON {_SAME_ITEM}
WHERE f.status = 'completed' AND f.ref_id IS NOT NULL AND {_REF_EXISTS}
  AND (f.ref_id <> r.row_id OR COALESCE(f.ref_a, '') <> COALESCE(r.ref_a, '')
       OR COALESCE(f.ref_b, '') <> COALESCE(r.ref_b, ''))""",
    Rule.MULTIPLE_CURRENT: f"""
SELECT roadmap_id, concept_id, item, 'multiple_current',
       CAST(n_current AS TEXT) || '{LATEST_DUPLICATE}'
FROM item_rows WHERE n_current > 1
UNION ALL
SELECT roadmap_id, concept_id, 'tutorial', 'multiple_current',
       'version v' || CAST(content_version AS TEXT) || ' is stored '
       || CAST(COUNT(*) AS TEXT) || ' times'
FROM tutorial_metadata WHERE {_content_scope()}
GROUP BY roadmap_id, concept_id, content_version HAVING COUNT(*) > 1""",
    Rule.ORPHAN_CONTENT: """
SELECT i.roadmap_id, i.concept_id, i.item, 'orphan_content',
       CAST(COUNT(*) AS TEXT) || ' row(s) for a concept that framework_data does not contain'
FROM item_ids i
WHERE NOT EXISTS (SELECT 1 FROM entries e
                  WHERE e.roadmap_id = i.roadmap_id AND e.concept_id = i.concept_id)
  AND NOT EXISTS (SELECT 1 FROM framework_problems p WHERE p.roadmap_id = i.roadmap_id)
GROUP BY i.roadmap_id, i.concept_id, i.item""",
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
SELECT f.roadmap_id, f.concept_id, f.item, 'zombie_status',
       'status ' || f.status || ' and no row'
FROM item_refs f
WHERE f.status IN ('pending', 'generating')
  AND NOT EXISTS (SELECT 1 FROM item_rows r WHERE {_SAME_ITEM})
  AND NOT EXISTS (SELECT 1 FROM roadmap_tasks t
                  WHERE t.roadmap_id = f.roadmap_id AND t.status = 'pending')
UNION ALL
SELECT roadmap_id, NULL, NULL, 'zombie_status', 'task ' || task_id || ' is processing'
FROM tasks WHERE status = 'processing'""",
}


def documents_sql(dialect: str) -> str:
    return _PG_DOCUMENTS if dialect == "postgresql" else _SQLITE_DOCUMENTS


def rules_statement(dialect: str, rules: Sequence[Rule] = tuple(Rule)) -> str:
    body = "\nUNION ALL\n".join(
        f"SELECT * FROM ({RULE_SQL[rule]}) AS {rule.value}" for rule in rules
    )
    # A concept's scope holds exactly the fleet's violations about that concept: roadmap-level
    # findings (the task, the document's shape) belong to the roadmap, and a task outcome computed
    # from one concept's items would be wrong anyway.
    return (
        f"WITH {documents_sql(dialect)},\n{_PORTABLE},\n"
        f"found (roadmap_id, concept_id, item, rule, detail) AS (\n{body}\n)\n"
        f"SELECT * FROM found WHERE {CONCEPT_IN_SCOPE.format(col='found.concept_id')}"
    )


def _statement(dialect: str, rules: Sequence[Rule]) -> Any:
    return text(rules_statement(dialect, rules)).bindparams(
        bindparam("roadmap_ids", expanding=True, type_=String)
    )


def find_violations(
    conn: Connection,
    scope: Scope,
    activity: WorkInProgress,
    rules: Sequence[Rule] = tuple(Rule),
) -> list[Violation]:
    """Every violation in ``scope``, in one statement; zombies judged by ``activity``."""
    rows = conn.execute(_statement(conn.dialect.name, rules), scope.params()).all()
    candidates = [
        Violation(roadmap_id=r[0], concept_id=r[1], item=r[2], rule=r[3], detail=r[4]) for r in rows
    ]
    zombies = [v for v in candidates if v.rule is Rule.ZOMBIE_STATUS]
    found = [v for v in candidates if v.rule is not Rule.ZOMBIE_STATUS]
    if zombies:
        work = activity.active({v.roadmap_id for v in zombies})
        found.extend(_confirmed_zombies(zombies, work, activity.describe()))
    return sorted(found, key=_order)


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

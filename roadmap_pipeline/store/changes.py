"""Which roadmaps changed since a moment: what an incremental consistency pass re-reads.

Seen here: new or regenerated content rows (``generated_at``), task updates (``updated_at``),
new and deleted roadmaps. Not seen: a service that rewrites framework_data without touching a row
or its task leaves no timestamp behind; the periodic full pass catches that (and the
orchestrator adds the roadmaps whose assets it materialized).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection, text

_CHANGED_SINCE = text(
    """
    SELECT roadmap_id FROM tutorial_metadata WHERE generated_at >= :since
    UNION SELECT roadmap_id FROM resource_recommendation_metadata WHERE generated_at >= :since
    UNION SELECT roadmap_id FROM quiz_metadata WHERE generated_at >= :since
    UNION SELECT roadmap_id FROM roadmap_tasks
          WHERE updated_at >= :since AND roadmap_id IS NOT NULL
    UNION SELECT roadmap_id FROM roadmap_metadata
          WHERE created_at >= :since OR deleted_at >= :since
    """
)


def roadmaps_changed_since(conn: Connection, since: datetime) -> set[str]:
    """Roadmap ids with a row written at or after ``since`` (naive UTC, as the tables are)."""
    return {row[0] for row in conn.execute(_CHANGED_SINCE, {"since": since})}

"""Reading the audit log with filters (``gateway audit``, ``GET /admin/audit``); writing is ``audit.record``."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg

SELECT = """
SELECT audit_id, at, actor, action, course_id, student_id, reason, details FROM audit_log
WHERE ($1::text IS NULL OR course_id = $1) AND ($2::text IS NULL OR student_id = $2)
  AND ($3::text IS NULL OR action = $3 OR action LIKE $3 || '.%') AND ($4::timestamptz IS NULL OR at >= $4)
  AND ($5::text IS NULL OR actor = $5)
ORDER BY audit_id DESC LIMIT $6
"""
MAX_LIMIT = 10_000


async def entries(conn: asyncpg.Connection | asyncpg.Pool, *, course: str | None = None, student: str | None = None,
                  action: str | None = None, since: datetime | None = None, actor: str | None = None,
                  limit: int = 100) -> list[dict[str, Any]]:
    """Newest first. ``action`` matches exactly or as a prefix (``key`` matches ``key.issue``, ``key.revoke``)."""
    limit = max(1, min(limit, MAX_LIMIT))
    return [dict(r) for r in await conn.fetch(SELECT, course, student, action, since, actor, limit)]


def entry_json(entry: dict[str, Any]) -> dict[str, Any]:
    return {"audit_id": entry["audit_id"], "at": entry["at"].isoformat(), "actor": entry["actor"],
            "action": entry["action"], "course": entry["course_id"], "student": entry["student_id"],
            "reason": entry["reason"], "details": entry["details"]}

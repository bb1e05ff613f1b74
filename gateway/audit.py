"""The audit log: every admin action (who, what, when, reason), from the CLI and the admin API alike."""

from __future__ import annotations

from typing import Any

import asyncpg

INSERT = """
INSERT INTO audit_log (actor, action, course_id, student_id, reason, details)
VALUES ($1, $2, $3, $4, $5, $6)
"""
SELECT = """
SELECT audit_id, at, actor, action, course_id, student_id, reason, details FROM audit_log
WHERE ($1::text IS NULL OR course_id = $1) ORDER BY audit_id DESC LIMIT $2
"""


async def record(conn: asyncpg.Connection | asyncpg.Pool, actor: str, action: str, *, course: str | None = None,
                 student: str | None = None, reason: str = "", details: dict[str, Any] | None = None) -> None:
    await conn.execute(INSERT, actor, action, course, student, reason, details or {})


async def entries(
    conn: asyncpg.Connection | asyncpg.Pool, course: str | None, limit: int = 100
) -> list[dict[str, Any]]:
    return [dict(r) for r in await conn.fetch(SELECT, course, limit)]

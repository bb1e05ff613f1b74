"""Courses and their quota policy: create, show, list, change. Every change is audited."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import asyncpg

from . import audit
from .periods import parse_reset_at

INSERT_COURSE = """
INSERT INTO courses (course_id, name, limit_tokens, period_seconds, reset_at, tz, carry_over, carry_cap)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
ON CONFLICT (course_id) DO NOTHING
RETURNING course_id
"""
UPDATE_POLICY = """
UPDATE courses SET limit_tokens = COALESCE($2, limit_tokens), period_seconds = COALESCE($3, period_seconds),
    reset_at = COALESCE($4, reset_at), tz = COALESCE($5, tz), carry_over = COALESCE($6, carry_over),
    carry_cap = CASE WHEN $7::boolean THEN $8 ELSE carry_cap END, updated_at = now()
WHERE course_id = $1
RETURNING course_id
"""
SELECT_COURSE = "SELECT * FROM courses WHERE course_id = $1"
SELECT_COURSES = """
SELECT c.*, (SELECT count(*) FROM students s WHERE s.course_id = c.course_id AND s.enrolled) AS students
FROM courses c ORDER BY course_id
"""


class CourseError(ValueError):
    """Bad course input; the message is one line for the CLI / API."""


@dataclass(frozen=True, slots=True)
class PolicyChange:
    limit: int | None = None
    period_seconds: int | None = None
    reset_at: str | None = None
    tz: str | None = None
    carry_over: bool | None = None
    carry_cap_set: bool = False
    carry_cap: int | None = None


def validate_reset_at(value: str) -> str:
    normalised = value.strip().lower()
    try:
        parse_reset_at(normalised)
    except ValueError:
        raise CourseError(f"--reset-at must look like 'mon 00:00', not {value!r}") from None
    return normalised


def validate_tz(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise CourseError(f"unknown time zone {value!r} (use an IANA name like Australia/Sydney)") from None
    return value


async def create(conn: asyncpg.Connection | asyncpg.Pool, actor: str, course: str, *, limit: int,
                 period_seconds: int, reset_at: str = "mon 00:00", tz: str = "UTC", carry_over: bool = False,
                 carry_cap: int | None = None, name: str = "") -> bool:
    """Create a course; False if it already exists (nothing changed)."""
    if not course or len(course) > 100:
        raise CourseError("a course id is 1 to 100 characters")
    created = await conn.fetchval(INSERT_COURSE, course, name, limit, period_seconds, validate_reset_at(reset_at),
                                  validate_tz(tz), carry_over, carry_cap)
    if created:
        await audit.record(conn, actor, "course.create", course=course, details={
            "limit": limit, "period_seconds": period_seconds, "reset_at": reset_at, "tz": tz,
            "carry_over": carry_over, "carry_cap": carry_cap})
    return bool(created)


async def change_policy(conn: asyncpg.Connection | asyncpg.Pool, actor: str, course: str, change: PolicyChange,
                        reason: str = "") -> None:
    updated = await conn.fetchval(
        UPDATE_POLICY, course, change.limit, change.period_seconds,
        validate_reset_at(change.reset_at) if change.reset_at else None,
        validate_tz(change.tz) if change.tz else None, change.carry_over, change.carry_cap_set, change.carry_cap)
    if not updated:
        raise CourseError(f"no such course: {course!r}")
    details = {k: v for k, v in asdict(change).items() if v is not None and k != "carry_cap_set"}
    if change.carry_cap_set:
        details["carry_cap"] = change.carry_cap
    await audit.record(conn, actor, "quota.set", course=course, reason=reason, details=details)


async def get(conn: asyncpg.Connection | asyncpg.Pool, course: str) -> dict[str, Any]:
    row = await conn.fetchrow(SELECT_COURSE, course)
    if row is None:
        raise CourseError(f"no such course: {course!r}")
    return dict(row)


async def list_all(conn: asyncpg.Connection | asyncpg.Pool) -> list[dict[str, Any]]:
    return [dict(r) for r in await conn.fetch(SELECT_COURSES)]

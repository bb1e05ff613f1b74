"""Convenor grants: extra weighted tokens for one student in the current period (``gateway grant``, the admin API).

A grant is recorded in Postgres (``grants``, with an audit entry) and added to the student's Redis bucket, both
keyed by one grant id, so a retried grant (same id) changes nothing:

1. a bucket Redis reports ``fresh`` (missing or never reconciled) is first reconciled with the Postgres record
   (``rebuild.ensure_bucket``), so the grant is not counted twice when it is reconciled later;
2. in one transaction: the bucket script adds the tokens (idempotent by grant id) and reports the period, the
   grant row and the audit entry are inserted, then the transaction commits. If Redis fails nothing is recorded;
   if the commit fails after Redis took the grant, retrying with the same grant id records it without adding
   the tokens again.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg

from . import audit, rebuild
from .ledger import BucketState, Ledger
from .policy import Policy

MAX_GRANT = 1_000_000_000_000

SELECT_STUDENT = "SELECT enrolled FROM students WHERE course_id = $1 AND student_id = $2"
SELECT_GRANT = """
SELECT grant_id, at, course_id, student_id, tokens, reason, actor, period_start, request_id FROM grants
WHERE request_id = $1
"""
INSERT_GRANT = """
INSERT INTO grants (course_id, student_id, tokens, reason, actor, period_start, request_id)
VALUES ($1, $2, $3, $4, $5, to_timestamp($6), $7)
RETURNING grant_id, at, course_id, student_id, tokens, reason, actor, period_start, request_id
"""
LOCK = "SELECT pg_advisory_xact_lock(hashtext('gateway.grant'), hashtext($1))"


class GrantError(ValueError):
    """Bad grant input (no reason, a non-positive amount, unknown student, a reused grant id); one line."""


@dataclass(frozen=True, slots=True)
class Grant:
    grant_id: int
    idempotency_key: str  # the grant id in the Redis ledger (``grants.request_id``)
    at: datetime
    course: str
    student: str
    tokens: int
    reason: str
    actor: str
    period_start: datetime
    duplicate: bool  # an earlier grant with this idempotency key: nothing changed this time
    state: BucketState | None  # the bucket after the grant (None for a duplicate)

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "grant_id": self.grant_id, "idempotency_key": self.idempotency_key, "at": self.at.isoformat(),
            "course": self.course, "student": self.student, "tokens": self.tokens, "reason": self.reason,
            "actor": self.actor, "period_start": self.period_start.isoformat(), "duplicate": self.duplicate,
        }
        if self.state is not None:
            out["remaining"] = self.state.remaining
            out["granted_this_period"] = self.state.granted
        return out


def _grant(row: asyncpg.Record, *, duplicate: bool, state: BucketState | None) -> Grant:
    return Grant(row["grant_id"], row["request_id"], row["at"], row["course_id"], row["student_id"],
                 row["tokens"], row["reason"], row["actor"], row["period_start"], duplicate, state)


def new_idempotency_key() -> str:
    return "grant_" + uuid.uuid4().hex


async def grant(pool: asyncpg.Pool, ledger: Ledger, policy: Policy, actor: str, student: str, tokens: int,
                reason: str, *, idempotency_key: str | None = None) -> Grant:
    """Grant ``tokens`` weighted tokens to ``student`` in ``policy.course``'s current period (see module doc)."""
    course = policy.course
    reason = reason.strip()
    if not reason:
        raise GrantError("a grant needs a reason (--reason \"…\")")
    if not 0 < tokens <= MAX_GRANT:
        raise GrantError(f"a grant is a positive number of tokens up to {MAX_GRANT:,}, not {tokens:,}")
    key = idempotency_key or new_idempotency_key()
    if not 1 <= len(key) <= 200:
        raise GrantError("an idempotency key is 1 to 200 characters")
    enrolled = await pool.fetchval(SELECT_STUDENT, course, student)
    if enrolled is None:
        raise GrantError(f"no student {student!r} in course {course!r}")
    if not enrolled:
        raise GrantError(f"student {student!r} is no longer enrolled in {course!r}")
    existing = await pool.fetchrow(SELECT_GRANT, key)
    if existing is not None:
        return _same(existing, course, student, tokens)
    current = await ledger.read(policy, course, student)
    if current.fresh:
        await rebuild.ensure_bucket(pool, ledger, policy, course, student)
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(LOCK, key)
        existing = await conn.fetchrow(SELECT_GRANT, key)
        if existing is not None:
            return _same(existing, course, student, tokens)
        state = await ledger.grant(policy, course, student, key, tokens)
        row = await conn.fetchrow(INSERT_GRANT, course, student, tokens, reason, actor, state.period_start, key)
        await audit.record(conn, actor, "grant", course=course, student=student, reason=reason, details={
            "tokens": tokens, "grant_id": row["grant_id"], "idempotency_key": key,
            "period_start": datetime.fromtimestamp(state.period_start, UTC).isoformat()})
    return _grant(row, duplicate=False, state=state)


def _same(row: asyncpg.Record, course: str, student: str, tokens: int) -> Grant:
    if (row["course_id"], row["student_id"], row["tokens"]) != (course, student, tokens):
        raise GrantError(f"idempotency key {row['request_id']!r} was already used for a different grant")
    return _grant(row, duplicate=True, state=None)

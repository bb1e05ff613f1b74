"""Issuing and changing the status of students' virtual keys: Postgres is the record, Redis the fast path.

Every change is written to Postgres (with an audit entry) and then to Redis, where every worker reads a key's
status on each request -- so a revoked or suspended key is refused on its next request.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import asyncpg

from . import audit, incidents
from .keys import IssuedKey, KeyCodec
from .ledger import Ledger

UPSERT_STUDENT = """
INSERT INTO students (course_id, student_id, email, name, grp) VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (course_id, student_id) DO UPDATE SET enrolled = true, updated_at = now()
"""
INSERT_KEY = """
INSERT INTO api_keys (jti, course_id, student_id, token_sha256, issued_at, expires_at)
VALUES ($1, $2, $3, $4, to_timestamp($5), to_timestamp($6))
"""
SET_STATUS = """
UPDATE api_keys SET status = $4, status_reason = $5, status_changed_at = now()
WHERE course_id = $1 AND student_id = $2 AND ($3::text IS NULL OR jti = $3) AND status = ANY($6::text[])
RETURNING jti
"""
COURSE_EXISTS = "SELECT 1 FROM courses WHERE course_id = $1"
STUDENT_KEYS = """
SELECT jti, status, status_reason, issued_at FROM api_keys WHERE course_id = $1 AND student_id = $2 ORDER BY issued_at
"""

# Which statuses each action applies to: a revoked key is never brought back.
_FROM = {"suspended": ["active"], "revoked": ["active", "suspended"], "active": ["suspended"]}
_ACTION = {"suspended": "key.suspend", "revoked": "key.revoke", "active": "key.reinstate"}


class KeyringError(ValueError):
    """Bad keyring input; one line for the CLI / API."""


@dataclass(frozen=True, slots=True)
class StatusChange:
    course: str
    student: str
    status: str
    jtis: list[str]
    resolved_incidents: list[int] = field(default_factory=list)


class Keyring:
    def __init__(self, pool: asyncpg.Pool, ledger: Ledger, codec: KeyCodec) -> None:
        self._pool = pool
        self._ledger = ledger
        self._codec = codec

    async def issue(self, actor: str, course: str, student: str, *, email: str = "", name: str = "",
                    group: str = "", reason: str = "", conn: asyncpg.Connection | None = None) -> IssuedKey:
        """Issue a new key (enrolling the student if needed). The token is returned once and never stored."""
        issued = self._codec.issue(course, student)
        async with self._pool.acquire() if conn is None else _Borrowed(conn) as c, c.transaction():
            if not await c.fetchval(COURSE_EXISTS, course):
                raise KeyringError(f"no such course: {course!r} (create it with `gateway course create`)")
            await c.execute(UPSERT_STUDENT, course, student, email, name, group)
            await c.execute(INSERT_KEY, issued.claims.jti, course, student, issued.sha256,
                            issued.claims.issued_at, issued.claims.expires_at)
            await audit.record(c, actor, "key.issue", course=course, student=student, reason=reason,
                               details={"jti": issued.claims.jti})
        await self._ledger.set_key_status(course, student, issued.claims.jti, "active", "")
        return issued

    async def set_status(self, actor: str, course: str, student: str, status: str, *, reason: str = "",
                         jti: str | None = None) -> StatusChange:
        """Suspend / revoke / reinstate (``active``) a student's keys (or one key by jti)."""
        if status not in _FROM:
            raise KeyringError(f"unknown key status {status!r}")
        async with self._pool.acquire() as c, c.transaction():
            jtis = [r["jti"] for r in await c.fetch(SET_STATUS, course, student, jti, status, reason, _FROM[status])]
            if jtis:
                await audit.record(c, actor, _ACTION[status], course=course, student=student, reason=reason,
                                   details={"jtis": jtis})
        for changed in jtis:
            await self._ledger.set_key_status(course, student, changed, status, reason)
        resolved: list[int] = []
        if status == "active":
            # Reinstating closes the student's open incidents (audited there), also alert-only ones that never
            # suspended a key.
            closed = await incidents.resolve_student(self._pool, course, student, actor=actor,
                                                     note=reason or "key reinstated")
            resolved = [i.incident_id for i in closed]
        return StatusChange(course, student, status, jtis, resolved)

    async def rotate(self, actor: str, course: str, student: str, *, reason: str = "") -> IssuedKey:
        await self.set_status(actor, course, student, "revoked", reason=reason or "rotated")
        return await self.issue(actor, course, student, reason=reason or "rotated")

    async def keys_of(self, course: str, student: str) -> list[dict[str, object]]:
        return [dict(r) for r in await self._pool.fetch(STUDENT_KEYS, course, student)]


class _Borrowed:
    """Lets ``issue`` run inside a caller's connection (e.g. one sync transaction) or its own."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    async def __aenter__(self) -> asyncpg.Connection:
        return self._conn

    async def __aexit__(self, *exc: object) -> None:
        return None

"""Admin tokens: bearer tokens for the admin API, one course each (a convenor) or every course (``course`` None).

The token is shown once when created; only its SHA-256 is stored (``admin_tokens``), and ``auth.admin_principal``
looks a presented token up by that hash. Creating and revoking are audited.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from . import audit
from .db import transaction
from .keys import token_sha256

TOKEN_PREFIX = "gwadm_"

COURSE_EXISTS = "SELECT 1 FROM courses WHERE course_id = $1"
INSERT = """
INSERT INTO admin_tokens (token_id, course_id, token_sha256, label) VALUES ($1, $2, $3, $4)
RETURNING token_id, course_id, label, created_at, revoked_at
"""
SELECT = """
SELECT token_id, course_id, label, created_at, revoked_at FROM admin_tokens
WHERE ($1::text IS NULL OR course_id = $1) AND ($2 OR revoked_at IS NULL)
ORDER BY created_at, token_id
"""
REVOKE = """
UPDATE admin_tokens SET revoked_at = now() WHERE token_id = $1 AND revoked_at IS NULL
RETURNING token_id, course_id, label, created_at, revoked_at
"""


class AdminTokenError(ValueError):
    """Bad admin-token input; one line for the CLI."""


@dataclass(frozen=True, slots=True)
class AdminToken:
    token_id: str
    course: str | None  # None: every course
    label: str
    created_at: datetime
    revoked_at: datetime | None

    @property
    def scope(self) -> str:
        return self.course if self.course is not None else "(all courses)"

    def to_json(self) -> dict[str, object]:
        return {"token_id": self.token_id, "course": self.course, "label": self.label,
                "created_at": self.created_at.isoformat(),
                "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None}


@dataclass(frozen=True, slots=True)
class CreatedToken:
    token: str  # shown once, never stored
    info: AdminToken


def _token(row: asyncpg.Record) -> AdminToken:
    return AdminToken(row["token_id"], row["course_id"], row["label"], row["created_at"], row["revoked_at"])


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


async def create(conn: asyncpg.Connection | asyncpg.Pool, actor: str, course: str | None, *,
                 label: str = "") -> CreatedToken:
    """A new admin token for ``course`` (None: every course)."""
    if course is not None and not await conn.fetchval(COURSE_EXISTS, course):
        raise AdminTokenError(f"no such course: {course!r}")
    token = new_token()
    token_id = "adm_" + secrets.token_hex(6)
    async with transaction(conn) as c:
        row = await c.fetchrow(INSERT, token_id, course, token_sha256(token), label)
        await audit.record(c, actor, "admin_token.create", course=course,
                           details={"token_id": token_id, "label": label, "scope": course or "all"})
    return CreatedToken(token, _token(row))


async def listing(conn: asyncpg.Connection | asyncpg.Pool, course: str | None = None, *,
                  include_revoked: bool = False) -> list[AdminToken]:
    return [_token(r) for r in await conn.fetch(SELECT, course, include_revoked)]


async def revoke(conn: asyncpg.Connection | asyncpg.Pool, actor: str, token_id: str, *,
                 reason: str = "") -> AdminToken:
    async with transaction(conn) as c:
        row = await c.fetchrow(REVOKE, token_id)
        if row is None:
            raise AdminTokenError(f"no active admin token {token_id!r}")
        token = _token(row)
        await audit.record(c, actor, "admin_token.revoke", course=token.course, reason=reason,
                           details={"token_id": token_id})
    return token

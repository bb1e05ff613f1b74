"""Request -> principal: a student (virtual key) or an admin (bootstrap token or a stored admin token)."""

from __future__ import annotations

import hmac
from dataclasses import dataclass

import asyncpg
from aiohttp import web

from .errors import AuthenticationFailed, NotFound
from .keys import InvalidKey, KeyCodec, VirtualKeyClaims, token_sha256


@dataclass(frozen=True, slots=True)
class AdminPrincipal:
    """``course`` None means every course (the bootstrap token or a university-level admin token)."""

    token_id: str
    course: str | None

    def can_see(self, course: str) -> bool:
        return self.course is None or self.course == course

    @property
    def actor(self) -> str:
        return f"admin:{self.token_id}"


def presented_token(request: web.Request) -> str | None:
    """The credential the client sent: ``Authorization: Bearer`` first (auth-token mode), else ``x-api-key``."""
    authorization = request.headers.get("authorization", "")
    if authorization[:7].lower() == "bearer ":
        token = authorization[7:].strip()
        if token:
            return token
    api_key = request.headers.get("x-api-key", "").strip()
    return api_key or None


def looks_like_jwt(token: str) -> bool:
    return token.count(".") == 2 and token.startswith("eyJ")


def student_claims(request: web.Request, codec: KeyCodec) -> VirtualKeyClaims:
    token = presented_token(request)
    if token is None:
        raise AuthenticationFailed(
            "No API key: send your gateway key as 'Authorization: Bearer <key>' or 'x-api-key: <key>' "
            "(set ANTHROPIC_AUTH_TOKEN in Claude Code's environment)."
        )
    try:
        return codec.verify(token)
    except InvalidKey as exc:
        raise AuthenticationFailed(f"Invalid gateway key: {exc}.") from None


def is_bootstrap_admin(token: str, bootstrap: str | None) -> bool:
    return bootstrap is not None and hmac.compare_digest(token.encode(), bootstrap.encode())


SELECT_ADMIN_TOKEN = """
SELECT token_id, course_id FROM admin_tokens WHERE token_sha256 = $1 AND revoked_at IS NULL
"""


async def admin_principal(request: web.Request, pool: asyncpg.Pool, bootstrap: str | None) -> AdminPrincipal | None:
    """The admin behind the request's bearer token, or None if the token is not an admin token.

    The whole admin API (the bootstrap token and stored convenor tokens alike) is off unless
    ``GATEWAY_ADMIN_TOKEN`` is set (CONTRACT.md): then every admin request gets 404.
    """
    token = presented_token(request)
    if token is None or looks_like_jwt(token):
        return None
    if bootstrap is None:
        raise NotFound("The admin API is off on this gateway (set GATEWAY_ADMIN_TOKEN to turn it on).")
    if is_bootstrap_admin(token, bootstrap):
        return AdminPrincipal("bootstrap", None)
    row = await pool.fetchrow(SELECT_ADMIN_TOKEN, token_sha256(token))
    if row is None:
        return None
    return AdminPrincipal(row["token_id"], row["course_id"])

"""Key status by ``jti``: Redis is the fast path (checked on every request), Postgres the record.

A status missing from Redis (first use, or Redis lost its data) is loaded from Postgres and written back.
Status changes go to Postgres first, then Redis, so every worker refuses a suspended key on its next request.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from .keys import VirtualKeyClaims
from .ledger import Ledger

SELECT_KEY = "SELECT course_id, student_id, status, status_reason FROM api_keys WHERE jti = $1"


@dataclass(frozen=True, slots=True)
class KeyState:
    status: str  # active | suspended | revoked | unknown
    reason: str = ""


class KeyStatusStore:
    def __init__(self, ledger: Ledger, pool: asyncpg.Pool) -> None:
        self._ledger = ledger
        self._pool = pool

    async def from_postgres(self, claims: VirtualKeyClaims) -> KeyState:
        row = await self._pool.fetchrow(SELECT_KEY, claims.jti)
        if row is None or row["course_id"] != claims.course or row["student_id"] != claims.student:
            return KeyState("unknown")
        return KeyState(row["status"], row["status_reason"])

    async def load_into_redis(self, claims: VirtualKeyClaims) -> KeyState:
        state = await self.from_postgres(claims)
        if state.status != "unknown":
            await self._ledger.set_key_status(claims.course, claims.student, claims.jti, state.status, state.reason)
        return state

    async def status(self, claims: VirtualKeyClaims) -> KeyState:
        found = await self._ledger.key_status(claims.course, claims.student, claims.jti)
        if found is None:
            return await self.load_into_redis(claims)
        status, reason = found
        return KeyState(status, reason)

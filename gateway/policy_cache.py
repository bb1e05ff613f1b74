"""Course policies, read from Postgres and cached per worker.

An entry is trusted for ``ttl_s`` (1 s by default, so a ``quota set`` reaches every worker within a second even
without the pub/sub invalidation); after that the next request reloads it. If Postgres is unreachable a stale
entry keeps serving (Postgres is the record, not the request path), and the failure is logged.
"""

from __future__ import annotations

import asyncio
import logging
import time

import asyncpg

from .errors import PermissionDenied
from .policy import Policy

log = logging.getLogger(__name__)

SELECT_COURSE = "SELECT * FROM courses WHERE course_id = $1"


class PolicyCache:
    def __init__(self, pool: asyncpg.Pool, *, ttl_s: float = 1.0) -> None:
        self._pool = pool
        self._ttl_s = ttl_s
        self._entries: dict[str, tuple[float, Policy]] = {}
        self._loading: dict[str, asyncio.Future[Policy]] = {}

    def invalidate(self, course: str | None = None) -> None:
        if course is None:
            self._entries.clear()
        else:
            self._entries.pop(course, None)

    async def get(self, course: str) -> Policy:
        entry = self._entries.get(course)
        now = time.monotonic()
        if entry is not None and now - entry[0] < self._ttl_s:
            return entry[1]
        pending = self._loading.get(course)
        if pending is None:
            pending = asyncio.get_running_loop().create_future()
            self._loading[course] = pending
            try:
                policy = await self._load(course, entry[1] if entry else None)
                pending.set_result(policy)
            except BaseException as exc:
                pending.set_exception(exc)
                pending.exception()  # mark retrieved: waiters re-raise it, nobody else must
                raise
            finally:
                del self._loading[course]
            return policy
        return await asyncio.shield(pending)

    async def _load(self, course: str, stale: Policy | None) -> Policy:
        try:
            row = await self._pool.fetchrow(SELECT_COURSE, course)
        except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
            if stale is None:
                raise
            log.warning("policy reload for course %s failed, serving cached policy: %s", course, exc)
            return stale
        if row is None:
            raise PermissionDenied(f"Course {course!r} is not set up on this gateway; contact your convenor.")
        policy = Policy.from_row(row)
        self._entries[course] = (time.monotonic(), policy)
        return policy

"""Course policies, read from Postgres and cached per worker.

An entry is trusted for ``ttl_s`` (1 s by default, so a ``quota set`` reaches every worker within a second even
without the pub/sub invalidation); after that the next request reloads it. :meth:`PolicyCache.invalidate` marks
entries stale at once: the app's :class:`~gateway.invalidation.InvalidationListener` calls it when a course
changes. If Postgres is unreachable a stale entry keeps serving (Postgres is the record, not the request path),
and the failure is logged and counted. Every policy loaded is also copied to Redis, so a worker that starts (or
meets a course for the first time) while Postgres is down still serves it; with neither, the request gets 529.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

import asyncpg

from .errors import Overloaded, PermissionDenied
from .keyspace import Keyspace
from .policy import Policy
from .redis_client import REDIS_DOWN, AnyRedis

if TYPE_CHECKING:
    from .metrics import Metrics

log = logging.getLogger(__name__)

SELECT_COURSE = "SELECT * FROM courses WHERE course_id = $1"
_STALE = float("-inf")


class PolicyCache:
    def __init__(self, pool: asyncpg.Pool, *, ttl_s: float = 1.0, metrics: Metrics | None = None,
                 redis: AnyRedis | None = None, keyspace: Keyspace | None = None) -> None:
        self._pool = pool
        self._redis = redis
        self._keyspace = keyspace
        self._ttl_s = ttl_s
        self._metrics = metrics
        self._entries: dict[str, tuple[float, Policy]] = {}
        self._loading: dict[str, asyncio.Future[Policy]] = {}
        self._generation = 0  # bumped by invalidate(): a load that started before it stores a stale entry

    def invalidate(self, course: str | None = None) -> None:
        """Reload ``course`` (``None``: every course) on its next use; the old entry only serves if Postgres
        cannot be reached."""
        self._generation += 1
        for name in [course] if course is not None else list(self._entries):
            entry = self._entries.get(name)
            if entry is not None:
                self._entries[name] = (_STALE, entry[1])

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
        generation = self._generation
        started = time.monotonic()
        try:
            row = await self._pool.fetchrow(SELECT_COURSE, course)
        except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
            if self._metrics is not None:
                self._metrics.postgres_errors.labels("policy").inc()
            if stale is None:
                stale = await self._from_redis(course)
            if stale is None:
                raise Overloaded("The gateway cannot reach its database to load your course; try again shortly.") \
                    from None
            log.warning("policy reload for course %s failed, serving cached policy: %s", course, exc)
            return stale
        if row is None:
            raise PermissionDenied(f"Course {course!r} is not set up on this gateway; contact your convenor.")
        policy = Policy.from_row(row)
        self._entries[course] = (started if generation == self._generation else _STALE, policy)
        await self._to_redis(policy)
        return policy

    async def _to_redis(self, policy: Policy) -> None:
        if self._redis is None or self._keyspace is None:
            return
        try:
            await self._redis.set(self._keyspace.policy(policy.course), policy.model_dump_json())
        except REDIS_DOWN as exc:  # only a fallback copy: the request goes on
            log.debug("could not copy course %s's policy to Redis: %s", policy.course, exc)

    async def _from_redis(self, course: str) -> Policy | None:
        if self._redis is None or self._keyspace is None:
            return None
        try:
            raw = await self._redis.get(self._keyspace.policy(course))
        except REDIS_DOWN:
            return None
        return None if raw is None else Policy.model_validate_json(raw)

"""Policy changes reach a worker's cache through Redis pub/sub at once (the cache here trusts entries for an
hour, so only the message can refresh it), including after the listener lost Redis and reconnected."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis

from gateway import courses
from gateway.courses import PolicyChange
from gateway.db import create_pool
from gateway.invalidation import InvalidationListener, publish_invalidation
from gateway.keyspace import Keyspace
from gateway.policy_cache import PolicyCache
from gateway.redis_client import create_subscriber
from gateway.settings import Settings
from tests.cluster import redis_server
from tests.ops_support import redis_pid

WAIT_S = 15.0


@pytest.fixture
async def pool(pg_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(pg_dsn, min_size=1, max_size=2)
    for course in ("c1", "c2"):
        await courses.create(pool, "test", course, limit=1000, period_seconds=604800)
    yield pool
    await pool.close()


async def _eventually(check: Callable[[], object]) -> None:
    deadline = time.monotonic() + WAIT_S
    while not await check():  # type: ignore[misc]
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)  # polling interval against a deadline


async def test_a_published_change_refreshes_a_long_lived_cache(pool: asyncpg.Pool, redis_url: str,
                                                               redis_prefix: str) -> None:
    keyspace = Keyspace(redis_prefix)
    cache = PolicyCache(pool, ttl_s=3600)
    listener = InvalidationListener(create_subscriber(redis_url, Settings()), keyspace.invalidation_channel(),
                                    cache.invalidate)
    listener.start()
    publisher = aioredis.from_url(redis_url)
    try:
        await asyncio.wait_for(listener.subscribed.wait(), WAIT_S)
        assert (await cache.get("c1")).limit == (await cache.get("c2")).limit == 1000
        await courses.change_policy(pool, "test", "c1", PolicyChange(limit=2000))
        await courses.change_policy(pool, "test", "c2", PolicyChange(limit=3000))
        assert (await cache.get("c1")).limit == 1000  # cached for an hour: nothing changes by itself

        assert await publish_invalidation(publisher, keyspace, "c1") == 1
        await _eventually(lambda: _limit_is(cache, "c1", 2000))
        assert (await cache.get("c2")).limit == 1000  # only the course named
        await publish_invalidation(publisher, keyspace)  # every course
        await _eventually(lambda: _limit_is(cache, "c2", 3000))
    finally:
        await listener.close()
        await publisher.aclose()


async def _limit_is(cache: PolicyCache, course: str, limit: int) -> bool:
    return (await cache.get(course)).limit == limit


async def test_the_listener_resubscribes_after_redis_restarts(pool: asyncpg.Pool, tmp_path: Path) -> None:
    with redis_server() as url:
        port = url.rsplit(":", 1)[1].split("/")[0]
        keyspace = Keyspace("gwinv")
        cache = PolicyCache(pool, ttl_s=3600)
        listener = InvalidationListener(create_subscriber(url, Settings()), keyspace.invalidation_channel(),
                                        cache.invalidate, retry_s=0.05)
        listener.start()
        restarted: asyncio.subprocess.Process | None = None
        try:
            await asyncio.wait_for(listener.subscribed.wait(), WAIT_S)
            assert (await cache.get("c1")).limit == 1000
            os.kill(redis_pid(url), signal.SIGKILL)
            await _eventually(lambda: _not_subscribed(listener))
            restarted = await asyncio.create_subprocess_exec(
                "redis-server", "--port", port, "--bind", "127.0.0.1", "--save", "", "--dir", str(tmp_path),
                stdout=asyncio.subprocess.DEVNULL)
            await asyncio.wait_for(listener.subscribed.wait(), WAIT_S)
            await courses.change_policy(pool, "test", "c1", PolicyChange(limit=4000))
            publisher = aioredis.from_url(url)
            try:
                assert await publish_invalidation(publisher, keyspace, "c1") == 1
            finally:
                await publisher.aclose()
            await _eventually(lambda: _limit_is(cache, "c1", 4000))
        finally:
            await listener.close()
            if restarted is not None:
                restarted.terminate()
                await asyncio.wait_for(restarted.wait(), 10)


async def _not_subscribed(listener: InvalidationListener) -> bool:
    return not listener.subscribed.is_set()

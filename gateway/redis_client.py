"""The Redis client: short timeouts and a blocking pool, so an unreachable Redis never stalls a request long."""

from __future__ import annotations

from typing import TypeAlias

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from .settings import Settings

AnyRedis: TypeAlias = "aioredis.Redis | RedisCluster"


def create_redis(url: str, settings: Settings) -> AnyRedis:
    timeout = settings.redis_timeout_s
    if settings.redis_cluster:
        return RedisCluster.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout,
            max_connections=settings.redis_pool_size,
        )
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=settings.redis_pool_size, timeout=timeout,
        socket_timeout=timeout, socket_connect_timeout=timeout,
    )
    return aioredis.Redis.from_pool(pool)  # the client owns the pool: aclose() disconnects it

"""The Redis clients: short timeouts, no client-side retries and a blocking pool, so that an unreachable Redis
never stalls a request for longer than about ``redis_timeout_s``.

* Standalone: a :class:`~redis.asyncio.BlockingConnectionPool` of ``redis_pool_size`` connections; a caller waits
  at most ``redis_timeout_s`` for a free connection, then gets ``ConnectionError``. Every socket read and write
  times out after ``redis_timeout_s`` (2 s: a loaded event loop must not read its own lag as an outage), a
  connect after ``redis_connect_timeout_s`` (0.5 s). redis-py retries a failed command three times by default (with
  backoff): that would multiply the stall, so retries are off -- the gate's fail mode is the retry policy.
* Cluster (``GATEWAY_REDIS_CLUSTER=1``): the same timeouts per node and no command retries; the node pools refuse
  rather than wait past ``redis_pool_size``, so the ledger queues its calls (:func:`ledger_concurrency`).
  Failures to (re)discover the cluster raise :class:`~redis.exceptions.RedisClusterException`, which is not a
  ``RedisError``: :data:`REDIS_DOWN` names every exception that means "Redis is unreachable".
* Pub/sub (:func:`create_subscriber`): a plain connection of its own to the configured URL, also for a cluster
  (classic ``PUBLISH`` reaches the subscribers on every node).
"""

from __future__ import annotations

import asyncio
from typing import TypeAlias

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisClusterException, RedisError

from .settings import Settings

AnyRedis: TypeAlias = "aioredis.Redis | RedisCluster"

# Everything a Redis call raises when the server (or a cluster node) cannot be reached in time.
REDIS_DOWN: tuple[type[BaseException], ...] = (RedisError, RedisClusterException, OSError, asyncio.TimeoutError)


def _no_retry() -> Retry:
    return Retry(NoBackoff(), 0)


def create_redis(url: str, settings: Settings) -> AnyRedis:
    timeout = settings.redis_timeout_s
    if settings.redis_cluster:
        return RedisCluster.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=settings.redis_connect_timeout_s,
            max_connections=settings.redis_pool_size, retry=_no_retry(),
        )
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=settings.redis_pool_size, timeout=timeout,
        socket_timeout=timeout, socket_connect_timeout=settings.redis_connect_timeout_s, retry=_no_retry(),
    )
    return aioredis.Redis.from_pool(pool)  # the client owns the pool: aclose() disconnects it


def ledger_concurrency(settings: Settings) -> int | None:
    """The ``max_concurrency`` to give :class:`~gateway.ledger.Ledger` for this configuration (see there)."""
    return settings.redis_pool_size if settings.redis_cluster else None


def create_subscriber(url: str, settings: Settings) -> aioredis.Redis:
    """A single-connection client for pub/sub (the subscription holds its connection for good)."""
    timeout = settings.redis_timeout_s
    return aioredis.Redis.from_url(
        url, socket_timeout=timeout, socket_connect_timeout=settings.redis_connect_timeout_s, retry=_no_retry(),
    )


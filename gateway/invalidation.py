"""Telling every worker that cached course state changed: one Redis pub/sub message.

Whoever changes a course's policy (``gateway quota set``, the admin API) calls :func:`publish_invalidation`
after the Postgres write; every worker runs an :class:`InvalidationListener` that drops the course from its
:class:`~gateway.policy_cache.PolicyCache`. Pub/sub is best effort (a worker that is reconnecting misses
messages), so the cache keeps its 1 s TTL as the bound, and a listener that (re)subscribes drops everything.
Key status needs no message: it is read from Redis on every request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import redis.asyncio as aioredis

from .keyspace import Keyspace
from .redis_client import REDIS_DOWN, AnyRedis
from .tasks import stop_tasks

log = logging.getLogger(__name__)

ALL = "*"  # message meaning "every course"

Invalidate = Callable[[str | None], None]  # course, or None for all


async def publish_invalidation(redis: AnyRedis, keyspace: Keyspace, course: str | None = None) -> int:
    """Tell every worker to drop ``course`` (``None``: everything) from its caches; returns how many
    subscribers the receiving Redis delivered the message to (in a cluster: those on that node only -- the
    cluster bus passes it on to the others)."""
    return int(await redis.publish(keyspace.invalidation_channel(), course or ALL))


class InvalidationListener:
    """A background task subscribed to the invalidation channel, calling ``on_invalidate`` for each message."""

    def __init__(self, client: aioredis.Redis, channel: str, on_invalidate: Invalidate, *,
                 poll_s: float = 1.0, retry_s: float = 1.0) -> None:
        self._client = client
        self._channel = channel
        self._on_invalidate = on_invalidate
        self._poll_s = poll_s
        self._retry_s = retry_s
        self._task: asyncio.Task[None] | None = None
        self.subscribed = asyncio.Event()  # set while subscribed (tests and /readyz may wait on it)
        self.received = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="invalidation-listener")

    async def close(self) -> None:
        await stop_tasks(self._task)
        self._task = None
        await self._client.aclose()

    async def _run(self) -> None:
        while True:
            try:
                await self._listen()
            except REDIS_DOWN as exc:
                if self.subscribed.is_set():
                    log.warning("invalidation channel lost (%s); caches fall back to their TTL until it is back",
                                type(exc).__name__)
                self.subscribed.clear()
            await asyncio.sleep(self._retry_s)  # reconnect pacing, not synchronisation

    async def _listen(self) -> None:
        pubsub = self._client.pubsub()
        try:
            await pubsub.subscribe(self._channel)
            self._on_invalidate(None)  # messages may have been missed while we were not subscribed
            self.subscribed.set()
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=self._poll_s)
                if message is None or message.get("type") != "message":
                    continue
                data = message["data"]
                course = data.decode() if isinstance(data, bytes) else str(data)
                self.received += 1
                self._on_invalidate(None if course == ALL else course)
        finally:
            with contextlib.suppress(*REDIS_DOWN):
                await pubsub.aclose()  # type: ignore[no-untyped-call]

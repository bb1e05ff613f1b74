"""Shared pieces of the ledger tests: a settable clock, policies, and the Redis backends one test body runs on.

The fixtures ``bucket_redis`` and ``ledger_clock`` are registered through ``tests/conftest.py``.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import fakeredis
import pytest
import redis.asyncio as aioredis

from gateway.keyspace import Keyspace
from gateway.ledger import Ledger, estimate_for
from gateway.policy import Policy
from gateway.weights import Weights

WEEK = 604_800
BACKENDS = ("fakeredis", "redis")
POOL_SIZE = 64  # like the gateway's blocking pool: many concurrent calls share a few connections


@dataclass
class Clock:
    """A test clock: the ledger passes its reading to the scripts instead of Redis TIME."""

    now: float

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def local_epoch(tz: str, year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> float:
    """Epoch seconds of a wall-clock time in ``tz``."""
    return datetime(year, month, day, hour, minute, tzinfo=ZoneInfo(tz)).timestamp()


def make_policy(**overrides: Any) -> Policy:
    fields: dict[str, Any] = {
        "course": "comp1000",
        "limit": 100_000,
        "period_seconds": WEEK,
        "weights": Weights.from_json({}),
    }
    fields.update(overrides)
    return Policy(**fields)


@pytest.fixture(params=BACKENDS)
async def bucket_redis(request: pytest.FixtureRequest, redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """The ledger tests' Redis: each test runs once on fakeredis and once on the real server."""
    async with backend(request.param, redis_url) as opened:
        yield opened


@pytest.fixture
def ledger_clock() -> Clock:
    return Clock(local_epoch("UTC", 2026, 3, 4, 12, 0))  # Wednesday of the week starting Mon 2 Mar 2026


@asynccontextmanager
async def backend(name: str, redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """``fakeredis`` (Lua via lupa, in process) or the real Redis (keys removed by the ``redis_prefix`` fixture)."""
    if name == "fakeredis":
        client: aioredis.Redis = fakeredis.FakeAsyncRedis(
            server=fakeredis.FakeServer(), connection_pool_class=aioredis.BlockingConnectionPool,
            max_connections=POOL_SIZE,
        )
    else:
        # from_pool: the client owns the pool, so aclose() closes its connections too
        client = aioredis.Redis.from_pool(
            aioredis.BlockingConnectionPool.from_url(redis_url, max_connections=POOL_SIZE)
        )
    try:
        yield client
    finally:
        await client.aclose()


def new_ledger(client: Any, prefix: str, clock: Clock, **kwargs: Any) -> Ledger:
    return Ledger(client, Keyspace(prefix), clock=clock, **kwargs)


async def burst(ledger: Ledger, *, requests: int, usage: int, limit: int, estimate: int,
                max_inflight: int | None, expected_admitted: int) -> None:
    """``requests`` reserves at once against one bucket, then every admitted one settles ``usage``."""
    policy = make_policy(limit=limit)
    course, student, jti = "comp1000", "crowd", "jti-crowd"
    await ledger.set_key_status(course, student, jti, "active")
    results = await asyncio.gather(*(
        ledger.reserve(policy, course, student, jti, f"r{i}", estimate, max_inflight) for i in range(requests)
    ))
    admitted = [f"r{i}" for i, result in enumerate(results) if result.admitted]
    # the documented bound: min(ceil(available / estimate), max_inflight) with every request in flight at once
    expected = min(math.ceil(limit / estimate), max_inflight or requests)
    assert expected == expected_admitted
    assert len(admitted) == expected
    refused = {result.outcome for result in results if not result.admitted}
    assert refused == ({"inflight"} if max_inflight is not None and expected == max_inflight else {"quota"})

    states = await asyncio.gather(*(ledger.settle(policy, course, student, rid, usage) for rid in admitted))
    assert max(state.used for state in states) == usage * expected
    final = await ledger.read(policy, course, student)
    assert final.used == usage * len(admitted)  # the sum of debits is the sum of metered usage
    assert final.remaining == limit - usage * expected
    assert (final.reserved, final.inflight) == (0, 0)
    assert final.limit_hits == (requests - expected if refused == {"quota"} else 0)
    if max_inflight is not None:
        assert final.remaining >= -(max_inflight * usage)


async def waves(ledger: Ledger, *, workers: int, limit: int, max_inflight: int, seed: int) -> None:
    """Workers reserve and settle random usage until the bucket refuses; the overshoot stays within the bound."""
    policy = make_policy(limit=limit, max_inflight=max_inflight)
    course, student, jti = "comp1000", "busy", "jti-busy"
    await ledger.set_key_status(course, student, jti, "active")
    metered: list[int] = []
    quota_refusals = 0
    largest, largest_body = 20_000, 400_000

    async def worker(number: int) -> None:
        nonlocal quota_refusals
        rng = random.Random(seed * 1_000 + number)
        for attempt in range(10_000):
            request_id = f"w{number}-{attempt}"
            reservation = await ledger.reserve(policy, course, student, jti, request_id,
                                               estimate_for(rng.randrange(1, largest_body)))
            if reservation.outcome == "quota":
                quota_refusals += 1
                return
            if reservation.admitted:
                usage = rng.randrange(1_000, largest + 1)
                await ledger.settle(policy, course, student, request_id, usage)
                metered.append(usage)
        raise AssertionError("the bucket never ran out")

    await asyncio.gather(*(worker(n) for n in range(workers)))
    final = await ledger.read(policy, course, student)
    assert final.used == sum(metered)
    assert final.remaining <= max_inflight * estimate_for(largest_body)  # each refusal saw remaining <= reserved
    assert final.remaining >= -(max_inflight * largest)
    assert final.limit_hits == quota_refusals == workers
    assert (final.reserved, final.inflight) == (0, 0)

"""Many concurrent requests against one bucket: admissions and the final balance match the documented bound."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from tests.ledger_support import Clock, burst, new_ledger, waves


@pytest.mark.parametrize(
    ("estimate", "max_inflight", "admitted"),
    [
        (5_000, None, 200),  # estimate == usage: exactly the 200 requests that fit, balance 0
        (3_000, None, 334),  # ceil(1_000_000 / 3_000)
        (3_000, 250, 250),  # capped by max_inflight
        (20_000, 250, 50),
    ],
)
async def test_500_concurrent_reserves(bucket_redis: aioredis.Redis, redis_prefix: str, ledger_clock: Clock,
                                       estimate: int, max_inflight: int | None, admitted: int) -> None:
    ledger = new_ledger(bucket_redis, redis_prefix, ledger_clock)
    await burst(ledger, requests=500, usage=5_000, limit=1_000_000, estimate=estimate,
                max_inflight=max_inflight, expected_admitted=admitted)


async def test_interleaved_requests_never_overshoot_the_bound(bucket_redis: aioredis.Redis, redis_prefix: str,
                                                              ledger_clock: Clock) -> None:
    ledger = new_ledger(bucket_redis, redis_prefix, ledger_clock)
    await waves(ledger, workers=40, limit=300_000, max_inflight=8, seed=7)

"""Lazy period rollover and carry-over in the Lua scripts, on fakeredis and on the real Redis."""

from __future__ import annotations

import time

import pytest
import redis.asyncio as aioredis

from gateway.keyspace import Keyspace
from gateway.ledger import Ledger
from gateway.periods import boundaries, period_at
from gateway.policy import Policy
from gateway.scripts import Scripts, schedule_argument
from tests.ledger_support import WEEK, Clock, local_epoch, make_policy, new_ledger

HOUR = 3600
SYDNEY = "Australia/Sydney"
COURSE = "comp1000"


@pytest.fixture
def ledger(bucket_redis: aioredis.Redis, redis_prefix: str, ledger_clock: Clock) -> Ledger:
    return new_ledger(bucket_redis, redis_prefix, ledger_clock)


async def spend(ledger: Ledger, policy: Policy, student: str, request_id: str, weighted: int) -> None:
    await ledger.set_key_status(COURSE, student, "jti-" + student, "active")
    reservation = await ledger.reserve(policy, COURSE, student, "jti-" + student, request_id, 1_000)
    assert reservation.outcome == "admitted"
    await ledger.settle(policy, COURSE, student, request_id, weighted)


async def test_new_period_without_carry_over_starts_from_the_limit(ledger: Ledger, ledger_clock: Clock) -> None:
    policy = make_policy()
    await spend(ledger, policy, "ann", "r1", 30_000)
    before = await ledger.read(policy, COURSE, "ann")
    assert (before.used, before.remaining) == (30_000, 70_000)
    assert (before.period_start, before.period_end) == period_at(policy, ledger_clock.now)

    ledger_clock.advance(WEEK)
    after = await ledger.read(policy, COURSE, "ann")
    assert (after.carried, after.granted, after.used, after.remaining) == (0, 0, 0, 100_000)
    assert after.period_start == before.period_end
    assert after.period_end == before.period_end + WEEK


async def test_carry_over_moves_the_unused_part_into_the_next_period(ledger: Ledger, ledger_clock: Clock) -> None:
    policy = make_policy(carry_over=True)
    await spend(ledger, policy, "ann", "r1", 30_000)
    await ledger.grant(policy, COURSE, "ann", "g1", 5_000)
    ledger_clock.advance(WEEK)
    state = await ledger.read(policy, COURSE, "ann")
    assert (state.carried, state.granted, state.used) == (75_000, 0, 0)
    assert state.remaining == 175_000


async def test_carry_cap_defaults_to_one_limit_and_is_respected(ledger: Ledger, ledger_clock: Clock) -> None:
    default_cap = make_policy(carry_over=True)
    small_cap = make_policy(carry_over=True, carry_cap=20_000)
    await ledger.grant(default_cap, COURSE, "ann", "g1", 50_000)  # 150k unused
    await spend(ledger, small_cap, "bob", "r1", 10_000)  # 90k unused
    ledger_clock.advance(WEEK)
    assert (await ledger.read(default_cap, COURSE, "ann")).carried == 100_000
    assert (await ledger.read(small_cap, COURSE, "bob")).carried == 20_000


async def test_a_negative_left_over_is_not_carried(ledger: Ledger, ledger_clock: Clock) -> None:
    policy = make_policy(carry_over=True)
    await spend(ledger, policy, "ann", "r1", 130_000)
    assert (await ledger.read(policy, COURSE, "ann")).remaining == -30_000
    ledger_clock.advance(WEEK)
    state = await ledger.read(policy, COURSE, "ann")
    assert (state.carried, state.used, state.remaining) == (0, 0, 100_000)


@pytest.mark.parametrize(("carry_cap", "expected"), [(250_000, 230_000), (None, 100_000), (150_000, 150_000)])
async def test_three_skipped_weeks_carry_like_three_touched_weeks(
    ledger: Ledger, ledger_clock: Clock, carry_cap: int | None, expected: int
) -> None:
    policy = make_policy(carry_over=True, carry_cap=carry_cap)
    for student in ("skipper", "toucher"):
        await spend(ledger, policy, student, "r1", 80_000)
        await ledger.grant(policy, COURSE, student, "g1", 10_000)  # 30k left over
    start = (await ledger.read(policy, COURSE, "skipper")).period_start
    for _ in range(3):
        ledger_clock.advance(WEEK)
        await ledger.read(policy, COURSE, "toucher")
    skipped = await ledger.read(policy, COURSE, "skipper")
    touched = await ledger.read(policy, COURSE, "toucher")
    # 30k carried into week 1, then + one idle limit per further week, up to the cap
    assert skipped.carried == touched.carried == expected
    assert skipped.period_start == touched.period_start == start + 3 * WEEK
    assert (skipped.used, skipped.granted, skipped.limit_hits) == (0, 0, 0)


async def test_three_skipped_weeks_without_carry_over(ledger: Ledger, ledger_clock: Clock) -> None:
    policy = make_policy()
    await spend(ledger, policy, "ann", "r1", 10_000)
    ledger_clock.advance(3 * WEEK + 2 * HOUR)
    state = await ledger.read(policy, COURSE, "ann")
    assert (state.carried, state.used, state.remaining) == (0, 0, 100_000)


async def test_limit_hits_count_per_period(ledger: Ledger, ledger_clock: Clock) -> None:
    policy = make_policy(limit=1_000)
    await spend(ledger, policy, "ann", "r1", 1_000)
    for attempt in range(3):
        refused = await ledger.reserve(policy, COURSE, "ann", "jti-ann", f"x{attempt}", 500)
        assert refused.outcome == "quota"
        assert refused.state.limit_hits == attempt + 1
    ledger_clock.advance(WEEK)
    assert (await ledger.read(policy, COURSE, "ann")).limit_hits == 0


async def test_sydney_weeks_across_dst_end_and_start(bucket_redis: aioredis.Redis, redis_prefix: str) -> None:
    clock = Clock(local_epoch(SYDNEY, 2026, 4, 1, 12, 0))
    ledger = new_ledger(bucket_redis, redis_prefix, clock)
    policy = make_policy(tz=SYDNEY, carry_over=True, carry_cap=500_000)
    await spend(ledger, policy, "ann", "r1", 60_000)
    week = await ledger.read(policy, COURSE, "ann")
    assert (week.period_start, week.period_end) == (local_epoch(SYDNEY, 2026, 3, 30), local_epoch(SYDNEY, 2026, 4, 6))
    assert week.period_end - week.period_start == 169 * HOUR

    clock.now = local_epoch(SYDNEY, 2026, 4, 6)  # exactly the boundary: the new week has begun
    nxt = await ledger.read(policy, COURSE, "ann")
    assert nxt.period_start == week.period_end
    assert nxt.period_end - nxt.period_start == WEEK
    assert nxt.carried == 40_000  # one period crossed, not zero or two, although 169 h != 168 h

    clock.now = local_epoch(SYDNEY, 2026, 9, 30, 12, 0)  # 25 weeks on: the 167 h week before October's change
    late = await ledger.read(policy, COURSE, "ann")
    assert (late.period_start, late.period_end) == (local_epoch(SYDNEY, 2026, 9, 28), local_epoch(SYDNEY, 2026, 10, 5))
    assert late.period_end - late.period_start == 167 * HOUR
    assert late.carried == 500_000
    await spend(ledger, policy, "ann", "r2", 460_000)

    clock.now = local_epoch(SYDNEY, 2026, 10, 5)
    october = await ledger.read(policy, COURSE, "ann")
    assert october.period_start == late.period_end
    assert (october.carried, october.used) == (140_000, 0)  # 167 h is still one period crossed


async def test_time_outside_the_boundary_list_extrapolates_by_the_nominal_length(
    bucket_redis: aioredis.Redis, redis_prefix: str, ledger: Ledger, ledger_clock: Clock
) -> None:
    # Redis time far from the boundary list the ledger sent (a stale cache, a skewed host ledger_clock).
    policy = make_policy(carry_over=True, carry_cap=1_000_000)
    await spend(ledger, policy, "ann", "r1", 100_000)  # nothing left over
    old_list = boundaries(policy, ledger_clock.now, 2, 3)
    keys = Keyspace(redis_prefix)
    read = Scripts.register(bucket_redis).read
    schedule = schedule_argument(policy.limit, policy.effective_carry_cap, policy.period_seconds, 900, old_list)
    later = ledger_clock.now + 10 * WEEK
    reply = await read([keys.bucket(COURSE, "ann"), keys.inflight(COURSE, "ann")], [later, schedule])
    assert reply[8:10] == list(period_at(policy, later))
    assert reply[3] == 9 * 100_000  # carried: nothing after the first crossing, then one limit a week

    earlier = ledger_clock.now - 52 * WEEK
    reply = await read([keys.bucket(COURSE, "bob"), keys.inflight(COURSE, "bob")], [earlier, schedule])
    assert reply[8:10] == list(period_at(policy, earlier))


async def test_without_a_test_clock_the_scripts_use_redis_time(bucket_redis: aioredis.Redis, redis_prefix: str) -> None:
    ledger = Ledger(bucket_redis, Keyspace(redis_prefix))
    policy = make_policy(tz=SYDNEY)
    before = time.time()
    state = await ledger.read(policy, COURSE, "ann")
    assert state.period_start <= before
    assert time.time() < state.period_end
    assert (state.period_start, state.period_end) == period_at(policy, before)

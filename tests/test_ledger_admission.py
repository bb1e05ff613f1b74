"""Reserve / settle / grant / read semantics of the ledger, on fakeredis and on the real Redis."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from gateway.keyspace import Keyspace
from gateway.ledger import ESTIMATE_BASE, Ledger, estimate_for
from tests.ledger_support import WEEK, Clock, make_policy, new_ledger

COURSE = "comp1000"
JTI = "jti-ann"


@pytest.fixture
async def ledger(bucket_redis: aioredis.Redis, redis_prefix: str, ledger_clock: Clock) -> Ledger:
    ledger = new_ledger(bucket_redis, redis_prefix, ledger_clock)
    await ledger.set_key_status(COURSE, "ann", JTI, "active")
    return ledger


async def test_unknown_key_is_reported_and_nothing_is_written(bucket_redis: aioredis.Redis, redis_prefix: str,
                                                              ledger_clock: Clock) -> None:
    ledger = new_ledger(bucket_redis, redis_prefix, ledger_clock)
    reservation = await ledger.reserve(make_policy(), COURSE, "bob", "jti-bob", "r1", 1_000)
    assert reservation.outcome == "key_unknown"
    assert reservation.fresh
    assert await bucket_redis.exists(Keyspace(redis_prefix).bucket(COURSE, "bob")) == 0
    assert await ledger.key_status(COURSE, "bob", "jti-bob") is None

    await ledger.set_key_status(COURSE, "bob", "jti-bob", "active")
    admitted = await ledger.reserve(make_policy(), COURSE, "bob", "jti-bob", "r1", 1_000)
    assert admitted.outcome == "admitted"
    assert admitted.fresh  # the bucket was just created: the caller reconciles it with Postgres


@pytest.mark.parametrize("status", ["suspended", "revoked"])
async def test_suspended_and_revoked_keys_are_refused_with_their_reason(ledger: Ledger, status: str) -> None:
    policy = make_policy()
    await ledger.set_key_status(COURSE, "ann", JTI, status, "shared key | on a forum")
    assert await ledger.key_status(COURSE, "ann", JTI) == (status, "shared key | on a forum")
    refused = await ledger.reserve(policy, COURSE, "ann", JTI, "r1", 1_000)
    assert (refused.outcome, refused.reason) == (status, "shared key | on a forum")
    assert refused.state.reserved == 0

    await ledger.set_key_status(COURSE, "ann", JTI, "active")
    assert await ledger.key_status(COURSE, "ann", JTI) == ("active", "")
    assert (await ledger.reserve(policy, COURSE, "ann", JTI, "r1", 1_000)).admitted


async def test_key_status_values_are_checked(ledger: Ledger) -> None:
    with pytest.raises(ValueError, match="key status"):
        await ledger.set_key_status(COURSE, "ann", JTI, "paused")


async def test_admits_while_remaining_minus_reservations_is_positive(ledger: Ledger) -> None:
    policy = make_policy(limit=10_000)
    outcomes = [(await ledger.reserve(policy, COURSE, "ann", JTI, f"r{i}", 4_000)).outcome for i in range(4)]
    assert outcomes == ["admitted", "admitted", "admitted", "quota"]  # 10k, 6k, 2k > 0; then -2k
    state = await ledger.read(policy, COURSE, "ann")
    assert (state.reserved, state.inflight, state.limit_hits, state.available) == (12_000, 3, 1, -2_000)

    settled = await ledger.settle(policy, COURSE, "ann", "r0", 500)  # far below the estimate
    assert (settled.used, settled.reserved, settled.inflight) == (500, 8_000, 2)
    assert (await ledger.reserve(policy, COURSE, "ann", JTI, "r9", 4_000)).admitted


async def test_in_flight_limit(ledger: Ledger) -> None:
    policy = make_policy(max_inflight=2)
    assert (await ledger.reserve(policy, COURSE, "ann", JTI, "r1", 1_000)).admitted
    assert (await ledger.reserve(policy, COURSE, "ann", JTI, "r2", 1_000)).admitted
    refused = await ledger.reserve(policy, COURSE, "ann", JTI, "r3", 1_000)
    assert refused.outcome == "inflight"
    assert refused.state.limit_hits == 0
    # the call's limit overrides the policy's
    assert (await ledger.reserve(policy, COURSE, "ann", JTI, "r3", 1_000, max_inflight=3)).admitted
    await ledger.settle(policy, COURSE, "ann", "r1", 10)
    assert (await ledger.reserve(policy, COURSE, "ann", JTI, "r4", 1_000, max_inflight=3)).admitted


async def test_default_in_flight_limit_of_the_ledger(bucket_redis: aioredis.Redis, redis_prefix: str,
                                                     ledger_clock: Clock) -> None:
    ledger = new_ledger(bucket_redis, redis_prefix, ledger_clock, default_max_inflight=1)
    await ledger.set_key_status(COURSE, "ann", JTI, "active")
    assert (await ledger.reserve(make_policy(), COURSE, "ann", JTI, "r1", 1)).admitted
    assert (await ledger.reserve(make_policy(), COURSE, "ann", JTI, "r2", 1)).outcome == "inflight"


async def test_a_repeated_reserve_reserves_once(ledger: Ledger) -> None:
    policy = make_policy()
    first = await ledger.reserve(policy, COURSE, "ann", JTI, "r1", 3_000)
    again = await ledger.reserve(policy, COURSE, "ann", JTI, "r1", 3_000)
    assert first.admitted and again.admitted
    assert (again.state.reserved, again.state.inflight) == (3_000, 1)


async def test_replaying_a_settle_changes_nothing(ledger: Ledger) -> None:
    policy = make_policy()
    await ledger.reserve(policy, COURSE, "ann", JTI, "r1", 3_000)
    settled = await ledger.settle(policy, COURSE, "ann", "r1", 7_777)
    assert (settled.used, settled.reserved) == (7_777, 0)
    for _ in range(3):
        assert await ledger.settle(policy, COURSE, "ann", "r1", 7_777) == settled
    assert await ledger.settle(policy, COURSE, "ann", "r1", 99) == settled
    assert await ledger.read(policy, COURSE, "ann") == settled


async def test_settle_without_a_reservation_still_debits(ledger: Ledger, bucket_redis: aioredis.Redis,
                                                         redis_prefix: str) -> None:
    # e.g. a fail-open debit replayed after Redis came back, or a bucket lost with Redis
    policy = make_policy()
    state = await ledger.settle(policy, COURSE, "zoe", "r1", 4_000)
    assert (state.used, state.remaining, state.fresh) == (4_000, 96_000, True)
    assert await bucket_redis.exists(Keyspace(redis_prefix).bucket(COURSE, "zoe")) == 1


async def test_settle_after_a_rollover_debits_the_new_period(ledger: Ledger, ledger_clock: Clock) -> None:
    policy = make_policy(carry_over=True)
    await ledger.reserve(policy, COURSE, "ann", JTI, "r1", 3_000)
    ledger_clock.advance(WEEK)
    state = await ledger.settle(policy, COURSE, "ann", "r1", 5_000)
    assert (state.carried, state.used, state.reserved, state.inflight) == (100_000, 5_000, 0, 0)


async def test_grants_are_idempotent_and_may_be_negative(ledger: Ledger) -> None:
    policy = make_policy()
    granted = await ledger.grant(policy, COURSE, "ann", "g1", 50_000)
    assert (granted.granted, granted.remaining) == (50_000, 150_000)
    assert await ledger.grant(policy, COURSE, "ann", "g1", 50_000) == granted
    taken = await ledger.grant(policy, COURSE, "ann", "g2", -20_000)
    assert (taken.granted, taken.allowance) == (30_000, 130_000)


async def test_a_grant_lets_an_exhausted_student_continue(ledger: Ledger) -> None:
    policy = make_policy(limit=1_000)
    await ledger.reserve(policy, COURSE, "ann", JTI, "r1", 100)
    await ledger.settle(policy, COURSE, "ann", "r1", 1_000)
    assert (await ledger.reserve(policy, COURSE, "ann", JTI, "r2", 100)).outcome == "quota"
    await ledger.grant(policy, COURSE, "ann", "g1", 500)
    assert (await ledger.reserve(policy, COURSE, "ann", JTI, "r2", 100)).admitted


async def test_stale_reservations_of_crashed_workers_expire(ledger: Ledger, ledger_clock: Clock) -> None:
    policy = make_policy(limit=10_000, max_inflight=2)
    assert (await ledger.reserve(policy, COURSE, "ann", JTI, "lost1", 6_000)).admitted
    assert (await ledger.reserve(policy, COURSE, "ann", JTI, "lost2", 6_000)).admitted
    assert (await ledger.reserve(policy, COURSE, "ann", JTI, "r3", 100)).outcome == "quota"
    ledger_clock.advance(15 * 60)
    assert (await ledger.read(policy, COURSE, "ann")).reserved == 12_000  # not older than 15 min yet
    ledger_clock.advance(1)
    state = await ledger.read(policy, COURSE, "ann")
    assert (state.reserved, state.inflight) == (0, 0)
    assert (await ledger.reserve(policy, COURSE, "ann", JTI, "r3", 100)).admitted


async def test_read_reports_a_missing_bucket_without_creating_it(ledger: Ledger, bucket_redis: aioredis.Redis,
                                                                 redis_prefix: str) -> None:
    state = await ledger.read(make_policy(), COURSE, "nobody")
    assert state.fresh
    assert (state.used, state.remaining, state.utilization) == (0, 100_000, 0.0)
    assert await bucket_redis.exists(Keyspace(redis_prefix).bucket(COURSE, "nobody")) == 0


async def test_limit_changes_apply_immediately(ledger: Ledger) -> None:
    await ledger.grant(make_policy(), COURSE, "ann", "g1", 1)
    await ledger.settle(make_policy(), COURSE, "ann", "r1", 60_000)
    state = await ledger.read(make_policy(limit=50_000), COURSE, "ann")
    assert (state.limit, state.remaining, state.utilization) == (50_000, -9_999, 1.0)


def test_estimate_is_small_and_grows_with_the_body() -> None:
    assert estimate_for(0) == ESTIMATE_BASE
    sizes = [0, 1, 50_000, 500_000, 5_000_000]
    estimates = [estimate_for(size) for size in sizes]
    assert estimates == sorted(estimates)
    assert len(set(estimates)) == len(estimates)
    assert estimate_for(50_000) < 128_000 // 10  # a first Claude Code turn: never anywhere near max_tokens

"""Rebuilding the Redis ledger from Postgres after Redis lost its data.

Traffic runs through the real ledger on a redis-server of the test's own (so it may be flushed), and every
request and grant is recorded in Postgres the way the gateway's writer records it. After FLUSHALL, the rebuild
must restore every student's bucket exactly.
"""

from __future__ import annotations

import dataclasses
import hashlib
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime

import asyncpg
import pytest
import redis.asyncio as aioredis

from gateway.db import create_pool
from gateway.keyspace import Keyspace
from gateway.ledger import BucketState, Ledger
from gateway.policy import Policy
from gateway.rebuild import ensure_bucket, rebuild
from tests.cluster import redis_server
from tests.ledger_support import WEEK, Clock, local_epoch

SYDNEY = "Australia/Sydney"
COURSE = "comp2000"
STUDENTS = ("ann", "bob", "cat", "dan", "eve", "fay", "old")
DAY = 86_400

INSERT_COURSE = """
INSERT INTO courses (course_id, limit_tokens, period_seconds, reset_at, tz, carry_over, carry_cap, weights)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
"""
INSERT_USAGE = """
INSERT INTO usage_events (request_id, at, course_id, student_id, jti, weighted, refused, period_start, carried)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
"""
INSERT_GRANT = """
INSERT INTO grants (at, course_id, student_id, tokens, reason, actor, period_start, request_id)
VALUES ($1, $2, $3, $4, 'extension', 'convenor', $5, $6)
"""


def _ts(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


@pytest.fixture(scope="module")
def own_redis_url() -> Iterator[str]:
    with redis_server() as url:
        yield url


@pytest.fixture
async def own_redis(own_redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(own_redis_url)
    await client.flushall()
    yield client
    await client.aclose()


@pytest.fixture
async def pool(pg_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(pg_dsn)
    yield pool
    await pool.close()


@dataclasses.dataclass
class Course:
    """Drives the ledger and records every request and grant in Postgres like the gateway does."""

    pool: asyncpg.Pool
    ledger: Ledger
    clock: Clock
    policy: Policy

    async def request(self, student: str, weighted: int) -> str:
        request_id = "req_" + uuid.uuid4().hex
        jti = "jti-" + student
        reservation = await self.ledger.reserve(self.policy, COURSE, student, jti, request_id, 2_000)
        if reservation.outcome == "key_unknown":
            await self.ledger.set_key_status(COURSE, student, jti, "active")
            reservation = await self.ledger.reserve(self.policy, COURSE, student, jti, request_id, 2_000)
        if reservation.admitted:
            state = await self.ledger.settle(self.policy, COURSE, student, request_id, weighted)
            refused = ""
        else:
            state, weighted, refused = reservation.state, 0, reservation.outcome
        await self.pool.execute(INSERT_USAGE, request_id, _ts(self.clock.now), COURSE, student, jti, weighted,
                                refused, _ts(state.period_start), state.carried)
        return reservation.outcome

    async def grant(self, student: str, tokens: int) -> None:
        grant_id = "grant_" + uuid.uuid4().hex
        state = await self.ledger.grant(self.policy, COURSE, student, grant_id, tokens)
        await self.pool.execute(INSERT_GRANT, _ts(self.clock.now), COURSE, student, tokens,
                                _ts(state.period_start), grant_id)

    async def states(self) -> dict[str, BucketState]:
        return {s: dataclasses.replace(await self.ledger.read(self.policy, COURSE, s), fresh=False)
                for s in STUDENTS}


@pytest.fixture
async def course(pool: asyncpg.Pool, own_redis: aioredis.Redis) -> Course:
    policy = Policy(course=COURSE, limit=100_000, period_seconds=WEEK, tz=SYDNEY, carry_over=True,
                    carry_cap=150_000)
    await pool.execute(INSERT_COURSE, COURSE, policy.limit, policy.period_seconds, policy.reset_at, policy.tz,
                       policy.carry_over, policy.carry_cap, {})
    for student in STUDENTS:
        await pool.execute("INSERT INTO students (course_id, student_id) VALUES ($1, $2)", COURSE, student)
        await pool.execute(
            "INSERT INTO api_keys (jti, course_id, student_id, token_sha256, status, status_reason)"
            " VALUES ($1, $2, $3, $4, $5, $6)",
            "jti-" + student, COURSE, student, hashlib.sha256(student.encode()).digest(),
            "suspended" if student == "eve" else "active", "shared on a forum" if student == "eve" else "",
        )
    clock = Clock(local_epoch(SYDNEY, 2025, 12, 17, 10, 0))
    return Course(pool, Ledger(own_redis, Keyspace("gw"), clock=clock), clock, policy)


async def play_history(course: Course) -> None:
    """Twelve weeks back to now (Wed 8 Apr 2026, Sydney), across the DST change of 5 April."""
    clock = course.clock
    await course.request("old", 30_000)  # then idle for more than HISTORY_PERIODS weeks
    clock.now = local_epoch(SYDNEY, 2026, 3, 18, 9, 0)  # week 0 (Mon 16 Mar)
    assert [await course.request("ann", 40_000) for _ in range(4)] == ["admitted"] * 3 + ["quota"]  # overshoot
    await course.request("bob", 20_000)
    await course.request("eve", 10_000)
    clock.advance(DAY)
    await course.request("eve", 15_000)

    clock.now = local_epoch(SYDNEY, 2026, 3, 25, 9, 0)  # week 1: ann carries nothing (negative left-over)
    await course.request("ann", 30_000)
    await course.grant("cat", 20_000)
    await course.request("cat", 50_000)
    await course.request("eve", 5_000)

    clock.now = local_epoch(SYDNEY, 2026, 4, 3, 23, 0)  # week 2 (Mon 30 Mar, 169 h long)
    await course.request("ann", 10_000)
    await course.grant("ann", 5_000)
    await course.grant("fay", 40_000)  # a grant before any use

    clock.now = local_epoch(SYDNEY, 2026, 4, 6, 0, 30)  # week 3, the current one (Mon 6 Apr AEST)
    await course.request("dan", 7_000)
    await course.grant("cat", 1_000)
    await course.request("cat", 120_000)
    clock.now = local_epoch(SYDNEY, 2026, 4, 8, 12, 0)
    for _ in range(30):
        if await course.request("cat", 60_000) == "quota":
            break
    await course.request("cat", 1)  # refused again: a second limit hit
    await course.ledger.set_key_status(COURSE, "eve", "jti-eve", "suspended", "shared on a forum")


async def test_rebuild_after_flushall_restores_every_bucket(course: Course, own_redis: aioredis.Redis) -> None:
    await play_history(course)
    before = await course.states()
    # the history exercises what the rebuild must reconstruct
    assert before["ann"].carried > 0 and before["ann"].used == 0
    assert before["bob"].carried == before["old"].carried == 150_000
    assert before["cat"].limit_hits == 2 and before["cat"].granted == 1_000 and before["cat"].remaining < 0
    assert before["fay"].carried == 140_000
    assert before["dan"].used == 7_000

    await own_redis.flushall()
    assert (await course.ledger.read(course.policy, COURSE, "ann")).fresh
    report = await rebuild(course.pool, course.ledger)

    assert report.courses == 1
    assert report.students == {COURSE: sorted(STUDENTS)}
    assert report.keys == len(STUDENTS)
    assert await course.states() == before
    assert not (await course.ledger.read(course.policy, COURSE, "ann")).fresh
    assert await course.ledger.key_status(COURSE, "eve", "jti-eve") == ("suspended", "shared on a forum")
    assert await course.ledger.key_status(COURSE, "ann", "jti-ann") == ("active", "")


async def test_rebuild_of_one_course_leaves_others_alone(course: Course, own_redis: aioredis.Redis) -> None:
    await play_history(course)
    before = await course.states()
    await own_redis.flushall()
    report = await rebuild(course.pool, course.ledger, course="another-course")
    assert report.courses == 0
    assert (await course.ledger.read(course.policy, COURSE, "ann")).fresh
    report = await rebuild(course.pool, course.ledger, [course.policy], course=COURSE)
    assert report.buckets == len(STUDENTS)
    assert await course.states() == before


async def test_a_lost_bucket_is_reconciled_once_when_the_student_returns(course: Course,
                                                                         own_redis: aioredis.Redis) -> None:
    await play_history(course)
    before = await course.states()
    keys = Keyspace("gw")
    await own_redis.delete(keys.bucket(COURSE, "dan"), keys.settled(COURSE, "dan"))

    reservation = await course.ledger.reserve(course.policy, COURSE, "dan", "jti-dan", "late", 2_000)
    assert reservation.admitted and reservation.fresh
    assert reservation.state.used == 0
    # a debit that lands before the reconciliation is kept, and added to the record
    await course.ledger.settle(course.policy, COURSE, "dan", "late", 3_000)
    reconciled = await ensure_bucket(course.pool, course.ledger, course.policy, COURSE, "dan")
    assert not reconciled.fresh
    expected = dataclasses.replace(before["dan"], used=before["dan"].used + 3_000)
    assert dataclasses.replace(reconciled, fresh=False) == expected
    # a second reconciliation (another worker saw `fresh` too) changes nothing
    assert await ensure_bucket(course.pool, course.ledger, course.policy, COURSE, "dan") == reconciled


async def test_ensure_bucket_for_a_new_student_clears_fresh(course: Course) -> None:
    state = await ensure_bucket(course.pool, course.ledger, course.policy, COURSE, "newbie")
    assert (state.fresh, state.used, state.carried, state.remaining) == (False, 0, 0, 100_000)
    assert not (await course.ledger.read(course.policy, COURSE, "newbie")).fresh


"""A fresh bucket (Redis lost it, or first use) reconciled late: nothing counted twice, nothing lost."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime

import asyncpg
import redis.asyncio as aioredis

from gateway.db import create_pool
from gateway.keyspace import Keyspace
from gateway.ledger import Ledger
from gateway.policy import Policy
from gateway.rebuild import ensure_bucket

COURSE = "comp3000"
INSERT_COURSE = "INSERT INTO courses (course_id, limit_tokens, period_seconds) VALUES ($1, $2, $3)"
INSERT_USAGE = """
INSERT INTO usage_events (request_id, at, course_id, student_id, weighted, period_start)
VALUES ($1, $2, $3, $4, $5, $6)
"""
INSERT_GRANT = """
INSERT INTO grants (at, course_id, student_id, tokens, reason, actor, period_start, request_id)
VALUES ($1, $2, $3, $4, 'extension', 'convenor', $5, $6)
"""


async def test_late_reconcile_counts_each_debit_and_grant_once(pg_dsn: str, redis_client: aioredis.Redis,
                                                               redis_prefix: str) -> None:
    pool = await create_pool(pg_dsn)
    try:
        await pool.execute(INSERT_COURSE, COURSE, 100_000, 7 * 86_400)
        policy = Policy.from_row(await pool.fetchrow("SELECT * FROM courses WHERE course_id = $1", COURSE))
        ledger = Ledger(redis_client, Keyspace(redis_prefix))
        now = datetime.fromtimestamp(time.time(), UTC)

        # Before Redis lost the bucket: 500 tokens recorded in Postgres only.
        first = await ledger.read(policy, COURSE, "ann")
        period_start = datetime.fromtimestamp(first.period_start, UTC)
        await pool.execute(INSERT_USAGE, "old-1", now, COURSE, "ann", 500, period_start)
        # The new bucket takes three debits and a grant before anyone reconciles it; the writer records them too.
        for weighted in (10, 20, 30):
            request_id = f"req-{uuid.uuid4().hex}"
            reservation = await ledger.reserve(policy, COURSE, "ann", "k", request_id, 1000)
            assert reservation.outcome in ("admitted", "key_unknown")
            state = await ledger.settle(policy, COURSE, "ann", request_id, weighted)
            await pool.execute(INSERT_USAGE, request_id, now, COURSE, "ann", weighted, period_start)
        await ledger.grant(policy, COURSE, "ann", "grant-1", 1_000)
        await pool.execute(INSERT_GRANT, now, COURSE, "ann", 1_000, period_start, "grant-1")
        assert state.fresh and state.used == 60

        reconciled = await ensure_bucket(pool, ledger, policy, COURSE, "ann")
        assert (reconciled.used, reconciled.granted, reconciled.fresh) == (560, 1_000, False)
        again = await ensure_bucket(pool, ledger, policy, COURSE, "ann")  # a second reconcile changes nothing
        assert (again.used, again.granted) == (560, 1_000)
    finally:
        await pool.close()


async def test_reconcile_counts_rows_written_after_the_debit(pg_dsn: str, redis_client: aioredis.Redis,
                                                             redis_prefix: str) -> None:
    """A debit whose Postgres row has not arrived yet is counted once (from Redis), and not again later."""
    pool: asyncpg.Pool = await create_pool(pg_dsn)
    try:
        await pool.execute(INSERT_COURSE, COURSE, 100_000, 7 * 86_400)
        policy = Policy.from_row(await pool.fetchrow("SELECT * FROM courses WHERE course_id = $1", COURSE))
        ledger = Ledger(redis_client, Keyspace(redis_prefix))
        await ledger.settle(policy, COURSE, "bob", "req-late", 40)
        reconciled = await ensure_bucket(pool, ledger, policy, COURSE, "bob")
        assert reconciled.used == 40 and not reconciled.fresh
    finally:
        await pool.close()


async def test_a_reserve_that_runs_after_its_settle_holds_no_slot(redis_client: aioredis.Redis,
                                                                  redis_prefix: str) -> None:
    """A reserve that timed out on the client is settled with 0; if a stalled Redis runs it only afterwards, it
    must not take an in-flight slot."""
    policy = Policy(course=COURSE, limit=100_000, period_seconds=7 * 86_400)
    ledger = Ledger(redis_client, Keyspace(redis_prefix))
    await ledger.set_key_status(COURSE, "cy", "k", "active")
    await ledger.settle(policy, COURSE, "cy", "req-late", 0)
    reservation = await ledger.reserve(policy, COURSE, "cy", "k", "req-late", 1000)
    assert reservation.outcome == "admitted"
    assert (reservation.state.inflight, reservation.state.reserved) == (0, 0)

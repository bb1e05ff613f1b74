"""Closing the Postgres pool is bounded: a connection that never comes back is cut, not waited for forever."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from gateway.db import close_pool, create_pool


async def test_close_pool_cuts_a_connection_that_is_never_released(pg_dsn: str,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    pool = await create_pool(pg_dsn, min_size=1, max_size=2)
    held = await pool.acquire()  # never released, like a query stuck behind a lock
    async with asyncio.timeout(30):  # a guard for the test run only; the bound under test is 0.2 s
        await close_pool(pool, timeout_s=0.2)
    assert pool.is_closing() and "did not close within" in caplog.text
    with pytest.raises(asyncpg.InterfaceError):  # the held connection was cut with the pool
        await held.fetchval("SELECT 1")


async def test_close_pool_is_quiet_when_every_connection_comes_back(pg_dsn: str,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    pool = await create_pool(pg_dsn, min_size=1, max_size=2)
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT 1") == 1
    await close_pool(pool, timeout_s=5)
    assert pool.is_closing() and "did not close" not in caplog.text

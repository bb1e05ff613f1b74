"""Shared fixtures: the real PostgreSQL and Redis of this machine, isolated per test.

* PostgreSQL: one migrated template database per test session; each test that asks for ``pg_dsn`` gets a fresh
  copy (``CREATE DATABASE … TEMPLATE``), dropped afterwards.
* Redis: the real server, with a key prefix unique to the test (``redis_prefix``), deleted afterwards.
Override the servers with ``TEST_PG_ADMIN_DSN`` / ``TEST_REDIS_URL``.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest
import redis.asyncio as aioredis

from gateway.migrate import migrate
from tests.ledger_support import bucket_redis, ledger_clock  # noqa: F401  (fixtures of the ledger tests)

PG_ADMIN_DSN = os.environ.get("TEST_PG_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def _dsn_for(database: str) -> str:
    base, _, _ = PG_ADMIN_DSN.rpartition("/")
    return f"{base}/{database}"


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    name = f"gw_tmpl_{os.getpid()}_{uuid.uuid4().hex[:6]}"

    async def create() -> None:
        await _admin(f'CREATE DATABASE "{name}"')
        conn = await asyncpg.connect(_dsn_for(name))
        try:
            await migrate(conn)
        finally:
            await conn.close()

    asyncio.run(create())
    yield name
    asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
async def pg_dsn(pg_template: str) -> AsyncIterator[str]:
    name = f"gw_t_{uuid.uuid4().hex[:12]}"
    await _admin(f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"')
    yield _dsn_for(name)
    await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def redis_url() -> str:
    return REDIS_URL


@pytest.fixture
async def redis_prefix(redis_url: str) -> AsyncIterator[str]:
    prefix = f"gwt-{uuid.uuid4().hex[:10]}"
    yield prefix
    client = aioredis.from_url(redis_url)
    try:
        async for key in client.scan_iter(match=f"{prefix}*", count=1000):
            await client.delete(key)
    finally:
        await client.aclose()


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def gateway(aiohttp_server, pg_dsn: str, redis_url: str, redis_prefix: str, tmp_path):  # type: ignore[no-untyped-def]
    from tests.harness import running_gateway

    async with running_gateway(aiohttp_server, pg_dsn=pg_dsn, redis_url=redis_url, redis_prefix=redis_prefix,
                               data_dir=tmp_path) as harness:
        yield harness

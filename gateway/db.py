"""The Postgres pool."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import orjson

log = logging.getLogger(__name__)

#: How long closing a pool may wait for its connections to come back before they are cut.
POOL_CLOSE_TIMEOUT_S = 10.0


async def _init_connection(conn: asyncpg.Connection) -> None:
    for name in ("json", "jsonb"):
        await conn.set_type_codec(
            name, encoder=lambda v: orjson.dumps(v).decode(), decoder=orjson.loads, schema="pg_catalog"
        )


async def create_pool(dsn: str, *, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size, init=_init_connection)
    assert pool is not None
    return pool


async def close_pool(pool: asyncpg.Pool, timeout_s: float = POOL_CLOSE_TIMEOUT_S) -> None:
    """Close ``pool`` gracefully, but not forever: a connection still held after ``timeout_s`` (a query stuck
    behind a lock, say) is cut, since asyncpg terminates a pool whose ``close()`` is cancelled. Shutdown stays
    bounded; whatever the writer had not committed is still in its spool."""
    try:
        await asyncio.wait_for(pool.close(), timeout_s)
    except TimeoutError:
        log.warning("the Postgres pool did not close within %.0f s: its connections were terminated", timeout_s)


@asynccontextmanager
async def transaction(db: asyncpg.Connection | asyncpg.Pool) -> AsyncIterator[asyncpg.Connection]:
    """A transaction on ``db``: a connection of the pool, or the given connection (a savepoint if it is in one)."""
    if isinstance(db, asyncpg.Pool):
        async with db.acquire() as conn, conn.transaction():
            yield conn
    else:
        async with db.transaction():
            yield db

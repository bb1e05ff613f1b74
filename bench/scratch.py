"""A scratch database for a component benchmark: created fresh, migrated, dropped afterwards."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg

from gateway.migrate import migrate


@asynccontextmanager
async def scratch_database(admin_dsn: str) -> AsyncIterator[str]:
    """The DSN of a new, migrated database ``gw_bench_*`` on the server of ``admin_dsn``; dropped on the way out."""
    name = f"gw_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        try:
            dsn = f"{admin_dsn.rsplit('/', 1)[0]}/{name}"
            conn = await asyncpg.connect(dsn)
            try:
                await migrate(conn)
            finally:
                await conn.close()
            yield dsn
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()

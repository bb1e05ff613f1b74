from __future__ import annotations

import asyncpg

from gateway.migrate import available, migrate


async def test_migrations_are_numbered_and_idempotent(pg_dsn: str) -> None:
    versions = [m.version for m in available()]
    assert versions == sorted(set(versions)) and versions[0] == 1
    conn = await asyncpg.connect(pg_dsn)
    try:
        assert await migrate(conn) == []  # the template is already migrated
        applied = [r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations ORDER BY 1")]
        assert applied == versions
    finally:
        await conn.close()

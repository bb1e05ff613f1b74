"""Opening the gateway's stores outside the server (the CLI): Postgres pool, Redis ledger, key codec."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import asyncpg

from .db import create_pool
from .embedded import resolve
from .keyring import Keyring
from .keys import KeyCodec, load_or_create_secret
from .ledger import Ledger, ledger_for
from .migrate import migrate
from .redis_client import AnyRedis, create_redis
from .settings import Settings


@dataclass
class Stores:
    settings: Settings
    pool: asyncpg.Pool
    redis: AnyRedis
    ledger: Ledger
    codec: KeyCodec
    keyring: Keyring


def codec_for(settings: Settings) -> KeyCodec:
    secret = (settings.key_secret.get_secret_value().encode() if settings.key_secret is not None
              else load_or_create_secret(settings.data_dir.resolve()))
    return KeyCodec(secret, settings.key_issuer)


@asynccontextmanager
async def open_stores(settings: Settings, *, auto_migrate: bool = True) -> AsyncIterator[Stores]:
    endpoints = await asyncio.to_thread(resolve, settings)
    pool = await create_pool(endpoints.database_url, min_size=1, max_size=4)
    redis = create_redis(endpoints.redis_url, settings)
    try:
        if auto_migrate:
            async with pool.acquire() as conn:
                await migrate(conn)
        ledger = ledger_for(redis, settings)
        codec = codec_for(settings)
        yield Stores(settings, pool, redis, ledger, codec, Keyring(pool, ledger, codec))
    finally:
        await redis.aclose()
        await pool.close()
        endpoints.close()

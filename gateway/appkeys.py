"""Typed keys under which the app factory's cleanup contexts publish the running gateway's resources."""

from __future__ import annotations

import aiohttp
import asyncpg
from aiohttp import web

from .gate import Gate
from .keys import KeyCodec
from .keystatus import KeyStatusStore
from .leakguard import LeakGuard
from .ledger import Ledger
from .metrics import Metrics
from .policy_cache import PolicyCache
from .pricing import PriceTable
from .redis_client import AnyRedis
from .settings import Settings
from .writer import TranscriptWriter

SETTINGS = web.AppKey("settings", Settings)
CODEC = web.AppKey("codec", KeyCodec)
PG_POOL = web.AppKey("pg_pool", asyncpg.Pool)
LEDGER = web.AppKey("ledger", Ledger)
REDIS: web.AppKey[AnyRedis] = web.AppKey("redis")
GATE = web.AppKey("gate", Gate)
POLICIES = web.AppKey("policies", PolicyCache)
KEY_STATUS = web.AppKey("key_status", KeyStatusStore)
PRICES = web.AppKey("prices", PriceTable)
WRITER = web.AppKey("writer", TranscriptWriter)
LEAK_GUARD = web.AppKey("leak_guard", LeakGuard)
METRICS = web.AppKey("metrics", Metrics)
UPSTREAM = web.AppKey("upstream", aiohttp.ClientSession)
UPSTREAM_KEY = web.AppKey("upstream_key", str)

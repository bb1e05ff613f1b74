"""The app factory. Nothing happens at import; every resource is opened by one cleanup context, in order, and
closed in reverse: the transcript writer drains before the Postgres pool closes."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
from aiohttp import web
from pydantic import SecretStr
from redis.asyncio.cluster import RedisCluster

from . import appkeys
from .admin_api import register_admin_routes
from .db import close_pool, create_pool
from .debits import DebitJournal
from .embedded import Endpoints, data_path, resolve
from .errors import error_middleware
from .gate import Gate
from .incidents import Alerter
from .invalidation import InvalidationListener
from .keyring import Keyring
from .keys import KeyCodec, load_or_create_secret
from .keystatus import KeyStatusStore
from .leakguard import LeakGuard
from .leaks import Scanner
from .ledger import ledger_for
from .metrics import Metrics, Readings
from .migrate import migrate
from .policy_cache import PolicyCache
from .pricing import PriceTable
from .proxy import Proxy
from .quota_api import QuotaApi
from .redis_client import REDIS_DOWN, create_redis, create_subscriber
from .settings import Settings
from .tasks import stop_tasks
from .upstream import create_session
from .writer import TranscriptWriter

log = logging.getLogger(__name__)

ENDPOINTS = web.AppKey("endpoints", Endpoints)
INVALIDATION = web.AppKey("invalidation", InvalidationListener)
METRICS_SYNC_S = 1.0


def key_secret(settings: Settings) -> bytes:
    if settings.key_secret is not None:
        return settings.key_secret.get_secret_value().encode()
    return load_or_create_secret(settings.data_dir.resolve())


async def _endpoints(app: web.Application) -> AsyncIterator[None]:
    endpoints = await asyncio.to_thread(resolve, app[appkeys.SETTINGS])
    app[ENDPOINTS] = endpoints
    yield
    endpoints.close()


async def _redis(app: web.Application) -> AsyncIterator[None]:
    settings = app[appkeys.SETTINGS]
    client = create_redis(app[ENDPOINTS].redis_url, settings)
    if isinstance(client, RedisCluster):
        # Learn the slot map now: a burst of first requests would each start (and break) a discovery.
        try:
            await asyncio.wait_for(client.initialize(), 5 * settings.redis_timeout_s)
        except REDIS_DOWN as exc:
            log.warning("Redis Cluster not reachable at start-up (%s); the gate will keep trying", exc)
    app[appkeys.REDIS] = client
    app[appkeys.LEDGER] = ledger_for(client, settings)
    yield
    await client.aclose()


async def _postgres(app: web.Application) -> AsyncIterator[None]:
    pool = await create_pool(app[ENDPOINTS].database_url, min_size=1, max_size=10)
    async with pool.acquire() as conn:
        applied = await migrate(conn)
    if applied:
        log.info("applied migrations: %s", ", ".join(applied))
    app[appkeys.PG_POOL] = pool
    yield
    await close_pool(pool)


async def _core(app: web.Application) -> AsyncIterator[None]:
    settings = app[appkeys.SETTINGS]
    pool, ledger, metrics = app[appkeys.PG_POOL], app[appkeys.LEDGER], app[appkeys.METRICS]
    policies = app[appkeys.POLICIES] = PolicyCache(pool, metrics=metrics, redis=app[appkeys.REDIS],
                                                   keyspace=ledger.keyspace)
    keys = app[appkeys.KEY_STATUS] = KeyStatusStore(ledger, pool)
    gate = app[appkeys.GATE] = Gate(
        ledger, keys, pool, fail_mode=settings.fail_mode, contact=settings.contact,
        max_inflight=settings.max_inflight_per_student, metrics=metrics, deadline_s=2 * settings.redis_timeout_s,
        journal=DebitJournal(data_path(settings, "debits")))
    await gate.start()
    listener = app[INVALIDATION] = InvalidationListener(
        create_subscriber(app[ENDPOINTS].redis_url, settings), ledger.keyspace.invalidation_channel(),
        policies.invalidate)
    listener.start()
    yield
    await listener.close()
    await gate.close()


async def _writer(app: web.Application) -> AsyncIterator[None]:
    settings = app[appkeys.SETTINGS]
    writer = TranscriptWriter(app[appkeys.PG_POOL], data_path(settings, "spool"),
                              blob_cache_size=settings.writer_blob_cache_entries)
    await writer.start()
    app[appkeys.WRITER] = writer
    yield
    await writer.drain(timeout=settings.shutdown_grace_s)
    await writer.close()


def _readings(app: web.Application) -> Readings:
    writer = app[appkeys.WRITER]
    return Readings(writer_queue=writer.queue_depth, spool_bytes=writer.spool_bytes,
                    batches_written=writer.batches_written, records_written=writer.records_written,
                    writer_errors=writer.write_errors, records_rejected=writer.records_rejected,
                    pending_debits=app[appkeys.GATE].pending_debits)


async def _metrics_sync(app: web.Application) -> AsyncIterator[None]:
    """Every second, copy the writer's and the gate's numbers into the metrics (which other workers render)."""
    async def loop() -> None:
        while True:
            app[appkeys.METRICS].sync(_readings(app))
            await asyncio.sleep(METRICS_SYNC_S)  # a sampling period, not synchronisation

    task = asyncio.create_task(loop(), name="metrics-sync")
    yield
    await stop_tasks(task)
    app[appkeys.METRICS].sync(_readings(app))


async def _upstream(app: web.Application) -> AsyncIterator[None]:
    session = create_session(app[appkeys.SETTINGS])
    app[appkeys.UPSTREAM] = session
    yield
    await session.close()


async def _leaks(app: web.Application) -> AsyncIterator[None]:
    settings = app[appkeys.SETTINGS]
    codec = app[appkeys.CODEC]
    alerter = Alerter(settings.alert_webhook_url)
    await alerter.start()
    guard = app[appkeys.LEAK_GUARD] = LeakGuard(
        Scanner.load(codec.check, cache_entries=settings.scan_cache_entries, cache_bytes=settings.scan_cache_bytes),
        Keyring(app[appkeys.PG_POOL], app[appkeys.LEDGER], codec), app[appkeys.PG_POOL],
        alerter, app[appkeys.METRICS], contact=settings.contact)
    yield
    await guard.close()


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "pid": os.getpid()})


async def readyz(request: web.Request) -> web.Response:
    app = request.app
    checks: dict[str, str] = {}
    try:
        await asyncio.wait_for(app[appkeys.REDIS].ping(), app[appkeys.SETTINGS].redis_timeout_s)
        checks["redis"] = "ok"
    except Exception as exc:
        checks["redis"] = f"unreachable: {type(exc).__name__}"
    try:
        await asyncio.wait_for(app[appkeys.PG_POOL].fetchval("SELECT 1"), 2.0)
        checks["postgres"] = "ok"
    except Exception as exc:
        checks["postgres"] = f"unreachable: {type(exc).__name__}"
    ready = all(v == "ok" for v in checks.values())
    gate = app[appkeys.GATE]
    body = {"ready": ready, **checks, "fail_mode": gate.fail_mode, "pending_debits": gate.pending_debits}
    return web.Response(status=200 if ready else 503, body=orjson.dumps(body), content_type="application/json")


async def metrics(request: web.Request) -> web.Response:
    m = request.app[appkeys.METRICS]
    m.sync(_readings(request.app))
    return web.Response(body=m.render(), headers={"content-type": "text/plain; version=0.0.4; charset=utf-8"})


def create_app(settings: Settings, *, upstream_key: str | None = None,
               metrics_dir: Path | None = None) -> web.Application:
    """The gateway app. ``metrics_dir``: the Prometheus multiprocess directory shared with the other workers."""
    key = upstream_key or (settings.upstream_api_key or SecretStr("")).get_secret_value()
    if not key:
        raise ValueError("GATEWAY_UPSTREAM_API_KEY is required to serve")
    app = web.Application(client_max_size=settings.max_body_bytes, middlewares=[error_middleware])
    app[appkeys.SETTINGS] = settings
    app[appkeys.UPSTREAM_KEY] = key
    app[appkeys.CODEC] = KeyCodec(key_secret(settings), settings.key_issuer)
    app[appkeys.METRICS] = Metrics(metrics_dir)
    app[appkeys.PRICES] = PriceTable.load()
    app.cleanup_ctx.extend([_endpoints, _redis, _postgres, _core, _writer, _metrics_sync, _upstream, _leaks])
    proxy = Proxy(app)
    quota = QuotaApi(app)
    app.router.add_post("/v1/messages", proxy.messages)
    app.router.add_post("/v1/messages/count_tokens", proxy.passthrough)
    app.router.add_get("/v1/models", proxy.passthrough)
    app.router.add_get("/v1/models/{model_id}", proxy.passthrough)
    app.router.add_get("/quota", quota.handle)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    register_admin_routes(app)
    return app

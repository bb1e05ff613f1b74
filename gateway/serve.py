"""Running the server: one process, or N worker processes sharing the port (SO_REUSEPORT)."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import signal

from aiohttp import web

from .app import create_app
from .db import create_pool
from .embedded import Endpoints, resolve
from .keys import load_or_create_secret
from .logs import configure_logging
from .migrate import migrate
from .sentry import init_sentry
from .settings import Settings

log = logging.getLogger(__name__)


async def _migrate_once(database_url: str) -> None:
    pool = await create_pool(database_url, min_size=1, max_size=1)
    try:
        async with pool.acquire() as conn:
            await migrate(conn)
    finally:
        await pool.close()


def prepare(settings: Settings) -> tuple[Settings, Endpoints]:
    """Start embedded servers if needed, migrate, make the key secret: once, before any worker starts."""
    endpoints = resolve(settings)
    asyncio.run(_migrate_once(endpoints.database_url))
    if settings.key_secret is None:
        load_or_create_secret(settings.data_dir.resolve())
    resolved = settings.model_copy(update={"redis_url": endpoints.redis_url, "database_url": endpoints.database_url})
    return resolved, endpoints


def run_worker(settings: Settings, worker: int = 0) -> None:
    configure_logging(settings.log_level, worker=worker)
    init_sentry(settings)
    app = create_app(settings)
    web.run_app(app, host=settings.host, port=settings.port, reuse_port=settings.workers > 1,
                shutdown_timeout=settings.shutdown_grace_s, print=None, access_log=None,
                handle_signals=True)


def serve(settings: Settings) -> None:
    configure_logging(settings.log_level)
    resolved, endpoints = prepare(settings)
    try:
        if settings.workers <= 1:
            log.info("gateway listening on http://%s:%d", settings.host, settings.port)
            run_worker(resolved)
            return
        ctx = multiprocessing.get_context("spawn")
        procs = [ctx.Process(target=run_worker, args=(resolved, i), name=f"gateway-worker-{i}", daemon=False)
                 for i in range(settings.workers)]
        for proc in procs:
            proc.start()
        log.info("gateway listening on http://%s:%d with %d workers", settings.host, settings.port, len(procs))

        def forward(signum: int, _frame: object) -> None:
            for proc in procs:
                if proc.is_alive() and proc.pid is not None:
                    proc.terminate() if signum == signal.SIGTERM else proc.kill()

        signal.signal(signal.SIGTERM, forward)
        signal.signal(signal.SIGINT, lambda *_: forward(signal.SIGTERM, None))
        for proc in procs:
            proc.join()
    finally:
        endpoints.close()

"""Running the server: one process, or a supervisor and N worker processes sharing the port (SO_REUSEPORT).

Workers are independent and stateless (Redis and Postgres hold everything shared); the kernel spreads new
connections across them. The supervisor

* prepares once (embedded servers if configured, migrations, the key secret) before any worker starts;
* gives the workers a fresh Prometheus multiprocess directory under ``GATEWAY_DATA_DIR`` so that ``/metrics``
  on any worker shows the numbers of all of them;
* restarts a worker that dies (one that dies before it has started -- a port in use, bad configuration --
  stops the whole server instead: restarting would not help);
* on SIGTERM or SIGINT asks every worker to shut down gracefully (a second signal kills them), waits, and exits
  0 if every worker did.

A worker shuts down gracefully on SIGTERM (aiohttp): it stops accepting connections, lets requests in flight --
streams included -- finish for up to ``shutdown_grace_s``, then drains the transcript writer (again up to
``shutdown_grace_s``) and replays queued debits (up to 5 s) before closing its pools.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import tempfile
from collections.abc import AsyncIterator, Callable
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Event as EventType
from pathlib import Path
from types import FrameType

from aiohttp import web
from prometheus_client.multiprocess import mark_process_dead

from .app import create_app
from .db import create_pool
from .embedded import Endpoints, data_path, resolve
from .heap import HeapTrimmer, find_malloc_trim
from .keys import load_or_create_secret
from .logs import configure_logging
from .metrics import MULTIPROC_ENV
from .migrate import migrate
from .sentry import init_sentry
from .settings import Settings

log = logging.getLogger(__name__)

CLEAN_EXITS = (0, -signal.SIGTERM)  # -SIGTERM: stopped before it had installed its handlers (nothing in flight)


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


async def _tune_gc(app: web.Application) -> None:
    """Once the app is up, move everything allocated so far (modules, rules, prices) out of the collector's sight:
    full collections stop re-scanning it. The thresholds stay at their defaults: raising them let cyclic garbage
    from requests pile up (RSS tripled in bench/run.py scale)."""
    gc.collect()
    gc.freeze()


def _heap_trimming(interval_s: float) -> Callable[[web.Application], AsyncIterator[None]]:
    async def trimming(app: web.Application) -> AsyncIterator[None]:
        trim = find_malloc_trim()
        if interval_s <= 0 or trim is None:
            yield
            return
        trimmer = HeapTrimmer(interval_s, trim)
        trimmer.start()
        yield
        await trimmer.stop()

    return trimming


def run_worker(settings: Settings, worker: int = 0, metrics_dir: Path | None = None,
               started: EventType | None = None) -> None:
    configure_logging(settings.log_level, worker=worker)
    init_sentry(settings)
    app = create_app(settings, metrics_dir=metrics_dir)
    if started is not None:
        async def report_started(app: web.Application) -> None:  # after every cleanup context has started
            started.set()

        app.on_startup.append(report_started)
    app.on_startup.append(_tune_gc)
    app.cleanup_ctx.append(_heap_trimming(settings.heap_trim_interval_s))
    web.run_app(app, host=settings.host, port=settings.port, reuse_port=settings.workers > 1,
                shutdown_timeout=settings.shutdown_grace_s, print=None, access_log=None,
                handle_signals=True)


class Supervisor:
    """Starts, watches and stops the worker processes of ``gateway serve --workers N``."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._ctx = multiprocessing.get_context("spawn")
        self._workers: dict[int, tuple[BaseProcess, EventType]] = {}  # index -> (process, set once started)
        self._signals = 0
        self._failed = False
        self._metrics_dir = Path()

    def run(self) -> int:
        self._metrics_dir = Path(tempfile.mkdtemp(prefix="metrics-", dir=data_path(self._settings)))
        # prometheus_client reads this when a worker imports it: set it before any worker is spawned.
        os.environ[MULTIPROC_ENV] = str(self._metrics_dir)
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            for index in range(self._settings.workers):
                if not self._signals:
                    self._start(index)
            log.info("gateway listening on http://%s:%d with %d workers", self._settings.host,
                     self._settings.port, self._settings.workers)
            self._watch()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self._stop_all(signal.SIGKILL)
            shutil.rmtree(self._metrics_dir, ignore_errors=True)
        return 1 if self._failed else 0

    def _start(self, index: int) -> None:
        started = self._ctx.Event()
        process = self._ctx.Process(target=run_worker, args=(self._settings, index, self._metrics_dir, started),
                                    name=f"gateway-worker-{index}", daemon=False)
        process.start()
        self._workers[index] = (process, started)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals += 1
        if self._signals == 1:
            log.info("received %s: shutting down the workers gracefully", signal.Signals(signum).name)
            self._stop_all(signal.SIGTERM)
        else:
            log.warning("received %s again: killing the workers", signal.Signals(signum).name)
            self._stop_all(signal.SIGKILL)

    def _stop_all(self, signum: int) -> None:
        for process, _ in self._workers.values():
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signum)

    def _watch(self) -> None:
        while self._workers:
            multiprocessing.connection.wait([p.sentinel for p, _ in self._workers.values()], timeout=1.0)
            for index, (process, started) in list(self._workers.items()):
                if process.is_alive():
                    continue
                process.join()
                del self._workers[index]
                if process.pid is not None:
                    mark_process_dead(process.pid, str(self._metrics_dir))  # type: ignore[no-untyped-call]
                code = process.exitcode
                if self._signals:
                    if code not in CLEAN_EXITS:
                        log.error("worker %d exited with status %s during shutdown", index, code)
                        self._failed = True
                    continue
                if not started.is_set():
                    log.error("worker %d exited with status %s while starting; stopping the server", index, code)
                    self._failed = True
                    self._signals = 1
                    self._stop_all(signal.SIGTERM)
                    continue
                log.error("worker %d exited with status %s; starting a new one", index, code)
                self._start(index)


def serve(settings: Settings) -> int:
    """Run the gateway until SIGTERM / SIGINT; the exit status (0: every worker stopped cleanly)."""
    configure_logging(settings.log_level)
    resolved, endpoints = prepare(settings)
    try:
        if settings.workers <= 1:
            log.info("gateway listening on http://%s:%d", settings.host, settings.port)
            run_worker(resolved)
            return 0
        return Supervisor(resolved).run()
    finally:
        endpoints.close()

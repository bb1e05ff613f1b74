"""``gateway demo``: the whole path with no Anthropic account -- a local fake Anthropic API behind the gateway,
a demo course, and a ready key with the two lines to paste into Claude Code's environment."""

from __future__ import annotations

import asyncio
import contextlib
import signal

from aiohttp import web
from pydantic import SecretStr

from . import courses
from .app import create_app
from .fakeupstream import FakeUpstream
from .logs import configure_logging
from .serve import prepare
from .settings import Settings
from .stores import open_stores

DEMO_COURSE = "demo"
DEMO_STUDENT = "demo-student"


async def _demo(settings: Settings, port: int | None) -> None:
    fake = FakeUpstream(deltas=20, delta_delay_s=0.02)
    fake.record = False
    fake_runner = web.AppRunner(fake.app())
    await fake_runner.setup()
    fake_site = web.TCPSite(fake_runner, "127.0.0.1", 0)
    await fake_site.start()
    fake_port = fake_runner.addresses[0][1]
    settings = settings.model_copy(update={
        "upstream_url": f"http://127.0.0.1:{fake_port}", "upstream_api_key": SecretStr(fake.api_key),
        "port": port or settings.port, "course": DEMO_COURSE,
    })
    async with open_stores(settings) as stores:
        await courses.create(stores.pool, "demo", DEMO_COURSE, limit=500_000, period_seconds=7 * 86400)
        issued = await stores.keyring.issue("demo", DEMO_COURSE, DEMO_STUDENT, reason="gateway demo")
    runner = web.AppRunner(create_app(settings), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, settings.host, settings.port).start()
    base = f"http://{settings.host}:{settings.port}"
    print(f"Gateway demo on {base} (fake Anthropic API on 127.0.0.1:{fake_port}). Paste into Claude Code's shell:\n")
    print(f"export ANTHROPIC_BASE_URL={base}")
    print(f"export ANTHROPIC_AUTH_TOKEN={issued.token}\n")
    print(f"Try: curl -s {base}/quota -H 'authorization: Bearer $ANTHROPIC_AUTH_TOKEN'   (Ctrl-C stops)", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()
    await fake_runner.cleanup()


def run_demo(settings: Settings, *, port: int | None = None) -> None:
    configure_logging(settings.log_level)
    resolved, endpoints = prepare(settings)
    try:
        asyncio.run(_demo(resolved, port))
    finally:
        endpoints.close()

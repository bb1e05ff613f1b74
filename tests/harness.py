"""A running gateway in front of a fake Anthropic upstream, on the real Redis and PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer
from pydantic import SecretStr

from gateway import appkeys, courses
from gateway.app import create_app
from gateway.fakeupstream import FakeUpstream
from gateway.settings import Settings
from gateway.stores import Stores, open_stores

KEY_SECRET = "test-secret-" + "x" * 40
ADMIN_TOKEN = "test-bootstrap-admin-" + "a" * 24
COURSE = "comp1000"


@dataclass
class Harness:
    settings: Settings
    app: web.Application
    server: TestServer
    fake: FakeUpstream
    stores: Stores
    course: str
    key: str

    @property
    def url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")

    async def flush(self) -> None:
        """Wait until every transcript submitted so far is committed to Postgres."""
        await self.app[appkeys.WRITER].wait_idle(timeout=15)

    async def cli(self, *args: str) -> tuple[int, str, str]:
        """``python -m gateway ARGS`` against this gateway's stores: (exit status, stdout, stderr)."""
        env = {**os.environ, "GATEWAY_REDIS_URL": self.settings.redis_url or "",
               "GATEWAY_DATABASE_URL": self.settings.database_url or "",
               "GATEWAY_REDIS_PREFIX": self.settings.redis_prefix,
               "GATEWAY_KEY_SECRET": KEY_SECRET, "GATEWAY_DATA_DIR": str(self.settings.data_dir),
               "GATEWAY_COURSE": self.course}
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "gateway", *args, env=env,
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await proc.communicate()
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()

    async def status_of(self, key: str, payload: dict[str, Any] | None = None) -> int:
        """The status a small /v1/messages request with ``key`` gets."""
        body = payload or {"model": "claude-opus-5-5", "max_tokens": 10, "messages": [{"role": "user", "content": "x"}]}
        async with aiohttp.ClientSession() as session, session.post(
            self.url + "/v1/messages", json=body, headers={"authorization": f"Bearer {key}"}
        ) as resp:
            await resp.read()
            return resp.status

    async def issue_key(self, student: str, course: str | None = None) -> str:
        issued = await self.stores.keyring.issue("test", course or self.course, student)
        return issued.token


def make_settings(*, upstream_url: str, upstream_key: str, redis_url: str, database_url: str, redis_prefix: str,
                  data_dir: Path, **overrides: Any) -> Settings:
    overrides.setdefault("admin_token", SecretStr(ADMIN_TOKEN))
    return Settings(
        upstream_url=upstream_url, upstream_api_key=SecretStr(upstream_key), redis_url=redis_url,
        database_url=database_url, redis_prefix=redis_prefix, data_dir=data_dir,
        key_secret=SecretStr(KEY_SECRET), **overrides,
    )


@asynccontextmanager
async def running_gateway(
    aiohttp_server: Callable[..., Awaitable[TestServer]], *, pg_dsn: str, redis_url: str, redis_prefix: str,
    data_dir: Path, limit: int = 500_000, fake: FakeUpstream | None = None, upstream_url: str | None = None,
    upstream_host: str | None = None, **overrides: Any,
) -> AsyncIterator[Harness]:
    """``upstream_host``: reach the fake upstream by this name (e.g. ``localhost``) instead of its address."""
    fake = fake or FakeUpstream()
    fake_server = await aiohttp_server(fake.app())
    fake_url = fake_server.make_url("")
    if upstream_host is not None:
        fake_url = fake_url.with_host(upstream_host)
    settings = make_settings(
        upstream_url=upstream_url or str(fake_url).rstrip("/"), upstream_key=fake.api_key,
        redis_url=redis_url, database_url=pg_dsn, redis_prefix=redis_prefix, data_dir=data_dir, **overrides)
    async with open_stores(settings) as stores:
        await courses.create(stores.pool, "test", COURSE, limit=limit, period_seconds=7 * 86400)
        key = (await stores.keyring.issue("test", COURSE, "alice")).token
        app = create_app(settings)
        server = await aiohttp_server(app)
        try:
            yield Harness(settings, app, server, fake, stores, COURSE, key)
        finally:
            await server.close()  # drains the writer and closes the pools before the test database is dropped
            await fake_server.close()

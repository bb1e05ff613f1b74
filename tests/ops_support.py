"""Shared pieces of the operations tests (tests/test_ops_*.py): a `gateway serve` subprocess, requests on fresh
connections (each one may land on a different worker), and the pid of a redis-server we started."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from gateway import courses
from gateway.fakeupstream import FakeUpstream
from gateway.stores import open_stores
from tests.cluster import free_ports
from tests.harness import COURSE, KEY_SECRET, make_settings

START_TIMEOUT_S = 90.0  # a worker imports the whole gateway (~2 s of CPU); N of them start at once
ADMIN_TOKEN = "ops-test-admin-token-" + "z" * 24
MEET_TIMEOUT_S = 60.0
MESSAGE = {"model": "claude-opus-5-5", "max_tokens": 128000, "messages": [{"role": "user", "content": "hi"}]}


def redis_pid(url: str) -> int:
    port = url.rsplit(":", 1)[1].split("/")[0]
    info = subprocess.run(["redis-cli", "-p", port, "info", "server"], capture_output=True, text=True, timeout=10,
                          check=True).stdout
    return int(info.split("process_id:")[1].split()[0])


class NotPinned(Exception):
    """The connection was lost between the two requests of :func:`pinned` (e.g. its worker died)."""


@dataclass
class Reply:
    status: int
    body: bytes
    headers: dict[str, str]

    def json(self) -> Any:
        return orjson.loads(self.body)


async def fresh(method: str, url: str, **kwargs: Any) -> Reply:
    """One request on a new connection (so the kernel may hand it to any worker)."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session, \
            session.request(method, url, **kwargs) as resp:
        return Reply(resp.status, await resp.read(), dict(resp.headers))


async def pinned(base: str, method: str, path: str, **kwargs: Any) -> tuple[int, Reply]:
    """``GET /healthz`` then ``method path`` on the same connection: (the worker's pid, the second reply)."""
    opened: list[object] = []

    async def on_create(session: aiohttp.ClientSession, context: Any, params: Any) -> None:
        opened.append(params)

    trace = aiohttp.TraceConfig()
    trace.on_connection_create_end.append(on_create)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1), trace_configs=[trace]) as session:
        async with session.get(base + "/healthz") as resp:
            pid = (await resp.json())["pid"]
        async with session.request(method, base + path, **kwargs) as resp:
            reply = Reply(resp.status, await resp.read(), dict(resp.headers))
    if len(opened) != 1:
        raise NotPinned("the second request did not reuse the first one's connection")
    return int(pid), reply


@dataclass
class Served:
    process: asyncio.subprocess.Process
    url: str
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-5000:]

    def terminate(self) -> None:
        self.process.send_signal(signal.SIGTERM)

    async def wait(self, timeout: float = 60.0) -> int:  # noqa: ASYNC109
        return await asyncio.wait_for(self.process.wait(), timeout)


def gateway_env(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "PROMETHEUS_"))}
    env.update({f"GATEWAY_{k.upper()}": v for k, v in values.items()})
    return env


@asynccontextmanager
async def gateway_process(tmp_path: Path, *args: str, **values: str) -> AsyncIterator[Served]:
    """``python -m gateway serve ARGS`` with ``GATEWAY_<KEY>=value`` settings on a free port, up (``/healthz``
    answers) when this yields; killed on the way out if the test left it running."""
    (port,) = free_ports(1)
    log = tmp_path / "gateway.log"
    env = gateway_env(port=str(port), data_dir=str(tmp_path / "data"), **values)
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "serve", *args, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True)
    served = Served(process, f"http://127.0.0.1:{port}", log)
    try:
        await _wait_healthy(served)
        yield served
    finally:
        if process.returncode is None:
            os.killpg(process.pid, signal.SIGKILL)
            await process.wait()


async def _wait_healthy(served: Served) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if served.process.returncode is not None:
            raise RuntimeError(f"gateway exited with {served.process.returncode}:\n{served.output()}")
        try:
            if (await fresh("GET", served.url + "/healthz")).status == 200:
                return
        except aiohttp.ClientConnectionError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"gateway did not come up:\n{served.output()}")
        await asyncio.sleep(0.1)  # polling interval against a deadline


@dataclass
class Cluster:
    """A ``gateway serve`` subprocess with a course, its students' keys and the settings it was given."""

    served: Served
    keys: dict[str, str]
    values: dict[str, str]

    @property
    def url(self) -> str:
        return self.served.url

    @property
    def key(self) -> str:
        return next(iter(self.keys.values()))

    async def message(self) -> tuple[int, Reply]:
        """A non-streamed message from the first student, with the pid of the worker that answered."""
        return await pinned(self.url, "POST", "/v1/messages", json=MESSAGE, headers={"x-api-key": self.key})


@asynccontextmanager
async def serving(aiohttp_server: Any, pg_dsn: str, redis_url: str, redis_prefix: str, tmp_path: Path,
                  workers: int, *, students: tuple[str, ...] = ("alice",),
                  fake: FakeUpstream | None = None, **settings_values: str) -> AsyncIterator[Cluster]:
    """Course ``COURSE`` with a key per student, served by ``gateway serve --workers N`` in front of ``fake``;
    stopped with SIGTERM on the way out (exit status 0 required) unless the test already stopped it."""
    if fake is None:
        fake = FakeUpstream()
        fake.record = False
    upstream = str((await aiohttp_server(fake.app())).make_url("")).rstrip("/")
    values = {"redis_url": redis_url, "database_url": pg_dsn, "redis_prefix": redis_prefix,
              "key_secret": KEY_SECRET, "upstream_url": upstream, "upstream_api_key": fake.api_key,
              "admin_token": ADMIN_TOKEN, **settings_values}
    settings = make_settings(upstream_url=upstream, upstream_key=fake.api_key, redis_url=redis_url,
                             database_url=pg_dsn, redis_prefix=redis_prefix, data_dir=tmp_path / "cli")
    async with open_stores(settings) as stores:
        await courses.create(stores.pool, "test", COURSE, limit=500_000, period_seconds=7 * 86400)
        keys = {s: (await stores.keyring.issue("test", COURSE, s)).token for s in students}
    async with gateway_process(tmp_path, "--workers", str(workers), **values) as served:
        yield Cluster(served, keys, values)
        if served.process.returncode is None:
            served.terminate()
            assert await served.wait() == 0, served.output()


async def meet_every_worker(workers: int, probe: Callable[[], Awaitable[tuple[int, Reply]]]) -> dict[int, Reply]:
    """Probe on fresh connections until ``workers`` distinct workers have answered; each one's first reply."""
    first: dict[int, Reply] = {}
    deadline = time.monotonic() + MEET_TIMEOUT_S
    while len(first) < workers:
        assert time.monotonic() < deadline, f"met only {sorted(first)} in {MEET_TIMEOUT_S} s"
        pid, reply = await probe()
        first.setdefault(pid, reply)
    return first

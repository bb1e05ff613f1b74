"""What a benchmark runs against: a fake upstream process, a fresh database, a Redis prefix, a gateway process.

Every service is a separate process on a loopback port, started here and stopped here (by its own pid; a
multi-worker gateway forwards the signal to its workers). The database is created fresh on the local PostgreSQL
and dropped at the end; the Redis keys live under a unique prefix and are deleted at the end. The course and the
students' keys are made with the real CLI (``python -m gateway course create``, ``keys issue``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import asyncpg
import redis.asyncio as aioredis

from bench.fake_upstream_server import DEFAULT_KEY
from bench.loadgen import Target
from bench.procstat import process_tree

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
COURSE = "bench"


class StackError(RuntimeError):
    """A service did not start, or the CLI failed: the message carries the tail of its log."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


@dataclass
class Service:
    name: str
    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def wait_ready(self, path: str = "/healthz", timeout_s: float = 90.0) -> None:
        deadline = time.monotonic() + timeout_s
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise StackError(f"{self.name} exited with {self.proc.returncode}:\n{_tail(self.log)}")
                with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError, OSError):
                    async with session.get(self.url + path) as response:
                        if response.status == 200:
                            return
                await asyncio.sleep(0.1)  # polling a starting process, with a deadline
        raise StackError(f"{self.name} not ready after {timeout_s:.0f} s:\n{_tail(self.log)}")

    def stop(self, grace_s: float = 20.0) -> int | None:
        """SIGTERM, then SIGKILL after ``grace_s`` (to this process and any child it left behind)."""
        if self.proc.poll() is not None:
            return self.proc.returncode
        tree = process_tree(self.pid)
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            for pid in reversed(tree):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            return self.proc.wait(10)


def start_process(name: str, argv: Sequence[str], *, env: Mapping[str, str], log_dir: Path, port: int) -> Service:
    log = log_dir / f"{name}.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(list(argv), cwd=ROOT, env=dict(env), stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    return Service(name, proc, f"http://127.0.0.1:{port}", log)


def clean_env() -> dict[str, str]:
    """This process's environment without any GATEWAY_* variable (the runner sets its own)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}


@dataclass
class Stack:
    """The database, Redis prefix, fake upstream and (re)startable gateway of one benchmark run."""

    pg_admin_dsn: str
    redis_url: str
    workdir: Path
    fake: Service | None = None
    gateway: Service | None = None
    bare: Service | None = None
    database: str = ""
    prefix: str = ""
    keys: list[str] = field(default_factory=list)
    probe_key: str = ""  # a student of its own, for requests that get a key suspended (the leak probe)
    env: dict[str, str] = field(default_factory=dict)

    @property
    def database_url(self) -> str:
        base, _, _ = self.pg_admin_dsn.rpartition("/")
        return f"{base}/{self.database}"

    def direct(self, **headers: str) -> Target:
        assert self.fake is not None
        return Target("direct", self.fake.url, (DEFAULT_KEY,), "x-api-key", headers)

    def through_bare_proxy(self, **headers: str) -> Target:
        assert self.bare is not None
        return Target("bare", self.bare.url, ("unused",), "x-api-key", headers)

    def through_gateway(self, **headers: str) -> Target:
        assert self.gateway is not None
        return Target("gateway", self.gateway.url, tuple(self.keys), "bearer", headers)

    async def _admin(self, sql: str) -> None:
        conn = await asyncpg.connect(self.pg_admin_dsn)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    async def open(self, students: int, fake_port: int | None = None,
                   gateway_env: Mapping[str, str] | None = None) -> None:
        self.database = f"gw_bench_{uuid.uuid4().hex[:10]}"
        self.prefix = f"gwbench-{uuid.uuid4().hex[:10]}"
        await self._admin(f'CREATE DATABASE "{self.database}"')
        fake_port = fake_port or free_port()
        self.fake = start_process("fake-upstream", [PYTHON, "-m", "bench.fake_upstream_server", "--port",
                                                    str(fake_port)], env=clean_env(), log_dir=self.workdir,
                                  port=fake_port)
        await self.fake.wait_ready()
        self.env = {
            **clean_env(),
            "GATEWAY_UPSTREAM_URL": self.fake.url,
            "GATEWAY_UPSTREAM_API_KEY": DEFAULT_KEY,
            "GATEWAY_REDIS_URL": self.redis_url,
            "GATEWAY_REDIS_PREFIX": self.prefix,
            "GATEWAY_DATABASE_URL": self.database_url,
            "GATEWAY_DATA_DIR": str(self.workdir / "data"),
            "GATEWAY_KEY_SECRET": secrets.token_urlsafe(48),
            "GATEWAY_HOST": "127.0.0.1",
            # One benchmark key stands for many students: lift the per-student in-flight cap (it is still
            # checked, by the same Lua call) so c=50 and 1,000 streams are not refused with 429.
            "GATEWAY_MAX_INFLIGHT_PER_STUDENT": "100000",
            "GATEWAY_SHUTDOWN_GRACE_S": "15",
            **(gateway_env or {}),
        }
        await self.cli("migrate")
        await self.cli("course", "create", COURSE, "--limit", "1000000m", "--reset-period", "7d")
        self.keys = []
        for number in range(students):
            out = await self.cli("--course", COURSE, "keys", "issue", f"student{number:03d}")
            self.keys.append(out.splitlines()[0].strip())
        out = await self.cli("--course", COURSE, "keys", "issue", "probe")
        self.probe_key = out.splitlines()[0].strip()

    async def cli(self, *args: str) -> str:
        proc = await asyncio.create_subprocess_exec(
            PYTHON, "-m", "gateway", *args, cwd=ROOT, env=self.env, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        try:
            out, err = await asyncio.wait_for(proc.communicate(), 120)
        except TimeoutError:
            proc.kill()
            raise StackError(f"gateway {' '.join(args)}: timed out") from None
        if proc.returncode != 0:
            raise StackError(f"gateway {' '.join(args)} exited {proc.returncode}: {err.decode()[-2000:]}")
        return out.decode()

    async def start_gateway(self, workers: int = 1) -> Service:
        await self.stop_gateway()
        port = free_port()
        argv = [PYTHON, "-m", "gateway", "serve", "--port", str(port)]
        if workers > 1:
            argv += ["--workers", str(workers)]
        self.gateway = start_process(f"gateway-w{workers}", argv, env=self.env, log_dir=self.workdir, port=port)
        await self.gateway.wait_ready()
        if workers > 1:
            await self._wait_workers(workers)
        return self.gateway

    async def start_bare_proxy(self, *, uvloop: bool = False) -> Service:
        assert self.fake is not None
        if self.bare is None:
            port = free_port()
            argv = [PYTHON, "-m", "bench.bare_proxy", "--port", str(port), "--upstream", self.fake.url, "--key",
                    DEFAULT_KEY, *(["--uvloop"] if uvloop else [])]
            self.bare = start_process("bare-proxy", argv, env=clean_env(), log_dir=self.workdir, port=port)
            await self.bare.wait_ready()
        return self.bare

    async def _wait_workers(self, workers: int, timeout_s: float = 90.0) -> None:
        """All N workers listening: N distinct pids answer /healthz? The pid is not exposed, so wait for N
        children of the serve process, then for /readyz."""
        assert self.gateway is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if len(process_tree(self.gateway.pid)) >= workers + 1:
                break
            await asyncio.sleep(0.1)  # polling a starting process, with a deadline
        await self.gateway.wait_ready("/readyz", timeout_s)

    async def stop_gateway(self) -> int | None:
        if self.gateway is None:
            return None
        code = await asyncio.to_thread(self.gateway.stop)
        self.gateway = None
        return code

    async def count_rows(self, table: str) -> int | None:
        try:
            conn = await asyncpg.connect(self.database_url)
        except (OSError, asyncpg.PostgresError):
            return None
        try:
            return int(await conn.fetchval(f"SELECT count(*) FROM {table}"))
        except asyncpg.PostgresError:
            return None
        finally:
            await conn.close()

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.stop_gateway()
        for service in (self.bare, self.fake):
            if service is not None:
                await asyncio.to_thread(service.stop)
        if self.prefix:
            client = aioredis.from_url(self.redis_url)
            try:
                async for key in client.scan_iter(match=f"{self.prefix}*", count=1000):
                    await client.delete(key)
            finally:
                await client.aclose()
        if self.database:
            await self._admin(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')


@asynccontextmanager
async def open_stack(*, pg_admin_dsn: str, redis_url: str, students: int = 4, keep_logs: Path | None = None,
                     fake_port: int | None = None, gateway_env: Mapping[str, str] | None = None,
                     ) -> AsyncIterator[Stack]:
    with tempfile.TemporaryDirectory(prefix="gw-bench-") as tmp:
        stack = Stack(pg_admin_dsn, redis_url, Path(tmp))
        try:
            await stack.open(students, fake_port, gateway_env or {})
            yield stack
        finally:
            try:
                await stack.close()
            finally:
                if keep_logs is not None:
                    await asyncio.to_thread(_save_logs, Path(tmp), keep_logs)


def _save_logs(source: Path, into: Path) -> None:
    into.mkdir(parents=True, exist_ok=True)
    for log in source.glob("*.log"):
        (into / log.name).write_bytes(log.read_bytes()[-200_000:])

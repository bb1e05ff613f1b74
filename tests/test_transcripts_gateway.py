"""Issue 4 through the gateway: every request transcribed exactly once, byte-exact, across a Postgres outage and a
SIGKILL of the worker."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson

from gateway import appkeys, courses
from gateway.contentstore import join_packed
from gateway.fakeupstream import FakeUpstream
from gateway.stores import open_stores
from tests.harness import COURSE, KEY_SECRET, make_settings, running_gateway
from tests.ops_support import gateway_process
from tests.test_writer_support import TcpProxy


def _body(i: int, rng: random.Random) -> bytes:
    """Varied bodies: streamed or not, sizes from tiny to tens of KB, Claude Code-ish shapes and whitespace."""
    messages: list[dict[str, Any]] = [{"role": "user", "content": f"request {i}: " + "x" * rng.randrange(0, 20_000)}]
    if i % 3 == 0:
        messages += [{"role": "assistant", "content": [{"type": "tool_use", "id": f"toolu_{i}", "name": "bash",
                                                        "input": {"command": "ls"}}]},
                     {"role": "user", "content": [{"type": "tool_result", "tool_use_id": f"toolu_{i}",
                                                   "content": "a.py\nb.py"}]}]
    payload = {"model": "claude-opus-5-5", "max_tokens": 128000, "stream": i % 2 == 0,
               "system": [{"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}}],
               "messages": messages, "metadata": {"user_id": f"user_{i % 7}"}}
    raw = orjson.dumps(payload)
    return orjson.dumps(payload, option=orjson.OPT_INDENT_2) if i % 5 == 0 else raw


async def _send_all(url: str, key: str, bodies: dict[str, bytes], concurrency: int = 32) -> dict[str, int]:
    """POST every body (keyed by the session id it is sent with); the status each got."""
    statuses: dict[str, int] = {}
    queue = list(bodies.items())

    async def worker(session: aiohttp.ClientSession) -> None:
        while queue:
            session_id, body = queue.pop()
            async with session.post(url + "/v1/messages?beta=true", data=body, headers={
                "x-api-key": key, "content-type": "application/json", "X-Claude-Code-Session-Id": session_id,
            }) as resp:
                await resp.read()
                statuses[session_id] = resp.status

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return statuses


async def _bodies_by_session(dsn: str) -> dict[str, bytes]:
    """Every stored request body by the session id it was sent with (read in one snapshot: the gateway under
    test may still be writing)."""
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            rows = await conn.fetch(
                "SELECT session_id, request_skeleton, request_offsets, request_parts FROM transcripts")
            blobs = {r["hash"]: r["content"] for r in await conn.fetch("SELECT hash, content FROM transcript_blobs")}
    finally:
        await conn.close()
    sessions = [r["session_id"] for r in rows]
    assert len(sessions) == len(set(sessions)), "a request was transcribed twice"
    return {r["session_id"]: join_packed(r["request_skeleton"], r["request_offsets"], r["request_parts"], blobs)
            for r in rows}


OUTAGE_S = 60.0
ROOMY = {"limit": 1_000_000_000, "max_inflight_per_student": 64}  # these tests are about records, not quotas


async def test_ten_thousand_requests_transcribed_exactly(aiohttp_server, pg_dsn: str, redis_url: str,  # type: ignore[no-untyped-def]
                                                         redis_prefix: str, tmp_path: Path) -> None:
    rng = random.Random(4)
    bodies = {str(uuid.uuid4()): _body(i, rng) for i in range(10_000)}
    async with running_gateway(aiohttp_server, pg_dsn=pg_dsn, redis_url=redis_url, redis_prefix=redis_prefix,
                               data_dir=tmp_path, **ROOMY) as h:
        statuses = await _send_all(h.url, h.key, bodies)
        assert set(statuses.values()) == {200}
        await h.flush()
        usage_rows = await h.stores.pool.fetchval("SELECT count(*) FROM usage_events")
    stored = await _bodies_by_session(pg_dsn)
    assert len(stored) == 10_000
    assert stored == bodies  # every request body byte-equal to what the client sent
    assert usage_rows == 10_000


async def test_postgres_outage_loses_nothing(aiohttp_server, pg_dsn: str, redis_url: str,  # type: ignore[no-untyped-def]
                                             redis_prefix: str, tmp_path: Path) -> None:
    """Postgres unreachable for 60 s while 2,000 requests flow through the gateway; then it comes back."""
    proxy = TcpProxy.for_dsn(pg_dsn)
    await proxy.open()
    try:
        async with running_gateway(aiohttp_server, pg_dsn=proxy.dsn(pg_dsn), redis_url=redis_url,
                                   redis_prefix=redis_prefix, data_dir=tmp_path, **ROOMY) as h:
            warm = {str(uuid.uuid4()): _body(0, random.Random(0))}
            assert set((await _send_all(h.url, h.key, warm)).values()) == {200}
            await h.flush()
            await proxy.close()  # Postgres unreachable from here on
            outage_ends = asyncio.get_running_loop().time() + OUTAGE_S
            rng = random.Random(5)
            bodies = {str(uuid.uuid4()): _body(i, rng) for i in range(2_000)}
            statuses = await _send_all(h.url, h.key, bodies)
            assert set(statuses.values()) == {200}  # students never notice
            assert h.app[appkeys.WRITER].records_written == 1  # only the warm-up: nothing reached Postgres since
            # The outage itself is what is being tested (the writer retrying with backoff all along), not a wait for
            # anything to happen: hold Postgres down for the rest of the 60 s.
            await asyncio.sleep(max(0.0, outage_ends - asyncio.get_running_loop().time()))
            await proxy.open()
            await h.flush()
        stored = await _bodies_by_session(pg_dsn)
        assert stored == {**warm, **bodies}
    finally:
        await proxy.shutdown()


async def test_sigkill_mid_load_then_restart_replays_the_spool(aiohttp_server, pg_dsn: str,  # type: ignore[no-untyped-def]
                                                               redis_url: str, redis_prefix: str,
                                                               tmp_path: Path) -> None:
    fake = FakeUpstream(deltas=10, delta_delay_s=0.01)
    fake.record = False
    upstream = str((await aiohttp_server(fake.app())).make_url("")).rstrip("/")
    settings = make_settings(upstream_url=upstream, upstream_key=fake.api_key, redis_url=redis_url,
                             database_url=pg_dsn, redis_prefix=redis_prefix, data_dir=tmp_path / "cli")
    async with open_stores(settings) as stores:
        await courses.create(stores.pool, "test", COURSE, limit=10_000_000, period_seconds=7 * 86400)
        key = (await stores.keyring.issue("test", COURSE, "alice")).token
    proxy = TcpProxy.for_dsn(pg_dsn)
    await proxy.open()
    try:
        values = {"redis_url": redis_url, "database_url": proxy.dsn(pg_dsn), "redis_prefix": redis_prefix,
                  "key_secret": KEY_SECRET, "upstream_url": upstream, "upstream_api_key": fake.api_key,
                  "max_inflight_per_student": "64"}
        rng = random.Random(6)
        bodies = {str(uuid.uuid4()): _body(2 * i, rng) for i in range(400)}  # even i: all streamed
        completed: set[str] = set()
        async with gateway_process(tmp_path, **values) as served:
            warm = await _send_all(served.url, key, {str(uuid.uuid4()): _body(0, rng)}, concurrency=1)
            assert set(warm.values()) == {200}  # the worker has the course's policy cached
            await proxy.close()  # nothing can commit: completed requests live only in the worker's spool
            half = asyncio.Event()

            async def one(session: aiohttp.ClientSession, session_id: str, body: bytes) -> None:
                async with session.post(served.url + "/v1/messages", data=body, headers={
                    "x-api-key": key, "content-type": "application/json", "X-Claude-Code-Session-Id": session_id,
                }) as resp:
                    raw = await resp.read()
                if resp.status == 200 and b"event: message_stop" in raw:
                    completed.add(session_id)
                    if len(completed) >= 100:
                        half.set()

            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=20)) as session:
                tasks = [asyncio.create_task(one(session, s, b)) for s, b in bodies.items()]
                await asyncio.wait_for(half.wait(), timeout=120)
                os.killpg(served.process.pid, signal.SIGKILL)
                await asyncio.gather(*tasks, return_exceptions=True)  # the rest fail: the worker is gone
            await served.process.wait()
        assert 100 <= len(completed) < len(bodies)
        await proxy.open()
        async with gateway_process(tmp_path, **values):  # same data dir: adopts and replays the dead worker's spool
            deadline = asyncio.get_running_loop().time() + 60
            while True:
                stored = await _bodies_by_session(pg_dsn)
                if completed <= set(stored) or asyncio.get_running_loop().time() > deadline:
                    break
                await asyncio.sleep(0.2)  # polling another process against a deadline
        missing = completed - set(stored)
        assert not missing, f"{len(missing)} completed requests were lost"
        assert all(stored[s] == bodies[s] for s in completed)
    finally:
        await proxy.shutdown()

"""Issue 7: SIGTERM during 50 live streams -- new connections are refused, every stream runs to its end, the
transcripts are all written, and the server exits 0.

The fake upstream holds every stream open after its first events (an ``asyncio.Event`` gate), so the test
decides when the streams end: SIGTERM is sent while all 50 are in flight, and the gate is opened only after the
gateway has stopped accepting connections.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp

from gateway.fakeupstream import FakeUpstream, Scripted, text_stream, usage
from gateway.stores import open_stores
from tests.harness import COURSE, make_settings
from tests.ops_support import fresh, serving

STREAMS = 50
STUDENTS = tuple(f"s{i:02d}" for i in range(10))  # 5 streams each: under the default in-flight limit of 8
WAIT_S = 60.0


async def test_sigterm_lets_50_live_streams_finish_and_writes_their_transcripts(
        aiohttp_server: Any, pg_dsn: str, redis_url: str, redis_prefix: str, tmp_path: Path) -> None:
    release = asyncio.Event()
    fake = FakeUpstream()
    fake.queue(*(Scripted(events=text_stream([f"part{j} " for j in range(8)], start_usage=usage(100, 1)),
                          gate=release, gate_after=3) for _ in range(STREAMS)))
    started = 0
    all_started = asyncio.Event()

    async def stream(session: aiohttp.ClientSession, key: str) -> bytes:
        nonlocal started
        async with session.post("/v1/messages", headers={"x-api-key": key}, json={
                "model": "claude-opus-5-5", "max_tokens": 128000, "stream": True,
                "messages": [{"role": "user", "content": "a long answer please"}]}) as resp:
            assert resp.status == 200
            body = bytearray(await resp.content.readany())  # the first bytes: message_start
            started += 1
            if started == STREAMS:
                all_started.set()
            async for chunk in resp.content.iter_any():
                body += chunk
            return bytes(body)

    async with serving(aiohttp_server, pg_dsn, redis_url, redis_prefix, tmp_path, workers=2,
                       students=STUDENTS, fake=fake) as cluster:
        keys = [cluster.keys[STUDENTS[i % len(STUDENTS)]] for i in range(STREAMS)]
        async with aiohttp.ClientSession(cluster.url, connector=aiohttp.TCPConnector(limit=0)) as session:
            streams = [asyncio.create_task(stream(session, key)) for key in keys]
            async with asyncio.timeout(WAIT_S):
                await all_started.wait()
            cluster.served.terminate()

            deadline = time.monotonic() + WAIT_S
            while True:  # both workers close their listening sockets while the streams are still held
                assert cluster.served.process.returncode is None, cluster.served.output()
                try:
                    await fresh("GET", cluster.url + "/healthz")
                except aiohttp.ClientConnectorError:
                    break
                assert time.monotonic() < deadline, "the gateway still accepts connections after SIGTERM"
                await asyncio.sleep(0.05)  # polling interval against a deadline
            ended = [_how_it_ended(task) for task in streams if task.done()]
            assert not ended, f"streams ended before the gate opened: {ended}\n{cluster.served.output()[-4000:]}"

            release.set()
            bodies = await asyncio.wait_for(asyncio.gather(*streams), WAIT_S)
        assert all(body.rstrip().endswith(b'event: message_stop\ndata: {"type":"message_stop"}') for body in bodies)
        assert await cluster.served.wait(WAIT_S) == 0, cluster.served.output()

    settings = make_settings(upstream_url="http://unused", upstream_key="unused", redis_url=redis_url,
                             database_url=pg_dsn, redis_prefix=redis_prefix, data_dir=tmp_path / "cli")
    async with open_stores(settings) as stores:
        transcripts = await stores.pool.fetchval(
            "SELECT count(*) FROM transcripts WHERE course_id = $1 AND status = 200 AND response_body IS NOT NULL",
            COURSE)
        events = await stores.pool.fetch(
            "SELECT student_id, weighted, estimated FROM usage_events WHERE course_id = $1", COURSE)
    assert transcripts == STREAMS
    assert len(events) == STREAMS and all(e["weighted"] > 0 and not e["estimated"] for e in events)


def _how_it_ended(task: asyncio.Task[bytes]) -> str:
    """For a failure message: a stream task's exception, or the tail of what it received."""
    if task.cancelled():
        return "cancelled"
    error = task.exception()
    return repr(error) if error is not None else f"returned ...{task.result()[-200:]!r}"

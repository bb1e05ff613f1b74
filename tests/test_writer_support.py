"""Helpers for the transcript writer tests (no tests here): records, a closable TCP proxy in front of Postgres,
checks that read everything back, and the child process of the SIGKILL test (``python -m
tests.test_writer_support child DSN SPOOL_DIR FIRST SECOND``)."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Awaitable, Callable
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from bench.session_gen import SessionConfig, generate_session, session_headers
from gateway.contentstore import join_packed
from gateway.db import create_pool
from gateway.transcript import TranscriptRecord
from gateway.writer import TranscriptWriter

SMALL_SESSION = SessionConfig(turns=25, tools_bytes=1_500, system_bytes=400, first_user_bytes=400,
                              result_bytes=(60, 300), reply_bytes=(30, 150), thinking=False)


@lru_cache(maxsize=64)
def small_session(seed: int) -> list[tuple[bytes, bytes, Any]]:
    return [(t.body, t.sse, t.message) for t in generate_session(seed, SMALL_SESSION)]


def make_record(i: int, *, prefix: str = "req", started_at: float | None = None, **overrides: Any) -> TranscriptRecord:
    """Record number ``i``: turn ``i % 25`` of session ``i // 25`` of a small Claude Code-like session."""
    body, sse, message = small_session((i // 25) % 64)[i % 25]
    now = time.time() if started_at is None else started_at
    headers = session_headers(i // 25)
    fields: dict[str, Any] = {
        "request_id": f"{prefix}_{i:06d}",
        "upstream_request_id": f"req_up_{i}",
        "started_at": now,
        "first_byte_at": now + 0.2,
        "ended_at": now + 1.5,
        "course": "comp1000",
        "student": f"s{i // 25 % 40:03d}",
        "jti": f"key{i // 25 % 40}",
        "session_id": headers["x-claude-code-session-id"],
        "user_agent": headers["user-agent"],
        "path": "/v1/messages?beta=true",
        "model": "claude-opus-5-5",
        "stream": True,
        "status": 200,
        "request_headers": {**headers, "x-api-key": "sk-virtual-SECRET", "Authorization": "Bearer SECRET"},
        "request_body": body,
        "response_headers": {"content-type": "text/event-stream", "request-id": f"req_up_{i}"},
        "response_body": sse,
        "response_message": message,
        "usage": {"input_tokens": 10 + i % 7, "cache_write_5m": 100, "cache_write_1h": 0, "cache_read": 5000,
                  "output_tokens": 50 + i % 11, "web_searches": 0, "estimated": False, "partial": False},
        "weighted": 1000 + i,
        "cost_usd": f"0.{i % 1000:06d}",
        "period_start": now - 3600,
        "carried": 0,
    }
    fields.update(overrides)
    return TranscriptRecord(**fields)


async def stored_bodies(dsn: str) -> dict[str, bytes]:
    """Every request body in the database, reassembled from skeleton and blobs."""
    conn = await asyncpg.connect(dsn)
    try:
        blobs = {row["hash"]: row["content"] for row in await conn.fetch("SELECT hash, content FROM transcript_blobs")}
        rows = await conn.fetch(
            "SELECT request_id, request_skeleton, request_offsets, request_parts FROM transcripts")
        return {r["request_id"]: join_packed(r["request_skeleton"], r["request_offsets"], r["request_parts"], blobs)
                for r in rows}
    finally:
        await conn.close()


async def counts(dsn: str) -> dict[str, int]:
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow("""
            SELECT (SELECT count(*) FROM transcripts) AS transcripts,
                   (SELECT count(DISTINCT request_id) FROM transcripts) AS distinct_ids,
                   (SELECT count(*) FROM transcript_ids) AS ids,
                   (SELECT count(*) FROM usage_events) AS usage_events""")
        return dict(row)
    finally:
        await conn.close()


def pool_factory(dsn: str, gate: asyncio.Event | None = None) -> Callable[[], Awaitable[asyncpg.Pool]]:
    async def factory() -> asyncpg.Pool:
        if gate is not None:
            await gate.wait()
        return await create_pool(dsn, min_size=1, max_size=4)

    return factory


def segment_files(spool_dir: Path) -> list[Path]:
    return sorted(spool_dir.glob("*/*.seg")) + sorted(spool_dir.glob(".*/*.seg"))


async def wait_until(condition: Callable[[], bool], deadline_s: float = 30.0) -> None:
    """Poll ``condition`` until true or the deadline: only for states nothing signals (a retry counter, rows
    committed by another process)."""
    async with asyncio.timeout(deadline_s):
        while not condition():  # noqa: ASYNC110 - polling with a deadline, see the docstring
            await asyncio.sleep(0.005)


class TcpProxy:
    """A TCP forwarder in front of Postgres that a test can cut (an outage) and restore on the same port."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._transports: set[asyncio.WriteTransport] = set()
        self.connections = 0

    def dsn(self, dsn: str) -> str:
        parts = urlsplit(dsn)
        netloc = parts.netloc.rsplit("@", 1)
        host = f"127.0.0.1:{self.port}"
        return urlunsplit(parts._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host))

    @classmethod
    def for_dsn(cls, dsn: str) -> TcpProxy:
        parts = urlsplit(dsn)
        return cls(parts.hostname or "127.0.0.1", parts.port or 5432)

    async def open(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def shutdown(self) -> None:
        """``close()`` if it is open (for a test's ``finally``)."""
        if self._server is not None:
            await self.close()

    async def close(self) -> None:
        """Stop listening and cut every open connection."""
        assert self._server is not None
        self._server.close()
        for transport in list(self._transports):
            transport.abort()
        self._transports.clear()
        await self._server.wait_closed()
        self._server = None

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            server_reader, server_writer = await asyncio.open_connection(*self.target)
        except OSError:
            client_writer.transport.abort()
            return
        for w in (client_writer, server_writer):
            self._transports.add(w.transport)

        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, ConnectionError):
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            writer.transport.abort()

        await asyncio.gather(pipe(client_reader, server_writer), pipe(server_reader, client_writer))
        for w in (client_writer, server_writer):
            self._transports.discard(w.transport)


async def _child(dsn: str, spool_dir: str, first: int, second: int) -> None:
    """Submit ``first`` records, say "half", wait for a line on stdin, submit ``second`` more, say "done", hang."""
    writer = TranscriptWriter(pool_factory(dsn), Path(spool_dir), worker_name="victim", batch_size=50,
                              flush_interval_s=0.05, retry_max_s=0.2)
    await writer.start()
    for i in range(first):
        writer.submit(make_record(i, prefix="kill"))
    print("half", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    for i in range(first, first + second):
        writer.submit(make_record(i, prefix="kill"))
    print("done", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__" and sys.argv[1:2] == ["child"]:
    asyncio.run(_child(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])))

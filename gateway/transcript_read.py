"""Reading transcripts back: one request in full (``transcripts show``) and audit exports (JSON lines).

Request bodies are reassembled from their skeleton and content-addressed parts (``gateway/contentstore.py``)
and checked against the stored SHA-256. Bodies are returned as text when they are UTF-8 (then the JSON string
holds exactly the bytes the client sent), otherwise base64 under ``*_base64``. JSON columns are read as text
and parsed here, so these functions work on any asyncpg connection or pool, whatever codecs it has.
"""

from __future__ import annotations

import base64
import contextlib
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterable, Sequence
from datetime import datetime
from typing import Any, TypeAlias

import asyncpg
import orjson

from gateway import contentstore

COLUMNS = """
    request_id, upstream_request_id, started_at, first_byte_at, ended_at, course_id, student_id, jti,
    session_id, user_agent, method, path, model, stream, status, error,
    request_headers::text AS request_headers, request_size, request_skeleton, request_offsets, request_parts,
    response_headers::text AS response_headers, response_body, response_message::text AS response_message,
    usage::text AS usage, weighted, cost_usd::text AS cost_usd, estimated, refused, refused_reason,
    period_start, carried
"""
FIND = "SELECT started_at FROM transcript_ids WHERE request_id = $1"
SHOW = f"SELECT {COLUMNS} FROM transcripts WHERE request_id = $1 AND started_at = $2"
EXPORT = f"""
SELECT {COLUMNS} FROM transcripts
WHERE course_id = $1
  AND ($2::text IS NULL OR student_id = $2)
  AND ($3::timestamptz IS NULL OR started_at >= $3)
  AND ($4::timestamptz IS NULL OR started_at < $4)
ORDER BY started_at, request_id
"""
BLOBS = "SELECT hash, content FROM transcript_blobs WHERE hash = ANY($1::bytea[])"

Conn: TypeAlias = "asyncpg.Connection | asyncpg.Pool"


class BlobCache:
    """Blob contents by hash, bounded by bytes (an export touches the same parts over and over)."""

    def __init__(self, max_bytes: int = 64 << 20) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[bytes, bytes] = OrderedDict()
        self._bytes = 0

    def get(self, key: bytes) -> bytes | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: bytes, value: bytes) -> None:
        if key in self._items:
            return
        self._items[key] = value
        self._bytes += len(value)
        while self._bytes > self.max_bytes and len(self._items) > 1:
            _, old = self._items.popitem(last=False)
            self._bytes -= len(old)

    async def fetch(self, conn: asyncpg.Connection, hashes: Iterable[bytes]) -> dict[bytes, bytes]:
        found: dict[bytes, bytes] = {}
        missing: list[bytes] = []
        for key in set(hashes):
            value = self.get(key)
            if value is None:
                missing.append(key)
            else:
                found[key] = value
        if missing:
            for row in await conn.fetch(BLOBS, missing):
                key, content = row["hash"], row["content"]
                if contentstore.digest(content) != key:
                    raise ValueError(f"transcript blob {key.hex()} does not match its hash")
                found[key] = content
                self.put(key, content)
        return found


@contextlib.asynccontextmanager
async def _connection(conn: Conn) -> AsyncIterator[asyncpg.Connection]:
    if isinstance(conn, asyncpg.Pool):
        async with conn.acquire() as acquired:
            yield acquired
    else:
        yield conn


def _time(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _json(text: str | None) -> Any:
    return None if text is None else orjson.loads(text)


def _bytes_field(out: dict[str, Any], name: str, data: bytes | None) -> None:
    if data is None:
        out[name] = None
        return
    try:
        out[name] = data.decode("utf-8")
    except UnicodeDecodeError:
        out[name] = None
        out[name + "_base64"] = base64.b64encode(data).decode()


def reassemble(row: asyncpg.Record | dict[str, Any], blobs: dict[bytes, bytes]) -> bytes:
    """The exact request body of a transcripts row (``blobs`` checked against their hashes when fetched);
    ValueError if a part is missing or the size differs."""
    try:
        body = contentstore.join_packed(row["request_skeleton"], row["request_offsets"], row["request_parts"],
                                        blobs)
    except KeyError as exc:
        raise ValueError(f"request {row['request_id']}: missing content part") from exc
    if len(body) != row["request_size"]:
        raise ValueError(f"request {row['request_id']}: reassembled body has the wrong size")
    return body


def to_dict(row: asyncpg.Record, body: bytes | None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "request_id": row["request_id"],
        "upstream_request_id": row["upstream_request_id"],
        "started_at": _time(row["started_at"]),
        "first_byte_at": _time(row["first_byte_at"]),
        "ended_at": _time(row["ended_at"]),
        "course": row["course_id"],
        "student": row["student_id"],
        "key_id": row["jti"],
        "session_id": row["session_id"],
        "user_agent": row["user_agent"],
        "method": row["method"],
        "path": row["path"],
        "model": row["model"],
        "stream": row["stream"],
        "status": row["status"],
        "error": row["error"],
        "refused": row["refused"],
        "refused_reason": row["refused_reason"],
        "usage": _json(row["usage"]),
        "weighted": row["weighted"],
        "cost_usd": row["cost_usd"],
        "estimated": row["estimated"],
        "period_start": _time(row["period_start"]),
        "carried": row["carried"],
        "request_headers": _json(row["request_headers"]),
        "request_size": row["request_size"],
    }
    if body is not None:
        out["request_sha256"] = contentstore.digest(body).hex()
        _bytes_field(out, "request_body", body)
    out["response_headers"] = _json(row["response_headers"])
    _bytes_field(out, "response_body", row["response_body"])
    out["response_message"] = _json(row["response_message"])
    return out


async def _found(conn: Conn, request_id: str) -> tuple[asyncpg.Record, bytes] | None:
    """The transcript row of ``request_id`` and its reassembled request body (None if there is no such row)."""
    async with _connection(conn) as connection:
        started_at = await connection.fetchval(FIND, request_id)
        if started_at is None:
            return None
        row = await connection.fetchrow(SHOW, request_id, started_at)
        if row is None:
            return None
        blobs = await BlobCache().fetch(connection, contentstore.unpack_hashes(row["request_parts"]))
        return row, reassemble(row, blobs)


async def request_body(conn: Conn, request_id: str) -> bytes | None:
    """The exact bytes the client sent for ``request_id`` (None if there is no such transcript)."""
    found = await _found(conn, request_id)
    return None if found is None else found[1]


async def show(conn: Conn, request_id: str) -> dict[str, Any] | None:
    """Everything about one request, the exact request and response included; None if unknown."""
    found = await _found(conn, request_id)
    return None if found is None else to_dict(*found)


async def export(
    conn: Conn,
    course: str,
    *,
    student: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    bodies: bool = True,
    chunk: int = 200,
) -> AsyncIterator[bytes]:
    """JSON lines (bytes ending in a newline), oldest first: each request of ``course`` [and ``student``]."""
    cache = BlobCache()
    async with _connection(conn) as connection, connection.transaction(readonly=True):
        rows: list[asyncpg.Record] = []
        async for row in connection.cursor(EXPORT, course, student, since, until, prefetch=chunk):
            rows.append(row)
            if len(rows) >= chunk:
                for line in await _lines(connection, cache, rows, bodies):
                    yield line
                rows = []
        for line in await _lines(connection, cache, rows, bodies):
            yield line


async def _lines(
    connection: asyncpg.Connection, cache: BlobCache, rows: Sequence[asyncpg.Record], bodies: bool
) -> list[bytes]:
    if not rows:
        return []
    blobs: dict[bytes, bytes] = {}
    if bodies:
        hashes = (h for row in rows for h in contentstore.unpack_hashes(row["request_parts"]))
        blobs = await cache.fetch(connection, hashes)
    return [orjson.dumps(to_dict(row, reassemble(row, blobs) if bodies else None)) + b"\n" for row in rows]

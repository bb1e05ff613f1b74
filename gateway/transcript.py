"""The transcript record (one per proxied request) and its compact binary form in the spool.

The proxy handler fills a :class:`TranscriptRecord` and hands it to the writer (``gateway/writer.py``). The
spool stores it as one payload::

    u32 meta_len | u32 request_len | u32 response_len (0xFFFFFFFF: no response body)
    meta (orjson of every non-bytes field) | request body bytes | response body bytes

Bytes fields are appended raw (no base64): encoding is one ``orjson.dumps`` of a small dict plus a few buffers
that :meth:`Spool.append` hands to ``writev`` without copying them.

Secrets never reach the disk: :func:`drop_secret_headers` runs when the record is encoded, even though the
handler is expected to have sanitised the headers already.
"""

from __future__ import annotations

import dataclasses
import operator
import re
import struct
from dataclasses import dataclass, field
from typing import Any

import orjson

_PREFIX = struct.Struct("<III")
_NO_BODY = 0xFFFFFFFF

SECRET_REQUEST_HEADERS = frozenset({"x-api-key", "authorization", "proxy-authorization", "cookie"})
SECRET_RESPONSE_HEADERS = frozenset({"set-cookie"})

# Fields encoded into the meta JSON, in order (the bytes fields travel separately).
_META_FIELDS = (
    "request_id", "upstream_request_id", "started_at", "first_byte_at", "ended_at", "course", "student",
    "jti", "session_id", "user_agent", "method", "path", "model", "stream", "status", "error",
    "request_headers", "response_headers", "response_message", "usage", "weighted", "cost_usd", "estimated",
    "refused", "refused_reason", "period_start", "carried",
)


def empty_usage() -> dict[str, Any]:
    return {
        "input_tokens": 0, "cache_write_5m": 0, "cache_write_1h": 0, "cache_read": 0, "output_tokens": 0,
        "web_searches": 0, "estimated": False, "partial": False,
    }


@dataclass(slots=True, kw_only=True)
class TranscriptRecord:
    """Everything the gateway keeps about one request. Times are float epoch seconds."""

    request_id: str
    started_at: float
    ended_at: float
    upstream_request_id: str = ""
    first_byte_at: float | None = None
    course: str = ""
    student: str = ""
    jti: str = ""
    session_id: str = ""  # X-Claude-Code-Session-Id
    user_agent: str = ""
    method: str = "POST"
    path: str = "/v1/messages"  # with the query string
    model: str = ""
    stream: bool = False
    status: int = 0
    error: str | None = None
    request_headers: dict[str, str] = field(default_factory=dict)
    request_body: bytes = b""  # exactly what the client sent
    response_headers: dict[str, str] = field(default_factory=dict)
    response_body: bytes | None = None  # raw reply; for streams the raw SSE bytes
    response_message: dict[str, Any] | None = None  # the reassembled message
    usage: dict[str, Any] = field(default_factory=empty_usage)
    weighted: int = 0
    cost_usd: str | None = None  # decimal string; None when the model has no price
    estimated: bool = False
    refused: str = ""  # '' | 'quota' | 'leak' | 'inflight' | 'suspended' | ...
    refused_reason: str = ""
    period_start: float | None = None
    carried: int = 0
    # The proxy's parse of request_body (orjson.loads), when it has one: saves the writer a second parse. Never
    # spooled, never compared; only a hint (contentstore.split checks every byte against request_body).
    request_payload: dict[str, Any] | None = field(default=None, repr=False, compare=False)


_GET_META = operator.attrgetter(*_META_FIELDS)


def drop_secret_headers(headers: dict[str, str], secret: frozenset[str]) -> dict[str, str]:
    if secret.isdisjoint(map(str.lower, headers)):
        return headers
    return {name: value for name, value in headers.items() if name.lower() not in secret}


def _meta(record: TranscriptRecord) -> dict[str, Any]:
    meta = dict(zip(_META_FIELDS, _GET_META(record), strict=True))
    meta["request_headers"] = drop_secret_headers(record.request_headers, SECRET_REQUEST_HEADERS)
    meta["response_headers"] = drop_secret_headers(record.response_headers, SECRET_RESPONSE_HEADERS)
    return meta


_SURROGATE = re.compile("[\ud800-\udfff]")


def _clean(value: Any) -> Any:
    """Strings Postgres can store: lone surrogates (aiohttp's undecodable header bytes) and NUL become U+FFFD."""
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value).replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {_clean(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def storable(record: TranscriptRecord) -> tuple[list[bytes], TranscriptRecord]:
    """The record as spool payload pieces, and the record as Postgres will store it: secret headers dropped,
    lone surrogates (aiohttp's undecodable header bytes) and NUL characters replaced by U+FFFD."""
    meta = _meta(record)
    try:
        dumped = orjson.dumps(meta)
        clean = b"\\u0000" not in dumped  # Postgres text and jsonb refuse NUL
    except orjson.JSONEncodeError:  # lone surrogates, or a value orjson cannot serialise
        clean = False
    body = bytes(record.request_body)
    response = None if record.response_body is None else bytes(record.response_body)
    if not clean:
        dumped = orjson.dumps(_clean(meta), default=str)
        record = TranscriptRecord(request_body=body, response_body=response, **orjson.loads(dumped))
    elif meta["request_headers"] is not record.request_headers or meta["response_headers"] is not (
        record.response_headers
    ):
        record = dataclasses.replace(
            record, request_headers=meta["request_headers"], response_headers=meta["response_headers"])
    return pack(dumped, body, response), record


def pack(meta: bytes, body: bytes, response: bytes | None) -> list[bytes]:
    """Spool payload pieces (joined, they are one payload)."""
    prefix = _PREFIX.pack(len(meta), len(body), _NO_BODY if response is None else len(response))
    return [prefix, meta, body] if response is None else [prefix, meta, body, response]


def encode(record: TranscriptRecord) -> list[bytes]:
    """The record as spool payload pieces."""
    return storable(record)[0]


def unpack(payload: bytes) -> tuple[bytes, bytes, bytes | None]:
    """A payload's (meta JSON, request body, response body)."""
    meta_len, body_len, response_len = _PREFIX.unpack_from(payload, 0)
    at = _PREFIX.size
    end = at + meta_len + body_len + (0 if response_len == _NO_BODY else response_len)
    if end != len(payload):
        raise ValueError("transcript payload has trailing or missing bytes")
    meta = payload[at : at + meta_len]
    body = payload[at + meta_len : at + meta_len + body_len]
    response = None if response_len == _NO_BODY else payload[at + meta_len + body_len : end]
    return meta, body, response


def decode(payload: bytes) -> TranscriptRecord:
    meta, body, response = unpack(payload)
    return TranscriptRecord(request_body=body, response_body=response, **orjson.loads(meta))

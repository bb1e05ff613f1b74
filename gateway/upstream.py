"""The one client session to the Anthropic API, and what crosses the proxy in each direction."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import aiohttp
from multidict import CIMultiDict

from .settings import Settings

# RFC 9110 §7.6.1 hop-by-hop headers, plus what the proxy itself owns.
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection", "te",
    "trailer", "trailers", "transfer-encoding", "upgrade",
})
# Request headers never forwarded as received: credentials (replaced by the upstream key), the host, and
# accept-encoding (upstream is asked for identity so the tee can read the stream).
DROP_REQUEST = HOP_BY_HOP | {"host", "content-length", "x-api-key", "authorization", "accept-encoding", "cookie"}
# Response headers never passed back: hop-by-hop, lengths aiohttp recomputes, and the upstream's own quota view.
DROP_RESPONSE = HOP_BY_HOP | {"content-length", "server", "date"}
UPSTREAM_RATELIMIT_PREFIX = "anthropic-ratelimit-"
# Stored with transcripts only after these are removed.
SENSITIVE = frozenset({"x-api-key", "authorization", "cookie", "proxy-authorization"})


def request_headers(incoming: Mapping[str, str], upstream_key: str) -> CIMultiDict[str]:
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in incoming.items():
        if name.lower() not in DROP_REQUEST:
            out.add(name, value)
    out["x-api-key"] = upstream_key
    out["accept-encoding"] = "identity"
    return out


def response_headers(incoming: Iterable[tuple[str, str]]) -> CIMultiDict[str]:
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in incoming:
        lower = name.lower()
        if lower in DROP_RESPONSE or lower.startswith(UPSTREAM_RATELIMIT_PREFIX):
            continue
        out.add(name, value)
    return out


def safe_headers(headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Headers as stored and logged: credentials removed."""
    return {str(name): value for name, value in headers if name.lower() not in SENSITIVE}


def create_session(settings: Settings) -> aiohttp.ClientSession:
    # No total timeout: streams may legitimately run for many minutes. Connect and per-read timeouts only.
    timeout = aiohttp.ClientTimeout(
        total=None, connect=settings.upstream_connect_timeout_s, sock_read=settings.upstream_read_timeout_s
    )
    connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=30)
    return aiohttp.ClientSession(
        base_url=None, timeout=timeout, connector=connector, auto_decompress=False,
        skip_auto_headers=("User-Agent", "Accept-Encoding"), raise_for_status=False,
        # One session serves every student: a cookie upstream sets for one must never ride on another's request.
        cookie_jar=aiohttp.DummyCookieJar(),
    )

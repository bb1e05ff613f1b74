"""A fake Anthropic upstream for benchmarks, run as its own process on a loopback port.

It answers ``POST /v1/messages`` like the real API: a streamed reply (``message_start``, a text block of N
``content_block_delta`` events, ``message_delta`` with usage, ``message_stop``; one write per event, an optional
delay between events) or, for ``"stream": false``, one JSON message holding the same text. Everything that can be
is built once: the only per-request work is reading the body, one small ``message_start`` frame and the writes,
so the fake costs as little CPU as an aiohttp server can (the gateway's own ``gateway.fakeupstream.FakeUpstream``,
which records every request for tests, can be served instead with ``--impl gateway``).

The stream shape comes from the command line and can be overridden per request with headers (which the gateway
forwards unchanged): ``x-bench-deltas`` (number of deltas), ``x-bench-delay-ms`` (delay between events) and
``x-bench-delta-bytes`` (text per delta).

Usage: python -m bench.fake_upstream_server --port 9100 [--deltas 50] [--delay-ms 0] [--delta-bytes 40]
       [--key sk-ant-bench] [--impl lean|gateway]
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import itertools
import os
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

DEFAULT_KEY = "sk-ant-api03-bench-fake-upstream-key"
MODEL = "claude-opus-5-5"
WORDS = ("the ", "test ", "fixture ", "passes ", "now; ", "let ", "me ", "check ", "the ", "next ", "file. ")


def frame(event: str, data: dict[str, Any]) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def delta_text(size: int, index: int) -> str:
    words = itertools.cycle(WORDS[index % len(WORDS):] + WORDS[: index % len(WORDS)])
    out = ""
    while len(out) < size:
        out += next(words)
    return out[:size]


@dataclass(frozen=True)
class Shape:
    deltas: int = 50
    delay_s: float = 0.0
    delta_bytes: int = 40


@dataclass
class Prebuilt:
    """The frames of one stream shape that do not depend on the request."""

    head: bytes  # content_block_start + ping
    deltas: list[bytes]
    tail_frames: list[bytes]  # content_block_stop, message_delta, message_stop
    text: str
    output_tokens: int


def _usage(input_tokens: int, output_tokens: int) -> dict[str, Any]:
    return {"input_tokens": input_tokens, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
            "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
            "output_tokens": output_tokens, "service_tier": "standard"}


def prebuild(deltas: int, delta_bytes: int) -> Prebuilt:
    texts = [delta_text(delta_bytes, i) for i in range(deltas)]
    output_tokens = max(1, sum(len(t) for t in texts) // 4)
    head = frame("content_block_start", {"type": "content_block_start", "index": 0,
                                         "content_block": {"type": "text", "text": ""}})
    head += frame("ping", {"type": "ping"})
    delta_frames = [frame("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                  "delta": {"type": "text_delta", "text": t}}) for t in texts]
    tail_frames = [
        frame("content_block_stop", {"type": "content_block_stop", "index": 0}),
        frame("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                                "usage": {"output_tokens": output_tokens}}),
        frame("message_stop", {"type": "message_stop"}),
    ]
    return Prebuilt(head, delta_frames, tail_frames, "".join(texts), output_tokens)


def wants_stream(body: bytes) -> bool:
    """``"stream": true`` in a JSON body, without parsing it (the fake must stay cheap for 300 KB bodies)."""
    return b'"stream":true' in body or b'"stream": true' in body


@dataclass
class BenchUpstream:
    api_key: str = DEFAULT_KEY
    shape: Shape = field(default_factory=Shape)
    _built: dict[tuple[int, int], Prebuilt] = field(default_factory=dict)
    _ids: itertools.count[int] = field(default_factory=itertools.count)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/messages", self.messages)
        app.router.add_post("/v1/messages/count_tokens", self.count_tokens)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/healthz", self.healthz)
        return app

    def _prebuilt(self, deltas: int, delta_bytes: int) -> Prebuilt:
        key = (deltas, delta_bytes)
        built = self._built.get(key)
        if built is None:
            built = self._built[key] = prebuild(deltas, delta_bytes)
        return built

    def _shape(self, request: web.Request) -> Shape:
        headers = request.headers
        try:
            return Shape(
                deltas=max(0, min(100_000, int(headers.get("x-bench-deltas", self.shape.deltas)))),
                delay_s=max(0.0, min(10.0, float(headers.get("x-bench-delay-ms", self.shape.delay_s * 1e3)) / 1e3)),
                delta_bytes=max(1, min(65_536, int(headers.get("x-bench-delta-bytes", self.shape.delta_bytes)))),
            )
        except ValueError:
            return self.shape

    def _headers(self) -> dict[str, str]:
        return {"request-id": f"req_bench_{os.getpid()}_{next(self._ids)}",
                "anthropic-ratelimit-requests-limit": "4000", "anthropic-ratelimit-requests-remaining": "3999"}

    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def messages(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if request.headers.get("x-api-key") != self.api_key:
            return web.json_response(
                {"type": "error", "error": {"type": "authentication_error", "message": "invalid x-api-key"}},
                status=401, headers=self._headers())
        shape = self._shape(request)
        built = self._prebuilt(shape.deltas, shape.delta_bytes)
        input_tokens = max(1, len(body) // 4)
        message_id = f"msg_bench{os.getpid()}x{next(self._ids):012d}"
        if not wants_stream(body):
            reply = {"id": message_id, "type": "message", "role": "assistant", "model": MODEL,
                     "content": [{"type": "text", "text": built.text}], "stop_reason": "end_turn",
                     "stop_sequence": None, "usage": _usage(input_tokens, built.output_tokens)}
            return web.Response(body=orjson.dumps(reply), content_type="application/json", headers=self._headers())
        response = web.StreamResponse(headers={**self._headers(), "content-type": "text/event-stream",
                                               "cache-control": "no-cache"})
        await response.prepare(request)
        start = {"type": "message_start", "message": {
            "id": message_id, "type": "message", "role": "assistant", "model": MODEL, "content": [],
            "stop_reason": None, "stop_sequence": None, "usage": _usage(input_tokens, 1)}}
        delay = shape.delay_s
        await response.write(frame("message_start", start) + built.head)
        for chunk in itertools.chain(built.deltas, built.tail_frames):
            if delay:
                await asyncio.sleep(delay)  # the stream's pacing (what is being simulated), not synchronisation
            await response.write(chunk)
        await response.write_eof()
        return response

    async def count_tokens(self, request: web.Request) -> web.Response:
        body = await request.read()
        return web.json_response({"input_tokens": max(1, len(body) // 4)})

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"data": [{"type": "model", "id": MODEL, "display_name": "Claude Opus 5.5",
                                            "created_at": "2025-09-29T00:00:00Z"}], "has_more": False})


def gateway_fake_app(api_key: str, shape: Shape) -> web.Application:
    """The tests' fake (``gateway.fakeupstream.FakeUpstream``) with recording off, plus ``/healthz``."""
    from gateway.fakeupstream import FakeUpstream

    fake = FakeUpstream(api_key, deltas=shape.deltas, delta_delay_s=shape.delay_s)
    fake.record = False
    app = fake.app()

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app.router.add_get("/healthz", healthz)
    return app


def loopback(host: str) -> str:
    if not ipaddress.ip_address(host).is_loopback:
        raise argparse.ArgumentTypeError(f"{host} is not a loopback address")
    return host


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", type=loopback, default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--deltas", type=int, default=50)
    parser.add_argument("--delay-ms", type=float, default=0.0)
    parser.add_argument("--delta-bytes", type=int, default=40)
    parser.add_argument("--key", default=DEFAULT_KEY)
    parser.add_argument("--impl", choices=["lean", "gateway"], default="lean")
    args = parser.parse_args()
    shape = Shape(args.deltas, args.delay_ms / 1e3, args.delta_bytes)
    app = BenchUpstream(args.key, shape).app() if args.impl == "lean" else gateway_fake_app(args.key, shape)
    web.run_app(app, host=args.host, port=args.port, access_log=None, print=None, backlog=4096)


if __name__ == "__main__":
    main()

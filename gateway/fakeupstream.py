"""A local stand-in for the Anthropic API: used by the tests, ``gateway demo`` and ``bench/``.

It records what it was sent (so tests can assert the real key arrived and the virtual key never did) and answers
either with scripted responses (queued by a test) or with a small deterministic default message.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

Event = tuple[str, dict[str, Any]]


def sse_frame(event: str, data: dict[str, Any]) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


@dataclass
class Scripted:
    """One canned answer. ``events`` makes a stream; ``body`` a JSON reply; ``raw`` exact bytes."""

    status: int = 200
    events: list[Event] | None = None
    body: dict[str, Any] | None = None
    raw: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0  # between stream events
    gate: asyncio.Event | None = None  # wait for this before sending anything after the headers
    gate_after: int = 0  # ... after this many events have been sent
    drop_after: int | None = None  # close the connection abruptly after this many events


@dataclass
class Seen:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    sent: bytearray = field(default_factory=bytearray)
    disconnected: bool = False
    finished: bool = False


def usage(
    input_tokens: int = 10,
    output_tokens: int = 1,
    cache_write: int = 0,
    cache_read: int = 0,
    cache_write_1h: int = 0,
) -> dict[str, Any]:
    return {
        "input_tokens": input_tokens,
        "cache_creation_input_tokens": cache_write + cache_write_1h,
        "cache_read_input_tokens": cache_read,
        "cache_creation": {"ephemeral_5m_input_tokens": cache_write, "ephemeral_1h_input_tokens": cache_write_1h},
        "output_tokens": output_tokens,
        "service_tier": "standard",
    }


def message_json(
    text: str, *, model: str = "claude-opus-5-5", usage_: dict[str, Any] | None = None,
    content: list[dict[str, Any]] | None = None, stop_reason: str = "end_turn",
) -> dict[str, Any]:
    return {
        "id": "msg_" + uuid.uuid4().hex[:24],
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content if content is not None else [{"type": "text", "text": text}],
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": usage_ or usage(output_tokens=max(1, len(text) // 4)),
    }


def text_stream(
    pieces: Iterable[str], *, model: str = "claude-opus-5-5", start_usage: dict[str, Any] | None = None,
    output_tokens: int | None = None,
) -> list[Event]:
    """The event sequence of a streamed text reply."""
    pieces = list(pieces)
    start = start_usage or usage(output_tokens=1)
    msg = message_json("", model=model, usage_=start, content=[])
    msg["stop_reason"] = None
    events: list[Event] = [
        ("message_start", {"type": "message_start", "message": msg}),
        ("content_block_start", {"type": "content_block_start", "index": 0,
                                 "content_block": {"type": "text", "text": ""}}),
        ("ping", {"type": "ping"}),
    ]
    for piece in pieces:
        events.append(("content_block_delta", {"type": "content_block_delta", "index": 0,
                                               "delta": {"type": "text_delta", "text": piece}}))
    out = output_tokens if output_tokens is not None else max(1, sum(len(p) for p in pieces) // 4)
    events += [
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                           "usage": {"output_tokens": out}}),
        ("message_stop", {"type": "message_stop"}),
    ]
    return events


def tool_use_stream(name: str, tool_input: dict[str, Any], *, model: str = "claude-opus-5-5") -> list[Event]:
    msg = message_json("", model=model, usage_=usage(output_tokens=1), content=[])
    msg["stop_reason"] = None
    raw = orjson.dumps(tool_input).decode()
    half = len(raw) // 2
    tool_id = "toolu_" + uuid.uuid4().hex[:24]
    return [
        ("message_start", {"type": "message_start", "message": msg}),
        ("content_block_start", {"type": "content_block_start", "index": 0,
                                 "content_block": {"type": "tool_use", "id": tool_id, "name": name, "input": {}}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "input_json_delta", "partial_json": raw[:half]}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "input_json_delta", "partial_json": raw[half:]}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                           "usage": {"output_tokens": 12}}),
        ("message_stop", {"type": "message_stop"}),
    ]


class FakeUpstream:
    """An aiohttp app that looks enough like the Anthropic API for the gateway's tests and demo."""

    def __init__(self, api_key: str = "sk-ant-api03-fake-upstream-key", *, deltas: int = 5,
                 delta_delay_s: float = 0.0) -> None:
        self.api_key = api_key
        self.deltas = deltas
        self.delta_delay_s = delta_delay_s
        self.script: deque[Scripted] = deque()
        self.seen: list[Seen] = []
        self.record = True

    def queue(self, *answers: Scripted) -> None:
        self.script.extend(answers)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/messages", self._messages)
        app.router.add_post("/v1/messages/count_tokens", self._count_tokens)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/v1/models/{model_id}", self._model)
        return app

    async def _record(self, request: web.Request) -> Seen:
        body = await request.read()
        headers = {str(k): v for k, v in request.headers.items()}
        seen = Seen(request.method, request.path, request.query_string, headers, body)
        if self.record:
            self.seen.append(seen)
        return seen

    def _auth_error(self, request: web.Request) -> web.Response | None:
        if request.headers.get("x-api-key") != self.api_key:
            return web.json_response(
                {"type": "error", "error": {"type": "authentication_error", "message": "invalid x-api-key"}},
                status=401, headers={"request-id": "req_fake_" + uuid.uuid4().hex[:12]})
        return None

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        seen = await self._record(request)
        denied = self._auth_error(request)
        if denied is not None:
            return denied
        answer = self.script.popleft() if self.script else None
        try:
            payload = orjson.loads(seen.body)
        except orjson.JSONDecodeError:
            payload = {}
        stream = bool(payload.get("stream")) if isinstance(payload, dict) else False
        model = payload.get("model", "claude-opus-5-5") if isinstance(payload, dict) else "claude-opus-5-5"
        if answer is None:
            words = [f"word{i} " for i in range(self.deltas)]
            in_tokens = max(1, len(seen.body) // 4)
            if stream:
                answer = Scripted(events=text_stream(words, model=model, start_usage=usage(in_tokens, 1)),
                                  delay_s=self.delta_delay_s)
            else:
                answer = Scripted(body=message_json("".join(words), model=model,
                                                    usage_=usage(in_tokens, self.deltas)))
        return await self._answer(request, seen, answer)

    async def _answer(self, request: web.Request, seen: Seen, answer: Scripted) -> web.StreamResponse:
        headers = {"request-id": "req_fake_" + uuid.uuid4().hex[:12],
                   "anthropic-ratelimit-requests-limit": "4000", **answer.headers}
        if answer.events is None:
            if answer.raw is not None:
                body = answer.raw
            else:
                body = orjson.dumps(answer.body if answer.body is not None else message_json("ok"))
            headers.setdefault("content-type", "application/json")
            seen.sent += body
            seen.finished = True
            return web.Response(status=answer.status, body=body, headers=headers)
        response = web.StreamResponse(status=answer.status, headers={
            **headers, "content-type": "text/event-stream", "cache-control": "no-cache"})
        await response.prepare(request)
        try:
            for index, (name, data) in enumerate(answer.events):
                if answer.gate is not None and index == answer.gate_after:
                    await answer.gate.wait()
                if answer.drop_after is not None and index == answer.drop_after:
                    assert request.transport is not None
                    request.transport.close()
                    return response
                frame = sse_frame(name, data)
                await response.write(frame)
                seen.sent += frame
                if answer.delay_s:
                    await asyncio.sleep(answer.delay_s)
            await response.write_eof()
            seen.finished = True
        except (ConnectionResetError, asyncio.CancelledError):
            seen.disconnected = True
            raise
        return response

    async def _count_tokens(self, request: web.Request) -> web.Response:
        seen = await self._record(request)
        denied = self._auth_error(request)
        if denied is not None:
            return denied
        return web.json_response({"input_tokens": max(1, len(seen.body) // 4)})

    async def _models(self, request: web.Request) -> web.Response:
        await self._record(request)
        denied = self._auth_error(request)
        if denied is not None:
            return denied
        return web.json_response({"data": [{"type": "model", "id": "claude-opus-5-5",
                                            "display_name": "Claude Opus 5.5",
                                            "created_at": "2025-09-29T00:00:00Z"}],
                                  "has_more": False, "first_id": "claude-opus-5-5",
                                  "last_id": "claude-opus-5-5"})

    async def _model(self, request: web.Request) -> web.Response:
        await self._record(request)
        denied = self._auth_error(request)
        if denied is not None:
            return denied
        model_id = request.match_info["model_id"]
        if not model_id.startswith("claude-"):
            return web.json_response({"type": "error", "error": {"type": "not_found_error",
                                                                 "message": f"model: {model_id}"}}, status=404)
        return web.json_response({"type": "model", "id": model_id, "display_name": model_id,
                                  "created_at": "2025-09-29T00:00:00Z"})

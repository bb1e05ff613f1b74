"""The proxied endpoints: gate -> forward -> tee -> settle -> record, with the record written in ``finally``.

``/v1/messages`` is metered: the student's key and bucket are checked by one Lua call before anything is sent
upstream, the response (stream or not) is passed back as it arrives while a sans-IO meter reads the usage, and the
debit is settled -- and the transcript spooled -- before the client gets the stream's final event. count_tokens and
models are checked for key status only and never debited.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from . import appkeys
from .auth import student_claims
from .bodies import json_object, read_body
from .errors import (
    REQUEST_ID_KEY,
    GatewayError,
    UpstreamUnreachable,
    sse_error_event,
)
from .gate import Admission
from .keys import VirtualKeyClaims
from .ledger import BucketState, estimate_for
from .policy import Policy
from .pricing import PricingError
from .quota_headers import success_headers
from .sse import StreamMeter, meter_json_response
from .transcript import TranscriptRecord
from .upstream import request_headers, response_headers, safe_headers
from .usage import Usage

log = logging.getLogger(__name__)

CLIENT_GONE = (ConnectionResetError, aiohttp.ClientConnectionResetError)
UPSTREAM_FAILED = (aiohttp.ClientError, asyncio.TimeoutError, OSError)


@dataclass
class Exchange:
    """What one request did, filled in as it goes; becomes its transcript record."""

    request_id: str
    started_at: float
    method: str
    path: str
    request_headers: dict[str, str]
    session_id: str = ""  # X-Claude-Code-Session-Id: groups transcripts into sessions
    user_agent: str = ""
    claims: VirtualKeyClaims | None = None
    body: bytes = b""
    payload: dict[str, Any] | None = None
    model: str | None = None
    stream: bool = False
    status: int = 0
    error: str | None = None
    refused: str = ""
    refused_reason: str = ""
    upstream_request_id: str | None = None
    first_byte_at: float | None = None
    response_headers: dict[str, str] = field(default_factory=dict)
    response_body: bytes | None = None
    response_message: dict[str, Any] | None = None
    usage: Usage = field(default_factory=Usage)
    weighted: int = 0
    cost_usd: str | None = None
    inference_geo: str | None = None  # where inference ran, from the response's usage
    state: BucketState | None = None
    recorded: bool = False


def is_quota_probe(payload: dict[str, Any]) -> bool:
    """Claude Code's start-up probe: non-streamed, max_tokens 1, a single user message saying ``quota``."""
    if payload.get("stream") or payload.get("max_tokens") != 1:
        return False
    messages = payload.get("messages")
    if not isinstance(messages, list) or len(messages) != 1 or not isinstance(messages[0], dict):
        return False
    content = messages[0].get("content")
    if isinstance(content, list) and len(content) == 1 and isinstance(content[0], dict):
        content = content[0].get("text")
    return messages[0].get("role") == "user" and content == "quota"


class _RelayResponse(web.StreamResponse):
    """A streamed reply whose status line and headers leave in the same write as the first body bytes (what
    ``web.Response`` does), not in a write of their own at ``prepare()``: one send() and one client wake-up
    fewer per stream."""

    _send_headers_immediately = False


class Proxy:
    """The request handlers. Holds nothing per request; everything it uses comes from the app."""

    def __init__(self, app: web.Application) -> None:
        self.app = app

    # -- shared steps -------------------------------------------------------------------------------------

    def _exchange(self, request: web.Request) -> Exchange:
        return Exchange(
            request_id=request[REQUEST_ID_KEY], started_at=time.time(), method=request.method,
            path=request.path_qs, request_headers=safe_headers(request.headers.items()),
            session_id=request.headers.get("x-claude-code-session-id", ""),
            user_agent=request.headers.get("user-agent", ""),
        )

    def _upstream_url(self, request: web.Request) -> str:
        return self.app[appkeys.SETTINGS].upstream_url.rstrip("/") + request.path_qs

    def _weigh(self, exchange: Exchange, policy: Policy) -> None:
        exchange.weighted = policy.weights.weighted(exchange.model, exchange.usage)
        if exchange.model:
            try:
                exchange.cost_usd = str(self.app[appkeys.PRICES].cost_usd(
                    exchange.model, exchange.usage,
                    inference_geo=exchange.inference_geo or (exchange.payload or {}).get("inference_geo")))
            except PricingError:
                log.error("no price for model %r: cost not recorded (add it to gateway/data/prices.toml)",
                          exchange.model)
                self.app[appkeys.METRICS].unknown_model(exchange.model)

    def _record(self, exchange: Exchange) -> None:
        """Spool the transcript (synchronous, fast). Called once, before the response's last bytes leave."""
        if exchange.recorded or exchange.claims is None:
            return
        exchange.recorded = True
        state = exchange.state
        record = TranscriptRecord(
            request_id=exchange.request_id, upstream_request_id=exchange.upstream_request_id or "",
            started_at=exchange.started_at, first_byte_at=exchange.first_byte_at, ended_at=time.time(),
            course=exchange.claims.course, student=exchange.claims.student, jti=exchange.claims.jti,
            session_id=exchange.session_id, user_agent=exchange.user_agent,
            method=exchange.method, path=exchange.path, model=exchange.model or "", stream=exchange.stream,
            status=exchange.status, error=exchange.error, request_headers=exchange.request_headers,
            request_body=exchange.body, request_payload=exchange.payload,
            response_headers=exchange.response_headers,
            response_body=exchange.response_body, response_message=exchange.response_message,
            usage=exchange.usage.to_dict(), weighted=exchange.weighted, cost_usd=exchange.cost_usd,
            estimated=exchange.usage.estimated, refused=exchange.refused, refused_reason=exchange.refused_reason,
            period_start=float(state.period_start) if state is not None else None,
            carried=state.carried if state is not None else 0,
        )
        try:
            self.app[appkeys.WRITER].submit(record)
        except Exception:  # the writer counts and logs; a transcript failure never fails the response
            log.exception("could not spool the transcript of %s", exchange.request_id)
        self.app[appkeys.METRICS].observe_exchange(exchange, record.ended_at)
        log.info("request", extra={"fields": {
            "request_id": exchange.request_id, "upstream_request_id": record.upstream_request_id,
            "course": record.course, "student": record.student, "session_id": record.session_id,
            "path": exchange.path, "status": exchange.status, "model": record.model, "stream": exchange.stream,
            "ms": round((record.ended_at - exchange.started_at) * 1000, 1),
            "ttfb_ms": round((exchange.first_byte_at - exchange.started_at) * 1000, 1)
            if exchange.first_byte_at else None,
            "weighted": exchange.weighted, "estimated": exchange.usage.estimated, "refused": exchange.refused,
            "error": (exchange.error or "")[:200] or None,
        }})

    async def _finish(self, exchange: Exchange, policy: Policy | None, admission: Admission | None) -> None:
        """Settle the debit (if admitted and not yet settled) and record. Idempotent; runs in ``finally``."""
        if admission is not None and policy is not None and exchange.claims is not None and not exchange.recorded:
            self._weigh(exchange, policy)
            state = await self.app[appkeys.GATE].settle(
                exchange.claims, policy, exchange.request_id, exchange.weighted, admission)
            exchange.state = state or exchange.state
        self._record(exchange)

    # -- handlers ---------------------------------------------------------------------------------------------

    async def messages(self, request: web.Request) -> web.StreamResponse:
        exchange = self._exchange(request)
        policy: Policy | None = None
        admission: Admission | None = None
        try:
            settings = self.app[appkeys.SETTINGS]
            exchange.claims = claims = student_claims(request, self.app[appkeys.CODEC])
            exchange.body = await read_body(request, settings.max_body_bytes)
            policy = await self.app[appkeys.POLICIES].get(claims.course)
            # The reservation needs only the body's size: it goes to Redis first, and the body is parsed and
            # scanned while Redis answers. Nothing goes upstream before both are done. When the body is refused,
            # an admission that came through is settled with 0 by _finish.
            gate = self.app[appkeys.GATE]
            admitting = asyncio.ensure_future(gate.admit(
                claims, policy, exchange.request_id, estimate_for(len(exchange.body))))
            try:
                await asyncio.sleep(0)  # one loop turn: the admission submits its reserve to the ledger's pipeline
                await gate.sent()  # ... which writes it to Redis (a few loop turns): only then parse and scan
                exchange.payload = payload = json_object(exchange.body)
                model = payload.get("model")
                exchange.model = model if isinstance(model, str) else None
                exchange.stream = bool(payload.get("stream"))
                await self.app[appkeys.LEAK_GUARD].check(exchange)
            except BaseException:
                with contextlib.suppress(Exception):  # the body's refusal is the answer, not the gate's
                    admission = await asyncio.shield(admitting)
                raise
            admission = await admitting
            exchange.state = admission.state
            if settings.answer_quota_probe and is_quota_probe(payload) and admission.state is not None:
                return self._answer_probe(exchange)
            return await self._forward(request, exchange, policy, admission)
        except GatewayError as exc:
            exchange.status, exchange.error = exc.status, exc.message
            if exc.status == 429:
                exchange.refused = exchange.refused or "quota"
                exchange.refused_reason = exc.message
            elif exc.status == 403:
                exchange.refused = exchange.refused or "permission"
                exchange.refused_reason = exchange.refused_reason or exc.message
            raise
        except Exception as exc:  # rendered as a 500 api_error by the error middleware; recorded as such here
            exchange.status, exchange.error = 500, f"internal error: {type(exc).__name__}"
            raise
        finally:
            await asyncio.shield(self._finish(exchange, policy, admission))

    def _answer_probe(self, exchange: Exchange) -> web.Response:
        assert exchange.state is not None
        body = orjson.dumps({
            "id": "msg_gw_" + exchange.request_id[-24:], "type": "message", "role": "assistant",
            "model": exchange.model or "", "content": [{"type": "text", "text": "ok"}],
            "stop_reason": "max_tokens", "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        })
        headers = {"content-type": "application/json", "request-id": exchange.request_id,
                   **success_headers(exchange.state)}
        exchange.status, exchange.response_body, exchange.response_headers = 200, body, headers
        exchange.refused_reason = "quota probe answered by the gateway"
        return web.Response(status=200, body=body, headers=headers)

    async def _forward(self, request: web.Request, exchange: Exchange, policy: Policy,
                       admission: Admission) -> web.StreamResponse:
        session = self.app[appkeys.UPSTREAM]
        headers = request_headers(request.headers, self.app[appkeys.UPSTREAM_KEY])
        try:
            upstream = await session.request(
                request.method, self._upstream_url(request), data=exchange.body, headers=headers)
        except UPSTREAM_FAILED as exc:
            raise UpstreamUnreachable(f"The Anthropic API could not be reached: {type(exc).__name__}.") from None
        async with upstream:
            exchange.status = upstream.status
            exchange.upstream_request_id = upstream.headers.get("request-id")
            out_headers = response_headers(upstream.headers.items())
            if upstream.status == 200 and admission.state is not None:
                out_headers.update(success_headers(admission.state))
            exchange.response_headers = {str(k): v for k, v in out_headers.items()}
            if upstream.headers.get("content-type", "").startswith("text/event-stream"):
                return await self._stream(request, upstream, out_headers, exchange, policy, admission)
            try:
                body = await upstream.read()
            except UPSTREAM_FAILED as exc:
                raise UpstreamUnreachable(f"The Anthropic API connection failed: {type(exc).__name__}.") from None
            exchange.first_byte_at = time.time()
            exchange.response_body = body
            if upstream.status == 200:
                usage, model, message = meter_json_response(body)
                exchange.usage, exchange.response_message = usage, message
                geo = ((message or {}).get("usage") or {}).get("inference_geo")
                exchange.inference_geo = geo if isinstance(geo, str) else None
                exchange.model = model or exchange.model
            else:
                exchange.error = body[:2000].decode("utf-8", "replace")
            await self._finish(exchange, policy, admission)
            return web.Response(status=upstream.status, body=body, headers=out_headers)

    async def _stream(self, request: web.Request, upstream: aiohttp.ClientResponse, headers: Any,
                      exchange: Exchange, policy: Policy, admission: Admission) -> web.StreamResponse:
        response = _RelayResponse(status=upstream.status, headers=headers)
        meter = StreamMeter()
        raw = bytearray()
        client_gone = False
        try:
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                if exchange.first_byte_at is None:
                    exchange.first_byte_at = time.time()
                raw += chunk
                meter.feed(chunk)
                if meter.saw_stop:
                    # The final event: settle and spool first, so a completed stream is always billed and recorded.
                    self._stream_result(exchange, meter, raw, complete=True)
                    await self._finish(exchange, policy, admission)
                await response.write(chunk)
            complete = meter.saw_stop
        except CLIENT_GONE:
            client_gone, complete = True, False
            exchange.error = "client disconnected mid-stream"
        except asyncio.CancelledError:  # the client went away and aiohttp cancelled the handler
            exchange.error = "client disconnected mid-stream"
            if not exchange.recorded:
                self._stream_result(exchange, meter, raw, complete=False)
            raise
        except UPSTREAM_FAILED as exc:
            complete = False
            exchange.error = f"upstream stream failed: {type(exc).__name__}"
            try:
                await response.write(sse_error_event("overloaded_error", "Upstream connection lost; retry."))
            except CLIENT_GONE:
                client_gone = True
        if not exchange.recorded:
            self._stream_result(exchange, meter, raw, complete=complete)
        if meter.saw_error is not None and exchange.error is None:
            exchange.error = orjson.dumps(meter.saw_error).decode()
        if not client_gone:
            with contextlib.suppress(*CLIENT_GONE):
                await response.write_eof()
        return response

    @staticmethod
    def _stream_result(exchange: Exchange, meter: StreamMeter, raw: bytearray, *, complete: bool) -> None:
        meter.finish(complete=complete)
        exchange.usage = meter.usage
        exchange.model = meter.model or exchange.model
        exchange.inference_geo = meter.inference_geo
        exchange.response_message = meter.message()
        exchange.response_body = bytes(raw)

    async def passthrough(self, request: web.Request) -> web.StreamResponse:
        """count_tokens and models: key status checked, never debited, not transcribed."""
        claims = student_claims(request, self.app[appkeys.CODEC])
        await self.app[appkeys.GATE].check_key(claims)
        body = await read_body(request, self.app[appkeys.SETTINGS].max_body_bytes)
        if request.method == "POST":
            json_object(body)
        headers = request_headers(request.headers, self.app[appkeys.UPSTREAM_KEY])
        try:
            async with self.app[appkeys.UPSTREAM].request(
                request.method, self._upstream_url(request), data=body or None, headers=headers
            ) as upstream:
                payload = await upstream.read()
                return web.Response(status=upstream.status, body=payload,
                                    headers=response_headers(upstream.headers.items()))
        except UPSTREAM_FAILED as exc:
            raise UpstreamUnreachable(f"The Anthropic API could not be reached: {type(exc).__name__}.") from None

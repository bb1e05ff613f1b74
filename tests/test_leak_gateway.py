"""Issue 5 end to end: a secret in a prompt is blocked, the key suspended, the incident recorded and alerted."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from gateway import incidents, transcript_read
from tests.harness import Harness, running_gateway


def fresh_anthropic_key() -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    return "sk-ant-api03-" + "".join(secrets.choice(alphabet) for _ in range(93)) + "AA"


class Webhook:
    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.arrived = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        self.received.append(await request.json())
        self.arrived.set()
        return web.Response(status=204)


@pytest.fixture
async def leak_gateway(aiohttp_server, pg_dsn: str, redis_url: str, redis_prefix: str,  # type: ignore[no-untyped-def]
                       tmp_path) -> AsyncIterator[tuple[Harness, Webhook]]:
    hook = Webhook()
    app = web.Application()
    app.router.add_post("/alerts", hook.handle)
    hook_server = await aiohttp_server(app)
    async with running_gateway(aiohttp_server, pg_dsn=pg_dsn, redis_url=redis_url, redis_prefix=redis_prefix,
                               data_dir=tmp_path, alert_webhook_url=str(hook_server.make_url("/alerts"))) as h:
        yield h, hook


async def _send(h: Harness, key: str, messages: list[dict[str, Any]]) -> tuple[int, dict[str, Any], str]:
    async with aiohttp.ClientSession() as session, session.post(
        h.url + "/v1/messages?beta=true", headers={"authorization": f"Bearer {key}"},
        json={"model": "claude-opus-5-5", "max_tokens": 100, "stream": True, "messages": messages},
    ) as resp:
        body = await resp.read()
        return resp.status, orjson.loads(body) if resp.status != 200 else {}, resp.headers.get("request-id", "")


async def test_pasted_anthropic_key_blocks_suspends_records_and_alerts(leak_gateway: tuple[Harness, Webhook]) -> None:
    h, hook = leak_gateway
    secret = fresh_anthropic_key()
    status, body, request_id = await _send(h, h.key, [{"role": "user", "content": f"my key is {secret}, why 401?"}])
    assert status == 403 and body["error"]["type"] == "permission_error"
    message = body["error"]["message"]
    assert "Anthropic API key" in message and "suspended" in message and "contact" in message.lower()
    assert secret not in message and secret[13:40] not in message
    assert h.fake.seen == []  # never forwarded

    keys = await h.stores.keyring.keys_of(h.course, "alice")
    assert [k["status"] for k in keys] == ["suspended"]
    status, body, _ = await _send(h, h.key, [{"role": "user", "content": "hello again"}])
    assert status == 403 and "suspended" in body["error"]["message"]
    assert h.fake.seen == []

    found = await incidents.listing(h.stores.pool, h.course, open_only=True)
    assert [(i.student_id, i.rule_id, i.severity, i.request_id) for i in found] == [
        ("alice", "anthropic_api_key", "block", request_id)]
    assert secret not in found[0].excerpt

    await asyncio.wait_for(hook.arrived.wait(), timeout=10)
    alert = hook.received[0]
    assert alert["event"] == "leaked_secret" and alert["student_id"] == "alice" and alert["request_id"] == request_id
    assert secret not in orjson.dumps(hook.received).decode()

    # The transcript of the blocked request is stored, with the secret redacted.
    stored = await _wait_for_body(h, request_id)
    assert secret.encode() not in stored and b"[REDACTED:anthropic_api_key]" in stored

    change = await h.stores.keyring.set_status("convenor", h.course, "alice", "active", reason="rotated upstream key")
    assert change.jtis
    assert await incidents.listing(h.stores.pool, h.course, open_only=True) == []
    status, _, _ = await _send(h, h.key, [{"role": "user", "content": "hello"}])
    assert status == 200


async def test_split_and_escaped_and_other_students_key(leak_gateway: tuple[Harness, Webhook]) -> None:
    h, _ = leak_gateway
    secret = fresh_anthropic_key()
    bob = await h.issue_key("bob")
    status, _, _ = await _send(h, bob, [{"role": "user", "content": [
        {"type": "text", "text": "part one: " + secret[:40]}, {"type": "text", "text": secret[40:] + " end"}]}])
    assert status == 403

    carol = await h.issue_key("carol")
    dave = await h.issue_key("dave")
    escaped = orjson.dumps({"env": f"ANTHROPIC_API_KEY={fresh_anthropic_key()}\n"}).decode()
    status, _, _ = await _send(h, carol, [
        {"role": "user", "content": "run it"},
        {"role": "assistant",
         "content": [{"type": "tool_use", "id": "toolu_1", "name": "bash", "input": {"c": "env"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": escaped}]}])
    assert status == 403

    erin = await h.issue_key("erin")
    status, _, _ = await _send(h, erin, [{"role": "user", "content": f"use my friend's key: {dave})"}])
    assert status == 403
    statuses = {s: [k["status"] for k in await h.stores.keyring.keys_of(h.course, s)]
                for s in ("bob", "carol", "dave", "erin")}
    assert statuses == {"bob": ["suspended"], "carol": ["suspended"], "dave": ["suspended"], "erin": ["suspended"]}
    assert h.fake.seen == []


async def _wait_for_body(h: Harness, request_id: str) -> bytes:
    await h.flush()
    body = await transcript_read.request_body(h.stores.pool, request_id)
    assert body is not None, "the blocked request's transcript is missing"
    return body

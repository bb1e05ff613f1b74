"""Sentry events carry no key or prompt; one structured log line per request, without keys or bodies."""

from __future__ import annotations

import logging
import subprocess
import sys
import uuid
from typing import Any

import aiohttp
import orjson
import pytest
import sentry_sdk
from sentry_sdk.envelope import Envelope
from sentry_sdk.transport import Transport

from gateway import appkeys
from gateway.sentry import init_sentry
from tests.harness import Harness

PROMPT = f"my secret homework answer {uuid.uuid4().hex}"  # random: source context lines must not match
COOKIE = f"session={uuid.uuid4().hex}"


class CapturingTransport(Transport):
    def __init__(self, options: dict[str, Any] | None = None) -> None:
        super().__init__(options)
        self.envelopes: list[Envelope] = []

    def capture_envelope(self, envelope: Envelope) -> None:
        self.envelopes.append(envelope)


@pytest.fixture
def sentry_capture(gateway: Harness) -> Any:
    transport = CapturingTransport()
    init_sentry(gateway.settings, transport=transport, dsn="http://public@127.0.0.1:9/1")
    yield transport
    sentry_sdk.get_client().close()
    sentry_sdk.get_global_scope().set_client(None)  # back to no client at all (is_initialized() is False)


async def test_sentry_event_has_no_key_or_prompt(gateway: Harness, sentry_capture: CapturingTransport) -> None:
    h = gateway

    async def broken(course: str) -> None:
        raise RuntimeError("policy store exploded")

    h.app[appkeys.POLICIES].get = broken  # type: ignore[method-assign]
    async with aiohttp.ClientSession() as session, session.post(
        h.url + "/v1/messages?beta=true", headers={"authorization": f"Bearer {h.key}", "x-api-key": h.key,
                                                   "cookie": COOKIE},
        json={"model": "claude-opus-5-5", "max_tokens": 5, "messages": [{"role": "user", "content": PROMPT}]},
    ) as resp:
        body = orjson.loads(await resp.read())
    assert resp.status == 500 and body["error"]["type"] == "api_error"
    sentry_sdk.flush()
    assert sentry_capture.envelopes, "the error was not reported"
    raw = b"".join(e.serialize() for e in sentry_capture.envelopes)
    assert b"policy store exploded" in raw  # the event is the one we caused
    for secret in (h.key, h.fake.api_key, PROMPT, COOKIE):
        assert secret.encode() not in raw


def test_without_a_dsn_the_worker_never_imports_sentry() -> None:
    """The SDK and its urllib3 cost a worker ~5 MB; without a DSN nothing may import them (a fresh interpreter:
    this test process has imported the SDK itself)."""
    code = ("import sys, gateway.serve, gateway.app, gateway.proxy, gateway.errors, gateway.incidents, gateway.cli; "
            "from gateway.sentry import capture_exception, capture_message, init_sentry; "
            "from gateway.settings import Settings; "
            "assert not init_sentry(Settings(upstream_api_key='k', sentry_dsn=None)); "
            "capture_exception(RuntimeError('x')); capture_message('y'); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('sentry_sdk', 'urllib3')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


async def test_one_structured_log_line_per_request(gateway: Harness, caplog: pytest.LogCaptureFixture) -> None:
    h = gateway
    caplog.set_level(logging.INFO, logger="gateway.proxy")
    async with aiohttp.ClientSession() as session:
        for _ in range(3):
            async with session.post(h.url + "/v1/messages", headers={"x-api-key": h.key}, json={
                "model": "claude-opus-5-5", "max_tokens": 5, "stream": True,
                "messages": [{"role": "user", "content": PROMPT}]}) as resp:
                await resp.read()
    lines = [r for r in caplog.records if r.name == "gateway.proxy" and r.getMessage() == "request"]
    assert len(lines) == 3
    fields = lines[0].fields  # type: ignore[attr-defined]
    assert fields["student"] == "alice" and fields["status"] == 200 and fields["weighted"] > 0
    assert fields["ms"] >= fields["ttfb_ms"] >= 0
    dumped = orjson.dumps([r.fields for r in lines]).decode()  # type: ignore[attr-defined]
    assert h.key not in dumped and PROMPT not in dumped and h.fake.api_key not in dumped

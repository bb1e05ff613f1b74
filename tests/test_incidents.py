"""Incidents in the real Postgres (record, list, resolve, audited) and the Alerter (webhook, retries, Sentry)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import orjson
import pytest
import sentry_sdk
from aiohttp import web
from aiohttp.test_utils import TestServer
from sentry_sdk.envelope import Envelope
from sentry_sdk.transport import Transport

from gateway import incidents
from gateway.db import create_pool
from gateway.incidents import Alerter, NewIncident
from gateway.keys import KeyCodec
from gateway.leaks import Scanner, load_rules

RULES = load_rules()
ANTHROPIC = next(r for r in RULES if r.id == "anthropic_api_key").positive[0]
COURSE = "comp1000"


@pytest.fixture
async def pool(pg_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    created = await create_pool(pg_dsn, max_size=2)  # the gateway's own pool (JSON codecs)
    yield created
    await created.close()


@pytest.fixture
async def conn(pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Connection]:
    async with pool.acquire() as connection:
        yield connection


def new_incident(student: str, request_id: str, text: str = f"key={ANTHROPIC}", **kw: Any) -> NewIncident:
    (finding,) = Scanner(RULES, kw.pop("check", None)).scan_text(text, "messages[0].content[0]")
    return NewIncident.from_finding(finding, course_id=COURSE, student_id=student, jti=f"key_{student}",
                                    request_id=request_id)


async def test_incidents_round_trip(conn: asyncpg.Connection) -> None:
    recorded = await incidents.record(conn, [new_incident("alice", "req_1"), new_incident("bob", "req_2")])
    assert [(i.student_id, i.request_id, i.status, i.rule_id, i.severity) for i in recorded] == [
        ("alice", "req_1", "open", "anthropic_api_key", "block"),
        ("bob", "req_2", "open", "anthropic_api_key", "block")]
    alice = recorded[0]
    assert alice.kind == "Anthropic API key" and alice.location == "messages[0].content[0]"
    assert alice.jti == "key_alice" and alice.resolved_at is None
    assert ANTHROPIC not in alice.excerpt and alice.excerpt.startswith("key=sk-ant-api03-")

    assert [i.student_id for i in await incidents.listing(conn, COURSE, open_only=True)] == ["bob", "alice"]
    assert [i.student_id for i in await incidents.listing(conn, COURSE, student_id="alice")] == ["alice"]
    assert await incidents.listing(conn, "other-course") == []

    resolved = await incidents.resolve_student(conn, COURSE, "alice", actor="convenor", note="key rotated")
    assert [(i.incident_id, i.status, i.resolved_by, i.resolution) for i in resolved] == [
        (alice.incident_id, "resolved", "convenor", "key rotated")]
    assert resolved[0].resolved_at is not None
    assert [i.student_id for i in await incidents.listing(conn, COURSE, open_only=True)] == ["bob"]
    assert len(await incidents.listing(conn, COURSE)) == 2
    assert await incidents.resolve_student(conn, COURSE, "alice", actor="convenor") == []

    audit = await conn.fetch("SELECT actor, action, student_id, reason, details FROM audit_log ORDER BY audit_id")
    assert [dict(r) for r in audit] == [{"actor": "convenor", "action": "incidents.resolve", "student_id": "alice",
                                         "reason": "key rotated", "details": {"incidents": [alice.incident_id]}}]


async def test_resolve_one_incident(conn: asyncpg.Connection) -> None:
    (recorded,) = await incidents.record(conn, [new_incident("carol", "req_3")])
    done = await incidents.resolve(conn, recorded.incident_id, actor="admin")
    assert done is not None and done.status == "resolved" and done.resolved_by == "admin"
    assert await incidents.resolve(conn, recorded.incident_id, actor="admin") is None
    assert await conn.fetchval("SELECT count(*) FROM audit_log WHERE action = 'incidents.resolve'") == 1


async def test_a_leaked_gateway_key_records_whose_key_it_is(conn: asyncpg.Connection) -> None:
    codec = KeyCodec(b"incident-test-secret-0123456789abcdef012345", "class-token-gateway")
    victim = codec.issue(COURSE, "victim")
    (recorded,) = await incidents.record(
        conn, [new_incident("leaker", "req_4", f"try {victim.token}", check=codec.check)])
    assert recorded.rule_id == "gateway_virtual_key"
    assert (recorded.leaked_course_id, recorded.leaked_student_id, recorded.leaked_jti) == (
        COURSE, "victim", victim.claims.jti)
    payload = recorded.alert_payload()
    assert payload["event"] == "leaked_secret" and payload["action"] == "blocked"
    assert payload["leaked_student_id"] == "victim" and isinstance(payload["at"], str)
    assert victim.token not in orjson.dumps(payload).decode()


async def test_record_nothing_and_bad_severity(conn: asyncpg.Connection) -> None:
    assert await incidents.record(conn, []) == []
    bad = NewIncident(COURSE, "dave", "k", "req_5", "r", "K", "panic", "…")
    with pytest.raises(asyncpg.CheckViolationError):
        await incidents.record(conn, [bad])


async def test_resolving_through_a_pool(pool: asyncpg.Pool) -> None:
    await incidents.record(pool, [new_incident("erin", "req_6")])
    assert len(await incidents.resolve_student(pool, COURSE, "erin", actor="cli")) == 1
    assert await incidents.listing(pool, COURSE, open_only=True) == []


# ------------------------------------------------------------------------------------------------ alerts


class Webhook:
    """A local webhook: answers with the given statuses in turn (then 200), optionally holding each request."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.statuses = list(statuses or [])
        self.received: list[dict[str, Any]] = []
        self.arrived = asyncio.Event()
        self.gate: asyncio.Event | None = None

    async def handle(self, request: web.Request) -> web.Response:
        self.received.append(orjson.loads(await request.read()))
        assert request.headers["content-type"] == "application/json"
        self.arrived.set()
        if self.gate is not None:
            await self.gate.wait()
        return web.Response(status=self.statuses.pop(0) if self.statuses else 200)


@pytest.fixture
async def webhook_server(aiohttp_server: Callable[..., Awaitable[TestServer]]
                         ) -> Callable[[Webhook], Awaitable[str]]:
    async def start(hook: Webhook) -> str:
        app = web.Application()
        app.router.add_post("/hook", hook.handle)
        server = await aiohttp_server(app)
        return str(server.make_url("/hook"))
    return start


async def test_alerts_are_delivered_as_json(webhook_server: Callable[[Webhook], Awaitable[str]]) -> None:
    hook = Webhook()
    alerter = Alerter(await webhook_server(hook), backoff_s=0.001)
    await alerter.start()
    alerter.submit({"event": "leaked_secret", "incident_id": 1})
    await alerter.drain()
    assert hook.received == [{"event": "leaked_secret", "incident_id": 1}]
    assert (alerter.delivered, alerter.failed, alerter.retries) == (1, 0, 0)
    await alerter.close()


async def test_a_failing_webhook_is_retried(webhook_server: Callable[[Webhook], Awaitable[str]]) -> None:
    hook = Webhook([500, 503])
    alerter = Alerter(await webhook_server(hook), backoff_s=0.001)
    await alerter.start()
    alerter.submit({"n": 1})
    await alerter.drain()
    assert hook.received == [{"n": 1}] * 3
    assert (alerter.delivered, alerter.failed, alerter.retries) == (1, 0, 2)
    await alerter.close()


async def test_a_refused_alert_is_not_retried(webhook_server: Callable[[Webhook], Awaitable[str]]) -> None:
    hook = Webhook([400])
    alerter = Alerter(await webhook_server(hook), backoff_s=0.001)
    await alerter.start()
    alerter.submit({"n": 1})
    await alerter.drain()
    assert len(hook.received) == 1 and (alerter.delivered, alerter.failed) == (0, 1)
    await alerter.close()


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/hook"


async def test_a_dead_webhook_gives_up_after_the_last_attempt() -> None:
    alerter = Alerter(closed_port_url(), max_attempts=3, backoff_s=0.001)
    await alerter.start()
    alerter.submit({"n": 1})  # a plain function, not a coroutine: it cannot wait on the network
    await alerter.drain()
    assert (alerter.delivered, alerter.failed, alerter.retries) == (0, 1, 2)
    await alerter.close()


async def test_a_stuck_webhook_fills_the_bounded_queue_and_the_oldest_alerts_are_dropped(
        webhook_server: Callable[[Webhook], Awaitable[str]]) -> None:
    hook = Webhook()
    hook.gate = asyncio.Event()
    alerter = Alerter(await webhook_server(hook), queue_size=2, backoff_s=0.001)
    await alerter.start()
    alerter.submit({"n": 1})
    await hook.arrived.wait()  # alert 1 is in flight, held by the webhook
    for n in range(2, 6):
        alerter.submit({"n": n})
    assert alerter.dropped == 2  # 2 and 3 made room for 4 and 5
    hook.gate.set()
    await alerter.drain()
    assert [r["n"] for r in hook.received] == [1, 4, 5]
    assert alerter.delivered == 3
    await alerter.close()


async def test_close_does_not_hang_on_a_stuck_webhook(webhook_server: Callable[[Webhook], Awaitable[str]]) -> None:
    hook = Webhook()
    hook.gate = asyncio.Event()
    alerter = Alerter(await webhook_server(hook))
    await alerter.start()
    alerter.submit({"n": 1})
    await hook.arrived.wait()
    await alerter.close(timeout_s=0.01)
    assert alerter.delivered == 0
    hook.gate.set()


class CapturingTransport(Transport):
    def __init__(self, options: dict[str, Any] | None = None) -> None:
        super().__init__(options)
        self.events: list[dict[str, Any]] = []

    def capture_envelope(self, envelope: Envelope) -> None:
        event = envelope.get_event()
        if event is not None:
            self.events.append(dict(event))


async def test_alerts_go_to_sentry_when_it_is_initialised() -> None:
    client = sentry_sdk.Client(dsn="https://public@sentry.invalid/1", transport=CapturingTransport,
                               default_integrations=False)
    transport = client.transport
    assert isinstance(transport, CapturingTransport)
    with sentry_sdk.isolation_scope() as scope:
        scope.set_client(client)
        alerter = Alerter(None)  # Sentry only, no webhook
        await alerter.start()
        alerter.submit({"summary": "Leaked secret (Anthropic API key) in a prompt from comp1000/alice",
                        "course_id": COURSE, "student_id": "alice", "rule_id": "anthropic_api_key",
                        "severity": "block"})
        await alerter.drain()
        await alerter.close()
    (event,) = transport.events
    assert event["level"] == "warning"
    assert event["message"] == "Leaked secret (Anthropic API key) in a prompt from comp1000/alice"
    assert event["tags"]["student_id"] == "alice" and event["tags"]["rule_id"] == "anthropic_api_key"
    assert not sentry_sdk.is_initialized()  # outside the scope: nothing left behind

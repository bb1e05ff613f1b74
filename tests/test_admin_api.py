"""Issue 6: the admin HTTP API (convenor tokens confined to their course, actions that reach a running gateway,
every action audited once, usage/quota/incidents read side, the OpenAPI document)."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from gateway import admin_tokens, appkeys, courses, incidents
from tests.harness import Harness, running_gateway

BOOTSTRAP = "bootstrap-admin-token-" + "y" * 20
MESSAGE = {"model": "claude-opus-5-5", "max_tokens": 10, "messages": [{"role": "user", "content": "x"}]}
OTHER = "comp9999"


@pytest.fixture
async def admin_gateway(aiohttp_server: Any, pg_dsn: str, redis_url: str, redis_prefix: str,
                        tmp_path: Path) -> AsyncIterator[Harness]:
    async with running_gateway(aiohttp_server, pg_dsn=pg_dsn, redis_url=redis_url, redis_prefix=redis_prefix,
                               data_dir=tmp_path, admin_token=BOOTSTRAP) as h:
        await courses.create(h.stores.pool, "test", OTHER, limit=100_000, period_seconds=7 * 86400)
        await h.issue_key("zed", OTHER)
        yield h


async def _call(h: Harness, method: str, path: str, token: str | None, body: Any = None,
                headers: dict[str, str] | None = None) -> tuple[int, Any, Any]:
    sent = {**({"authorization": f"Bearer {token}"} if token else {}), **(headers or {})}
    async with aiohttp.ClientSession() as session, session.request(
        method, h.url + path, headers=sent, data=orjson.dumps(body) if body is not None else None
    ) as resp:
        raw = await resp.read()
        ctype = resp.headers.get("content-type", "")
        data = orjson.loads(raw) if ctype.startswith("application/json") else raw.decode()
        return resp.status, data, resp.headers


async def _proxied(h: Harness, key: str) -> int:
    async with aiohttp.ClientSession() as session, session.post(
        h.url + "/v1/messages", json=MESSAGE, headers={"authorization": f"Bearer {key}"}
    ) as resp:
        await resp.read()
        return resp.status


def _course_routes(course: str) -> list[tuple[str, str, Any]]:
    base = f"/admin/courses/{course}"
    return [
        ("GET", base, None), ("GET", f"{base}/students", None), ("GET", f"{base}/quota", None),
        ("GET", f"{base}/usage", None), ("GET", f"{base}/usage?format=csv", None), ("GET", f"{base}/incidents", None),
        ("POST", f"{base}/students/zed/keys", {}), ("POST", f"{base}/students/zed/keys/suspend", {}),
        ("POST", f"{base}/students/zed/keys/reinstate", {}), ("POST", f"{base}/students/zed/keys/revoke", {}),
        ("POST", f"{base}/students/zed/grants", {"tokens": 1000, "reason": "r"}),
        ("GET", f"/admin/audit?course={course}", None),
    ]


async def test_convenor_token_gets_403_on_another_course(admin_gateway: Harness) -> None:
    h = admin_gateway
    mine = await admin_tokens.create(h.stores.pool, "test", h.course, label="convenor A")
    audit_before = await h.stores.pool.fetchval("SELECT count(*) FROM audit_log")
    for method, path, body in _course_routes(OTHER):
        status, data, headers = await _call(h, method, path, mine.token, body)
        assert status == 403, (method, path, status, data)
        assert data["error"]["type"] == "permission_error" and "request-id" in headers
    # Nothing happened to course B's student, and nothing was audited.
    assert await h.stores.pool.fetchval("SELECT count(*) FROM audit_log") == audit_before
    assert await h.stores.pool.fetchval("SELECT count(*) FROM api_keys WHERE course_id = $1", OTHER) == 1
    status, listed, _ = await _call(h, "GET", "/admin/courses", mine.token)
    assert status == 200 and [c["course_id"] for c in listed] == [h.course]
    status, entries, _ = await _call(h, "GET", "/admin/audit", mine.token)
    assert status == 200 and entries and {e["course"] for e in entries} == {h.course}
    # The university-level tokens see both.
    everyone = await admin_tokens.create(h.stores.pool, "test", None)
    for token in (everyone.token, BOOTSTRAP):
        status, listed, _ = await _call(h, "GET", "/admin/courses", token)
        assert status == 200 and sorted(c["course_id"] for c in listed) == sorted([h.course, OTHER])
        status, _, _ = await _call(h, "GET", f"/admin/courses/{OTHER}/usage", token)
        assert status == 200


async def test_unknown_revoked_and_student_tokens_are_401(admin_gateway: Harness) -> None:
    h = admin_gateway
    mine = await admin_tokens.create(h.stores.pool, "test", h.course)
    assert (await _call(h, "GET", "/admin/courses", mine.token))[0] == 200
    await admin_tokens.revoke(h.stores.pool, "test", mine.info.token_id)
    for token in (mine.token, "gwadm_not-a-token", h.key, None):
        status, data, _ = await _call(h, "GET", "/admin/courses", token)
        assert status == 401 and data["error"]["type"] == "authentication_error", token
    status, data, _ = await _call(h, "GET", "/admin/courses/nope/usage", BOOTSTRAP)
    assert status == 404 and data["error"]["type"] == "not_found_error"


async def test_actions_reach_the_gateway_and_are_audited_once(admin_gateway: Harness) -> None:
    h = admin_gateway
    mine = await admin_tokens.create(h.stores.pool, "test", h.course)
    actor = f"admin:{mine.info.token_id}"
    base = f"/admin/courses/{h.course}/students/dana"

    status, issued, headers = await _call(h, "POST", base + "/keys", mine.token,
                                          {"email": "dana@uni.edu", "group": "T3", "reason": "SSO first login"})
    assert status == 201 and issued["student"] == "dana" and issued["jti"]
    assert headers["cache-control"] == "no-store"
    key = issued["key"]
    assert await _proxied(h, key) == 200

    status, changed, _ = await _call(h, "POST", base + "/keys/suspend", mine.token, {"reason": "shared key"})
    assert status == 200 and changed == {"course": h.course, "student": "dana", "status": "suspended",
                                          "jtis": [issued["jti"]]}
    assert await _proxied(h, key) == 403
    status, again, _ = await _call(h, "POST", base + "/keys/suspend", mine.token, {"reason": "twice"})
    assert status == 200 and again["jtis"] == []  # nothing left to suspend: not audited

    status, changed, _ = await _call(h, "POST", base + "/keys/reinstate", mine.token, {"reason": "talked to them"})
    assert status == 200 and changed["jtis"] == [issued["jti"]] and changed["resolved_incidents"] == []
    assert await _proxied(h, key) == 200

    status, quota, _ = await _call(h, "GET", f"/admin/courses/{h.course}/quota?student=dana", mine.token)
    assert status == 200 and quota[0]["granted"] == 0
    used = quota[0]["used"]
    grant = {"tokens": "50k", "reason": "assignment 2 extension"}
    status, granted, _ = await _call(h, "POST", base + "/grants", mine.token, grant, {"idempotency-key": "g-1"})
    assert status == 201 and granted["tokens"] == 50_000 and not granted["duplicate"]
    status, replay, _ = await _call(h, "POST", base + "/grants", mine.token, grant, {"idempotency-key": "g-1"})
    assert status == 200 and replay["duplicate"] and replay["grant_id"] == granted["grant_id"]
    status, quota, _ = await _call(h, "GET", f"/admin/courses/{h.course}/quota?student=dana", mine.token)
    assert quota[0]["granted"] == 50_000 and quota[0]["remaining"] == quota[0]["limit"] + 50_000 - used

    status, changed, _ = await _call(h, "POST", base + "/keys/revoke", mine.token, {"reason": "left the course"})
    assert status == 200 and changed["status"] == "revoked"
    assert await _proxied(h, key) == 403

    rows = await h.stores.pool.fetch(
        "SELECT action, actor, reason FROM audit_log WHERE course_id = $1 AND student_id = 'dana' ORDER BY audit_id",
        h.course)
    assert [(r["action"], r["actor"]) for r in rows] == [
        ("key.issue", actor), ("key.suspend", actor), ("key.reinstate", actor), ("grant", actor),
        ("key.revoke", actor)]
    assert [r["reason"] for r in rows] == ["SSO first login", "shared key", "talked to them",
                                           "assignment 2 extension", "left the course"]
    assert await h.stores.pool.fetchval("SELECT count(*) FROM grants WHERE student_id = 'dana'") == 1
    status, entries, _ = await _call(h, "GET", "/admin/audit?student=dana&action=key", mine.token)
    assert [e["action"] for e in entries] == ["key.revoke", "key.reinstate", "key.suspend", "key.issue"]


async def test_bad_action_input(admin_gateway: Harness) -> None:
    h = admin_gateway
    base = f"/admin/courses/{h.course}/students"
    cases = [
        (base + "/alice/grants", {"tokens": 1000}, 400, "reason"),
        (base + "/alice/grants", {"tokens": "lots", "reason": "r"}, 400, "token amount"),
        (base + "/alice/grants", {"tokens": -5, "reason": "r"}, 400, "positive"),
        (base + "/ghost/grants", {"tokens": 5, "reason": "r"}, 404, "ghost"),
        (base + "/ghost/keys/suspend", {}, 404, "ghost"),
    ]
    for path, body, status, words in cases:
        got, data, _ = await _call(h, "POST", path, BOOTSTRAP, body)
        assert got == status and words in data["error"]["message"], (path, data)
    async with aiohttp.ClientSession() as session, session.post(
        h.url + base + "/alice/grants", data=b"[1, 2", headers={"authorization": f"Bearer {BOOTSTRAP}"}
    ) as resp:
        assert resp.status == 400 and "JSON" in (await resp.json())["error"]["message"]
    assert await h.stores.pool.fetchval("SELECT count(*) FROM grants") == 0


async def test_read_side_usage_students_incidents(admin_gateway: Harness) -> None:
    h = admin_gateway
    assert await _proxied(h, h.key) == 200
    await h.app[appkeys.WRITER].wait_idle(10)
    status, report, _ = await _call(h, "GET", f"/admin/courses/{h.course}/usage?by=student", BOOTSTRAP)
    assert status == 200 and [r["key"] for r in report["rows"]] == ["alice"]
    assert report["total"]["requests"] == 1 and report["total"]["weighted"] > 0
    status, text, headers = await _call(h, "GET", f"/admin/courses/{h.course}/usage?by=class&format=csv", BOOTSTRAP)
    assert status == 200 and headers["content-type"].startswith("text/csv")
    row = next(csv.DictReader(io.StringIO(text)))
    assert int(row["weighted"]) == report["total"]["weighted"]
    status, data, _ = await _call(h, "GET", f"/admin/courses/{h.course}/usage?by=week", BOOTSTRAP)
    assert status == 400 and data["error"]["type"] == "invalid_request_error"

    status, students, _ = await _call(h, "GET", f"/admin/courses/{h.course}/students", BOOTSTRAP)
    assert status == 200 and students == [{"student_id": "alice", "email": "", "name": "", "group": "",
                                           "enrolled": True, "active_keys": 1, "suspended_keys": 0,
                                           "revoked_keys": 0}]

    await incidents.record(h.stores.pool, [incidents.NewIncident(
        course_id=h.course, student_id="alice", jti="k", request_id="req_1", rule_id="aws-key", kind="AWS key",
        severity="block", excerpt="AKIA****")])
    status, found, _ = await _call(h, "GET", f"/admin/courses/{h.course}/incidents?open=true", BOOTSTRAP)
    assert status == 200 and [(i["student_id"], i["rule_id"], i["status"]) for i in found] == [
        ("alice", "aws-key", "open")]
    status, changed, _ = await _call(h, "POST", f"/admin/courses/{h.course}/students/alice/keys/reinstate",
                                     BOOTSTRAP, {"reason": "false positive"})
    assert status == 200 and changed["resolved_incidents"] == [found[0]["incident_id"]]
    status, found, _ = await _call(h, "GET", f"/admin/courses/{h.course}/incidents?open=1", BOOTSTRAP)
    assert found == []


async def test_openapi_document_describes_every_admin_route(admin_gateway: Harness) -> None:
    h = admin_gateway
    status, doc, _ = await _call(h, "GET", "/admin/openapi.json", None)
    assert status == 200 and doc["openapi"].startswith("3.1")
    routes = set()
    for resource in h.app.router.resources():
        info = resource.get_info()
        path = info.get("path") or info.get("formatter", "")
        if path.startswith("/admin"):
            for route in (r for r in resource if r.method != "HEAD"):  # HEAD comes with every GET
                routes.add((route.method.lower(), path.replace("{action:suspend|reinstate|revoke}", "{action}")))
    documented = {(m, p) for p, ops in doc["paths"].items() for m in ops if m in ("get", "post")}
    assert routes == documented
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            if method in ("get", "post"):
                assert op["responses"] and op["operationId"], (method, path)
    schemas = doc["components"]["schemas"]

    def refs(node: Any) -> set[str]:
        if isinstance(node, dict):
            found = {node["$ref"]} if "$ref" in node else set()
            return found.union(*(refs(v) for v in node.values()))
        if isinstance(node, list):
            return set().union(*(refs(v) for v in node))
        return set()

    for ref in refs(doc):
        _, _, section, name = ref.split("/")
        assert name in doc["components"][section], ref
    assert set(schemas["UsageRow"]["properties"]) >= {"weighted", "cost_usd", "limit_hits", "students_limited"}

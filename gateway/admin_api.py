"""The admin HTTP API under ``/admin``: what a dashboard or an SSO hand-off needs, with an admin bearer token.

A token for one course (``gateway admin-token create --course C``) sees and changes only that course: anything
else is 403 ``permission_error``. The bootstrap token (``GATEWAY_ADMIN_TOKEN``) and tokens created without a
course see every course. Every action is audited with ``actor = admin:<token_id>``. Errors are
:mod:`gateway.errors` types, rendered by the error middleware. The OpenAPI description is
``gateway/data/admin_openapi.json``, served at ``GET /admin/openapi.json``.

::

    GET  /admin/openapi.json
    GET  /admin/courses                                   courses the token can see
    GET  /admin/courses/{course}                          policy and counts
    GET  /admin/courses/{course}/students                 roster with key statuses
    GET  /admin/courses/{course}/quota                    buckets (as GET /quota with an admin token)
    GET  /admin/courses/{course}/usage                    usage report (json or csv)
    GET  /admin/courses/{course}/incidents                leaked-secret incidents
    POST /admin/courses/{course}/students/{student}/keys  issue a key (shown once)
    POST /admin/courses/{course}/students/{student}/keys/{suspend|reinstate|revoke}
    POST /admin/courses/{course}/students/{student}/grants
    GET  /admin/audit                                     the audit log
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from importlib.resources import files
from typing import Any

import orjson
from aiohttp import web

from . import admin_tokens, appkeys, audit_query, courses, grants, incidents
from .amounts import parse_amount
from .auth import AdminPrincipal, admin_principal
from .bodies import json_object
from .errors import AuthenticationFailed, InvalidRequest, NotFound, PermissionDenied
from .keyring import Keyring, KeyringError
from .quota_api import course_entries
from .usage_report import ReportError, render_csv, usage_report

OPENAPI_RESOURCE = ("data", "admin_openapi.json")
MAX_LIST = 1000

COURSE_EXISTS = "SELECT 1 FROM courses WHERE course_id = $1"
SELECT_STUDENT = "SELECT enrolled FROM students WHERE course_id = $1 AND student_id = $2"
SELECT_ROSTER = """
SELECT s.student_id, s.email, s.name, s.grp AS group, s.enrolled,
       count(k.jti) FILTER (WHERE k.status = 'active') AS active_keys,
       count(k.jti) FILTER (WHERE k.status = 'suspended') AS suspended_keys,
       count(k.jti) FILTER (WHERE k.status = 'revoked') AS revoked_keys
FROM students s LEFT JOIN api_keys k ON k.course_id = s.course_id AND k.student_id = s.student_id
WHERE s.course_id = $1 AND ($2::text IS NULL OR s.grp = $2) AND (s.enrolled OR $3)
GROUP BY s.course_id, s.student_id
ORDER BY s.student_id
"""
_STATUS = {"suspend": "suspended", "reinstate": "active", "revoke": "revoked"}


def openapi_document() -> bytes:
    resource = files("gateway")
    for part in OPENAPI_RESOURCE:
        resource = resource / part
    return resource.read_bytes()


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(data), content_type="application/json")


def _flag(value: str | None) -> bool:
    return (value or "").lower() in ("1", "true", "yes", "on")


def _limit(request: web.Request, default: int = 100) -> int:
    text = request.query.get("limit")
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise InvalidRequest(f"limit must be a whole number, not {text!r}.") from None
    if not 1 <= value <= MAX_LIST:
        raise InvalidRequest(f"limit must be between 1 and {MAX_LIST}.")
    return value


async def _body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    return json_object(raw) if raw.strip() else {}


def _text(body: dict[str, Any], name: str, *, max_len: int = 500) -> str:
    value = body.get(name, "")
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > max_len:
        raise InvalidRequest(f"{name!r} must be a string of at most {max_len} characters.")
    return value


def _tokens(body: dict[str, Any]) -> int:
    value = body.get("tokens")
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise InvalidRequest("'tokens' is required: a whole number or an amount like \"100k\".")
    if isinstance(value, int):
        return value
    try:
        return parse_amount(value)
    except ValueError as exc:
        raise InvalidRequest(f"'tokens': {exc}.") from None


class AdminApi:
    def __init__(self, app: web.Application) -> None:
        self.app = app
        self._openapi: bytes | None = None

    # -- auth -------------------------------------------------------------------------------------------------

    async def principal(self, request: web.Request) -> AdminPrincipal:
        settings = self.app[appkeys.SETTINGS]
        bootstrap = settings.admin_token.get_secret_value() if settings.admin_token else None
        admin = await admin_principal(request, self.app[appkeys.PG_POOL], bootstrap)
        if admin is None:
            raise AuthenticationFailed("An admin token is required: 'Authorization: Bearer <admin token>'.")
        return admin

    async def course(self, request: web.Request) -> tuple[AdminPrincipal, str]:
        """The caller and the ``{course}`` of the path: 403 if the token may not see it, 404 if it does not exist."""
        admin = await self.principal(request)
        course = request.match_info["course"]
        if not admin.can_see(course):
            raise PermissionDenied(f"This admin token cannot see course {course!r}.")
        if not await self.app[appkeys.PG_POOL].fetchval(COURSE_EXISTS, course):
            raise NotFound(f"No such course: {course!r}.")
        return admin, course

    async def student(self, request: web.Request) -> tuple[AdminPrincipal, str, str]:
        admin, course = await self.course(request)
        student = request.match_info["student"]
        if await self.app[appkeys.PG_POOL].fetchval(SELECT_STUDENT, course, student) is None:
            raise NotFound(f"No student {student!r} in course {course!r}.")
        return admin, course, student

    def keyring(self) -> Keyring:
        app = self.app
        return Keyring(app[appkeys.PG_POOL], app[appkeys.LEDGER], app[appkeys.CODEC])

    # -- read side --------------------------------------------------------------------------------------------

    async def openapi(self, request: web.Request) -> web.Response:
        if self._openapi is None:
            self._openapi = await asyncio.to_thread(openapi_document)
        return web.Response(body=self._openapi, content_type="application/json")

    async def list_courses(self, request: web.Request) -> web.Response:
        admin = await self.principal(request)
        rows = await courses.list_all(self.app[appkeys.PG_POOL])
        return _json([r for r in rows if admin.can_see(r["course_id"])])

    async def show_course(self, request: web.Request) -> web.Response:
        _, course = await self.course(request)
        pool = self.app[appkeys.PG_POOL]
        rows = [r for r in await courses.list_all(pool) if r["course_id"] == course]
        if not rows:
            raise NotFound(f"No such course: {course!r}.")
        return _json(rows[0])

    async def students(self, request: web.Request) -> web.Response:
        _, course = await self.course(request)
        rows = await self.app[appkeys.PG_POOL].fetch(
            SELECT_ROSTER, course, request.query.get("group"), _flag(request.query.get("include_dropped")))
        return _json([dict(r) for r in rows])

    async def quota(self, request: web.Request) -> web.Response:
        _, course = await self.course(request)
        return _json(await course_entries(self.app, course, group=request.query.get("group"),
                                          student=request.query.get("student")))

    async def usage(self, request: web.Request) -> web.Response:
        _, course = await self.course(request)
        q = request.query
        fmt = q.get("format", "json")
        if fmt not in ("json", "csv"):
            raise InvalidRequest(f"format must be json or csv, not {fmt!r}.")
        try:
            report = await usage_report(self.app[appkeys.PG_POOL], course, by=q.get("by", "student"),
                                        since=q.get("since"), until=q.get("until"), student=q.get("student"),
                                        group=q.get("group"))
        except ReportError as exc:
            raise InvalidRequest(f"{exc}.") from None
        if fmt == "csv":
            return web.Response(text=render_csv(report), content_type="text/csv", charset="utf-8")
        return _json(report.to_json())

    async def incidents(self, request: web.Request) -> web.Response:
        _, course = await self.course(request)
        found = await incidents.listing(self.app[appkeys.PG_POOL], course, open_only=_flag(request.query.get("open")),
                                        student_id=request.query.get("student"), limit=_limit(request, 200))
        return _json([i.to_json() for i in found])

    async def audit_log(self, request: web.Request) -> web.Response:
        admin = await self.principal(request)
        q = request.query
        course = q.get("course") or admin.course
        if course is not None and not admin.can_see(course):
            raise PermissionDenied(f"This admin token cannot see course {course!r}.")
        since = None
        if q.get("since"):
            try:
                since = datetime.fromisoformat(q["since"])
                since = since if since.tzinfo is not None else since.replace(tzinfo=UTC)
            except ValueError:
                raise InvalidRequest(f"since must be an ISO 8601 time, not {q['since']!r}.") from None
        found = await audit_query.entries(self.app[appkeys.PG_POOL], course=course, student=q.get("student"),
                                          action=q.get("action"), since=since, limit=_limit(request))
        return _json([audit_query.entry_json(e) for e in found])

    # -- actions ----------------------------------------------------------------------------------------------

    async def issue_key(self, request: web.Request) -> web.Response:
        admin, course = await self.course(request)
        student = request.match_info["student"]
        body = await _body(request)
        try:
            issued = await self.keyring().issue(
                admin.actor, course, student, email=_text(body, "email"), name=_text(body, "name"),
                group=_text(body, "group"), reason=_text(body, "reason"))
        except KeyringError as exc:
            raise InvalidRequest(f"{exc}.") from None
        response = _json({"course": course, "student": student, "jti": issued.claims.jti, "key": issued.token,
                          "issued_at": issued.claims.issued_at}, status=201)
        response.headers["cache-control"] = "no-store"  # the key is shown once
        return response

    async def key_status(self, request: web.Request) -> web.Response:
        admin, course, student = await self.student(request)
        action = request.match_info["action"]
        body = await _body(request)
        reason = _text(body, "reason")
        jti = _text(body, "jti") or None
        change = await self.keyring().set_status(admin.actor, course, student, _STATUS[action], reason=reason,
                                                 jti=jti)
        out: dict[str, Any] = {"course": course, "student": student, "status": change.status, "jtis": change.jtis}
        if action == "reinstate":
            out["resolved_incidents"] = change.resolved_incidents  # Keyring resolves them on reinstate
        return _json(out)

    async def grant(self, request: web.Request) -> web.Response:
        admin, course, student = await self.student(request)
        body = await _body(request)
        key = request.headers.get("idempotency-key") or _text(body, "idempotency_key", max_len=200) or None
        policy = await self.app[appkeys.POLICIES].get(course)
        try:
            done = await grants.grant(self.app[appkeys.PG_POOL], self.app[appkeys.LEDGER], policy, admin.actor,
                                      student, _tokens(body), _text(body, "reason"), idempotency_key=key)
        except grants.GrantError as exc:
            raise InvalidRequest(f"{exc}.") from None
        return _json(done.to_json(), status=200 if done.duplicate else 201)

    async def tokens(self, request: web.Request) -> web.Response:
        """``GET /admin/tokens``: the admin tokens the caller can see (never the tokens themselves)."""
        admin = await self.principal(request)
        found = await admin_tokens.listing(self.app[appkeys.PG_POOL], admin.course)
        return _json([t.to_json() for t in found])


def register_admin_routes(app: web.Application) -> None:
    api = AdminApi(app)
    router = app.router
    router.add_get("/admin/openapi.json", api.openapi)
    router.add_get("/admin/courses", api.list_courses)
    router.add_get("/admin/courses/{course}", api.show_course)
    router.add_get("/admin/courses/{course}/students", api.students)
    router.add_get("/admin/courses/{course}/quota", api.quota)
    router.add_get("/admin/courses/{course}/usage", api.usage)
    router.add_get("/admin/courses/{course}/incidents", api.incidents)
    router.add_post("/admin/courses/{course}/students/{student}/keys", api.issue_key)
    router.add_post("/admin/courses/{course}/students/{student}/keys/{action:suspend|reinstate|revoke}",
                    api.key_status)
    router.add_post("/admin/courses/{course}/students/{student}/grants", api.grant)
    router.add_get("/admin/audit", api.audit_log)
    router.add_get("/admin/tokens", api.tokens)

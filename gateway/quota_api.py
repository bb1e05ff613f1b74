"""``GET /quota``: a student's own bucket (student key), or a course's buckets (admin token)."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp import web

from . import appkeys
from .auth import admin_principal, looks_like_jwt, presented_token, student_claims
from .errors import AuthenticationFailed, InvalidRequest, PermissionDenied
from .ledger import BucketState
from .quota_headers import bucket_status, rfc3339

SELECT_STUDENTS = """
SELECT student_id, grp FROM students
WHERE course_id = $1 AND enrolled AND ($2::text IS NULL OR grp = $2) AND ($3::text IS NULL OR student_id = $3)
ORDER BY student_id
"""
SELECT_GROUP = "SELECT grp FROM students WHERE course_id = $1 AND student_id = $2"


def quota_entry(course: str, student: str, group: str, state: BucketState) -> dict[str, Any]:
    return {
        "course": course, "student": student, "group": group, "limit": state.limit, "carried": state.carried,
        "granted": state.granted, "used": state.used, "remaining": state.remaining,
        "period_start": rfc3339(state.period_start), "period_end": rfc3339(state.period_end),
        "resets_at": rfc3339(state.period_end), "limit_hits": state.limit_hits, "status": bucket_status(state),
    }


class QuotaApi:
    def __init__(self, app: web.Application) -> None:
        self.app = app

    async def handle(self, request: web.Request) -> web.Response:
        token = presented_token(request)
        if token is not None and looks_like_jwt(token):
            return await self._student(request)
        return await self._admin(request)

    async def _student(self, request: web.Request) -> web.Response:
        app = self.app
        claims = student_claims(request, app[appkeys.CODEC])
        await app[appkeys.GATE].check_key(claims)
        policy = await app[appkeys.POLICIES].get(claims.course)
        state = await app[appkeys.GATE].read(policy, claims.course, claims.student)
        group = await app[appkeys.PG_POOL].fetchval(SELECT_GROUP, claims.course, claims.student) or ""
        return web.Response(body=orjson.dumps(quota_entry(claims.course, claims.student, group, state)),
                            content_type="application/json")

    async def _admin(self, request: web.Request) -> web.Response:
        app = self.app
        settings = app[appkeys.SETTINGS]
        bootstrap = settings.admin_token.get_secret_value() if settings.admin_token else None
        admin = await admin_principal(request, app[appkeys.PG_POOL], bootstrap)
        if admin is None:
            raise AuthenticationFailed("A student key or an admin token is required.")
        course = request.query.get("course") or admin.course
        if not course:
            raise InvalidRequest("Say which course: /quota?course=C[&group=G][&student=S].")
        if not admin.can_see(course):
            raise PermissionDenied(f"This admin token cannot see course {course!r}.")
        entries = await course_entries(app, course, group=request.query.get("group"),
                                       student=request.query.get("student"))
        return web.Response(body=orjson.dumps(entries), content_type="application/json")


async def course_entries(app: web.Application, course: str, *, group: str | None = None,
                         student: str | None = None) -> list[dict[str, Any]]:
    """The quota entries of a course's enrolled students (optionally one group or one student)."""
    policy = await app[appkeys.POLICIES].get(course)
    rows = await app[appkeys.PG_POOL].fetch(SELECT_STUDENTS, course, group, student)
    gate = app[appkeys.GATE]
    states = await asyncio.gather(*(gate.read(policy, course, r["student_id"]) for r in rows))
    return [quota_entry(course, r["student_id"], r["grp"], s) for r, s in zip(rows, states, strict=True)]

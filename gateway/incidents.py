"""Leaked-secret incidents: recorded in Postgres, listed and resolved by the convenor, and sent out as alerts.

::

    proxy finds a secret ──> record(db, [NewIncident…]) ──> incidents table (secret never stored: redacted excerpt)
                         └─> Alerter.submit(payload)    ──> bounded queue ──> one background task:
                                                              Sentry (when initialised) + JSON POST to the
                                                              webhook, retried with exponential backoff

``submit`` never waits and never raises: when the queue is full the oldest alert is dropped (counted, logged),
so a dead or slow webhook can never hold up a request. ``gateway keys reinstate`` resolves a student's open
incidents with :func:`resolve_student`, which writes the audit entry in the same transaction.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, TypeAlias

import aiohttp
import asyncpg
import orjson

from . import audit
from .db import transaction
from .leaks import Finding
from .sentry import capture_message
from .tasks import stop_tasks

log = logging.getLogger(__name__)

Db: TypeAlias = asyncpg.Pool | asyncpg.Connection

_COLUMNS = """incident_id, at, course_id, student_id, jti, rule_id, kind, severity, excerpt, location, request_id,
    leaked_course_id, leaked_student_id, leaked_jti, status, resolved_at, resolved_by, resolution"""

INSERT = f"""
INSERT INTO incidents (course_id, student_id, jti, rule_id, kind, severity, excerpt, location, request_id,
                       leaked_course_id, leaked_student_id, leaked_jti)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                     $8::text[], $9::text[], $10::text[], $11::text[], $12::text[])
RETURNING {_COLUMNS}
"""
LIST = f"""
SELECT {_COLUMNS} FROM incidents
WHERE ($1::text IS NULL OR course_id = $1) AND ($2::text IS NULL OR student_id = $2)
  AND (NOT $3::boolean OR status = 'open')
ORDER BY incident_id DESC LIMIT $4
"""
RESOLVE_STUDENT = f"""
UPDATE incidents SET status = 'resolved', resolved_at = now(), resolved_by = $3, resolution = $4
WHERE course_id = $1 AND student_id = $2 AND status = 'open'
RETURNING {_COLUMNS}
"""
RESOLVE_ONE = f"""
UPDATE incidents SET status = 'resolved', resolved_at = now(), resolved_by = $2, resolution = $3
WHERE incident_id = $1 AND status = 'open'
RETURNING {_COLUMNS}
"""


@dataclass(frozen=True, slots=True)
class NewIncident:
    """What the proxy knows when it finds a secret in a request."""

    course_id: str
    student_id: str
    jti: str
    request_id: str
    rule_id: str
    kind: str
    severity: str
    excerpt: str
    location: str = ""
    leaked_course_id: str | None = None
    leaked_student_id: str | None = None
    leaked_jti: str | None = None

    @classmethod
    def from_finding(cls, finding: Finding, *, course_id: str, student_id: str, jti: str,
                     request_id: str) -> NewIncident:
        owner = finding.virtual_key
        return cls(
            course_id=course_id, student_id=student_id, jti=jti, request_id=request_id, rule_id=finding.rule_id,
            kind=finding.kind, severity=finding.severity, excerpt=finding.excerpt or finding.redacted,
            location=finding.location,
            leaked_course_id=owner.course if owner else None, leaked_student_id=owner.student if owner else None,
            leaked_jti=owner.jti if owner else None,
        )


@dataclass(frozen=True, slots=True)
class Incident:
    incident_id: int
    at: datetime
    course_id: str
    student_id: str
    jti: str
    rule_id: str
    kind: str
    severity: str
    excerpt: str
    location: str
    request_id: str
    leaked_course_id: str | None
    leaked_student_id: str | None
    leaked_jti: str | None
    status: str
    resolved_at: datetime | None
    resolved_by: str | None
    resolution: str

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Incident:
        return cls(**dict(row))

    def to_json(self) -> dict[str, Any]:
        """JSON-ready (times as ISO 8601): for ``gateway incidents --format json`` and the alert webhook."""
        out = asdict(self)
        out["at"] = self.at.isoformat()
        out["resolved_at"] = self.resolved_at.isoformat() if self.resolved_at else None
        return out

    def alert_payload(self) -> dict[str, Any]:
        """The JSON body POSTed to GATEWAY_ALERT_WEBHOOK_URL."""
        return {"event": "leaked_secret", "action": "blocked" if self.severity == "block" else "alert_only",
                **self.to_json()}

    def summary(self) -> str:
        action = "request blocked, key suspended" if self.severity == "block" else "alert only"
        return (f"Leaked secret ({self.kind}) in a prompt from {self.course_id}/{self.student_id} "
                f"[{self.rule_id}, {action}, request {self.request_id}]")


async def record(db: Db, incidents: Sequence[NewIncident]) -> list[Incident]:
    """Insert ``incidents`` (one round trip); returns the stored rows in order."""
    if not incidents:
        return []
    columns = [[getattr(i, name) for i in incidents] for name in (
        "course_id", "student_id", "jti", "rule_id", "kind", "severity", "excerpt", "location", "request_id",
        "leaked_course_id", "leaked_student_id", "leaked_jti")]
    rows = await db.fetch(INSERT, *columns)
    return [Incident.from_row(r) for r in rows]


async def listing(db: Db, course_id: str | None, *, open_only: bool = False, student_id: str | None = None,
                  limit: int = 200) -> list[Incident]:
    """Newest first; ``course_id=None`` lists every course."""
    rows = await db.fetch(LIST, course_id, student_id, open_only, limit)
    return [Incident.from_row(r) for r in rows]


async def resolve_student(db: Db, course_id: str, student_id: str, *, actor: str, note: str = "") -> list[Incident]:
    """Resolve every open incident of one student (``gateway keys reinstate``), audited in the same transaction."""
    async with transaction(db) as conn:
        rows = await conn.fetch(RESOLVE_STUDENT, course_id, student_id, actor, note)
        resolved = [Incident.from_row(r) for r in rows]
        if resolved:
            await audit.record(conn, actor, "incidents.resolve", course=course_id, student=student_id,
                               reason=note, details={"incidents": [i.incident_id for i in resolved]})
    return resolved


async def resolve(db: Db, incident_id: int, *, actor: str, note: str = "") -> Incident | None:
    """Resolve one open incident (None when there is no such open incident), audited."""
    async with transaction(db) as conn:
        row = await conn.fetchrow(RESOLVE_ONE, incident_id, actor, note)
        if row is None:
            return None
        incident = Incident.from_row(row)
        await audit.record(conn, actor, "incidents.resolve", course=incident.course_id,
                           student=incident.student_id, reason=note, details={"incidents": [incident_id]})
    return incident


# ------------------------------------------------------------------------------------------------ alerts


class Alerter:
    """Sends alerts off the request path: a bounded queue and one background task.

    Each alert goes to Sentry (``capture_message``, when the SDK is initialised) and, when ``webhook_url`` is set,
    as a JSON POST, retried on connection errors, timeouts, 429 and 5xx with exponential backoff
    (``backoff_s`` doubling up to ``max_backoff_s``, ``max_attempts`` tries in all).
    """

    def __init__(self, webhook_url: str | None, *, session: aiohttp.ClientSession | None = None,
                 queue_size: int = 1000, max_attempts: int = 6, backoff_s: float = 0.5, max_backoff_s: float = 30.0,
                 timeout_s: float = 10.0) -> None:
        if queue_size < 1 or max_attempts < 1:
            raise ValueError("queue_size and max_attempts must be at least 1")
        self._url = webhook_url
        self._session = session
        self._own_session = session is None
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=queue_size)
        self._max_attempts = max_attempts
        self._backoff_s = backoff_s
        self._max_backoff_s = max_backoff_s
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._task: asyncio.Task[None] | None = None
        self.delivered = 0
        self.failed = 0
        self.dropped = 0
        self.retries = 0

    async def start(self) -> None:
        if self._task is not None:
            return
        if self._url is not None and self._session is None:
            self._session = aiohttp.ClientSession()
        self._task = asyncio.create_task(self._run(), name="gateway-alerter")

    def submit(self, payload: Mapping[str, Any]) -> None:
        """Queue one alert. Returns at once; when the queue is full the oldest queued alert is dropped."""
        if self._queue.full():
            try:
                self._queue.get_nowait()
                self._queue.task_done()
            except asyncio.QueueEmpty:  # pragma: no cover - only one task consumes
                pass
            self.dropped += 1
            log.warning("alert queue full (%d): dropped the oldest alert (%d dropped so far)",
                        self._queue.maxsize, self.dropped)
        self._queue.put_nowait(dict(payload))

    async def drain(self) -> None:
        """Wait until every alert submitted so far has been delivered, given up on, or dropped."""
        await self._queue.join()

    async def close(self, timeout_s: float = 5.0) -> None:
        """Deliver what is queued (for at most ``timeout_s``), then stop the task and close an owned session."""
        if self._task is not None:
            try:
                await asyncio.wait_for(self.drain(), timeout_s)
            except TimeoutError:
                log.warning("alerter closing with %d alerts undelivered", self._queue.qsize())
            await stop_tasks(self._task)
            self._task = None
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def _run(self) -> None:
        while True:
            payload = await self._queue.get()
            try:
                self._to_sentry(payload)
                if self._url is not None:
                    await self._post(payload)
            except Exception:
                log.exception("alert delivery failed unexpectedly")
            finally:
                self._queue.task_done()

    @staticmethod
    def _to_sentry(payload: Mapping[str, Any]) -> None:
        capture_message(
            str(payload.get("summary") or f"Leaked secret ({payload.get('kind')}) in a prompt"),
            level="warning",
            tags={k: str(payload[k]) for k in ("course_id", "student_id", "rule_id", "severity") if k in payload},
            contexts={"incident": dict(payload)},
        )

    async def _post(self, payload: Mapping[str, Any]) -> None:
        assert self._session is not None and self._url is not None
        body = orjson.dumps(payload)
        for attempt in range(1, self._max_attempts + 1):
            try:
                async with self._session.post(self._url, data=body, timeout=self._timeout,
                                              headers={"content-type": "application/json"}) as response:
                    if 200 <= response.status < 300:
                        self.delivered += 1
                        return
                    problem = f"HTTP {response.status}"
                    retryable = response.status >= 500 or response.status == 429
            except (aiohttp.ClientError, TimeoutError) as exc:
                problem, retryable = f"{type(exc).__name__}: {exc}", True
            if not retryable or attempt == self._max_attempts:
                self.failed += 1
                log.error("alert webhook gave up after %d attempt(s): %s", attempt, problem)
                return
            self.retries += 1
            await asyncio.sleep(min(self._max_backoff_s, self._backoff_s * 2 ** (attempt - 1)))

"""What happens when a prompt carries a secret: block, suspend, record, alert.

The scanner (:mod:`gateway.leaks`) finds secrets in the outgoing request. A blocking finding stops the request
before anything is sent upstream: the sender's keys are suspended (and the owner's, when the secret is another
student's gateway key) -- in Redis, so every worker refuses them on the next request -- an incident is recorded,
the convenors are alerted (webhook and Sentry, off the request path), the transcript keeps a redacted body, and the
student gets a 403 saying what kind of secret was found and whom to contact. Alert-only findings are recorded and
alerted, and the request goes on.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import asyncpg

from . import incidents
from .errors import PermissionDenied
from .incidents import Alerter, NewIncident
from .keyring import Keyring
from .leaks import Finding, Scanner, block_message, describe, redact_body
from .metrics import Metrics

if TYPE_CHECKING:
    from .proxy import Exchange

log = logging.getLogger(__name__)

ACTOR = "leak-guard"


class LeakGuard:
    def __init__(self, scanner: Scanner, keyring: Keyring, pool: asyncpg.Pool, alerter: Alerter, metrics: Metrics,
                 *, contact: str) -> None:
        self._scanner = scanner
        self._keyring = keyring
        self._pool = pool
        self._alerter = alerter
        self._metrics = metrics
        self._contact = contact

    @property
    def scanner(self) -> Scanner:
        return self._scanner

    async def check(self, exchange: Exchange) -> None:
        """Raise :class:`PermissionDenied` if the request carries a secret that must not travel."""
        if exchange.payload is None or exchange.claims is None:
            return
        findings = self._scanner.scan_request(exchange.payload)
        if not findings:
            return
        blocking = Scanner.blocking(findings)
        await self._record(exchange, findings)
        if not blocking:
            return
        claims = exchange.claims
        exchange.body = redact_body(exchange.body, findings)
        exchange.payload = None  # the unredacted parse must not outlive this point
        exchange.refused, exchange.refused_reason = "leak", f"prompt contained a secret: {describe(blocking)}"
        reason = f"a {describe(blocking)} was found in a prompt (request {exchange.request_id})"
        await self._keyring.set_status(ACTOR, claims.course, claims.student, "suspended", reason=reason)
        for leaked in {f.virtual_key for f in blocking if f.virtual_key is not None}:
            if (leaked.course, leaked.student) != (claims.course, claims.student):
                await self._keyring.set_status(
                    ACTOR, leaked.course, leaked.student, "suspended", jti=leaked.jti,
                    reason=f"this key was pasted into a prompt by {claims.student} (request {exchange.request_id})")
        raise PermissionDenied(block_message(blocking, self._contact))

    async def _record(self, exchange: Exchange, findings: list[Finding]) -> None:
        assert exchange.claims is not None
        new = [NewIncident.from_finding(f, course_id=exchange.claims.course, student_id=exchange.claims.student,
                                        jti=exchange.claims.jti, request_id=exchange.request_id) for f in findings]
        for finding in findings:
            self._metrics.incidents.labels(finding.rule_id).inc()
        try:
            stored = await incidents.record(self._pool, new)
        except (TimeoutError, OSError, asyncpg.PostgresError):
            log.exception("could not record %d leak incident(s) for request %s", len(new), exchange.request_id)
            for unsaved in new:
                self._alerter.submit({"event": "leaked_secret", "course_id": unsaved.course_id,
                                      "student_id": unsaved.student_id, "rule_id": unsaved.rule_id,
                                      "kind": unsaved.kind, "severity": unsaved.severity,
                                      "excerpt": unsaved.excerpt, "request_id": unsaved.request_id})
            return
        for incident in stored:
            self._alerter.submit({**incident.alert_payload(), "summary": incident.summary()})
        log.warning("leak incident", extra={"fields": {
            "request_id": exchange.request_id, "course": exchange.claims.course, "student": exchange.claims.student,
            "rules": [f.rule_id for f in findings], "blocked": any(f.blocking for f in findings)}})

    async def close(self) -> None:
        await self._alerter.close()

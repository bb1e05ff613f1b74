"""Every Redis key name the gateway uses, built here and nowhere else.

All keys of one student share the hash tag ``{<course>/<student>}`` so that every Lua script touching a
student's bucket, in-flight reservations, settled request ids and key status runs on one Redis Cluster slot.
"""

from __future__ import annotations

from dataclasses import dataclass


def _tag_safe(value: str) -> str:
    # Braces would end the hash tag early; percent-encode them (and '%' itself) so tags stay unique.
    return value.replace("%", "%25").replace("{", "%7B").replace("}", "%7D")


@dataclass(frozen=True, slots=True)
class Keyspace:
    prefix: str = "gw"

    def student_tag(self, course: str, student: str) -> str:
        return "{" + _tag_safe(course) + "/" + _tag_safe(student) + "}"

    def bucket(self, course: str, student: str) -> str:
        """Hash: the student's bucket for the current period (lazy rollover inside the scripts)."""
        return f"{self.prefix}:{self.student_tag(course, student)}:bucket"

    def inflight(self, course: str, student: str) -> str:
        """Hash request_id -> reserved weighted tokens, for requests admitted but not yet settled."""
        return f"{self.prefix}:{self.student_tag(course, student)}:inflight"

    def settled(self, course: str, student: str) -> str:
        """Sorted set of request ids already settled (score = settle time), for idempotent debits."""
        return f"{self.prefix}:{self.student_tag(course, student)}:settled"

    def grants(self, course: str, student: str) -> str:
        """Sorted set of grant ids already added to the bucket (score = grant time), for idempotent grants."""
        return f"{self.prefix}:{self.student_tag(course, student)}:grants"

    def key_status(self, course: str, student: str, jti: str) -> str:
        """String: ``active`` / ``suspended`` / ``revoked`` (optionally ``status|reason``) for one virtual key."""
        return f"{self.prefix}:{self.student_tag(course, student)}:key:{_tag_safe(jti)}"

    def policy(self, course: str) -> str:
        """String: the course's policy as JSON, a copy for workers that cannot reach Postgres."""
        return f"{self.prefix}:policy:{_tag_safe(course)}"

    def invalidation_channel(self) -> str:
        """Pub/sub channel telling every worker to drop cached policy / key state."""
        return f"{self.prefix}:invalidate"

    def pending_debits(self) -> str:
        """Not a Redis key: the name of the local spool of debits queued while Redis was unreachable."""
        return f"{self.prefix}-pending-debits"

"""The quota headers Claude Code reads (CONTRACT.md), from a student's :class:`~gateway.ledger.BucketState`.

Claude Code knows one weekly window (``7d``), so a course's bucket is reported as that window whatever the
course's period length; ``-reset`` headers are the end of the current period.
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from .errors import RateLimited
from .ledger import BucketState

WARNING_THRESHOLD = 0.75
THRESHOLDS = (0.95, 0.75)  # reported in -7d-surpassed-threshold once passed, highest first
PREFIX = "anthropic-ratelimit-unified-"
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def rfc3339(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z")


def local_time(epoch: float, tz: str) -> str:
    """``Mon 3 Dec 00:00 AEDT``: a reset time as students of a course in ``tz`` read it (locale-independent)."""
    moment = datetime.fromtimestamp(epoch, ZoneInfo(tz))
    return f"{_DAYS[moment.weekday()]} {moment.day} {_MONTHS[moment.month - 1]} {moment:%H:%M} {moment.tzname()}"


def bucket_status(state: BucketState) -> str:
    """``allowed``, ``allowed_warning`` (75 % used), or ``rejected`` (nothing remaining)."""
    if state.remaining <= 0:
        return "rejected"
    return "allowed_warning" if state.passed(WARNING_THRESHOLD) else "allowed"


def _tokens_headers(state: BucketState) -> dict[str, str]:
    return {
        "anthropic-ratelimit-tokens-limit": str(state.allowance),
        "anthropic-ratelimit-tokens-remaining": str(max(state.remaining, 0)),
        "anthropic-ratelimit-tokens-reset": rfc3339(state.period_end),
    }


def success_headers(state: BucketState) -> dict[str, str]:
    """Headers for a successful ``/v1/messages`` response."""
    status = "allowed_warning" if state.passed(WARNING_THRESHOLD) else "allowed"
    reset = str(state.period_end)
    headers = {
        PREFIX + "status": status,
        PREFIX + "reset": reset,
        PREFIX + "7d-utilization": f"{state.utilization:.2f}",
        PREFIX + "7d-reset": reset,
        PREFIX + "7d-status": status,
    }
    surpassed = next((t for t in THRESHOLDS if state.passed(t)), None)
    if surpassed is not None:
        headers[PREFIX + "7d-surpassed-threshold"] = f"{surpassed:.2f}"
    headers.update(_tokens_headers(state))
    return headers


def _period_name(state: BucketState) -> str:
    days = (state.period_end - state.period_start) / 86_400
    if 6.5 <= days <= 7.5:
        return "Weekly token quota"
    if 0.9 <= days <= 1.1:
        return "Daily token quota"
    return "Token quota for this period"


def exhausted_error(
    state: BucketState, tz: str, *, now: float | None = None, contact: str = "your course convenor"
) -> RateLimited:
    """The 429 for a student whose bucket has no room left (raise it before proxying)."""
    now = time.time() if now is None else now
    retry_after = max(1, math.ceil(state.period_end - now))
    reset = str(state.period_end)
    message = (
        f"{_period_name(state)} used up: {state.used:,} of {state.allowance:,} weighted tokens this period"
        + (f" ({state.reserved:,} more reserved by requests still running)" if state.reserved > 0 else "")
        + f". It resets {local_time(state.period_end, tz)} (in {_duration(retry_after)}). "
        f"If you need more before then, ask {contact} for a grant of extra tokens."
    )
    headers = {
        "retry-after": str(retry_after),
        "x-should-retry": "false",
        PREFIX + "status": "rejected",
        PREFIX + "reset": reset,
        PREFIX + "representative-claim": "seven_day",
        PREFIX + "7d-utilization": "1",
        PREFIX + "7d-reset": reset,
        PREFIX + "7d-status": "rejected",
        PREFIX + "7d-surpassed-threshold": f"{THRESHOLDS[0]:.2f}",
        **_tokens_headers(state),
    }
    headers["anthropic-ratelimit-tokens-remaining"] = "0"
    return RateLimited(message, headers=headers)


def _duration(seconds: int) -> str:
    days, rest = divmod(seconds, 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes = max(rest // 60, 0 if days or hours else 1)
    parts = [f"{days} d" if days else "", f"{hours} h" if hours else "", f"{minutes} min" if minutes else ""]
    return " ".join(p for p in parts if p)

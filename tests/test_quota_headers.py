"""Quota headers on success, and the 429 when a student's bucket is used up (CONTRACT.md)."""

from __future__ import annotations

import orjson
import pytest

from gateway.errors import RateLimited, render
from gateway.ledger import BucketState
from gateway.quota_headers import bucket_status, exhausted_error, local_time, success_headers
from tests.ledger_support import local_epoch

SYDNEY = "Australia/Sydney"
START = int(local_epoch(SYDNEY, 2026, 11, 23))  # Monday 00:00 AEDT
END = int(local_epoch(SYDNEY, 2026, 11, 30))
U = "anthropic-ratelimit-unified-"


def state(used: int, *, limit: int = 100_000, carried: int = 0, granted: int = 0, reserved: int = 0) -> BucketState:
    return BucketState(limit, carried, granted, used, reserved, 1 if reserved else 0, START, END, 0)


def test_success_headers_below_the_warning() -> None:
    headers = success_headers(state(30_000, carried=20_000))
    assert headers == {
        U + "status": "allowed",
        U + "reset": str(END),
        U + "7d-utilization": "0.25",
        U + "7d-reset": str(END),
        U + "7d-status": "allowed",
        "anthropic-ratelimit-tokens-limit": "120000",
        "anthropic-ratelimit-tokens-remaining": "90000",
        "anthropic-ratelimit-tokens-reset": "2026-11-29T13:00:00Z",
    }


@pytest.mark.parametrize(
    ("used", "status", "threshold"),
    [(74_999, "allowed", None), (75_000, "allowed_warning", "0.75"), (94_999, "allowed_warning", "0.75"),
     (95_000, "allowed_warning", "0.95"), (99_999, "allowed_warning", "0.95")],
)
def test_warning_status_and_surpassed_threshold(used: int, status: str, threshold: str | None) -> None:
    headers = success_headers(state(used))
    assert headers[U + "status"] == headers[U + "7d-status"] == status
    assert headers.get(U + "7d-surpassed-threshold") == threshold
    assert headers[U + "7d-utilization"] == f"{used / 100_000:.2f}"


def test_an_overshot_bucket_reports_full_utilization_and_nothing_remaining() -> None:
    headers = success_headers(state(130_000))
    assert headers[U + "7d-utilization"] == "1.00"
    assert headers["anthropic-ratelimit-tokens-remaining"] == "0"


def test_bucket_status_for_the_quota_listing() -> None:
    assert bucket_status(state(10)) == "allowed"
    assert bucket_status(state(80_000)) == "allowed_warning"
    assert bucket_status(state(100_000)) == "rejected"
    assert bucket_status(state(100_000, granted=1)) == "allowed_warning"


def test_exhausted_429_carries_every_contract_header_and_the_local_reset_time() -> None:
    now = END - 2 * 86_400 - 3 * 3_600 - 30  # Friday 20:59:30 AEDT
    error = exhausted_error(state(100_500, granted=500), SYDNEY, now=now)
    assert isinstance(error, RateLimited)
    assert error.status == 429
    headers = error.headers
    assert headers["retry-after"] == str(2 * 86_400 + 3 * 3_600 + 30)
    assert headers["x-should-retry"] == "false"
    assert headers[U + "status"] == "rejected"
    assert headers[U + "representative-claim"] == "seven_day"
    assert headers[U + "7d-utilization"] == "1"
    assert headers[U + "7d-reset"] == headers[U + "reset"] == str(END)
    assert headers[U + "7d-status"] == "rejected"
    assert headers["anthropic-ratelimit-tokens-remaining"] == "0"

    assert error.message.startswith("Weekly token quota used up")
    assert "resets Mon 30 Nov 00:00 AEDT" in error.message
    assert "in 2 d 3 h" in error.message
    assert "grant" in error.message and "your course convenor" in error.message

    response = render(error, "req_test")
    assert response.status == 429
    assert response.headers["retry-after"] == headers["retry-after"]
    assert response.body is not None
    body = orjson.loads(response.body)  # type: ignore[arg-type]
    assert body["error"] == {"type": "rate_limit_error", "message": error.message}


def test_exhausted_by_reservations_says_so_and_names_the_contact() -> None:
    error = exhausted_error(state(90_000, reserved=15_000), "UTC", now=END - 59, contact="Dr Lee (lee@uni.edu)")
    assert "15,000 more reserved by requests still running" in error.message
    assert "Dr Lee (lee@uni.edu)" in error.message
    assert "in 1 min" in error.message
    assert error.headers["retry-after"] == "59"


def test_local_time_names_the_zone_abbreviation_across_dst() -> None:
    assert local_time(local_epoch(SYDNEY, 2026, 12, 7), SYDNEY) == "Mon 7 Dec 00:00 AEDT"
    assert local_time(local_epoch(SYDNEY, 2026, 6, 1), SYDNEY) == "Mon 1 Jun 00:00 AEST"
    assert local_time(START, "UTC") == "Sun 22 Nov 13:00 UTC"

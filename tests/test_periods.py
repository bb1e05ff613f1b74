"""Period boundaries in the course's time zone."""

from __future__ import annotations

from datetime import datetime
from itertools import pairwise
from zoneinfo import ZoneInfo

import pytest

from gateway.periods import Anchor, BoundaryCache, boundaries, parse_reset_at, period_at
from tests.ledger_support import WEEK, local_epoch, make_policy

HOUR = 3600
SYDNEY = "Australia/Sydney"


def test_parse_reset_at() -> None:
    assert parse_reset_at("mon 00:00") == Anchor(0, 0, 0)
    assert parse_reset_at(" Wednesday 17:30 ") == Anchor(2, 17, 30)
    assert parse_reset_at("SUN 23:59") == Anchor(6, 23, 59)
    for bad in ("monday", "mo 00:00", "mon 24:00", "mon 12:60", "funday 00:00", "mon 7"):
        with pytest.raises(ValueError):
            parse_reset_at(bad)


def test_weekly_utc_boundaries_are_mondays_at_midnight() -> None:
    policy = make_policy()
    now = local_epoch("UTC", 2026, 3, 4, 12, 0)  # a Wednesday
    bounds = boundaries(policy, now, 3, 2)
    assert len(bounds) == 5
    assert bounds[2] <= now < bounds[3]
    assert all(b - a == WEEK for a, b in pairwise(bounds))
    for bound in bounds:
        moment = datetime.fromtimestamp(bound, ZoneInfo("UTC"))
        assert (moment.weekday(), moment.hour, moment.minute) == (0, 0, 0)
    assert bounds[2] == local_epoch("UTC", 2026, 3, 2)


def test_period_containing_its_own_start_and_end() -> None:
    policy = make_policy(reset_at="thu 09:15", tz=SYDNEY)
    start, end = period_at(policy, local_epoch(SYDNEY, 2026, 6, 1, 8, 0))
    assert period_at(policy, start) == (start, end)
    assert period_at(policy, end)[0] == end
    assert period_at(policy, end - 1) == (start, end)
    moment = datetime.fromtimestamp(start, ZoneInfo(SYDNEY))
    assert (moment.weekday(), moment.hour, moment.minute) == (3, 9, 15)


def test_sydney_week_with_dst_ending_in_april_is_169_hours() -> None:
    # DST ends on the first Sunday of April (5 Apr 2026, 03:00 AEDT -> 02:00 AEST).
    policy = make_policy(tz=SYDNEY)
    start, end = period_at(policy, local_epoch(SYDNEY, 2026, 4, 1, 12, 0))
    assert start == local_epoch(SYDNEY, 2026, 3, 30)
    assert end == local_epoch(SYDNEY, 2026, 4, 6)
    assert end - start == 169 * HOUR
    assert datetime.fromtimestamp(start, ZoneInfo(SYDNEY)).tzname() == "AEDT"
    assert datetime.fromtimestamp(end, ZoneInfo(SYDNEY)).tzname() == "AEST"


def test_sydney_week_with_dst_starting_in_october_is_167_hours() -> None:
    # DST starts on the first Sunday of October (4 Oct 2026, 02:00 AEST -> 03:00 AEDT).
    policy = make_policy(tz=SYDNEY)
    start, end = period_at(policy, local_epoch(SYDNEY, 2026, 10, 4, 12, 0))
    assert (start, end) == (local_epoch(SYDNEY, 2026, 9, 28), local_epoch(SYDNEY, 2026, 10, 5))
    assert end - start == 167 * HOUR


def test_every_sydney_boundary_of_a_year_is_local_monday_midnight() -> None:
    policy = make_policy(tz=SYDNEY)
    bounds = boundaries(policy, local_epoch(SYDNEY, 2026, 7, 1), 30, 30)
    lengths = {b - a for a, b in pairwise(bounds)}
    assert lengths == {WEEK, WEEK - HOUR, WEEK + HOUR}
    for bound in bounds:
        moment = datetime.fromtimestamp(bound, ZoneInfo(SYDNEY))
        assert (moment.weekday(), moment.hour, moment.minute) == (0, 0, 0)


def test_fortnightly_periods_alternate_weeks_consistently() -> None:
    policy = make_policy(period_seconds=2 * WEEK)
    now = local_epoch("UTC", 2026, 3, 4)
    bounds = boundaries(policy, now, 2, 2)
    assert all(b - a == 2 * WEEK for a, b in pairwise(bounds))
    # the same schedule seen from one week later is the same fortnights
    later = boundaries(policy, now + WEEK, 2, 2)
    assert set(later) & set(bounds)
    assert all((b - bounds[0]) % (2 * WEEK) == 0 for b in later)


def test_daily_periods_follow_local_midnight_across_dst() -> None:
    policy = make_policy(period_seconds=86_400, reset_at="mon 00:00", tz=SYDNEY)
    start, end = period_at(policy, local_epoch(SYDNEY, 2026, 4, 5, 12, 0))
    assert (start, end) == (local_epoch(SYDNEY, 2026, 4, 5), local_epoch(SYDNEY, 2026, 4, 6))
    assert end - start == 25 * HOUR


def test_periods_not_whole_days_step_from_the_anchor_epoch() -> None:
    policy = make_policy(period_seconds=5 * HOUR, reset_at="tue 01:00")
    anchor = local_epoch("UTC", 1970, 1, 6, 1, 0)  # the first Tuesday 01:00 after the epoch
    now = local_epoch("UTC", 2026, 3, 4, 12, 34)
    start, end = period_at(policy, now)
    assert (start - anchor) % (5 * HOUR) == 0
    assert start <= now < end == start + 5 * HOUR


def test_boundary_cache_reuses_a_list_until_now_passes_the_second_to_last() -> None:
    cache = BoundaryCache(before=2, after=3)
    policy = make_policy()
    now = local_epoch("UTC", 2026, 3, 4)
    first = cache.get(policy, now)
    assert first == tuple(boundaries(policy, now, 2, 3))
    assert cache.get(policy, first[-2] - 1) is first
    moved = cache.get(policy, first[-2])
    assert moved != first
    assert moved[1] <= first[-2] < moved[2]
    assert cache.get(make_policy(tz=SYDNEY), now) != first

"""Quota period boundaries, computed in the course's time zone (Lua cannot do time zones, so Python does).

A course's schedule is ``period_seconds`` plus an anchor ``reset_at`` ("mon 00:00") in ``tz``:

* a whole number of days (``7d``, ``14d``, ``1d``): boundaries are local wall-clock times, counted in steps of
  that many calendar days from the first anchor weekday on or after 1970-01-01. So a week anchored at Monday
  00:00 Australia/Sydney is 167 h or 169 h long across a DST change, and always starts at local midnight.
* anything else (``5h``): the anchor's first occurrence is the first boundary epoch, then fixed steps of
  ``period_seconds`` (no DST adjustment: such periods have no local meaning).

The ledger hands the Lua scripts a short sorted list of boundaries around "now" (:class:`BoundaryCache`), and the
scripts pick the current period with Redis ``TIME``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

if TYPE_CHECKING:
    from .policy import Policy

DAY = 86_400
WEEK = 7 * DAY
_EPOCH_DATE = date(1970, 1, 1)
_WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_WEEKDAY_NAMES = {name: i for i, full in enumerate(_WEEKDAYS) for name in (full, full[:3])}
_RESET_AT = re.compile(r"^\s*([A-Za-z]+)\s+(\d{1,2}):(\d{2})\s*$")


@dataclass(frozen=True, slots=True)
class Anchor:
    weekday: int  # Monday = 0
    hour: int
    minute: int


def parse_reset_at(text: str) -> Anchor:
    """``"mon 00:00"`` (weekday name, 3 letters or full, then HH:MM) -> :class:`Anchor`; ValueError otherwise."""
    match = _RESET_AT.match(text)
    if match is None:
        raise ValueError(f"reset time must look like 'mon 00:00', not {text!r}")
    name, hour, minute = match.group(1).lower(), int(match.group(2)), int(match.group(3))
    day = _WEEKDAY_NAMES.get(name)
    if day is None:
        raise ValueError(f"unknown weekday {match.group(1)!r} in reset time {text!r}")
    if hour > 23 or minute > 59:
        raise ValueError(f"not a time of day in reset time {text!r}")
    return Anchor(day, hour, minute)


def _anchor_date(anchor: Anchor) -> date:
    """The first date on or after 1970-01-01 that falls on the anchor's weekday."""
    return _EPOCH_DATE + timedelta(days=(anchor.weekday - _EPOCH_DATE.weekday()) % 7)


def _local_epoch(day: date, anchor: Anchor, zone: ZoneInfo) -> int:
    return int(datetime.combine(day, time(anchor.hour, anchor.minute), tzinfo=zone).timestamp())


def boundaries(policy: Policy, around: float, before: int, after: int) -> list[int]:
    """Sorted period boundaries (epoch seconds): ``before`` of them <= ``around``, then ``after`` of them later.

    ``boundaries(p, now, 1, 1)`` is ``[start, end]`` of the period containing ``now``.
    """
    if before < 1 or after < 0:
        raise ValueError("need at least one boundary at or before `around`")
    anchor = parse_reset_at(policy.reset_at)
    zone = ZoneInfo(policy.tz)
    first = _anchor_date(anchor)
    if policy.period_seconds % DAY == 0:
        step_days = policy.period_seconds // DAY
        today = datetime.fromtimestamp(around, zone).date()
        index = (today - first).days // step_days
        while _local_epoch(first + timedelta(days=index * step_days), anchor, zone) > around:
            index -= 1
        while _local_epoch(first + timedelta(days=(index + 1) * step_days), anchor, zone) <= around:
            index += 1
        return [
            _local_epoch(first + timedelta(days=i * step_days), anchor, zone)
            for i in range(index - before + 1, index + after + 1)
        ]
    origin = _local_epoch(first, anchor, zone)
    index = math.floor((around - origin) / policy.period_seconds)
    return [origin + i * policy.period_seconds for i in range(index - before + 1, index + after + 1)]


def period_at(policy: Policy, at: float) -> tuple[int, int]:
    """``(start, end)`` epoch seconds of the period containing ``at``."""
    start, end = boundaries(policy, at, 1, 1)
    return start, end


@dataclass
class BoundaryCache:
    """Per-schedule boundary lists for the Lua scripts, recomputed once ``now`` passes the second-to-last entry.

    Each list holds ``before`` boundaries at or before the time it was made and ``after`` later ones, so Redis
    ``TIME`` may run somewhat ahead of or behind this process's clock and still find its period in the list
    (beyond it the scripts extrapolate with the nominal period length).
    """

    before: int = 2
    after: int = 3
    _lists: dict[tuple[int, str, str], tuple[int, ...]] = field(default_factory=dict)

    def get(self, policy: Policy, now: float) -> tuple[int, ...]:
        key = (policy.period_seconds, policy.reset_at, policy.tz)
        cached = self._lists.get(key)
        if cached is None or not cached[0] <= now < cached[-2]:
            cached = tuple(boundaries(policy, now, self.before, self.after))
            self._lists[key] = cached
        return cached


_PERIOD_LENGTH = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_period(text: str) -> int:
    """A period length as convenors type it (``7d``, ``1w``, ``24h``, ``3600s``) in seconds; ValueError otherwise."""
    match = _PERIOD_LENGTH.match(text)
    if not match:
        raise ValueError(f"not a period: {text!r} (use e.g. 7d, 1w or 24h)")
    seconds = int(match.group(1)) * _SECONDS[match.group(2)]
    if seconds <= 0:
        raise ValueError(f"period must be positive: {text!r}")
    return seconds

"""Period lengths as convenors type them: ``7d``, ``1w``, ``24h``, ``3600s``."""

from __future__ import annotations

import re

_PERIOD = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_period(text: str) -> int:
    match = _PERIOD.match(text)
    if not match:
        raise ValueError(f"not a period: {text!r} (use e.g. 7d, 1w or 24h)")
    seconds = int(match.group(1)) * _SECONDS[match.group(2)]
    if seconds <= 0:
        raise ValueError(f"period must be positive: {text!r}")
    return seconds

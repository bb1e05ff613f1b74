"""Token amounts as convenors type them: ``500k``, ``1.5m``, ``2000000``."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

_AMOUNT = re.compile(r"^\s*([0-9][0-9_,]*(?:\.[0-9]+)?)\s*([kKmMbB]?)\s*$")
_SCALE = {"": 1, "k": 1_000, "m": 1_000_000, "b": 1_000_000_000}


def parse_amount(text: str) -> int:
    """Parse a token amount; raises ValueError with a one-line reason."""
    match = _AMOUNT.match(text)
    if not match:
        raise ValueError(f"not a token amount: {text!r} (use e.g. 500k, 1.5m or 2000000)")
    number, suffix = match.groups()
    try:
        value = Decimal(number.replace("_", "").replace(",", "")) * _SCALE[suffix.lower()]
    except InvalidOperation as exc:  # pragma: no cover - the regex admits only decimals
        raise ValueError(f"not a token amount: {text!r}") from exc
    if value != value.to_integral_value():
        raise ValueError(f"not a whole number of tokens: {text!r}")
    return int(value)


def format_amount(value: float) -> str:
    for suffix, scale in (("m", 1_000_000), ("k", 1_000)):
        if abs(value) >= scale and value % (scale // 10 or 1) == 0:
            return f"{value / scale:g}{suffix}"
    return f"{value:g}"

"""What one request consumed, in Anthropic's own token categories.

:class:`Usage` is the gateway's single currency between the meter (``sse.py``), the price table
(``pricing.py``), the quota weights (``weights.py``), the ledger and the usage rows in Postgres.
:func:`usage_from_json` reads the ``usage`` object of an Anthropic message (streamed or not) and never
raises: a field that is missing, ``null`` or not a number counts as 0.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

_COUNTS = ("input_tokens", "cache_write_5m", "cache_write_1h", "cache_read", "output_tokens", "web_searches")


def as_count(value: object) -> int:
    """A token count from untrusted JSON: ints and floats (truncated, clamped at 0); anything else is 0."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0
    if value != value or value in (float("inf"), float("-inf")):  # NaN / infinity
        return 0
    return max(0, int(value))


@dataclass(slots=True)
class Usage:
    input_tokens: int = 0  # uncached input (excludes cache reads and writes)
    cache_write_5m: int = 0
    cache_write_1h: int = 0
    cache_read: int = 0
    output_tokens: int = 0
    web_searches: int = 0
    estimated: bool = False  # output_tokens estimated from streamed characters (no message_delta seen)
    partial: bool = False  # the stream did not complete (no message_stop seen)

    @property
    def prompt_tokens(self) -> int:
        """Everything the model read: uncached input, cache writes and cache reads."""
        return self.input_tokens + self.cache_write_5m + self.cache_write_1h + self.cache_read

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.output_tokens

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> Usage:
        """Inverse of :meth:`to_dict`; missing or malformed fields take their defaults, unknown keys are
        ignored."""
        if not isinstance(data, Mapping):
            return cls()
        counts = {name: as_count(data.get(name)) for name in _COUNTS}
        return cls(**counts, estimated=data.get("estimated") is True, partial=data.get("partial") is True)


def usage_from_json(usage_obj: Mapping[str, Any] | None) -> Usage:
    """Read an Anthropic ``usage`` object.

    Cache writes are split by TTL from ``cache_creation.ephemeral_{5m,1h}_input_tokens``; without that
    breakdown all of ``cache_creation_input_tokens`` counts as 5-minute writes. Web searches come from
    ``server_tool_use.web_search_requests``.
    """
    if not isinstance(usage_obj, Mapping):
        return Usage()
    write_5m, write_1h = cache_writes(usage_obj)
    return Usage(
        input_tokens=as_count(usage_obj.get("input_tokens")),
        cache_write_5m=write_5m or 0,
        cache_write_1h=write_1h or 0,
        cache_read=as_count(usage_obj.get("cache_read_input_tokens")),
        output_tokens=as_count(usage_obj.get("output_tokens")),
        web_searches=web_search_requests(usage_obj) or 0,
    )


def cache_writes(usage_obj: Mapping[str, Any]) -> tuple[int | None, int | None]:
    """``(5m, 1h)`` cache-write counts, or ``(None, None)`` when the object says nothing about cache writes.

    A breakdown whose parts sum to less than ``cache_creation_input_tokens`` puts the remainder on 5m, so the
    total is never lost.
    """
    total_raw = usage_obj.get("cache_creation_input_tokens")
    breakdown = usage_obj.get("cache_creation")
    if isinstance(breakdown, Mapping):
        write_5m = as_count(breakdown.get("ephemeral_5m_input_tokens"))
        write_1h = as_count(breakdown.get("ephemeral_1h_input_tokens"))
        write_5m += max(0, as_count(total_raw) - write_5m - write_1h)
        return write_5m, write_1h
    if total_raw is None:
        return None, None
    return as_count(total_raw), 0


def web_search_requests(usage_obj: Mapping[str, Any]) -> int | None:
    server_tool_use = usage_obj.get("server_tool_use")
    if not isinstance(server_tool_use, Mapping) or "web_search_requests" not in server_tool_use:
        return None
    return as_count(server_tool_use.get("web_search_requests"))

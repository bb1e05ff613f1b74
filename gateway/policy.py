"""A course's quota policy: how many weighted tokens a student gets per period, when periods reset, carry-over."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson
from pydantic import BaseModel, Field, field_validator

from .periods import parse_reset_at
from .weights import Weights


class Policy(BaseModel, frozen=True):
    """One course's quota rules (a row of the ``courses`` table).

    ``carry_over``: at a period change the unused part of the old period (never a negative one: debt is not
    carried) moves into the new one, up to ``carry_cap`` (``None`` means one period's ``limit``).
    ``max_inflight``: requests one student may have in flight at once (``None``: the gateway's default).
    """

    course: str
    limit: int = Field(ge=0)
    period_seconds: int = Field(gt=0)
    reset_at: str = "mon 00:00"
    tz: str = "UTC"
    carry_over: bool = False
    carry_cap: int | None = Field(default=None, ge=0)
    weights: Weights = Field(default_factory=Weights)
    max_inflight: int | None = Field(default=None, ge=1)

    @field_validator("reset_at")
    @classmethod
    def _valid_reset_at(cls, value: str) -> str:
        parse_reset_at(value)
        return value

    @field_validator("tz")
    @classmethod
    def _valid_tz(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}") from exc
        return value

    @property
    def effective_carry_cap(self) -> int:
        """The most that may carry into a new period: 0 without carry-over."""
        if not self.carry_over:
            return 0
        return self.limit if self.carry_cap is None else self.carry_cap

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Policy:
        """From a ``courses`` row (an ``asyncpg.Record``; ``weights`` decoded by the pool's codec or raw JSON)."""
        weights = row["weights"]
        if isinstance(weights, str | bytes):
            weights = orjson.loads(weights)
        return cls(
            course=row["course_id"],
            limit=row["limit_tokens"],
            period_seconds=row["period_seconds"],
            reset_at=row["reset_at"],
            tz=row["tz"],
            carry_over=row["carry_over"],
            carry_cap=row["carry_cap"],
            weights=Weights.from_json(weights or {}),
            max_inflight=row["max_inflight"],
        )

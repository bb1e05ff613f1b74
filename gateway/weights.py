"""Weighted tokens: the one number a student's weekly bucket is debited in.

``weighted = ceil(sum(type_weight * count) * family_multiplier + web_search * searches)``

Why weights at all, and why these defaults:

* **Raw token counts punish the wrong thing.** Claude Code resends the whole conversation every turn and
  reads it back from the prompt cache. In a busy hour the cache reads alone pass five million tokens, while
  what the student actually asked for (new input) and got (output) is a few hundred thousand. A quota in raw
  tokens would run out in an afternoon, for work that costs upstream a tenth of the input price and that the
  student cannot avoid except by starting fresh sessions.
* **The unit is an Opus input token.** ``input=1``. Output costs 5x input on every Claude model, so
  ``output=5``. Cache writes cost 1.25x (5-minute) and 2x (1-hour) input, so ``1.25`` and ``2``.
* **Cache reads are deliberately cheap: 0.02, a fifth of their price ratio (0.1).** They are the
  conversation being carried along, not new work; still non-zero so that a bloated, never-compacted context
  keeps costing something and ``/compact`` or ``/clear`` pays off. ``tests/test_weights.py`` pins the
  consequence: a heavy hour of Claude Code (60 Opus turns, cache reads growing from 20k to 150k tokens)
  costs under 500k weighted tokens, where it would be over 5M raw.
* **Model families scale everything by roughly their price relative to Opus:** Sonnet 0.6 ($3 vs $5), Haiku
  0.25 (~$1 vs $5, rounded up). A model in none of the families counts as ``default_family`` (1: as Opus).
* **A web search is 50**, flat: the pages it fetches enter the prompt and are metered as input tokens
  anyway; the per-request weight only makes search loops visible.

A course stores only the weights it overrides (``courses.weights`` JSON); :meth:`Weights.from_json` merges
them over these defaults, family by family.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from gateway.usage import Usage

__all__ = ["DEFAULT_FAMILIES", "Weights"]

DEFAULT_FAMILIES: Mapping[str, float] = MappingProxyType({"opus": 1.0, "sonnet": 0.6, "haiku": 0.25})

Weight = Annotated[float, Field(ge=0, allow_inf_nan=False)]


class Weights(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    input: Weight = 1.0
    cache_write_5m: Weight = 1.25
    cache_write_1h: Weight = 2.0
    cache_read: Weight = 0.02
    output: Weight = 5.0
    web_search: Weight = 50.0
    families: dict[str, Weight] = Field(default_factory=lambda: dict(DEFAULT_FAMILIES))
    default_family: Weight = 1.0

    @field_validator("families")
    @classmethod
    def _family_names(cls, families: dict[str, float]) -> dict[str, float]:
        cleaned = {name.strip().lower(): value for name, value in families.items()}
        if "" in cleaned:
            raise ValueError("a model family needs a non-empty name")
        return cleaned

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> Weights:
        """Defaults overridden by ``data``: missing or null fields keep their default, unknown keys are
        ignored, and ``families`` merges over the default families. Invalid values raise
        ``pydantic.ValidationError``."""
        if not data:
            return cls()
        merged = {key: value for key, value in data.items() if value is not None}
        families = merged.get("families")
        if isinstance(families, Mapping):
            overridden = {str(name).strip().lower(): value for name, value in families.items()}
            merged["families"] = {**DEFAULT_FAMILIES, **overridden}
        return cls.model_validate(merged)

    def to_json(self) -> dict[str, Any]:
        return self.model_dump()

    def overrides(self) -> dict[str, Any]:
        """Only what differs from the defaults: what a course stores."""
        defaults = Weights()
        out: dict[str, Any] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if name == "families":
                changed = {k: v for k, v in value.items() if DEFAULT_FAMILIES.get(k) != v}
                if changed:
                    out[name] = changed
            elif value != getattr(defaults, name):
                out[name] = value
        return out

    def family_multiplier(self, model: str | None) -> float:
        """The multiplier of the family named in ``model`` (the longest name if several appear)."""
        if model and isinstance(model, str):
            wanted = model.lower()
            found = [name for name in self.families if name in wanted]
            if found:
                return self.families[max(found, key=len)]
        return self.default_family

    def weighted(self, model: str | None, usage: Usage) -> int:
        tokens = (
            self.input * usage.input_tokens
            + self.cache_write_5m * usage.cache_write_5m
            + self.cache_write_1h * usage.cache_write_1h
            + self.cache_read * usage.cache_read
            + self.output * usage.output_tokens
        )
        total = tokens * self.family_multiplier(model) + self.web_search * usage.web_searches
        # Round away binary-fraction noise (1.1 * 100 == 110.00000000000001) so it never adds a token.
        return math.ceil(round(total, 6))

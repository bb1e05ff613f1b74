"""What a request cost upstream, in USD, from the price table in ``gateway/data/prices.toml``.

The table is data, not code: a price change or a new model is a one-row edit there. Model ids are matched by
the longest listed prefix that ends at a word boundary and is not followed by an unlisted minor version (see
:func:`prefix_matches`), so dated ids (``claude-opus-4-5-20251101``) find their row while a model nobody
priced raises :class:`UnknownModel` instead of being billed at $0 or at an older model's price.

Costs are :class:`~decimal.Decimal` USD quantized to 1e-6 (the ``usage_events.cost_usd`` column).
Multipliers: a row's long-prompt multiplier (``claude-haiku-5-5`` above 100k prompt tokens: x5) and the
``inference_geo`` multiplier (``us``: x1.1) apply to token prices; web searches are a flat fee per request.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from importlib import resources
from typing import Any

from gateway.usage import Usage

__all__ = [
    "ModelPrice", "PriceTable", "PricingError", "UnknownInferenceGeo", "UnknownModel", "prefix_matches",
]

MILLION = Decimal(1_000_000)
MICRO_USD = Decimal("0.000001")
TOKEN_PRICES = ("input", "cache_write_5m", "cache_write_1h", "cache_read", "output")
# After a matched prefix, "-1", ".5" … (a one- or two-digit version segment) is a model the row does not list.
_UNLISTED_VERSION = re.compile(r"[-.][0-9]{1,2}(?![0-9])")


class PricingError(Exception):
    """The price table cannot price this request (or the table itself is malformed)."""


class UnknownModel(PricingError):
    def __init__(self, model: str | None) -> None:
        super().__init__(f"no price for model {model!r}: add it to gateway/data/prices.toml")
        self.model = model


class UnknownInferenceGeo(PricingError):
    def __init__(self, geo: str) -> None:
        super().__init__(f"no price multiplier for inference_geo {geo!r}: add it to gateway/data/prices.toml")
        self.geo = geo


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """USD per million tokens for the models matching ``prefix``."""

    prefix: str
    input: Decimal
    cache_write_5m: Decimal
    cache_write_1h: Decimal
    cache_read: Decimal
    output: Decimal
    long_prompt_threshold: int | None = None
    long_prompt_multiplier: Decimal = Decimal(1)

    def multiplier_for(self, usage: Usage) -> Decimal:
        """The long-prompt multiplier if this request's prompt is over the row's threshold, else 1."""
        if self.long_prompt_threshold is not None and usage.prompt_tokens > self.long_prompt_threshold:
            return self.long_prompt_multiplier
        return Decimal(1)

    def token_cost(self, usage: Usage) -> Decimal:
        """Token cost in USD, before any multiplier."""
        return (
            usage.input_tokens * self.input
            + usage.cache_write_5m * self.cache_write_5m
            + usage.cache_write_1h * self.cache_write_1h
            + usage.cache_read * self.cache_read
            + usage.output_tokens * self.output
        ) / MILLION


def prefix_matches(model: str, prefix: str) -> bool:
    """``model`` is ``prefix``, or ``prefix`` followed by a non-alphanumeric character but not by a short
    version segment: ``claude-opus-4`` matches ``claude-opus-4-20250514``, not ``claude-opus-4-5`` nor
    ``claude-opus-40``.
    """
    if not model.startswith(prefix):
        return False
    rest = model[len(prefix) :]
    if not rest:
        return True
    return not rest[0].isalnum() and _UNLISTED_VERSION.match(rest) is None


class PriceTable:
    """Model prices, web-search fee and geo multipliers; :meth:`load` reads the packaged ``prices.toml``."""

    def __init__(
        self,
        prices: Iterable[ModelPrice],
        *,
        web_search_per_request: Decimal,
        inference_geo: Mapping[str, Decimal],
    ) -> None:
        by_prefix: dict[str, ModelPrice] = {}
        for price in prices:
            if price.prefix in by_prefix:
                raise PricingError(f"model prefix {price.prefix!r} is priced twice")
            by_prefix[price.prefix] = price
        # Longest first, so the first match is the longest prefix.
        self._prices = tuple(sorted(by_prefix.values(), key=lambda p: len(p.prefix), reverse=True))
        self.web_search_per_request = web_search_per_request
        self.inference_geo = dict(inference_geo)

    @classmethod
    def load(cls) -> PriceTable:
        text = (resources.files("gateway") / "data" / "prices.toml").read_text(encoding="utf-8")
        return cls.from_toml(text)

    @classmethod
    def from_toml(cls, text: str) -> PriceTable:
        try:
            data = tomllib.loads(text, parse_float=Decimal)
        except tomllib.TOMLDecodeError as exc:
            raise PricingError(f"price table is not valid TOML: {exc}") from exc
        prices: list[ModelPrice] = []
        for row in _table_list(data.get("models"), "models"):
            prefixes = row.get("prefixes")
            if not isinstance(prefixes, list) or not all(isinstance(p, str) and p for p in prefixes) or (
                not prefixes
            ):
                raise PricingError(f"price row {row!r} needs a non-empty list of string `prefixes`")
            threshold = row.get("long_prompt_threshold")
            if threshold is not None and (not isinstance(threshold, int) or isinstance(threshold, bool)):
                raise PricingError(f"long_prompt_threshold must be an integer in row {prefixes}")
            per_token = {name: _amount(row.get(name), f"{name} of {prefixes}") for name in TOKEN_PRICES}
            multiplier = _amount(row.get("long_prompt_multiplier", 1), f"multiplier of {prefixes}")
            prices += [
                ModelPrice(prefix=prefix, **per_token, long_prompt_threshold=threshold,
                           long_prompt_multiplier=multiplier)
                for prefix in prefixes
            ]
        geo = data.get("inference_geo", {})
        if not isinstance(geo, dict):
            raise PricingError("[inference_geo] must be a table")
        return cls(
            prices,
            web_search_per_request=_amount(data.get("web_search_per_request"), "web_search_per_request"),
            inference_geo={name: _amount(value, f"inference_geo.{name}") for name, value in geo.items()},
        )

    @property
    def prefixes(self) -> list[str]:
        return [price.prefix for price in self._prices]

    def lookup(self, model: str | None) -> ModelPrice:
        """The row for ``model`` (longest matching prefix); :class:`UnknownModel` if none."""
        if model and isinstance(model, str):  # the id may come from an untrusted request body
            wanted = model.strip().lower()
            for price in self._prices:
                if prefix_matches(wanted, price.prefix):
                    return price
        raise UnknownModel(model)

    def geo_multiplier(self, inference_geo: str | None) -> Decimal:
        if not inference_geo:
            return Decimal(1)
        if not isinstance(inference_geo, str):  # straight from a request body, it may be anything
            raise UnknownInferenceGeo(repr(inference_geo))
        try:
            return self.inference_geo[inference_geo.lower()]
        except KeyError:
            raise UnknownInferenceGeo(inference_geo) from None

    def cost_usd(self, model: str | None, usage: Usage, *, inference_geo: str | None = None) -> Decimal:
        """USD cost of one request, quantized to 1e-6. Raises :class:`PricingError`s, never guesses."""
        price = self.lookup(model)
        tokens = price.token_cost(usage) * price.multiplier_for(usage) * self.geo_multiplier(inference_geo)
        searches = usage.web_searches * self.web_search_per_request
        return (tokens + searches).quantize(MICRO_USD, rounding=ROUND_HALF_UP)


def _table_list(value: Any, name: str) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not all(isinstance(row, dict) for row in value):
        raise PricingError(f"price table needs [[{name}]] rows")
    return value


def _amount(value: Any, what: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | Decimal):
        raise PricingError(f"{what} must be a number, not {value!r}")
    amount = Decimal(value)
    if not amount.is_finite() or amount < 0:
        raise PricingError(f"{what} must be a finite non-negative number, not {value!r}")
    return amount

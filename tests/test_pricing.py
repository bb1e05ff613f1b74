"""The price table: every row of PROTOCOL.md, the longest-prefix rule, geo and the haiku-5-5 long-prompt rule."""

from __future__ import annotations

from decimal import Decimal

import pytest

from gateway.pricing import PriceTable, PricingError, UnknownInferenceGeo, UnknownModel, prefix_matches
from gateway.usage import Usage

# PROTOCOL.md, "Prices, USD per million tokens": (model ids, (input, 5m write, 1h write, cache read, output)).
PROTOCOL_ROWS: list[tuple[list[str], tuple[str, str, str, str, str]]] = [
    (["claude-opus-4-5", "claude-opus-4-6", "claude-opus-4-7", "claude-opus-4-8", "claude-opus-5"],
     ("5", "6.25", "10", "0.50", "25")),
    (["claude-opus-4", "claude-opus-4-1"], ("15", "18.75", "30", "1.50", "75")),
    (["claude-opus-5-5"], ("4", "5", "8", "0.20", "20")),
    (["claude-sonnet-4", "claude-sonnet-4-5", "claude-sonnet-4-6"], ("3", "3.75", "6", "0.30", "15")),
    (["claude-sonnet-5-5"], ("2", "2.50", "4", "0.10", "10")),
    (["claude-haiku-4-5"], ("1", "1.25", "2", "0.10", "5")),
    (["claude-3-5-haiku"], ("0.80", "1", "1.6", "0.08", "4")),
    (["claude-haiku-5-5"], ("0.10", "0.125", "0.20", "0.01", "0.50")),
]
PRICED = [(model, tuple(Decimal(p) for p in prices)) for models, prices in PROTOCOL_ROWS for model in models]
FIELDS = ("input", "cache_write_5m", "cache_write_1h", "cache_read", "output")
MILLION = 1_000_000


@pytest.fixture(scope="module")
def table() -> PriceTable:
    return PriceTable.load()


def expected_cost(prices: tuple[Decimal, ...], usage: Usage, multiplier: Decimal = Decimal(1)) -> Decimal:
    counts = (usage.input_tokens, usage.cache_write_5m, usage.cache_write_1h, usage.cache_read,
              usage.output_tokens)
    tokens = sum((count * price for count, price in zip(counts, prices, strict=True)), Decimal(0))
    total = tokens / MILLION * multiplier + usage.web_searches * Decimal("0.01")
    return total.quantize(Decimal("0.000001"))


def test_table_lists_exactly_the_protocol_models(table: PriceTable) -> None:
    assert sorted(table.prefixes) == sorted(model for model, _ in PRICED)


@pytest.mark.parametrize(("model", "prices"), PRICED, ids=[model for model, _ in PRICED])
def test_every_row(table: PriceTable, model: str, prices: tuple[Decimal, ...]) -> None:
    for model_id in (model, f"{model}-20260115", f"{model}-latest"):
        price = table.lookup(model_id)
        assert price.prefix == model
        assert tuple(getattr(price, field) for field in FIELDS) == prices
    # One million of each kind costs the sum of the row's prices (no long-prompt rule below its threshold).
    for field, price_per_million in zip(FIELDS, prices, strict=True):
        one_kind = Usage()
        setattr(one_kind, {"input": "input_tokens", "output": "output_tokens"}.get(field, field), 50_000)
        assert table.cost_usd(model, one_kind) == (price_per_million * 50_000 / MILLION).quantize(
            Decimal("0.000001"))


@pytest.mark.parametrize(("model", "prefix"), [
    ("claude-opus-4-5-20251101", "claude-opus-4-5"),
    ("claude-opus-4-20250514", "claude-opus-4"),
    ("claude-opus-4-1-20250805", "claude-opus-4-1"),
    ("claude-opus-5", "claude-opus-5"),
    ("claude-opus-5-5", "claude-opus-5-5"),
    ("claude-opus-5-5-20261001", "claude-opus-5-5"),
    ("claude-sonnet-4-20250514", "claude-sonnet-4"),
    ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
    ("claude-haiku-4-5-20251001", "claude-haiku-4-5"),
    ("claude-3-5-haiku-20241022", "claude-3-5-haiku"),
    ("claude-opus-4-6[1m]", "claude-opus-4-6"),
    (" Claude-Opus-4-5 ", "claude-opus-4-5"),
])
def test_longest_prefix_wins(table: PriceTable, model: str, prefix: str) -> None:
    assert table.lookup(model).prefix == prefix


@pytest.mark.parametrize("model", [
    "claude-opus-4-9", "claude-opus-5-1", "claude-opus-40", "claude-opus-55", "claude-opus", "claude-sonnet-3-7",
    "claude-haiku-5", "claude-3-haiku-20240307", "gpt-4o", "", None, 42, ["claude-opus-4-5"],
])
def test_unknown_model_is_an_error_never_zero(table: PriceTable, model: str | None) -> None:
    with pytest.raises(UnknownModel) as excinfo:
        table.lookup(model)
    assert excinfo.value.model == model
    with pytest.raises(PricingError):
        table.cost_usd(model, Usage(input_tokens=1000, output_tokens=1000))


def test_longest_prefix_wins_whatever_the_row_order() -> None:
    # Both prefixes match "claude-opus-5-fast-…" (no version segment follows "claude-opus-5"): the longer wins.
    rows = """
web_search_per_request = 0.01
[[models]]
prefixes = ["claude-opus-5"]
input = 5
cache_write_5m = 6.25
cache_write_1h = 10
cache_read = 0.5
output = 25
[[models]]
prefixes = ["claude-opus-5-fast", "claude-opus-5-5"]
input = 4
cache_write_5m = 5
cache_write_1h = 8
cache_read = 0.2
output = 20
"""
    forward = PriceTable.from_toml(rows)
    head, first, second = rows.split("[[models]]")
    backward = PriceTable.from_toml(head + "[[models]]" + second + "[[models]]" + first)
    for table in (forward, backward):
        assert table.lookup("claude-opus-5-fast-20261001").prefix == "claude-opus-5-fast"
        assert table.lookup("claude-opus-5-5-20261001").prefix == "claude-opus-5-5"
        assert table.lookup("claude-opus-5-20260101").prefix == "claude-opus-5"


def test_prefix_matches() -> None:
    assert prefix_matches("claude-opus-4", "claude-opus-4")
    assert prefix_matches("claude-opus-4-20250514", "claude-opus-4")
    assert prefix_matches("claude-opus-4@20250514", "claude-opus-4")
    assert not prefix_matches("claude-opus-4-5", "claude-opus-4")
    assert not prefix_matches("claude-opus-4.5", "claude-opus-4")
    assert not prefix_matches("claude-opus-45", "claude-opus-4")
    assert not prefix_matches("claude-opus-4x", "claude-opus-4")
    assert not prefix_matches("claude-opus", "claude-opus-4")


def test_mixed_usage_cost(table: PriceTable) -> None:
    usage = Usage(input_tokens=1234, cache_write_5m=2000, cache_write_1h=300, cache_read=45_678,
                  output_tokens=789, web_searches=3)
    for model, prices in PRICED:
        assert table.cost_usd(model, usage) == expected_cost(prices, usage), model


def test_cost_is_quantized_to_micro_dollars_half_up(table: PriceTable) -> None:
    # 5 haiku-5-5 input tokens cost $0.0000005: half a micro-dollar rounds up; 4 tokens round down.
    assert table.cost_usd("claude-haiku-5-5", Usage(input_tokens=5)) == Decimal("0.000001")
    assert table.cost_usd("claude-haiku-5-5", Usage(input_tokens=4)) == Decimal("0.000000")
    assert table.cost_usd("claude-opus-5-5", Usage(output_tokens=1)).as_tuple().exponent == -6


def test_web_search_is_a_cent_per_request(table: PriceTable) -> None:
    assert table.cost_usd("claude-sonnet-4-5", Usage(web_searches=7)) == Decimal("0.07")


def test_inference_geo_us_costs_ten_percent_more_on_tokens(table: PriceTable) -> None:
    usage = Usage(input_tokens=100_000, cache_read=500_000, output_tokens=20_000, web_searches=2)
    prices = dict(PRICED)["claude-opus-5-5"]
    base = table.cost_usd("claude-opus-5-5", usage)
    assert base == expected_cost(prices, usage)
    assert table.cost_usd("claude-opus-5-5", usage, inference_geo="global") == base
    assert table.cost_usd("claude-opus-5-5", usage, inference_geo="") == base
    us = table.cost_usd("claude-opus-5-5", usage, inference_geo="us")
    assert us == expected_cost(prices, usage, Decimal("1.1"))
    assert us - base == ((base - Decimal("0.02")) * Decimal("0.1")).quantize(Decimal("0.000001"))
    assert table.cost_usd("claude-opus-5-5", usage, inference_geo="US") == us
    for bad_geo in ("mars", 1, ["us"]):  # the geo comes from the request body: anything may arrive
        with pytest.raises(UnknownInferenceGeo):
            table.cost_usd("claude-opus-5-5", usage, inference_geo=bad_geo)  # type: ignore[arg-type]


def test_haiku_5_5_long_prompt_costs_five_times_on_every_token_price(table: PriceTable) -> None:
    prices = dict(PRICED)["claude-haiku-5-5"]
    at_threshold = Usage(input_tokens=10_000, cache_write_5m=5_000, cache_write_1h=5_000, cache_read=80_000,
                         output_tokens=3_000, web_searches=1)
    assert at_threshold.prompt_tokens == 100_000
    assert table.cost_usd("claude-haiku-5-5", at_threshold) == expected_cost(prices, at_threshold)

    over = Usage(input_tokens=10_001, cache_write_5m=5_000, cache_write_1h=5_000, cache_read=80_000,
                 output_tokens=3_000, web_searches=1)
    assert table.cost_usd("claude-haiku-5-5", over) == expected_cost(prices, over, Decimal(5))
    # Cache reads alone can push the prompt over the threshold.
    reads = Usage(input_tokens=1, cache_read=100_000, output_tokens=10)
    assert table.cost_usd("claude-haiku-5-5", reads) == expected_cost(prices, reads, Decimal(5))
    # Combined with the US geo multiplier.
    assert table.cost_usd("claude-haiku-5-5", over, inference_geo="us") == expected_cost(
        prices, over, Decimal("5.5"))


def test_long_prompt_rule_is_haiku_5_5_only(table: PriceTable) -> None:
    big = Usage(input_tokens=50_000, cache_read=400_000, output_tokens=1_000)
    for model, prices in PRICED:
        if model != "claude-haiku-5-5":
            assert table.cost_usd(model, big) == expected_cost(prices, big), model


GOOD_ROW = """
[[models]]
prefixes = ["m-1"]
input = 1
cache_write_5m = 1
cache_write_1h = 1
cache_read = 1
output = 1
"""


@pytest.mark.parametrize("text", [
    "web_search_per_request = 0.01\n",  # no rows
    "web_search_per_request = 0.01\n" + GOOD_ROW + GOOD_ROW,  # a prefix priced twice
    "web_search_per_request = 0.01\n" + GOOD_ROW.replace("output = 1\n", ""),  # a price missing
    "web_search_per_request = 0.01\n" + GOOD_ROW.replace("input = 1", "input = -1"),
    "web_search_per_request = 0.01\n" + GOOD_ROW.replace("input = 1", 'input = "1"'),
    "web_search_per_request = 0.01\n" + GOOD_ROW.replace('["m-1"]', "[]"),
    "web_search_per_request = 0.01\n" + GOOD_ROW.replace('["m-1"]', '[""]'),
    "web_search_per_request = 0.01\n" + GOOD_ROW + "long_prompt_threshold = 1.5\n",
    GOOD_ROW,  # no web search price
    "web_search_per_request = 0.01\ninference_geo = 3\n" + GOOD_ROW,
    "this is [not toml",
])
def test_malformed_tables_are_refused(text: str) -> None:
    with pytest.raises(PricingError):
        PriceTable.from_toml(text)

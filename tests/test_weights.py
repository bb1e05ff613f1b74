"""Weighted tokens: the formula, model families, partial overrides, and why the defaults are what they are."""

from __future__ import annotations

import pydantic
import pytest

from gateway.usage import Usage
from gateway.weights import DEFAULT_FAMILIES, Weights


def test_each_token_kind_has_its_weight() -> None:
    w = Weights()
    opus = "claude-opus-5-5"
    assert w.weighted(opus, Usage(input_tokens=1000)) == 1000
    assert w.weighted(opus, Usage(cache_write_5m=1000)) == 1250
    assert w.weighted(opus, Usage(cache_write_1h=1000)) == 2000
    assert w.weighted(opus, Usage(cache_read=1000)) == 20
    assert w.weighted(opus, Usage(output_tokens=1000)) == 5000
    assert w.weighted(opus, Usage(web_searches=2)) == 100
    assert w.weighted(opus, Usage()) == 0


@pytest.mark.parametrize(("model", "multiplier"), [
    ("claude-opus-4-5-20251101", 1.0),
    ("claude-sonnet-4-5", 0.6),
    ("claude-sonnet-5-5", 0.6),
    ("claude-haiku-4-5-20251001", 0.25),
    ("claude-3-5-haiku-20241022", 0.25),
    ("CLAUDE-HAIKU-5-5", 0.25),
    ("some-future-model", 1.0),
    (None, 1.0),
    (["claude-haiku-4-5"], 1.0),  # a model id straight from a request body may be anything
])
def test_family_multiplier(model: str | None, multiplier: float) -> None:
    w = Weights()
    assert w.family_multiplier(model) == multiplier
    assert w.weighted(model, Usage(output_tokens=10_000)) == round(50_000 * multiplier)


def test_family_scales_tokens_but_not_web_searches() -> None:
    w = Weights()
    assert w.weighted("claude-haiku-4-5", Usage(input_tokens=400, web_searches=1)) == 400 * 0.25 + 50


def test_result_is_rounded_up_but_float_noise_adds_nothing() -> None:
    w = Weights()
    assert w.weighted("claude-opus-5-5", Usage(cache_read=1)) == 1  # 0.02 rounds up to a whole token
    assert w.weighted("claude-opus-5-5", Usage(cache_read=49)) == 1  # 0.98
    assert w.weighted("claude-opus-5-5", Usage(cache_read=51)) == 2  # 1.02
    assert 1.1 * 100 > 110  # binary floating point...
    assert Weights.from_json({"output": 1.1}).weighted(None, Usage(output_tokens=100)) == 110  # ...costs nothing
    assert Weights.from_json({"default_family": 1.1}).weighted(None, Usage(input_tokens=100)) == 110
    assert w.weighted("claude-sonnet-4-5", Usage(input_tokens=1)) == 1  # 0.6


def test_longest_family_name_wins_when_several_appear() -> None:
    w = Weights.from_json({"families": {"opus": 1.0, "opus-lite": 0.1}})
    assert w.family_multiplier("claude-opus-lite-1") == 0.1
    assert w.family_multiplier("claude-opus-5-5") == 1.0


def test_from_json_merges_partial_overrides() -> None:
    assert Weights.from_json(None) == Weights()
    assert Weights.from_json({}) == Weights()
    w = Weights.from_json({"output": 4, "families": {"Sonnet": 0.5, "mythos": 2.0}, "cache_read": None,
                           "not_a_weight": 3})
    assert w.output == 4.0
    assert w.cache_read == Weights().cache_read  # null means "not overridden"
    assert w.input == 1.0 and w.web_search == 50.0
    assert w.families == {"opus": 1.0, "sonnet": 0.5, "haiku": 0.25, "mythos": 2.0}
    assert w.family_multiplier("claude-mythos-5") == 2.0


@pytest.mark.parametrize("bad", [
    {"output": -1}, {"input": "lots"}, {"families": {"opus": -0.5}}, {"families": {"": 1.0}},
    {"cache_read": float("nan")}, {"web_search": float("inf")}, {"families": ["opus"]},
])
def test_from_json_refuses_invalid_weights(bad: dict[str, object]) -> None:
    with pytest.raises(pydantic.ValidationError):
        Weights.from_json(bad)


def test_weights_are_frozen_and_defaults_are_not_shared() -> None:
    w = Weights()
    with pytest.raises(pydantic.ValidationError):
        w.output = 1.0
    w.families["opus"] = 9.0  # the dict itself is per instance: no other Weights sees this
    assert Weights().families["opus"] == DEFAULT_FAMILIES["opus"] == 1.0


def test_overrides_round_trip() -> None:
    assert Weights().overrides() == {}
    custom = Weights.from_json({"output": 3, "default_family": 0.8, "families": {"haiku": 0.1, "x": 2}})
    assert custom.overrides() == {"output": 3.0, "default_family": 0.8, "families": {"haiku": 0.1, "x": 2.0}}
    assert Weights.from_json(custom.overrides()) == custom
    assert Weights.from_json(custom.to_json()) == custom


def heavy_claude_code_hour() -> list[Usage]:
    """60 turns of claude-opus-5-5 in one session: the context (read back from the prompt cache) grows from
    20k to 150k tokens; each turn writes ~2k new tokens to the cache, sends ~50 uncached and gets ~300 out."""
    turns = 60
    return [
        Usage(input_tokens=50, cache_write_5m=2000, cache_read=20_000 + (150_000 - 20_000) * turn // (turns - 1),
              output_tokens=300)
        for turn in range(turns)
    ]


def test_a_heavy_claude_code_hour_fits_the_default_weights() -> None:
    hour = heavy_claude_code_hour()
    assert hour[0].cache_read == 20_000 and hour[-1].cache_read == 150_000
    raw = sum(turn.total_tokens for turn in hour)
    weighted = sum(Weights().weighted("claude-opus-5-5", turn) for turn in hour)
    assert raw > 5_000_000  # a raw-token quota would be gone after a couple of such hours...
    assert weighted < 500_000  # ...weighted, the same hour is a tenth of that
    # Where the weighted total goes: cache reads no longer dominate.
    reads = sum(Weights().weighted("claude-opus-5-5", Usage(cache_read=turn.cache_read)) for turn in hour)
    writes_and_output = sum(
        Weights().weighted("claude-opus-5-5", Usage(cache_write_5m=t.cache_write_5m, output_tokens=t.output_tokens))
        for t in hour
    )
    assert reads < writes_and_output

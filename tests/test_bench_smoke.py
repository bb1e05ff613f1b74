"""The benchmark code must not rot: its load generator runs against a real in-process gateway here.

No timing assertions (speed is measured by ``python bench/run.py``, never by tests): these check that the load
generator counts what happened -- successes, HTTP errors, broken streams -- and produces latency percentiles.
"""

from __future__ import annotations

import math

from bench.loadgen import Target, make_bodies, percentile, run_load
from gateway.fakeupstream import Scripted, text_stream
from tests.harness import Harness


def test_percentile_interpolates_between_ranks() -> None:
    values = [40.0, 10.0, 30.0, 20.0]
    assert percentile(values, 0) == 10.0
    assert percentile(values, 50) == 25.0
    assert percentile(values, 100) == 40.0
    assert math.isnan(percentile([], 50))


def test_bodies_are_claude_code_sized_and_carry_a_nonce() -> None:
    small = make_bodies(50_000, stream=True, variants=1)[0]
    assert 40_000 < len(small) < 60_000
    assert b'"stream":true' in small and b"bench-nonce-" in small
    assert b'"stream":false' in make_bodies(50_000, stream=False, variants=1)[0]


async def test_loadgen_counts_streamed_requests_through_the_gateway(gateway: Harness) -> None:
    target = Target("gateway", gateway.url, (gateway.key,), "bearer")
    result = await run_load(target, make_bodies(50_000, stream=True, variants=2), concurrency=4, count=20)

    assert result.ok == 20
    assert not result.errors
    summary = result.summary()
    assert len(result.latencies_ms) == len(result.ttfb_ms) == 20
    assert 0 < summary["latency_ms"]["p50"] <= summary["latency_ms"]["p99"] <= summary["latency_ms"]["max"]
    assert 0 < summary["ttfb_ms"]["p50"] <= summary["latency_ms"]["max"]
    forwarded = [seen for seen in gateway.fake.seen if seen.path == "/v1/messages"]
    assert len(forwarded) == 20
    # every request was stamped with its own nonce, as the leak scanner must see new text each turn
    assert len({seen.body for seen in forwarded}) == 20


async def test_loadgen_counts_refusals_and_broken_streams_as_errors(gateway: Harness) -> None:
    refused = Target("bad key", gateway.url, ("not-a-key",), "bearer")
    result = await run_load(refused, make_bodies(50_000, stream=False, variants=1), concurrency=2, count=6)
    assert result.ok == 0
    assert result.errors == {"http_401": 6}
    assert "authentication_error" in result.error_samples[0]

    gateway.fake.queue(Scripted(events=text_stream(["a", "b", "c"]), drop_after=3))
    broken = await run_load(Target("gateway", gateway.url, (gateway.key,), "bearer"),
                            make_bodies(50_000, stream=True, variants=1), concurrency=1, count=3)
    assert broken.ok == 2
    assert sum(broken.errors.values()) == 1
    assert set(broken.errors) <= {"sse_error", "incomplete_stream"}

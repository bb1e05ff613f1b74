"""The Redis circuit breaker: open on failure, fail fast while cooling down, then one probe at a time."""

from __future__ import annotations

import pytest

from gateway.breaker import Breaker, RedisUnavailable
from gateway.redis_client import REDIS_DOWN


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_failure_opens_then_one_probe_at_a_time_closes_it() -> None:
    clock = Clock()
    breaker = Breaker(cooldown_s=0.25, clock=clock)
    assert breaker.acquire("a") and breaker.acquire("a")  # closed: everyone goes
    breaker.failure("a")
    assert breaker.is_open("a") and breaker.any_open and not breaker.is_open("b")
    assert not breaker.acquire("a")  # cooling down
    assert breaker.acquire("b")  # another target is unaffected
    with pytest.raises(RedisUnavailable) as raised:
        breaker.check("a")
    assert isinstance(raised.value, REDIS_DOWN)  # the gate treats it like any unreachable Redis

    clock.now += 0.25
    assert breaker.acquire("a")  # the probe
    assert not breaker.acquire("a")  # only one
    breaker.failure("a")  # the probe failed: cool down again
    assert not breaker.acquire("a")
    clock.now += 0.25
    assert breaker.acquire("a")
    breaker.release("a")  # the probe was cancelled: the next caller may probe
    assert breaker.acquire("a")
    breaker.success("a")
    assert not breaker.is_open("a") and not breaker.any_open
    assert breaker.acquire("a") and breaker.acquire("a")

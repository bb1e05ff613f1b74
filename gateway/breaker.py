"""A circuit breaker in front of Redis (one circuit per named target; the gate uses one for its Redis).

While a target answers, every call goes through. The first call that finds it unreachable opens the circuit:
for ``cooldown_s`` every call fails at once with :class:`RedisUnavailable` (the gate then applies its fail mode
without waiting out a timeout), after which exactly one call at a time is let through as a probe; the first
probe that succeeds closes the circuit again.

Why: without it every request during an outage waits for the Redis timeout, and when Redis comes back a flood
of concurrent calls hits half-broken connections. redis-py's cluster client is fragile there: an error on one
connection reinitialises the client and disconnects the connections the other calls are using, which can keep
a recovered cluster failing for a long time under concurrency. One probe at a time lets it heal first. For
the same reason a cluster gets one circuit, not one per node: a failure on one node reinitialises the whole
client anyway.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from redis.exceptions import ConnectionError as RedisConnectionError


class RedisUnavailable(RedisConnectionError):
    """Refused without trying: the circuit of this Redis target is open."""


@dataclass(slots=True)
class _Circuit:
    open_until: float = 0.0  # 0: closed
    probing: bool = False


class Breaker:
    def __init__(self, *, cooldown_s: float = 0.25, clock: Callable[[], float] = time.monotonic) -> None:
        self._cooldown_s = cooldown_s
        self._clock = clock
        self._circuits: dict[str, _Circuit] = {}

    def is_open(self, target: str) -> bool:
        circuit = self._circuits.get(target)
        return circuit is not None and circuit.open_until > 0

    @property
    def any_open(self) -> bool:
        return any(c.open_until > 0 for c in self._circuits.values())

    def acquire(self, target: str) -> bool:
        """May a call to ``target`` go ahead? True: it must report back with :meth:`success` or :meth:`failure`
        (or :meth:`release` if it ended without an answer either way)."""
        circuit = self._circuits.get(target)
        if circuit is None or circuit.open_until == 0:
            return True
        if circuit.probing or self._clock() < circuit.open_until:
            return False
        circuit.probing = True
        return True

    def check(self, target: str) -> None:
        """:meth:`acquire`, raising :class:`RedisUnavailable` when refused."""
        if not self.acquire(target):
            raise RedisUnavailable(f"Redis ({target}) is unreachable; retrying in the background")

    def success(self, target: str) -> None:
        circuit = self._circuits.get(target)
        if circuit is not None:
            circuit.open_until, circuit.probing = 0.0, False

    def failure(self, target: str) -> None:
        circuit = self._circuits.setdefault(target, _Circuit())
        circuit.open_until, circuit.probing = self._clock() + self._cooldown_s, False

    def release(self, target: str) -> None:
        """A call ended without telling whether the target is up (e.g. it was cancelled)."""
        circuit = self._circuits.get(target)
        if circuit is not None:
            circuit.probing = False

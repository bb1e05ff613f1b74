"""Per-student token buckets in Redis: typed async wrappers over the Lua scripts in ``lua/``.

One bucket per (course, student) and period. ``remaining = limit + carried + granted - used``; a request is
admitted while ``remaining - reserved > 0`` (``reserved`` = estimates of the student's requests in flight) and
fewer than ``max_inflight`` of them are in flight; it is then settled with its metered weighted usage.

Overshoot bound: a request is admitted only while the bucket still has room, and at most ``max_inflight`` run
at once, so a balance ends no lower than ``-(max_inflight x the largest single request's weighted usage)``.
With every request in flight at once, a fixed estimate ``E`` and ``A = remaining`` at the start, exactly
``min(ceil(A / E), max_inflight)`` are admitted.

Periods roll over lazily inside the scripts (no cron); see ``lua/bucket.lua`` for carry-over (a negative
left-over is not carried). Settles and grants are idempotent by id for ``IDEMPOTENCY_WINDOW_S``; reservations
of requests never settled (a worker died) are dropped after ``STALE_RESERVATION_S``. A bucket Redis had to
create reports ``fresh`` until :func:`gateway.rebuild.ensure_bucket` has reconciled it with Postgres.

Time is Redis ``TIME`` (every worker agrees), never the caller's clock. Tests construct the ledger with
``clock=``: only then is the clock's reading passed to the scripts as a time override. Needs Redis >= 5
(scripts that read ``TIME`` and then write rely on effects replication).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, TypeAlias, cast, get_args

from .keyspace import Keyspace
from .periods import BoundaryCache
from .policy import Policy
from .redis_client import ledger_concurrency
from .scripts import AnyRedis, ScriptCall, Scripts, schedule_argument
from .settings import Settings

Outcome: TypeAlias = Literal["admitted", "quota", "inflight", "suspended", "revoked", "key_unknown"]
OUTCOMES: frozenset[str] = frozenset(get_args(Outcome))
KEY_STATUSES = ("active", "suspended", "revoked")

# Reservation estimate: Claude Code resends the whole conversation every turn and nearly all of it is read
# from the prompt cache: ~4 bytes a token at the cache-read weight (0.02, see weights.py), plus a base for new
# input and output. Never max_tokens (always 128000). It only decides how many concurrent requests fit in the
# last of a bucket; the debit itself is metered.
ESTIMATE_TOKENS_PER_BYTE = 0.02 / 4
ESTIMATE_BASE = 1_000

STALE_RESERVATION_S = 15 * 60
IDEMPOTENCY_WINDOW_S = 7 * 86_400


def estimate_for(body_len: int) -> int:
    """Weighted tokens reserved for a request body of ``body_len`` bytes until it is settled."""
    return math.ceil(max(body_len, 0) * ESTIMATE_TOKENS_PER_BYTE) + ESTIMATE_BASE


@dataclass(frozen=True, slots=True)
class BucketState:
    """A student's bucket in the current period (weighted tokens; times in epoch seconds)."""

    limit: int
    carried: int
    granted: int
    used: int
    reserved: int
    inflight: int
    period_start: int
    period_end: int
    limit_hits: int
    fresh: bool = False  # not reconciled with Postgres yet: just created, or missing (rebuild.ensure_bucket)

    @property
    def allowance(self) -> int:
        """Everything the student may use this period."""
        return self.limit + self.carried + self.granted

    @property
    def remaining(self) -> int:
        """Allowance left after settled usage (negative after an overshoot)."""
        return self.allowance - self.used

    @property
    def available(self) -> int:
        """Remaining minus the reservations of requests in flight: admission needs this > 0."""
        return self.remaining - self.reserved

    @property
    def utilization(self) -> float:
        """Settled usage as a fraction of the allowance, clamped to [0, 1]."""
        if self.allowance <= 0:
            return 1.0
        return min(max(self.used / self.allowance, 0.0), 1.0)

    def passed(self, threshold: float) -> bool:
        """Whether utilization has reached ``threshold`` (a fraction)."""
        return self.utilization >= threshold


@dataclass(frozen=True, slots=True)
class Reservation:
    outcome: Outcome
    state: BucketState
    reason: str = ""  # the stored reason of a suspended / revoked key

    @property
    def admitted(self) -> bool:
        return self.outcome == "admitted"

    @property
    def fresh(self) -> bool:
        """The bucket was just created: reconcile it with Postgres (``rebuild.ensure_bucket``)."""
        return self.state.fresh


class KeyStatus(NamedTuple):
    status: str  # active | suspended | revoked
    reason: str


@dataclass(frozen=True, slots=True)
class BucketSnapshot:
    """A bucket as recorded in Postgres, for :meth:`Ledger.restore`."""

    period_start: int
    period_end: int
    carried: int
    granted: int
    used: int
    limit_hits: int


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _parse(reply: Sequence[Any]) -> tuple[str, str, BucketState]:
    outcome, reason, *numbers = reply
    limit, carried, granted, used, reserved, inflight, start, end, hits, fresh = (int(n) for n in numbers)
    state = BucketState(limit, carried, granted, used, reserved, inflight, start, end, hits, bool(fresh))
    return _text(outcome), _text(reason), state


class Ledger:
    """Typed access to the bucket scripts for one Redis (or Redis Cluster) and key prefix.

    ``default_max_inflight`` applies when neither the call nor the policy sets one (``None``: no limit).
    ``max_concurrency`` caps this ledger's Redis calls in flight (the rest wait): give it the pool size with a
    :class:`~redis.asyncio.cluster.RedisCluster`, whose per-node pools raise ``MaxConnectionsError`` instead of
    waiting for a connection. ``clock`` is for tests only: its reading replaces Redis ``TIME`` in the scripts.
    """

    def __init__(
        self,
        redis: AnyRedis,
        keyspace: Keyspace,
        *,
        clock: Callable[[], float] | None = None,
        default_max_inflight: int | None = None,
        max_concurrency: int | None = None,
        stale_after_s: int = STALE_RESERVATION_S,
        idempotency_window_s: int = IDEMPOTENCY_WINDOW_S,
    ) -> None:
        self._redis = redis
        self._keys = keyspace
        self._scripts = Scripts.register(redis)
        self._clock = clock
        self._default_max_inflight = default_max_inflight
        self._stale_after_s = stale_after_s
        self._window_s = idempotency_window_s
        self._bounds = BoundaryCache()
        self._schedules: dict[tuple[int, int, int, tuple[int, ...]], bytes] = {}
        self._slots: AbstractAsyncContextManager[Any] = (
            asyncio.Semaphore(max_concurrency) if max_concurrency else contextlib.nullcontext()
        )

    @property
    def keyspace(self) -> Keyspace:
        return self._keys

    @property
    def redis(self) -> AnyRedis:
        return self._redis

    async def written(self) -> None:
        """Every bucket script called so far is on its way to Redis (see ``AutoPipeline.written``)."""
        await self._scripts.written()

    def now(self) -> float:
        """This ledger's idea of now (the test clock, else this host's clock; the scripts use Redis TIME)."""
        return self._clock() if self._clock is not None else time.time()

    def _schedule(self, policy: Policy, now: float) -> bytes:
        """The scripts' schedule argument, made once per policy and boundary list."""
        bounds = self._bounds.get(policy, now)
        key = (policy.limit, policy.effective_carry_cap, policy.period_seconds, bounds)
        argument = self._schedules.get(key)
        if argument is None:
            if len(self._schedules) >= 1024:  # policies edited over a long run: start afresh
                self._schedules.clear()
            argument = self._schedules[key] = schedule_argument(*key[:3], self._stale_after_s, bounds)
        return argument

    async def _bucket_script(
        self, script: ScriptCall, policy: Policy, keys: list[str], *extra: str | int
    ) -> tuple[str, str, BucketState]:
        now = self.now()
        args = [now if self._clock is not None else "", self._schedule(policy, now), *extra]
        async with self._slots:
            reply = await script(keys, args)
        return _parse(reply)

    async def reserve(
        self,
        policy: Policy,
        course: str,
        student: str,
        jti: str,
        request_id: str,
        estimate: int,
        max_inflight: int | None = None,
    ) -> Reservation:
        """Check the key's status, then admit the request (reserving ``estimate``) or refuse it.

        ``key_unknown``: no status in Redis (load it from Postgres with :meth:`set_key_status`, then retry).
        """
        ks = self._keys
        outcome, reason, state = await self._bucket_script(
            self._scripts.reserve,
            policy,
            [ks.bucket(course, student), ks.inflight(course, student), ks.key_status(course, student, jti),
             ks.settled(course, student)],
            request_id,
            estimate,
            max_inflight or policy.max_inflight or self._default_max_inflight or 0,
        )
        if outcome not in OUTCOMES:
            raise RuntimeError(f"reserve script answered {outcome!r}")
        return Reservation(cast(Outcome, outcome), state, reason)

    async def settle(
        self, policy: Policy, course: str, student: str, request_id: str, weighted: int
    ) -> BucketState:
        """Debit ``weighted`` and release the reservation; replaying a ``request_id`` changes nothing."""
        ks = self._keys
        keys = [ks.bucket(course, student), ks.inflight(course, student), ks.settled(course, student)]
        _, _, state = await self._bucket_script(
            self._scripts.settle, policy, keys, request_id, weighted, self._window_s
        )
        return state

    async def grant(
        self, policy: Policy, course: str, student: str, grant_id: str, tokens: int
    ) -> BucketState:
        """Add ``tokens`` to the current period; replaying a ``grant_id`` changes nothing."""
        ks = self._keys
        keys = [ks.bucket(course, student), ks.inflight(course, student), ks.grants(course, student)]
        _, _, state = await self._bucket_script(self._scripts.grant, policy, keys, grant_id, tokens, self._window_s)
        return state

    async def read(self, policy: Policy, course: str, student: str) -> BucketState:
        """The bucket in the current period, without debiting (a missing bucket is not created)."""
        ks = self._keys
        keys = [ks.bucket(course, student), ks.inflight(course, student)]
        _, _, state = await self._bucket_script(self._scripts.read, policy, keys)
        return state

    async def restore(
        self, policy: Policy, course: str, student: str, snapshot: BucketSnapshot, *, merge: bool = False
    ) -> BucketState:
        """Set a bucket from the Postgres record.

        ``merge=False``: exactly ``snapshot``. ``merge=True``: only a bucket that is missing or still fresh, in
        the snapshot's period: the snapshot's totals are added to what it collected since it was created.
        """
        ks = self._keys
        _, _, state = await self._bucket_script(
            self._scripts.restore,
            policy,
            [ks.bucket(course, student), ks.inflight(course, student)],
            "merge" if merge else "exact",
            snapshot.period_start,
            snapshot.period_end,
            snapshot.carried,
            snapshot.granted,
            snapshot.used,
            snapshot.limit_hits,
        )
        return state

    async def set_key_status(
        self, course: str, student: str, jti: str, status: str, reason: str = ""
    ) -> None:
        if status not in KEY_STATUSES:
            raise ValueError(f"key status must be one of {', '.join(KEY_STATUSES)}, not {status!r}")
        async with self._slots:
            await self._redis.set(
                self._keys.key_status(course, student, jti), f"{status}|{reason}" if reason else status
            )

    async def key_status(self, course: str, student: str, jti: str) -> KeyStatus | None:
        """The stored status of a virtual key, or ``None`` when Redis has none (load it from Postgres)."""
        async with self._slots:
            value = await self._redis.get(self._keys.key_status(course, student, jti))
        if value is None:
            return None
        status, _, reason = _text(value).partition("|")
        return KeyStatus(status, reason)


@dataclass(frozen=True, slots=True)
class FreshContents:
    """What a fresh (not yet reconciled) bucket has collected since Redis created it."""

    created: float
    settled: frozenset[str]  # request ids debited into it
    grants: frozenset[str]  # grant ids applied to it


async def fresh_contents(ledger: Ledger, course: str, student: str) -> FreshContents | None:
    """None when the bucket is not fresh (missing, or already reconciled)."""
    ks = ledger.keyspace
    redis = ledger.redis
    created = await redis.hget(ks.bucket(course, student), "fresh")
    if created is None:
        return None
    since = float(created)
    settled = await redis.zrangebyscore(ks.settled(course, student), since, "+inf")
    grants = await redis.zrangebyscore(ks.grants(course, student), since, "+inf")
    return FreshContents(since, frozenset(map(_text, settled)), frozenset(map(_text, grants)))


def ledger_for(redis: AnyRedis, settings: Settings) -> Ledger:
    """The ledger the gateway and the CLI use, configured from the settings."""
    return Ledger(redis, Keyspace(settings.redis_prefix), max_concurrency=ledger_concurrency(settings))

"""The gate in front of every metered request: key status, quota reservation, settlement, and fail modes.

Every Redis call made here is bounded twice: by the client's socket and pool timeouts (``redis_client.py``) and
by a deadline of its own (``deadline_s``), and goes through a :class:`~gateway.breaker.Breaker`, so an
unreachable Redis costs a request at most one deadline and usually nothing (the circuit is open).

``closed`` (default): Redis unreachable -> 529 ``overloaded_error``. ``open``: the request is served without a
reservation (key status read from Postgres), its debit is queued -- in memory and in a local journal
(``debits.py``) -- and replayed, idempotently by request id, once Redis answers again, so the ledger ends exact.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import asyncpg

from .breaker import Breaker, RedisUnavailable
from .debits import DebitJournal, PendingDebit
from .errors import AuthenticationFailed, Overloaded, PermissionDenied, RateLimited
from .keys import VirtualKeyClaims
from .keystatus import KeyState, KeyStatusStore
from .ledger import BucketState, Ledger
from .metrics import Metrics
from .policy import Policy
from .quota_headers import exhausted_error
from .rebuild import ensure_bucket
from .redis_client import REDIS_DOWN

log = logging.getLogger(__name__)

T = TypeVar("T")

__all__ = ["REDIS_DOWN", "Admission", "Gate", "PendingDebit", "refuse_for_status"]

REDIS = "redis"  # the breaker's one circuit (see breaker.py for why a cluster gets one circuit too)
REPLAY_BATCH = 64
OVERLOADED = "The gateway's quota store is unreachable; try again shortly."


@dataclass(frozen=True, slots=True)
class Admission:
    state: BucketState | None  # None when admitted fail-open (Redis unreachable)
    refused: str = ""

    @property
    def fail_open(self) -> bool:
        return self.state is None


def refuse_for_status(state: KeyState, contact: str) -> None:
    if state.status == "active":
        return
    if state.status == "unknown":
        raise AuthenticationFailed("This gateway key is not known to the gateway (was it issued here?).")
    why = f" Reason: {state.reason}." if state.reason else ""
    raise PermissionDenied(
        f"Your gateway key has been {state.status}.{why} Contact {contact} to have it reinstated."
    )


class Gate:
    def __init__(self, ledger: Ledger, keys: KeyStatusStore, pool: asyncpg.Pool, *, fail_mode: str, contact: str,
                 max_inflight: int, metrics: Metrics, deadline_s: float = 1.0, breaker: Breaker | None = None,
                 journal: DebitJournal | None = None,
                 replay_interval_s: float = 0.25) -> None:
        self._ledger = ledger
        self._pool = pool
        self._keys = keys
        self._fail_open = fail_mode == "open"
        self._contact = contact
        self._max_inflight = max_inflight
        self._metrics = metrics
        self._deadline_s = deadline_s
        self._breaker = breaker or Breaker()
        self._journal = journal
        self._replay_interval_s = replay_interval_s
        self._pending: deque[PendingDebit] = deque()
        self._replaying = 0
        self._replayer: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def fail_mode(self) -> str:
        return "open" if self._fail_open else "closed"

    @property
    def pending_debits(self) -> int:
        """Debits waiting for Redis (queued or being replayed right now)."""
        return len(self._pending) + self._replaying

    async def start(self) -> None:
        """Open the debit journal and queue what earlier runs left in it."""
        if self._journal is not None:
            adopted = await asyncio.to_thread(self._journal.open)
            for debit in adopted:
                self._enqueue(debit, journal=False)

    async def sent(self) -> None:
        """The Redis calls started so far (an admission's reserve) are on the wire; Redis answers meanwhile."""
        await self._ledger.written()

    async def wait_replayed(self, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Wait until no debit is waiting for Redis (TimeoutError otherwise)."""
        async with asyncio.timeout(timeout):
            await self._idle.wait()

    # -- Redis calls -----------------------------------------------------------------------------------------

    async def _call(self, op: str, call: Callable[[], Awaitable[T]]) -> T:
        """One bounded Redis step through the breaker; REDIS_DOWN errors are counted and re-raised."""
        target = REDIS
        self._breaker.check(target)
        try:
            async with asyncio.timeout(self._deadline_s):
                result = await call()
        except REDIS_DOWN:
            self._breaker.failure(target)
            self._metrics.redis_errors.labels(op).inc()
            raise
        except BaseException:
            self._breaker.release(target)
            raise
        self._breaker.success(target)
        return result

    def _down(self) -> None:
        """Redis is unreachable: refuse (closed) or carry on without it (open)."""
        if not self._fail_open:
            self._metrics.fail_mode.labels("closed").inc()
            raise Overloaded(OVERLOADED)
        self._metrics.fail_mode.labels("open").inc()

    # -- the gate --------------------------------------------------------------------------------------------

    async def check_key(self, claims: VirtualKeyClaims) -> None:
        """For endpoints that are not metered (count_tokens, models, /quota)."""
        try:
            state = await self._call("key_status", lambda: self._keys.status(claims))
        except REDIS_DOWN:
            self._down()
            state = await self._keys.from_postgres(claims)
        refuse_for_status(state, self._contact)

    async def admit(self, claims: VirtualKeyClaims, policy: Policy, request_id: str, estimate: int) -> Admission:
        max_inflight = policy.max_inflight or self._max_inflight
        try:
            for _ in range(2):
                reservation = await self._call("reserve", lambda: self._ledger.reserve(
                    policy, claims.course, claims.student, claims.jti, request_id, estimate, max_inflight))
                outcome = reservation.outcome
                if outcome == "key_unknown":
                    state = await self._call("load_key", lambda: self._keys.load_into_redis(claims))
                    refuse_for_status(state, self._contact)
                    continue
                if outcome in ("suspended", "revoked"):
                    refuse_for_status(KeyState(outcome, reservation.reason), self._contact)
                if outcome == "quota":
                    self._metrics.rate_limited.labels("quota").inc()
                    raise exhausted_error(reservation.state, policy.tz, contact=self._contact)
                if outcome == "inflight":
                    self._metrics.rate_limited.labels("inflight").inc()
                    raise RateLimited(
                        f"Too many requests in flight for your key (at most {max_inflight} at once); "
                        "wait for one to finish.",
                        headers={"retry-after": "1"},
                    )
                if reservation.fresh:
                    return Admission(await self._reconcile(claims, policy, reservation.state))
                return Admission(reservation.state)
        except REDIS_DOWN as exc:
            try:
                self._down()
                refuse_for_status(await self._keys.from_postgres(claims), self._contact)
            except BaseException:
                if not isinstance(exc, RedisUnavailable):
                    # The reservation may have reached Redis (a stalled server runs it when it wakes up): settle
                    # nothing against it once Redis is back, so that it does not hold an in-flight slot.
                    self._enqueue(PendingDebit(policy, claims.course, claims.student, request_id, 0))
                raise
            return Admission(None)  # served; its settle releases any reservation
        raise AuthenticationFailed("This gateway key is not known to the gateway (was it issued here?).")

    async def _reconcile(self, claims: VirtualKeyClaims, policy: Policy, state: BucketState) -> BucketState:
        """A bucket Redis had to create (first use, or Redis lost its data): add the Postgres record to it.
        The request is admitted either way: if this fails, the next request tries again. Mostly Postgres work,
        so it is not bounded by the Redis deadline (a slow query is not a Redis outage)."""
        try:
            return await ensure_bucket(self._pool, self._ledger, policy, claims.course, claims.student)
        except (*REDIS_DOWN, asyncpg.PostgresError) as exc:
            log.warning("could not reconcile %s/%s's new bucket with Postgres: %s", claims.course, claims.student, exc)
            return state

    async def read(self, policy: Policy, course: str, student: str) -> BucketState:
        """A bucket to show (``/quota``), bounded like every gate call; Redis unreachable -> 529 in either fail
        mode (there is nothing true to show)."""
        try:
            return await self._call("read", lambda: self._ledger.read(policy, course, student))
        except REDIS_DOWN:
            raise Overloaded(OVERLOADED) from None

    async def settle(self, claims: VirtualKeyClaims, policy: Policy, request_id: str, weighted: int,
                     admission: Admission) -> BucketState | None:
        debit = PendingDebit(policy, claims.course, claims.student, request_id, weighted)
        if self._pending and admission.fail_open:
            self._enqueue(debit)
            return None
        try:
            return await self._settle(debit, "settle")
        except REDIS_DOWN:
            self._enqueue(debit)
            return None

    async def _settle(self, debit: PendingDebit, op: str) -> BucketState:
        return await self._call(op, lambda: self._ledger.settle(
            debit.policy, debit.course, debit.student, debit.request_id, debit.weighted))

    # -- queued debits ---------------------------------------------------------------------------------------

    def _enqueue(self, debit: PendingDebit, *, journal: bool = True) -> None:
        self._pending.append(debit)
        self._idle.clear()
        self._metrics.debits_queued.inc()
        if journal and self._journal is not None:
            self._journal.append(debit)
        if self._replayer is None or self._replayer.done():
            self._replayer = asyncio.create_task(self._replay(), name="debit-replayer")

    async def _replay(self) -> None:
        """Settle the queued debits once Redis answers, a batch at a time (one pipelined round trip)."""
        while self._pending:
            batch = [self._pending.popleft() for _ in range(min(REPLAY_BATCH, len(self._pending)))]
            self._replaying = len(batch)
            try:
                results = await asyncio.gather(*(self._settle(d, "replay") for d in batch), return_exceptions=True)
            finally:
                self._replaying = 0
            failed = [debit for debit, result in zip(batch, results, strict=True) if isinstance(result, BaseException)]
            for debit, result in zip(batch, results, strict=True):
                if isinstance(result, BaseException) and not isinstance(result, REDIS_DOWN):
                    log.error("replaying the debit of %s failed; will retry: %r", debit.request_id, result)
            self._metrics.debits_replayed.inc(len(batch) - len(failed))
            if failed:
                self._pending.extendleft(reversed(failed))
                await asyncio.sleep(self._replay_interval_s)  # retry pacing while Redis is down
        if self._journal is not None:
            self._journal.reset()
        self._idle.set()
        log.info("replayed all queued debits")

    async def close(self, timeout_s: float = 5.0) -> None:
        """Give queued debits ``timeout_s`` to replay; what remains stays journaled for the next start."""
        if self._replayer is not None and not self._replayer.done():
            try:
                await asyncio.wait_for(asyncio.shield(self._replayer), timeout_s)
            except TimeoutError:
                left = self.pending_debits
                self._replayer.cancel()
                await asyncio.gather(self._replayer, return_exceptions=True)
                where = "in the debit journal for the next start" if self._journal is not None else "nowhere"
                log.error("%d debit(s) could not be replayed to Redis before shutdown; they are kept %s "
                          "(else run `gateway ledger rebuild`)", left, where)
        if self._journal is not None:
            await asyncio.to_thread(self._journal.close)

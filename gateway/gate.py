"""The gate in front of every metered request: key status, quota reservation, settlement, and fail modes.

``closed`` (default): Redis unreachable -> 529 ``overloaded_error``. ``open``: the request is served without a
reservation, its debit is queued in-process and replayed (idempotently, by request id) once Redis answers again,
so the ledger ends exact. Key status then comes from Postgres.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from dataclasses import dataclass

import asyncpg
from redis.exceptions import RedisError

from .errors import AuthenticationFailed, Overloaded, PermissionDenied, RateLimited
from .keys import VirtualKeyClaims
from .keystatus import KeyState, KeyStatusStore
from .ledger import BucketState, Ledger
from .policy import Policy
from .quota_headers import exhausted_error
from .rebuild import ensure_bucket

log = logging.getLogger(__name__)

REDIS_DOWN = (RedisError, OSError, asyncio.TimeoutError)


@dataclass(frozen=True, slots=True)
class Admission:
    state: BucketState | None  # None when admitted fail-open (Redis unreachable)
    refused: str = ""

    @property
    def fail_open(self) -> bool:
        return self.state is None


@dataclass(frozen=True, slots=True)
class PendingDebit:
    policy: Policy
    course: str
    student: str
    request_id: str
    weighted: int


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
                 max_inflight: int) -> None:
        self._ledger = ledger
        self._pool = pool
        self._keys = keys
        self._fail_open = fail_mode == "open"
        self._contact = contact
        self._max_inflight = max_inflight
        self._pending: deque[PendingDebit] = deque()
        self._replayer: asyncio.Task[None] | None = None
        self.redis_errors = 0

    @property
    def pending_debits(self) -> int:
        return len(self._pending)

    async def check_key(self, claims: VirtualKeyClaims) -> None:
        """For endpoints that are not metered (count_tokens, models, /quota)."""
        try:
            state = await self._keys.status(claims)
        except REDIS_DOWN:
            self.redis_errors += 1
            if not self._fail_open:
                raise Overloaded("The gateway's quota store is unreachable; try again shortly.") from None
            state = await self._keys.from_postgres(claims)
        refuse_for_status(state, self._contact)

    async def admit(self, claims: VirtualKeyClaims, policy: Policy, request_id: str, estimate: int) -> Admission:
        max_inflight = policy.max_inflight or self._max_inflight
        try:
            for _ in range(2):
                reservation = await self._ledger.reserve(
                    policy, claims.course, claims.student, claims.jti, request_id, estimate, max_inflight
                )
                outcome = reservation.outcome
                if outcome == "key_unknown":
                    state = await self._keys.load_into_redis(claims)
                    refuse_for_status(state, self._contact)
                    continue
                if outcome in ("suspended", "revoked"):
                    refuse_for_status(await self._keys.status(claims), self._contact)
                if outcome == "quota":
                    raise exhausted_error(reservation.state, policy.tz, contact=self._contact)
                if outcome == "inflight":
                    raise RateLimited(
                        f"Too many requests in flight for your key (at most {max_inflight} at once); "
                        "wait for one to finish.",
                        headers={"retry-after": "1"},
                    )
                if reservation.fresh:
                    return Admission(await self._reconcile(claims, policy, reservation.state))
                return Admission(reservation.state)
        except REDIS_DOWN:
            self.redis_errors += 1
            if not self._fail_open:
                raise Overloaded("The gateway's quota store is unreachable; try again shortly.") from None
            refuse_for_status(await self._keys.from_postgres(claims), self._contact)
            return Admission(None)
        raise AuthenticationFailed("This gateway key is not known to the gateway (was it issued here?).")

    async def _reconcile(self, claims: VirtualKeyClaims, policy: Policy, state: BucketState) -> BucketState:
        """A bucket Redis had to create (first use, or Redis lost its data): add the Postgres record to it."""
        try:
            return await ensure_bucket(self._pool, self._ledger, policy, claims.course, claims.student)
        except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
            log.warning("could not reconcile %s/%s's new bucket with Postgres: %s", claims.course, claims.student, exc)
            return state

    async def settle(self, claims: VirtualKeyClaims, policy: Policy, request_id: str, weighted: int,
                     admission: Admission) -> BucketState | None:
        debit = PendingDebit(policy, claims.course, claims.student, request_id, weighted)
        if admission.fail_open and self._pending:
            self._queue(debit)
            return None
        try:
            return await self._ledger.settle(policy, claims.course, claims.student, request_id, weighted)
        except REDIS_DOWN:
            self.redis_errors += 1
            self._queue(debit)
            return None

    def _queue(self, debit: PendingDebit) -> None:
        self._pending.append(debit)
        if self._replayer is None or self._replayer.done():
            self._replayer = asyncio.create_task(self._replay())

    async def _replay(self, interval_s: float = 0.25) -> None:
        while self._pending:
            debit = self._pending[0]
            try:
                await self._ledger.settle(debit.policy, debit.course, debit.student, debit.request_id,
                                          debit.weighted)
            except REDIS_DOWN:
                await asyncio.sleep(interval_s)  # retry pacing while Redis is down, not synchronisation
                continue
            self._pending.popleft()
        log.info("replayed all queued debits")

    async def close(self, timeout_s: float = 5.0) -> None:
        if self._replayer is not None and not self._replayer.done():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._replayer), timeout_s)
            self._replayer.cancel()
        if self._pending:
            log.error("%d debits could not be replayed to Redis before shutdown; run `gateway ledger rebuild`",
                      len(self._pending))

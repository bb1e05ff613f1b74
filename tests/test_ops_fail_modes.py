"""Issue 7: Redis unreachable for 30 s under a steady load, in each fail mode (GATEWAY_FAIL_MODE).

The outage is a SIGSTOP of a redis-server of our own: the kernel still accepts connections and reads commands,
but nothing answers -- the worst kind of unreachable (a refused connection fails fast by itself). Redis stays
stopped for ``OUTAGE_S`` and at least until the load has met the outage for ``DURING`` whole requests.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from gateway import appkeys
from tests.cluster import redis_server
from tests.harness import Harness, running_gateway
from tests.ops_support import redis_pid

STUDENTS = ("ana", "ben", "cy")
LOOPS_PER_STUDENT = 2
DURING = 24  # requests that start and end inside the outage before Redis comes back
REQUEST_DEADLINE_S = 5.0  # generous: the gate bounds a Redis step at 1 s
WAIT_S = 30.0
OUTAGE_S = 30.0  # as the issue asks


@dataclass
class Result:
    phase: str  # "warm-up", "before", "outage", "after" or "straddling"
    status: int
    error_type: str | None


@dataclass
class Load:
    """Sequential streamed requests, ``LOOPS_PER_STUDENT`` at a time per student, until stopped."""

    h: Harness
    keys: dict[str, str]
    phase: str = "before"
    results: list[Result] = field(default_factory=list)
    stopping: bool = False
    progress: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def run(self) -> None:
        async with aiohttp.ClientSession() as session:
            for key in self.keys.values():  # each bucket is created (and reconciled) before the concurrent load
                status, _ = await self._one(session, key)
                self.results.append(Result("warm-up", status, None))
            await asyncio.gather(*(self._loop(session, key) for key in self.keys.values()
                                   for _ in range(LOOPS_PER_STUDENT)))

    async def _loop(self, session: aiohttp.ClientSession, key: str) -> None:
        while not self.stopping:
            started = self.phase
            status, body = await asyncio.wait_for(self._one(session, key), REQUEST_DEADLINE_S)
            ended = self.phase
            error = orjson.loads(body)["error"]["type"] if status != 200 else None
            if status == 200:
                assert body.rstrip().endswith(b'{"type":"message_stop"}'), body[-200:]
            async with self.progress:
                self.results.append(Result(started if started == ended else "straddling", status, error))
                self.progress.notify_all()

    async def _one(self, session: aiohttp.ClientSession, key: str) -> tuple[int, bytes]:
        async with session.post(self.h.url + "/v1/messages", headers={"x-api-key": key}, json={
                "model": "claude-opus-5-5", "max_tokens": 128000, "stream": True,
                "messages": [{"role": "user", "content": "keep going"}]}) as resp:
            return resp.status, await resp.read()

    def count(self, phase: str, status: int | None = None) -> int:
        return sum(1 for r in self.results if r.phase == phase and (status is None or r.status == status))

    async def wait_for(self, phase: str, n: int, status: int | None = None) -> None:
        async with asyncio.timeout(WAIT_S), self.progress:
            await self.progress.wait_for(lambda: self.count(phase, status) >= n)


@pytest.fixture
def own_redis() -> Iterator[str]:
    with redis_server() as url:
        yield url


async def _status(url: str) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        return resp.status, orjson.loads(await resp.read())


async def _metric(h: Harness, name: str) -> float:
    async with aiohttp.ClientSession() as session, session.get(h.url + "/metrics") as resp:
        text = await resp.text()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and not line.startswith("#"))


async def _outage(h: Harness, load: Load, pid: int) -> None:
    """Stop Redis under the load, check the gateway while it is stopped, bring it back, let the load recover."""
    await load.wait_for("before", 3 * len(STUDENTS))
    os.kill(pid, signal.SIGSTOP)
    outage_ends = asyncio.get_running_loop().time() + OUTAGE_S
    try:
        load.phase = "outage"
        await load.wait_for("outage", DURING)
        status, ready = await _status(h.url + "/readyz")
        assert status == 503 and ready["redis"] != "ok" and ready["postgres"] == "ok"
        # The length of the outage is the condition under test, not a wait for something to happen.
        await asyncio.sleep(max(0.0, outage_ends - asyncio.get_running_loop().time()))
    finally:
        os.kill(pid, signal.SIGCONT)
    load.phase = "after"
    await load.wait_for("after", 2 * len(STUDENTS), status=200)
    load.stopping = True


async def _assert_ledger_exact(h: Harness) -> None:
    """Every bucket's ``used`` equals the metered usage Postgres recorded; no reservation is left behind."""
    await h.app[appkeys.GATE].wait_replayed(timeout=WAIT_S)
    await h.flush()
    policy = await h.app[appkeys.POLICIES].get(h.course)
    for student in STUDENTS:
        state = await h.stores.ledger.read(policy, h.course, student)
        metered = await h.stores.pool.fetchval(
            "SELECT COALESCE(SUM(weighted), 0) FROM usage_events WHERE course_id = $1 AND student_id = $2",
            h.course, student)
        assert metered > 0
        assert (state.used, state.inflight, state.reserved) == (metered, 0, 0), student


async def test_fail_closed_answers_529_while_redis_is_stopped(own_redis: str, aiohttp_server: Any, pg_dsn: str,
                                                              redis_prefix: str, tmp_path: Path) -> None:
    async with running_gateway(aiohttp_server, pg_dsn=pg_dsn, redis_url=own_redis, redis_prefix=redis_prefix,
                               data_dir=tmp_path, fail_mode="closed") as h:
        load = Load(h, {s: await h.issue_key(s) for s in STUDENTS})
        runner = asyncio.create_task(load.run())
        await _outage(h, load, redis_pid(own_redis))
        await runner
        during = [r for r in load.results if r.phase == "outage"]
        assert len(during) >= DURING
        assert {(r.status, r.error_type) for r in during} == {(529, "overloaded_error")}
        assert all(r.status == 200 for r in load.results if r.phase in ("warm-up", "before"))
        # a 529 never reaches upstream: it saw exactly the requests that were answered 200
        assert len(h.fake.seen) == sum(1 for r in load.results if r.status == 200)
        assert (await _status(h.url + "/readyz"))[0] == 200
        assert await _metric(h, "gateway_redis_down_requests_total{mode=\"closed\"}") >= DURING
        assert await _metric(h, "gateway_redis_errors_total") >= 1
        await _assert_ledger_exact(h)


async def test_fail_open_serves_and_replays_every_debit_exactly(own_redis: str, aiohttp_server: Any, pg_dsn: str,
                                                                redis_prefix: str, tmp_path: Path) -> None:
    async with running_gateway(aiohttp_server, pg_dsn=pg_dsn, redis_url=own_redis, redis_prefix=redis_prefix,
                               data_dir=tmp_path, fail_mode="open") as h:
        load = Load(h, {s: await h.issue_key(s) for s in STUDENTS})
        runner = asyncio.create_task(load.run())
        await _outage(h, load, redis_pid(own_redis))
        await runner
        assert load.count("outage") >= DURING
        assert {r.status for r in load.results} == {200}  # nobody noticed the outage
        assert len(h.fake.seen) == len(load.results)
        assert await _metric(h, "gateway_redis_down_requests_total{mode=\"open\"}") >= DURING
        assert await _metric(h, "gateway_debits_queued_total") >= DURING
        await _assert_ledger_exact(h)
        assert h.app[appkeys.GATE].pending_debits == 0
        journal = list((tmp_path / "debits").glob("*.jsonl"))
        assert all(p.stat().st_size == 0 for p in journal)  # replayed, so the journal was emptied

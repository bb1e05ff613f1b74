"""Debits queued while Redis is unreachable survive a restart: the local journal, and a gateway shut down in the
middle of an outage (fail mode open) whose successor replays what it left, so the ledger still ends exact."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway import appkeys
from gateway.debits import DebitJournal, PendingDebit
from gateway.policy import Policy
from tests.cluster import redis_server
from tests.harness import running_gateway
from tests.ops_support import redis_pid

POLICY = Policy(course="c1", limit=1000, period_seconds=604800)


def _debits(n: int) -> list[PendingDebit]:
    return [PendingDebit(POLICY, "c1", f"s{i}", f"req_{i}", 10 * i) for i in range(n)]


def test_a_dead_workers_journal_is_adopted_once(tmp_path: Path) -> None:
    first = DebitJournal(tmp_path, "w1")
    assert first.open() == []
    for debit in _debits(3):
        first.append(debit)
    live = DebitJournal(tmp_path, "w3")
    live.open()
    live.append(_debits(5)[4])
    assert DebitJournal(tmp_path, "probe").open() == []  # both journals are held by live workers
    first.close()  # w1 is gone, leaving 3 debits behind

    second = DebitJournal(tmp_path, "w2")
    assert second.open() == _debits(3)
    assert not first.path.exists() and live.path.exists()
    assert DebitJournal(tmp_path, "w4").open() == []  # adopted once, not twice
    second.reset()
    second.close()
    assert not second.path.exists()  # nothing left to replay: no file
    live.close()


def test_a_torn_last_line_is_skipped(tmp_path: Path) -> None:
    journal = DebitJournal(tmp_path, "w1")
    journal.open()
    journal.append(_debits(2)[1])
    journal.close()
    with (tmp_path / "w1.jsonl").open("ab") as f:
        f.write(b'{"policy": {"cour')  # the process died in the middle of a write
    assert DebitJournal(tmp_path, "w2").open() == _debits(2)[1:]


@pytest.fixture
def own_redis() -> Iterator[str]:
    with redis_server() as url:
        yield url


async def _stream(session: aiohttp.ClientSession, url: str, key: str) -> None:
    async with session.post(url + "/v1/messages", headers={"x-api-key": key}, json={
            "model": "claude-opus-5-5", "max_tokens": 1000, "stream": True,
            "messages": [{"role": "user", "content": "hello"}]}) as resp:
        assert resp.status == 200
        await resp.read()


async def test_debits_queued_when_the_gateway_stops_mid_outage_are_replayed_by_the_next_one(
        own_redis: str, aiohttp_server: Any, pg_dsn: str, redis_prefix: str, tmp_path: Path) -> None:
    pid = redis_pid(own_redis)
    common: dict[str, Any] = {"pg_dsn": pg_dsn, "redis_url": own_redis, "redis_prefix": redis_prefix,
                              "data_dir": tmp_path, "fail_mode": "open"}
    async with running_gateway(aiohttp_server, **common) as h:
        async with aiohttp.ClientSession() as session:
            await _stream(session, h.url, h.key)  # the bucket exists before the outage
            os.kill(pid, signal.SIGSTOP)
            try:
                for _ in range(5):
                    await _stream(session, h.url, h.key)
                gate = h.app[appkeys.GATE]
                assert gate.pending_debits == 5
                await gate.close(timeout_s=0.1)  # shutting down while Redis is still unreachable
                await h.flush()
            finally:
                os.kill(pid, signal.SIGCONT)
        policy = await h.app[appkeys.POLICIES].get(h.course)
        used_before = (await h.stores.ledger.read(policy, h.course, "alice")).used
    journal = list((tmp_path / "debits").glob("*.jsonl"))
    assert len(journal) == 1 and len(journal[0].read_bytes().splitlines()) == 5

    async with running_gateway(aiohttp_server, **common) as h2:  # the next start adopts and replays them
        await h2.app[appkeys.GATE].wait_replayed(timeout=30)
        state = await h2.stores.ledger.read(policy, h2.course, "alice")
        metered = await h2.stores.pool.fetchval(
            "SELECT SUM(weighted) FROM usage_events WHERE course_id = $1 AND student_id = 'alice'", h2.course)
        assert state.used == metered > used_before
        assert (state.inflight, state.reserved) == (0, 0)

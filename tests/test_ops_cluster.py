"""The gateway on a 3-node Redis Cluster (GATEWAY_REDIS_CLUSTER=1): students spread over the nodes, key status
and pub/sub invalidation work, and a cluster that stalls completely gets 529s (fail mode closed) and then
serves again. Under concurrency redis-py's cluster client keeps failing a share of calls long after such a
stall unless calls resume one probe at a time (the gate's circuit breaker): the last test checks that."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from gateway import appkeys
from gateway.app import INVALIDATION
from gateway.invalidation import publish_invalidation
from tests.cluster import redis_cluster
from tests.harness import Harness, running_gateway
from tests.ops_support import redis_pid

pytestmark = pytest.mark.cluster

STUDENTS = tuple(f"st{i}" for i in range(9))
WAIT_S = 30.0
REQUEST_DEADLINE_S = 20.0  # generous: a gate step is cut at 2 x the 2 s Redis timeout; the box may be loaded
PER_STUDENT = 6  # concurrent requests per student in the stall test (the in-flight limit is 8)


@pytest.fixture(scope="module")
def cluster_url() -> Iterator[str]:
    with redis_cluster(3) as url:
        yield url


async def _message(session: aiohttp.ClientSession, h: Harness, key: str) -> tuple[int, dict[str, Any]]:
    payload = {"model": "claude-opus-5-5", "max_tokens": 1000, "stream": True,
               "messages": [{"role": "user", "content": "hi"}]}
    async with asyncio.timeout(REQUEST_DEADLINE_S), session.post(
            h.url + "/v1/messages", headers={"x-api-key": key}, json=payload) as resp:
        body = await resp.read()
        return resp.status, (orjson.loads(body) if resp.status != 200 else {})


async def test_the_gateway_on_a_cluster(cluster_url: str, aiohttp_server: Any, pg_dsn: str, redis_prefix: str,
                                        tmp_path: Path) -> None:
    async with running_gateway(aiohttp_server, pg_dsn=pg_dsn, redis_url=cluster_url, redis_prefix=redis_prefix,
                               data_dir=tmp_path, redis_cluster=True) as h:
        keys = {s: await h.issue_key(s) for s in STUDENTS}
        redis = h.stores.redis  # initialised by the key issues
        ledger = h.app[appkeys.LEDGER]
        nodes = {redis.get_node_from_key(ledger.keyspace.bucket(h.course, s)).name for s in STUDENTS}  # type: ignore[union-attr]
        assert len(nodes) == 3
        async with aiohttp.ClientSession() as session:
            for _ in range(2):
                results = await asyncio.gather(*(_message(session, h, k) for k in keys.values()))
                assert {status for status, _ in results} == {200}
            await h.stores.keyring.set_status("test", h.course, "st0", "suspended", reason="ops test")
            status, body = await _message(session, h, keys["st0"])
            assert status == 403 and body["error"]["type"] == "permission_error"

        await h.flush()
        policy = await h.app[appkeys.POLICIES].get(h.course)
        for student in STUDENTS:
            state = await h.stores.ledger.read(policy, h.course, student)
            metered = await h.stores.pool.fetchval(
                "SELECT SUM(weighted) FROM usage_events WHERE course_id = $1 AND student_id = $2 AND status = 200",
                h.course, student)
            assert state.used == metered > 0

        listener = h.app[INVALIDATION]
        await asyncio.wait_for(listener.subscribed.wait(), WAIT_S)
        before = listener.received
        await publish_invalidation(h.stores.redis, ledger.keyspace, h.course)  # any node: the bus spreads it
        deadline = time.monotonic() + WAIT_S
        while listener.received == before:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)  # polling interval against a deadline


async def test_a_stalled_cluster_gets_529s_then_serves_again(cluster_url: str, aiohttp_server: Any, pg_dsn: str,
                                                            redis_prefix: str, tmp_path: Path) -> None:
    async with running_gateway(aiohttp_server, pg_dsn=pg_dsn, redis_url=cluster_url, redis_prefix=redis_prefix,
                               data_dir=tmp_path, redis_cluster=True, fail_mode="closed") as h:
        keys = [await h.issue_key(s) for s in STUDENTS] * PER_STUDENT  # 54 requests at once
        redis = h.stores.redis  # initialised by the key issues
        pids = [redis_pid(f"redis://{node.host}:{node.port}") for node in redis.get_nodes()]  # type: ignore[union-attr]
        async with aiohttp.ClientSession() as session:
            assert {s for s, _ in await asyncio.gather(*(_message(session, h, k) for k in keys))} == {200}
            for pid in pids:
                os.kill(pid, signal.SIGSTOP)
            try:
                for _ in range(3):  # the first wave times out, the next ones meet open circuits
                    results = await asyncio.gather(*(_message(session, h, k) for k in keys))
                    assert {(s, b["error"]["type"]) for s, b in results} == {(529, "overloaded_error")}
            finally:
                for pid in pids:
                    os.kill(pid, signal.SIGCONT)
            deadline = time.monotonic() + WAIT_S
            while {s for s, _ in await asyncio.gather(*(_message(session, h, k) for k in keys))} != {200}:
                assert time.monotonic() < deadline, "the gateway did not recover"
                await asyncio.sleep(0.1)  # polling interval against a deadline
            for _ in range(8):  # and it stays recovered under concurrency
                assert {s for s, _ in await asyncio.gather(*(_message(session, h, k) for k in keys))} == {200}

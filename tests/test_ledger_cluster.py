"""The ledger on a 3-node Redis Cluster started by the test: every script touches one slot (no CROSSSLOT)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from redis.asyncio.cluster import RedisCluster

from gateway.keyspace import Keyspace
from gateway.ledger import BucketSnapshot, Ledger
from tests.cluster import redis_cluster
from tests.ledger_support import POOL_SIZE, WEEK, Clock, burst, make_policy, waves

pytestmark = pytest.mark.cluster

COURSE = "comp{1000}"  # braces in names must not break the hash tag


@pytest.fixture(scope="module")
def cluster_url() -> Iterator[str]:
    with redis_cluster(3) as url:
        yield url


@pytest.fixture
async def cluster(cluster_url: str) -> AsyncIterator[RedisCluster]:
    client = RedisCluster.from_url(cluster_url, max_connections=POOL_SIZE)
    await client.initialize()
    yield client
    await client.aclose()


@pytest.fixture
def ledger(cluster: RedisCluster, ledger_clock: Clock) -> Ledger:
    # the cluster client's per-node pools refuse (not wait) past max_connections: the ledger queues instead
    return Ledger(cluster, Keyspace("gwc"), clock=ledger_clock, max_concurrency=POOL_SIZE)


async def test_students_spread_over_the_nodes_and_every_script_runs(cluster: RedisCluster, ledger: Ledger,
                                                                    ledger_clock: Clock) -> None:
    policy = make_policy(carry_over=True)
    students = [f"s{i}" for i in range(12)]
    keys = Keyspace("gwc")
    nodes = {cluster.get_node_from_key(keys.bucket(COURSE, s)) for s in students}
    assert len(nodes) == 3 and None not in nodes
    for student in students:
        jti = "jti-" + student
        assert (await ledger.reserve(policy, COURSE, student, jti, "r1", 1_000)).outcome == "key_unknown"
        await ledger.set_key_status(COURSE, student, jti, "active")
        assert (await ledger.reserve(policy, COURSE, student, jti, "r1", 1_000)).admitted
        await ledger.settle(policy, COURSE, student, "r1", 10_000)
        assert (await ledger.settle(policy, COURSE, student, "r1", 10_000)).used == 10_000
        await ledger.grant(policy, COURSE, student, "g1", 5_000)
        assert await ledger.key_status(COURSE, student, jti) == ("active", "")
    ledger_clock.advance(WEEK)
    for student in students:
        state = await ledger.read(policy, COURSE, student)
        assert (state.carried, state.used) == (95_000, 0)
        restored = await ledger.restore(
            policy, COURSE, student, BucketSnapshot(state.period_start, state.period_end, 1, 2, 3, 4)
        )
        assert (restored.carried, restored.granted, restored.used, restored.limit_hits) == (1, 2, 3, 4)


async def test_scripts_are_reloaded_after_a_script_flush(cluster: RedisCluster, ledger: Ledger) -> None:
    policy = make_policy()
    await ledger.settle(policy, COURSE, "flushed", "r1", 1)
    await cluster.script_flush()  # goes to every primary
    state = await ledger.settle(policy, COURSE, "flushed", "r2", 1)
    assert state.used == 2


async def test_500_concurrent_reserves_on_the_cluster(ledger: Ledger) -> None:
    await burst(ledger, requests=500, usage=5_000, limit=1_000_000, estimate=3_000, max_inflight=None,
                expected_admitted=334)


async def test_interleaved_requests_on_the_cluster(ledger: Ledger) -> None:
    await waves(ledger, workers=20, limit=200_000, max_inflight=8, seed=11)

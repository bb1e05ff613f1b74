"""Ledger throughput: reserve + settle pairs per second against a real Redis.

Each pair is what one proxied request costs the ledger: ``reserve`` (key status, rollover, admission) and
``settle`` (idempotent debit), two EVALSHAs. ``--concurrency`` tasks share one client with a blocking pool of
``--pool`` connections (as the gateway does), spread over ``--students`` buckets, in ``--processes`` worker
processes (``gateway serve --workers N``). Target: >= 10,000 pairs/s. Also prints the client's CPU time per
pair, which says what one core sustains when the machine is busy with other work, and the time Redis spent in
the scripts per pair (``INFO commandstats``, EVALSHA; meaningful when nothing else uses that Redis meanwhile),
which says how many pairs/s one Redis core can serve for all workers together. Keys live under a fresh prefix,
deleted afterwards.

Usage: python bench/bench_ledger.py [--url redis://127.0.0.1:6379/0] [--pairs 60000] [--concurrency 50]
       [--pool 64] [--students 200] [--processes 1]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import time
import uuid

import redis.asyncio as aioredis

from gateway.keyspace import Keyspace
from gateway.ledger import Ledger, estimate_for
from gateway.policy import Policy

COURSE = "bench"


def policy() -> Policy:
    return Policy(course=COURSE, limit=10**15, period_seconds=604_800, tz="Australia/Sydney", carry_over=True)


async def run(
    url: str, prefix: str, worker: int, pairs: int, concurrency: int, pool: int, students: int
) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) for the measured pairs."""
    client = aioredis.Redis.from_pool(aioredis.BlockingConnectionPool.from_url(url, max_connections=pool))
    ledger = Ledger(client, Keyspace(prefix))
    rules = policy()
    names = [f"s{i}" for i in range(students)]
    for name in names:
        await ledger.set_key_status(COURSE, name, "jti-" + name, "active")
    estimate = estimate_for(200_000)

    async def task(number: int, *, tag: str = "") -> None:
        for i in range(number, pairs, concurrency):
            student = names[i % students]
            request_id = f"w{worker}-{tag}{i}"
            reservation = await ledger.reserve(rules, COURSE, student, "jti-" + student, request_id, estimate)
            if not reservation.admitted:
                raise RuntimeError(f"refused: {reservation.outcome}")
            await ledger.settle(rules, COURSE, student, request_id, 5_000)

    await task(0, tag="warm-")  # warm up (its own request ids): scripts loaded, connections open
    started, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(task(n) for n in range(concurrency)))
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    await client.aclose()
    return elapsed, cpu


def _process(args: tuple[str, str, int, int, int, int, int]) -> tuple[float, float]:
    return asyncio.run(run(*args))


async def evalsha_usec(url: str) -> int:
    """Microseconds Redis has spent running EVALSHA since its stats were last reset."""
    client = aioredis.from_url(url)
    stats = await client.info("commandstats")
    await client.aclose()
    return int(stats.get("cmdstat_evalsha", {}).get("usec", 0))


async def cleanup(url: str, prefix: str) -> None:
    client = aioredis.from_url(url)
    async for key in client.scan_iter(match=f"{prefix}*", count=1000):
        await client.delete(key)
    await client.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--pairs", type=int, default=60_000, help="per process")
    parser.add_argument("--concurrency", type=int, default=50, help="tasks per process")
    parser.add_argument("--pool", type=int, default=64, help="connections per process")
    parser.add_argument("--students", type=int, default=200)
    parser.add_argument("--processes", type=int, default=1)
    args = parser.parse_args()
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    jobs = [(args.url, prefix, w, args.pairs, args.concurrency, args.pool, args.students)
            for w in range(args.processes)]
    redis_before = asyncio.run(evalsha_usec(args.url))
    try:
        if args.processes == 1:
            results = [_process(jobs[0])]
        else:
            with multiprocessing.Pool(args.processes) as workers:
                results = workers.map(_process, jobs)
        redis_usec = asyncio.run(evalsha_usec(args.url)) - redis_before
    finally:
        asyncio.run(cleanup(args.url, prefix))
    measured = args.pairs * args.processes
    warm_up = len(range(0, args.pairs, args.concurrency)) * args.processes  # pairs run before the clock starts
    seconds = max(wall for wall, _ in results)
    cpu = sum(cpu for _, cpu in results)
    print(f"processes={args.processes} concurrency={args.concurrency} pool={args.pool} students={args.students}")
    print(f"{measured} reserve+settle pairs in {seconds:.2f} s: {measured / seconds:,.0f} pairs/s")
    print(f"client CPU: {1e6 * cpu / measured:.0f} µs per pair (one core sustains {measured / cpu:,.0f} pairs/s)")
    per_pair = redis_usec / (measured + warm_up)
    print(f"Redis in the scripts: {per_pair:.1f} µs per pair "
          f"(one Redis core serves at most {1e6 / per_pair:,.0f} pairs/s)")


if __name__ == "__main__":
    main()

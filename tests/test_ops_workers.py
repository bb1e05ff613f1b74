"""Issue 7: ``gateway serve --workers N`` -- processes sharing one port, every one of them seeing key status and
policy changes at once, and one /metrics for all of them.

Which worker answers is the kernel's choice (SO_REUSEPORT), so the tests send requests on fresh connections
until they have met every worker; :func:`tests.ops_support.pinned` asks ``/healthz`` for the worker's pid and
then sends the real request on the same connection, so each reply is known to come from that worker.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from tests.harness import COURSE
from tests.ops_support import (
    ADMIN_TOKEN,
    Cluster,
    NotPinned,
    Reply,
    fresh,
    gateway_env,
    meet_every_worker,
    serving,
)


async def _cli(cluster: Cluster, *argv: str) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "--course", COURSE, *argv, env=gateway_env(**cluster.values),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    output, _ = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, output.decode()


async def test_four_workers_share_the_port_and_all_see_changes_at_once(
        aiohttp_server: Any, pg_dsn: str, redis_url: str, redis_prefix: str, tmp_path: Path) -> None:
    async with serving(aiohttp_server, pg_dsn, redis_url, redis_prefix, tmp_path, workers=4) as cluster:
        async def healthz() -> tuple[int, Reply]:
            reply = await fresh("GET", cluster.url + "/healthz")
            return int(reply.json()["pid"]), reply

        await meet_every_worker(4, healthz)  # four processes answer on the one port
        served = await meet_every_worker(4, cluster.message)
        assert {r.status for r in served.values()} == {200}
        assert {r.headers["anthropic-ratelimit-tokens-limit"] for r in served.values()} == {"500000"}

        # A quota change from the CLI reaches every worker (pub/sub; the policy cache's TTL bounds it at 1 s).
        await _cli(cluster, "quota", "set", "--limit", "1m")
        deadline = time.monotonic() + 10
        updated: set[int] = set()
        while len(updated) < 4:
            assert time.monotonic() < deadline, f"only {sorted(updated)} saw the new limit"
            pid, reply = await cluster.message()
            assert reply.status == 200
            if reply.headers["anthropic-ratelimit-tokens-limit"] == "1000000":
                updated.add(pid)

        # Suspended through one worker's admin API: the first request each worker gets afterwards is refused.
        suspended = await fresh("POST", cluster.url + f"/admin/courses/{COURSE}/students/alice/keys/suspend",
                                json={"reason": "ops test"}, headers={"authorization": f"Bearer {ADMIN_TOKEN}"})
        assert suspended.status == 200, suspended.body
        refused = await meet_every_worker(4, cluster.message)
        for reply in refused.values():
            assert reply.status == 403, reply.body
            error = reply.json()["error"]
            assert error["type"] == "permission_error" and "suspended" in error["message"]


def _samples(text: str, name: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            series, value = line.rsplit(" ", 1)
            out[series] = float(value)
    return out


# (gateway_leak_incidents_total{rule} appears with the first incident: its label values are the rule ids.)
ISSUE_METRICS = (
    "gateway_requests_total", "gateway_ttfb_seconds_bucket", "gateway_request_duration_seconds_bucket",
    "gateway_tokens_total", "gateway_rate_limited_total", "gateway_refusals_total", "gateway_writer_queue_depth",
    "gateway_spool_bytes",
    "gateway_writer_batches_total", "gateway_redis_errors_total", "gateway_postgres_errors_total",
    "gateway_pending_debits",
)


async def test_metrics_add_up_across_workers_and_a_dead_worker_is_replaced(
        aiohttp_server: Any, pg_dsn: str, redis_url: str, redis_prefix: str, tmp_path: Path) -> None:
    async with serving(aiohttp_server, pg_dsn, redis_url, redis_prefix, tmp_path, workers=2) as cluster:
        sent: dict[int, int] = {}
        while len(sent) < 2 or sum(sent.values()) < 10:
            pid, reply = await cluster.message()
            assert reply.status == 200
            sent[pid] = sent.get(pid, 0) + 1
        ok = 'gateway_requests_total{model="claude-opus-5-5",status="200"}'
        scrapes = [(await fresh("GET", cluster.url + "/metrics")).body.decode() for _ in range(4)]
        for text in scrapes:
            assert _samples(text, ok) == {ok: sum(sent.values())}  # whichever worker answered the scrape
            for name in ISSUE_METRICS:
                assert re.search(rf"^{name}[{{ ]", text, re.MULTILINE), name
            assert _samples(text, "gateway_request_duration_seconds_count")[
                "gateway_request_duration_seconds_count"] == sum(sent.values())

        # A worker that dies is replaced; what it counted stays in the totals.
        victim = next(iter(sent))
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while True:
            assert time.monotonic() < deadline, "no new worker took over"
            try:
                pid, reply = await cluster.message()
            except (NotPinned, aiohttp.ClientError):  # a connection the dead worker had accepted
                continue
            if pid not in sent:
                break
        assert reply.status == 200
        text = (await fresh("GET", cluster.url + "/metrics")).body.decode()
        assert _samples(text, ok)[ok] >= sum(sent.values()) + 1

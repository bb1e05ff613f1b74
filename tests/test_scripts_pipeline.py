"""The auto-pipeline's own round trip (gateway/scripts.py): one write per batch, replies in order, error replies
in place, NOSCRIPT recovery, a stalled server bounded by the socket timeout, and ``written()``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError, ResponseError

from gateway.keyspace import Keyspace
from gateway.ledger import Ledger, estimate_for
from gateway.scripts import AutoPipeline
from tests.ledger_support import BACKENDS, backend, make_policy


@pytest.fixture(params=BACKENDS)
async def client(request: pytest.FixtureRequest, redis_url: str) -> AsyncIterator[aioredis.Redis]:
    async with backend(request.param, redis_url) as opened:
        yield opened


async def test_one_batch_is_one_round_trip_with_replies_and_errors_in_order(
    client: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    echo = client.register_script("return ARGV[1]")
    fail = client.register_script("return redis.error_reply('boom ' .. ARGV[1])")
    pipeline = AutoPipeline(client)
    batches: list[int] = []
    original = AutoPipeline._round_trip

    async def counting(self: AutoPipeline, commands: list[tuple[Any, ...]], *args: Any) -> list[Any]:
        batches.append(len(commands))
        return await original(self, commands, *args)

    monkeypatch.setattr(AutoPipeline, "_round_trip", counting)
    for script in (echo, fail):  # on the server beforehand, so that no NOSCRIPT retry adds a round trip
        await client.script_load(script.script)
    futures = [pipeline.submit(echo, [], ["a"]), pipeline.submit(fail, [], ["b"]), pipeline.submit(echo, [], ["c"])]
    results = await asyncio.gather(*futures, return_exceptions=True)
    assert batches == [3]
    assert results[0] == b"a" and results[2] == b"c"
    assert isinstance(results[1], ResponseError) and "boom b" in str(results[1])
    # the connection was read to the end: the next batch on the pool gets its own replies
    assert await pipeline.submit(echo, [], ["d"]) == b"d"


async def test_a_batch_that_fails_unexpectedly_still_answers_every_caller(
    client: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: AutoPipeline, commands: list[tuple[Any, ...]], *args: Any) -> Any:
        raise RuntimeError("bug in the round trip")

    monkeypatch.setattr(AutoPipeline, "_round_trip", broken)
    pipeline = AutoPipeline(client)
    script = client.register_script("return 1")
    futures = [pipeline.submit(script, [], []) for _ in range(3)]
    await asyncio.wait_for(pipeline.written(), 5)
    results = await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), 5)
    assert [type(r) for r in results] == [RuntimeError] * 3


async def test_scripts_flushed_on_the_server_are_loaded_again_within_a_batch(redis_url: str, redis_prefix: str) -> None:
    async with backend("redis", redis_url) as client:
        ledger = Ledger(client, Keyspace(redis_prefix))
        policy = make_policy(limit=10_000_000)
        for student in ("ann", "bob", "cat"):
            await ledger.set_key_status(policy.course, student, "jti-" + student, "active")
        first = await ledger.reserve(policy, policy.course, "ann", "jti-ann", "r0", estimate_for(1000))
        assert first.admitted
        await client.script_flush()
        replies = await asyncio.gather(*(
            ledger.reserve(policy, policy.course, student, "jti-" + student, "r1", estimate_for(1000))
            for student in ("ann", "bob", "cat")
        ))
        assert [r.outcome for r in replies] == ["admitted"] * 3
        assert [r.state.inflight for r in replies] == [2, 1, 1]


def _silent_server(received: asyncio.Event) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Answers the connection's set-up commands with +OK, then stops answering at the first EVALSHA."""
        while chunk := await reader.read(65536):
            if b"EVALSHA" in chunk:
                received.set()
                await reader.read()  # returns when the client hangs up
                break
            commands = chunk.count(b"\r\n*") + chunk.startswith(b"*")
            writer.write(b"+OK\r\n" * commands)
        writer.close()

    return silent


async def test_written_returns_once_the_batch_is_on_the_wire_before_any_reply() -> None:
    received = asyncio.Event()
    server = await asyncio.start_server(_silent_server(received), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = aioredis.Redis.from_pool(aioredis.BlockingConnectionPool(
        host="127.0.0.1", port=port, socket_timeout=0.5, max_connections=2))
    try:
        pipeline = AutoPipeline(client)
        await pipeline.written()  # nothing submitted: returns at once
        reply = pipeline.submit(client.register_script("return 1"), [], [])
        await pipeline.written()
        await asyncio.wait_for(received.wait(), 5)  # the server has the command ...
        assert not reply.done()  # ... and has not answered it
        with pytest.raises(asyncio.TimeoutError):
            await reply
    finally:
        await client.aclose()
        server.close()
        await server.wait_closed()


async def test_written_returns_when_the_batch_cannot_be_sent(unused_tcp_port: int) -> None:
    client = aioredis.Redis.from_pool(aioredis.BlockingConnectionPool(
        host="127.0.0.1", port=unused_tcp_port, socket_timeout=0.5, socket_connect_timeout=0.5, max_connections=2))
    try:
        pipeline = AutoPipeline(client)
        reply = pipeline.submit(client.register_script("return 1"), [], [])
        await asyncio.wait_for(pipeline.written(), 5)
        with pytest.raises(ConnectionError):
            await reply
    finally:
        await client.aclose()


async def test_a_server_that_never_answers_fails_the_batch_within_the_socket_timeout() -> None:
    received = asyncio.Event()
    server = await asyncio.start_server(_silent_server(received), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = aioredis.BlockingConnectionPool(host="127.0.0.1", port=port, socket_timeout=0.2, max_connections=2)
    client = aioredis.Redis.from_pool(pool)
    try:
        script = client.register_script("return 1")
        pipeline = AutoPipeline(client)
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(asyncio.TimeoutError):
            async with asyncio.timeout(5):  # a round trip left unbounded fails the elapsed-time check below
                await pipeline.submit(script, [], [])
        assert received.is_set()
        assert 0.2 <= loop.time() - started < 2.0
        # the connection left mid-reply was dropped, not put back as if it were in a clean state
        connections = pool._available_connections
        assert connections and not any(c.is_connected for c in connections)
    finally:
        await client.aclose()
        server.close()
        await server.wait_closed()

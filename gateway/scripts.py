"""The ledger's Redis Lua scripts, read once from package data (``gateway.lua``) and registered with the client.

Each ``lua/<name>.lua`` is one script, prefixed with the shared ``lua/bucket.lua`` prelude (EVAL scripts cannot
share code). Call sites read like async functions: ``await scripts.reserve(keys, args)``.

* ``EVALSHA``, and on ``NOSCRIPT`` (a restarted or failed-over server) ``SCRIPT LOAD`` and retry: redis-py's
  script objects do this; with a :class:`~redis.asyncio.cluster.RedisCluster` the load goes to every primary
  and ``EVALSHA`` is routed by the keys, which all carry one student's hash tag, so every call runs on one slot.
* Auto-pipelining (standalone Redis): the calls made during one event-loop iteration go out together in one
  write on one pooled connection, one round trip, not a transaction. Each script is still atomic on its own;
  only the client's per-command overhead (which in redis-py's ``Pipeline`` dwarfs the scripts' run time) is
  shared, and :meth:`AutoPipeline._round_trip` keeps that small. See bench/bench_ledger.py.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.resources import files
from typing import Any, TypeAlias

import orjson
from hiredis import pack_command
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, ResponseError

AnyRedis: TypeAlias = "Redis | RedisCluster"
Args: TypeAlias = Sequence[bytes | str | int | float]

PRELUDE = "bucket.lua"


def script_source(name: str) -> str:
    """The full text EVALed for script ``name``: the prelude, then ``lua/<name>.lua``."""
    package = files("gateway.lua")
    prelude = (package / PRELUDE).read_text(encoding="utf-8")
    return prelude + "\n" + (package / f"{name}.lua").read_text(encoding="utf-8")


def schedule_argument(limit: int, carry_cap: int, period_s: int, stale_s: int, bounds: Sequence[int]) -> bytes:
    """The bucket scripts' schedule argument (ARGV[2], see lua/bucket.lua)."""
    return orjson.dumps([limit, carry_cap, period_s, stale_s, list(bounds)])


@dataclass(frozen=True, slots=True)
class _Call:
    script: AsyncScript
    keys: Sequence[str]
    args: Args
    future: asyncio.Future[Any]


class AutoPipeline:
    """Collects the script calls of one event-loop iteration and sends them as one pipeline."""

    def __init__(self, client: Redis) -> None:
        self._client = client
        self._batch: list[_Call] = []
        self._batch_written: asyncio.Future[None] | None = None
        self._unwritten: set[asyncio.Future[None]] = set()
        self._sending: set[asyncio.Task[None]] = set()

    def submit(self, script: AsyncScript, keys: Sequence[str], args: Args) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        if not self._batch:
            loop.call_soon(self._flush)
            self._batch_written = written = loop.create_future()
            self._unwritten.add(written)
            written.add_done_callback(self._unwritten.discard)
        call = _Call(script, keys, args, loop.create_future())
        self._batch.append(call)
        return call.future

    async def written(self) -> None:
        """Return once every call submitted so far is on the wire (or its batch failed): a caller can do other
        work while Redis answers. Never raises."""
        if self._unwritten:
            await asyncio.wait(list(self._unwritten))

    def _flush(self) -> None:
        batch, self._batch = self._batch, []
        written, self._batch_written = self._batch_written, None
        task = asyncio.get_running_loop().create_task(self._send(batch, written))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[_Call], written: asyncio.Future[None] | None = None) -> None:
        replies: list[Any]
        try:  # whatever goes wrong, every caller gets an answer: a reply or the exception
            commands = [("EVALSHA", call.script.sha, len(call.keys), *call.keys, *call.args) for call in batch]
            replies = await self._round_trip(commands, written)
        except (Exception, asyncio.CancelledError) as exc:
            replies = [exc] * len(batch)
        finally:
            if written is not None and not written.done():
                written.set_result(None)
        for call, reply in zip(batch, replies, strict=True):
            if isinstance(reply, NoScriptError):  # the server lost its scripts: load, then run this one again
                reply = await _settle_exception(call.script(call.keys, call.args))
            if call.future.done():  # the caller was cancelled
                continue
            if isinstance(reply, asyncio.CancelledError):
                call.future.cancel()
            elif isinstance(reply, BaseException):
                call.future.set_exception(reply)
            else:
                call.future.set_result(reply)

    async def _round_trip(
        self, commands: list[tuple[Any, ...]], written: asyncio.Future[None] | None = None
    ) -> list[Any]:
        """Send ``commands`` on one pooled connection in one write; their replies, a ``ResponseError`` in place
        of each error reply. Lighter than redis-py's ``Pipeline`` (no command stack, response callbacks, retry
        wrapper or timer per reply, which cost more client CPU than the scripts cost Redis); hiredis packs the
        commands (in C, byte for byte what redis-py's packer makes). The connection's socket timeout bounds the
        whole round trip, and a connection left mid-reply is dropped, never reused. ``written`` is resolved as
        soon as the commands are on the wire."""
        pool = self._client.connection_pool
        connection = await pool.get_connection()  # type: ignore[no-untyped-call]  # untyped in redis-py
        try:
            async with asyncio.timeout(pool.connection_kwargs.get("socket_timeout")):
                await connection.send_packed_command(b"".join(map(pack_command, commands)))
                if written is not None and not written.done():
                    written.set_result(None)
                replies: list[Any] = []
                for _ in commands:
                    try:
                        replies.append(await connection.read_response(timeout=math.inf))  # inf: no timer per reply
                    except ResponseError as exc:
                        replies.append(exc)
        except BaseException:
            await connection.disconnect(nowait=True)
            raise
        finally:
            await pool.release(connection)
        return replies


async def _settle_exception(awaitable: Any) -> Any:
    """The awaitable's result, or the exception it raised (delivered to each caller's future)."""
    try:
        return await awaitable
    except (Exception, asyncio.CancelledError) as exc:
        return exc


@dataclass(frozen=True, slots=True)
class ScriptCall:
    """One registered script, called like an async function: ``await call(keys, args)``."""

    script: AsyncScript
    pipeline: AutoPipeline | None

    async def __call__(self, keys: Sequence[str], args: Args) -> Any:
        if self.pipeline is None:
            return await self.script(keys, args)
        return await self.pipeline.submit(self.script, keys, args)


@dataclass(frozen=True, slots=True)
class Scripts:
    reserve: ScriptCall
    settle: ScriptCall
    grant: ScriptCall
    read: ScriptCall
    restore: ScriptCall
    pipeline: AutoPipeline | None = None

    async def written(self) -> None:
        """Every script call made so far is on the wire (at once without the auto-pipeline: see there)."""
        if self.pipeline is not None:
            await self.pipeline.written()

    @classmethod
    def register(cls, client: AnyRedis, *, autopipeline: bool = True) -> Scripts:
        """Register every script with ``client`` (auto-pipelined unless it is a cluster client or disabled)."""
        pipeline = AutoPipeline(client) if autopipeline and not isinstance(client, RedisCluster) else None

        def call(name: str) -> ScriptCall:
            return ScriptCall(client.register_script(script_source(name)), pipeline)

        return cls(
            reserve=call("reserve"), settle=call("settle"), grant=call("grant"), read=call("read"),
            restore=call("restore"), pipeline=pipeline,
        )

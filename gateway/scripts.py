"""The ledger's Redis Lua scripts, read once from package data (``gateway.lua``) and registered with the client.

Each ``lua/<name>.lua`` is one script, prefixed with the shared ``lua/bucket.lua`` prelude (EVAL scripts cannot
share code). Call sites read like async functions: ``await scripts.reserve(keys, args)``.

* ``EVALSHA``, and on ``NOSCRIPT`` (a restarted or failed-over server) ``SCRIPT LOAD`` and retry: redis-py's
  script objects do this; with a :class:`~redis.asyncio.cluster.RedisCluster` the load goes to every primary
  and ``EVALSHA`` is routed by the keys, which all carry one student's hash tag, so every call runs on one slot.
* Auto-pipelining (standalone Redis): the calls made during one event-loop iteration go out together as one
  non-transactional pipeline, one round trip. Each script is still atomic on its own; only the client's
  per-command overhead (which in redis-py dwarfs the scripts' run time) is shared. See bench/bench_ledger.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.resources import files
from typing import Any, TypeAlias

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

AnyRedis: TypeAlias = "Redis | RedisCluster"
Args: TypeAlias = Sequence[str | int | float]

PRELUDE = "bucket.lua"


def script_source(name: str) -> str:
    """The full text EVALed for script ``name``: the prelude, then ``lua/<name>.lua``."""
    package = files("gateway.lua")
    prelude = (package / PRELUDE).read_text(encoding="utf-8")
    return prelude + "\n" + (package / f"{name}.lua").read_text(encoding="utf-8")


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
        self._sending: set[asyncio.Task[None]] = set()

    def submit(self, script: AsyncScript, keys: Sequence[str], args: Args) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        if not self._batch:
            loop.call_soon(self._flush)
        call = _Call(script, keys, args, loop.create_future())
        self._batch.append(call)
        return call.future

    def _flush(self) -> None:
        batch, self._batch = self._batch, []
        task = asyncio.get_running_loop().create_task(self._send(batch))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[_Call]) -> None:
        if len(batch) == 1:
            call = batch[0]
            replies: list[Any] = [await _settle_exception(call.script(call.keys, call.args))]
        else:
            pipe = self._client.pipeline(transaction=False)
            for call in batch:
                pipe.evalsha(call.script.sha, len(call.keys), *call.keys, *call.args)
            replies = await _settle_exception(pipe.execute(raise_on_error=False))
            if isinstance(replies, BaseException):
                replies = [replies] * len(batch)
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

    @classmethod
    def register(cls, client: AnyRedis, *, autopipeline: bool = True) -> Scripts:
        """Register every script with ``client`` (auto-pipelined unless it is a cluster client or disabled)."""
        pipeline = AutoPipeline(client) if autopipeline and not isinstance(client, RedisCluster) else None

        def call(name: str) -> ScriptCall:
            return ScriptCall(client.register_script(script_source(name)), pipeline)

        return cls(
            reserve=call("reserve"), settle=call("settle"), grant=call("grant"), read=call("read"),
            restore=call("restore"),
        )

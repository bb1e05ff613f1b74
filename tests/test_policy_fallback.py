"""Postgres is not on the request path: a worker that meets a course while Postgres is down serves it from the
copy of the policy in Redis; with no copy anywhere it answers 529, never a 500."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import orjson

from gateway import courses
from gateway.app import create_app
from tests.harness import running_gateway
from tests.test_writer_support import TcpProxy

MESSAGE = {"model": "claude-opus-5-5", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}


async def _post(url: str, key: str) -> tuple[int, dict[str, object]]:
    async with aiohttp.ClientSession() as session, session.post(
        url + "/v1/messages", json=MESSAGE, headers={"x-api-key": key}
    ) as resp:
        return resp.status, orjson.loads(await resp.read())


async def test_cold_worker_serves_from_the_redis_copy(aiohttp_server, pg_dsn: str, redis_url: str,  # type: ignore[no-untyped-def]
                                                      redis_prefix: str, tmp_path: Path) -> None:
    proxy = TcpProxy.for_dsn(pg_dsn)
    await proxy.open()
    try:
        async with running_gateway(aiohttp_server, pg_dsn=proxy.dsn(pg_dsn), redis_url=redis_url,
                                   redis_prefix=redis_prefix, data_dir=tmp_path / "a") as h:
            await courses.create(h.stores.pool, "test", "other", limit=1000, period_seconds=86400)
            other_key = await h.issue_key("zed", course="other")
            assert (await _post(h.url, h.key))[0] == 200  # worker A loads comp1000's policy (and copies it)
            fresh = await aiohttp_server(create_app(h.settings.model_copy(update={"data_dir": tmp_path / "b"})))
            cold = str(fresh.make_url("")).rstrip("/")
            await proxy.close()  # Postgres unreachable from here on
            status, _ = await _post(cold, h.key)
            assert status == 200  # worker B never loaded comp1000 from Postgres
            status, body = await _post(cold, other_key)  # nobody ever loaded "other"
            assert status == 529 and body["error"]["type"] == "overloaded_error"  # type: ignore[index]
            await proxy.open()
            await fresh.close()
    finally:
        await proxy.close()

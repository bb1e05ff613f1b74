"""Issue 3 through the gateway: quota headers, the exhausted 429, the quota probe, and GET /quota."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson
from pydantic import SecretStr

from gateway.fakeupstream import Scripted, message_json, text_stream, usage
from gateway.quota_headers import local_time
from tests.harness import Harness, running_gateway

UNIFIED = "anthropic-ratelimit-unified-"


async def _send(h: Harness, payload: dict[str, Any], key: str | None = None) -> tuple[int, Any, bytes]:
    async with aiohttp.ClientSession() as session, session.post(
        h.url + "/v1/messages?beta=true", json=payload, headers={"authorization": f"Bearer {key or h.key}"}
    ) as resp:
        return resp.status, resp.headers, await resp.read()


def _msg(stream: bool = False) -> dict[str, Any]:
    return {"model": "claude-opus-5-5", "max_tokens": 128000, "stream": stream,
            "messages": [{"role": "user", "content": "hello"}]}


async def test_headers_warning_then_exhausted_429(aiohttp_server, pg_dsn: str, redis_url: str,  # type: ignore[no-untyped-def]
                                                  redis_prefix: str, tmp_path) -> None:
    async with running_gateway(aiohttp_server, pg_dsn=pg_dsn, redis_url=redis_url, redis_prefix=redis_prefix,
                               data_dir=tmp_path, limit=10_000) as h:
        # 8,000 input tokens on opus (weights 1.0) + 100 output (weight 5) = 8,500 weighted: 85 % of the bucket.
        h.fake.queue(Scripted(events=text_stream(["hi"], start_usage=usage(8_000, 1), output_tokens=100)))
        status, headers, _ = await _send(h, _msg(stream=True))
        assert status == 200 and headers[UNIFIED + "status"] == "allowed"  # headers show the state at admission
        assert headers[UNIFIED + "7d-utilization"] == "0.00"
        assert "anthropic-ratelimit-unified-7d-surpassed-threshold" not in headers
        h.fake.queue(Scripted(body=message_json("x", usage_=usage(2_000, 10))))
        status, headers, _ = await _send(h, _msg())
        assert status == 200
        assert headers[UNIFIED + "status"] == "allowed_warning"
        assert headers[UNIFIED + "7d-status"] == "allowed_warning"
        assert headers[UNIFIED + "7d-utilization"] == "0.85"
        assert headers[UNIFIED + "7d-surpassed-threshold"] == "0.75"
        assert headers["anthropic-ratelimit-tokens-limit"] == "10000"
        assert headers["anthropic-ratelimit-tokens-remaining"] == "1500"
        reset = int(headers[UNIFIED + "7d-reset"])
        assert headers[UNIFIED + "reset"] == str(reset)
        assert headers["anthropic-ratelimit-tokens-reset"].endswith("Z")

        # That second request used 2,050: the bucket is now over (10,550 of 10,000). The next is refused.
        seen_before = len(h.fake.seen)
        status, headers, body = await _send(h, _msg(stream=True))
        assert status == 429 and len(h.fake.seen) == seen_before
        error = orjson.loads(body)
        assert error["type"] == "error" and error["error"]["type"] == "rate_limit_error"
        message = error["error"]["message"]
        assert message.startswith("Weekly token quota used up")
        assert local_time(reset, "UTC") in message and "resets" in message
        assert headers["x-should-retry"] == "false"
        assert 0 < int(headers["retry-after"]) <= 7 * 86400
        assert headers[UNIFIED + "status"] == "rejected"
        assert headers[UNIFIED + "representative-claim"] == "seven_day"
        assert headers[UNIFIED + "7d-utilization"] == "1"
        assert headers[UNIFIED + "7d-reset"] == str(reset) == headers[UNIFIED + "reset"]
        assert headers["request-id"].startswith("req_")

        async with aiohttp.ClientSession() as session, session.get(
            h.url + "/quota", headers={"authorization": f"Bearer {h.key}"}
        ) as resp:
            quota = orjson.loads(await resp.read())
        assert quota["used"] == 10_550 and quota["remaining"] == -550 and quota["limit"] == 10_000
        assert quota["limit_hits"] == 1 and quota["status"] == "rejected" and quota["student"] == "alice"
        assert set(quota) == {"course", "student", "group", "limit", "carried", "granted", "used", "remaining",
                              "period_start", "period_end", "resets_at", "limit_hits", "status"}


async def test_quota_probe_is_answered_without_upstream(gateway: Harness) -> None:
    h = gateway
    probe = {"model": "claude-opus-5-5", "max_tokens": 1, "messages": [{"role": "user", "content": "quota"}]}
    status, headers, body = await _send(h, probe)
    assert status == 200 and h.fake.seen == []
    assert headers[UNIFIED + "status"] == "allowed" and headers[UNIFIED + "7d-utilization"] == "0.00"
    assert orjson.loads(body)["type"] == "message"


async def test_admin_quota_lists_course(aiohttp_server, pg_dsn: str, redis_url: str,  # type: ignore[no-untyped-def]
                                        redis_prefix: str, tmp_path) -> None:
    admin = "admin-" + "z" * 30
    async with running_gateway(aiohttp_server, pg_dsn=pg_dsn, redis_url=redis_url, redis_prefix=redis_prefix,
                               data_dir=tmp_path, admin_token=SecretStr(admin)) as h:
        bob = await h.issue_key("bob")
        await h.stores.pool.execute("UPDATE students SET grp = 'tut-1' WHERE student_id = 'bob'")
        assert (await _send(h, _msg(), key=bob))[0] == 200
        async with aiohttp.ClientSession() as session:
            async with session.get(h.url + "/quota?course=comp1000",
                                   headers={"authorization": f"Bearer {admin}"}) as resp:
                entries = orjson.loads(await resp.read())
            assert [e["student"] for e in entries] == ["alice", "bob"]
            assert entries[1]["used"] > 0 and entries[0]["used"] == 0
            async with session.get(h.url + "/quota?course=comp1000&group=tut-1",
                                   headers={"authorization": f"Bearer {admin}"}) as resp:
                assert [e["student"] for e in orjson.loads(await resp.read())] == ["bob"]
            async with session.get(h.url + "/quota?course=comp1000",
                                   headers={"authorization": "Bearer wrong-token"}) as resp:
                assert resp.status == 401


async def test_admin_api_is_off_without_bootstrap_token(aiohttp_server, pg_dsn: str, redis_url: str,  # type: ignore[no-untyped-def]
                                                        redis_prefix: str, tmp_path) -> None:
    from gateway import admin_tokens

    async with running_gateway(aiohttp_server, pg_dsn=pg_dsn, redis_url=redis_url, redis_prefix=redis_prefix,
                               data_dir=tmp_path, admin_token=None) as h:
        convenor = await admin_tokens.create(h.stores.pool, "test", h.course)
        async with aiohttp.ClientSession() as session:
            for path in ("/quota?course=comp1000", "/admin/courses"):
                async with session.get(h.url + path, headers={"authorization": f"Bearer {convenor.token}"}) as resp:
                    body = orjson.loads(await resp.read())
                    assert resp.status == 404 and "admin API is off" in body["error"]["message"]
            async with session.get(h.url + "/quota", headers={"authorization": f"Bearer {h.key}"}) as resp:
                assert resp.status == 200  # students still see their own bucket

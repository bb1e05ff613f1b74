"""Issue 2: a transparent Anthropic passthrough with virtual keys (SDK-level, byte-level and failure cases)."""

from __future__ import annotations

import asyncio
import io
import logging

import aiohttp
import anthropic
import orjson
import pytest

from gateway import appkeys
from gateway.fakeupstream import Scripted, message_json, sse_frame, text_stream, tool_use_stream, usage
from tests.harness import Harness
from tests.test_writer_support import wait_until

TOOLS = [{"name": "read_file", "description": "Read a file", "input_schema": {
    "type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}}]


def _sdk(h: Harness, key: str | None = None) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=h.url, auth_token=key or h.key, api_key=None, max_retries=0)


def _assert_real_key_only(h: Harness, virtual_key: str) -> None:
    assert h.fake.seen, "upstream saw nothing"
    for seen in h.fake.seen:
        assert seen.headers.get("x-api-key") == h.fake.api_key
        assert "authorization" not in {k.lower() for k in seen.headers}
        assert virtual_key not in orjson.dumps(seen.headers).decode()
        assert virtual_key.encode() not in seen.body


async def test_sdk_streamed_non_streamed_tools_and_count_tokens(gateway: Harness) -> None:
    h = gateway
    async with _sdk(h) as client:
        async with client.messages.stream(model="claude-opus-5-5", max_tokens=128000,
                                          messages=[{"role": "user", "content": "hello"}]) as stream:
            text = "".join([t async for t in stream.text_stream])
            final = await stream.get_final_message()
        assert text == "".join(f"word{i} " for i in range(h.fake.deltas))
        assert final.usage.output_tokens > 0

        reply = await client.messages.create(model="claude-opus-5-5", max_tokens=1000,
                                             messages=[{"role": "user", "content": "hi"}])
        assert reply.content[0].type == "text" and reply.content[0].text.startswith("word0")

        h.fake.queue(Scripted(events=tool_use_stream("read_file", {"path": "README.md"})))
        async with client.messages.stream(model="claude-opus-5-5", max_tokens=1000, tools=TOOLS,  # type: ignore[arg-type]
                                          messages=[{"role": "user", "content": "read it"}]) as stream:
            first = await stream.get_final_message()
        tool_use = next(b for b in first.content if b.type == "tool_use")
        assert tool_use.name == "read_file" and tool_use.input == {"path": "README.md"}
        assert first.stop_reason == "tool_use"
        second = await client.messages.create(
            model="claude-opus-5-5", max_tokens=1000, tools=TOOLS,  # type: ignore[arg-type]
            messages=[{"role": "user", "content": "read it"},
                      {"role": "assistant", "content": [b.model_dump() for b in first.content]},  # type: ignore[misc]
                      {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool_use.id,
                                                    "content": "# The README"}]}])
        assert second.stop_reason == "end_turn"
        assert b'"tool_result"' in h.fake.seen[-1].body

        counted = await client.messages.count_tokens(model="claude-opus-5-5",
                                                     messages=[{"role": "user", "content": "count me"}])
        assert counted.input_tokens > 0
    assert [s.path for s in h.fake.seen] == ["/v1/messages"] * 4 + ["/v1/messages/count_tokens"]
    _assert_real_key_only(h, h.key)


async def test_stream_bytes_are_unchanged_and_headers_forwarded(gateway: Harness) -> None:
    h = gateway
    headers = {"x-api-key": h.key, "anthropic-version": "2023-06-01",
               "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14,fine-grained-tool-streaming",
               "X-Claude-Code-Session-Id": "0b5c4c39-8f0e-4e57-9f3c-5d2b8e3a1a11", "x-app": "cli",
               "User-Agent": "claude-cli/2.1.328 (external, cli)", "X-Stainless-Retry-Count": "0",
               "Accept-Encoding": "gzip, deflate, br, zstd", "content-type": "application/json"}
    body = orjson.dumps({"model": "claude-opus-5-5", "max_tokens": 128000, "stream": True,
                         "messages": [{"role": "user", "content": "hi"}]})
    async with aiohttp.ClientSession(auto_decompress=False) as session, session.post(
        h.url + "/v1/messages?beta=true", data=body, headers=headers
    ) as resp:
        received = await resp.read()
        assert resp.status == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        assert resp.headers["anthropic-ratelimit-unified-status"] == "allowed"
        assert "anthropic-ratelimit-requests-limit" not in resp.headers  # the upstream's own quota view is dropped
        assert resp.headers["request-id"].startswith("req_fake_")
    seen = h.fake.seen[-1]
    assert received == bytes(seen.sent)
    assert seen.query == "beta=true"
    assert seen.body == body
    for name in ("anthropic-beta", "anthropic-version", "X-Claude-Code-Session-Id", "x-app", "User-Agent",
                 "X-Stainless-Retry-Count"):
        assert seen.headers[name] == headers[name]
    assert seen.headers["Accept-Encoding"] == "identity"
    _assert_real_key_only(h, h.key)


async def test_first_event_arrives_before_the_upstream_finishes(gateway: Harness) -> None:
    h = gateway
    release = asyncio.Event()
    h.fake.queue(Scripted(events=text_stream(["a", "b", "c"]), gate=release, gate_after=1))
    async with aiohttp.ClientSession() as session, session.post(
        h.url + "/v1/messages", headers={"authorization": f"Bearer {h.key}"},
        json={"model": "claude-opus-5-5", "max_tokens": 10, "stream": True,
              "messages": [{"role": "user", "content": "x"}]},
    ) as resp:
        # The upstream holds every event after the first until `release` is set: if the gateway buffered the
        # stream, this read would never complete (the deadline turns that into a failure, not a wait).
        first = await asyncio.wait_for(resp.content.readuntil(b"\n\n"), timeout=10)
        assert first.startswith(b"event: message_start")
        assert not h.fake.seen[-1].finished
        release.set()
        rest = await resp.read()
    assert b"message_stop" in rest


async def _post(h: Harness, body: bytes | io.BytesIO, key: str | None = None, path: str = "/v1/messages",
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], dict[str, object]]:
    hdrs = {"content-type": "application/json", **(headers or {})}
    if key is not None:
        hdrs["x-api-key"] = key
    async with aiohttp.ClientSession() as session, session.post(h.url + path, data=body, headers=hdrs) as resp:
        return resp.status, dict(resp.headers), orjson.loads(await resp.read())


def _assert_error(result: tuple[int, dict[str, str], dict[str, object]], status: int, error_type: str) -> str:
    code, headers, body = result
    assert code == status, body
    assert body["type"] == "error"
    error = body["error"]
    assert isinstance(error, dict) and error["type"] == error_type and error["message"]
    assert headers["request-id"].startswith("req_")
    return str(error["message"])


MESSAGE = orjson.dumps({"model": "claude-opus-5-5", "max_tokens": 10, "messages": [{"role": "user", "content": "x"}]})


async def test_bad_keys_are_refused(gateway: Harness) -> None:
    h = gateway
    from gateway.keys import KeyCodec
    from tests.harness import KEY_SECRET

    _assert_error(await _post(h, MESSAGE), 401, "authentication_error")
    forged = KeyCodec(b"another-secret-" + b"y" * 40, h.settings.key_issuer).issue(h.course, "alice").token
    assert "signature" in _assert_error(await _post(h, MESSAGE, forged), 401, "authentication_error")
    expired = KeyCodec(KEY_SECRET.encode(), h.settings.key_issuer).issue(h.course, "alice", ttl_s=-10).token
    assert "expired" in _assert_error(await _post(h, MESSAGE, expired), 401, "authentication_error")
    never_issued = KeyCodec(KEY_SECRET.encode(), h.settings.key_issuer).issue(h.course, "alice").token
    _assert_error(await _post(h, MESSAGE, never_issued), 401, "authentication_error")
    _assert_error(await _post(h, MESSAGE, "sk-ant-api03-not-a-gateway-key"), 401, "authentication_error")

    bob = await h.issue_key("bob")
    await h.stores.keyring.set_status("test", h.course, "bob", "suspended", reason="pasted a key")
    message = _assert_error(await _post(h, MESSAGE, bob), 403, "permission_error")
    assert "suspended" in message and "pasted a key" in message and "contact" in message.lower()
    carol = await h.issue_key("carol")
    await h.stores.keyring.set_status("test", h.course, "carol", "revoked")
    assert "revoked" in _assert_error(await _post(h, MESSAGE, carol), 403, "permission_error")
    assert h.fake.seen == []


async def test_bad_bodies_and_paths_never_reach_upstream(gateway: Harness) -> None:
    h = gateway
    assert "JSON" in _assert_error(await _post(h, b"{not json", h.key), 400, "invalid_request_error")
    assert "object" in _assert_error(await _post(h, b"[1, 2]", h.key), 400, "invalid_request_error")
    big = b'{"model":"claude-opus-5-5","messages":[{"role":"user","content":"' + b"a" * (33 * 1024 * 1024) + b'"}]}'
    _assert_error(await _post(h, io.BytesIO(big), h.key), 413, "request_too_large")
    _assert_error(await _post(h, MESSAGE, h.key, path="/v1/complete"), 404, "not_found_error")
    async with aiohttp.ClientSession() as session, session.get(h.url + "/nope") as resp:
        body = orjson.loads(await resp.read())
        assert resp.status == 404 and body["error"]["type"] == "not_found_error"
    assert h.fake.seen == []


async def test_a_refused_body_leaves_no_reservation_and_no_debit(gateway: Harness) -> None:
    """The reservation goes to Redis while the body is parsed (proxy.messages): a body refused after it must give
    its in-flight slot back, or a student's bad requests would pile up until the slots ran out."""
    h = gateway
    dora = await h.issue_key("dora")
    for _ in range(3):
        _assert_error(await _post(h, b"{not json", dora), 400, "invalid_request_error")
    policy = await h.app[appkeys.POLICIES].get(h.course)
    state = await h.stores.ledger.read(policy, h.course, "dora")
    assert (state.inflight, state.reserved, state.used) == (0, 0, 0)
    assert h.fake.seen == []


@pytest.mark.parametrize("status,error_type", [(429, "rate_limit_error"), (500, "api_error"),
                                               (529, "overloaded_error")])
async def test_upstream_errors_pass_through_untouched(gateway: Harness, status: int, error_type: str) -> None:
    h = gateway
    raw = orjson.dumps({"type": "error", "error": {"type": error_type, "message": "upstream says no"},
                        "request_id": "req_upstream_1"})
    h.fake.queue(Scripted(status=status, raw=raw, headers={"retry-after": "7", "x-should-retry": "true"}))
    code, headers, _ = await _post(h, MESSAGE, h.key)
    async with aiohttp.ClientSession() as session:
        h.fake.queue(Scripted(status=status, raw=raw, headers={"retry-after": "7"}))
        async with session.post(h.url + "/v1/messages", data=MESSAGE, headers={"x-api-key": h.key}) as resp:
            assert resp.status == status
            assert await resp.read() == raw
            assert resp.headers["retry-after"] == "7"
    assert code == status and headers["x-should-retry"] == "true"


async def test_mid_stream_error_event_passes_through(gateway: Harness) -> None:
    h = gateway
    error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    events = [*text_stream(["partial "])[:4], ("error", error)]
    h.fake.queue(Scripted(events=events))
    async with aiohttp.ClientSession() as session, session.post(
        h.url + "/v1/messages", headers={"x-api-key": h.key},
        json={"model": "claude-opus-5-5", "max_tokens": 10, "stream": True,
              "messages": [{"role": "user", "content": "x"}]},
    ) as resp:
        received = await resp.read()
    assert received == bytes(h.fake.seen[-1].sent)
    assert received.endswith(sse_frame("error", events[-1][1]))


async def test_upstream_unreachable_is_502(aiohttp_server, pg_dsn: str, redis_url: str,  # type: ignore[no-untyped-def]
                                           redis_prefix: str, tmp_path, unused_tcp_port: int) -> None:
    from tests.harness import running_gateway

    async with running_gateway(aiohttp_server, pg_dsn=pg_dsn, redis_url=redis_url, redis_prefix=redis_prefix,
                               data_dir=tmp_path, upstream_url=f"http://127.0.0.1:{unused_tcp_port}") as h:
        _assert_error(await _post(h, MESSAGE, h.key), 502, "api_error")


async def test_client_disconnect_closes_upstream_and_records_usage(gateway: Harness) -> None:
    h = gateway
    release = asyncio.Event()
    start = usage(input_tokens=1234, output_tokens=1, cache_read=5000)
    h.fake.queue(Scripted(events=text_stream(["x" * 400, "y" * 400], start_usage=start), gate=release,
                          gate_after=4))
    async with aiohttp.ClientSession() as session:
        resp = await session.post(h.url + "/v1/messages", headers={"x-api-key": h.key},
                                  json={"model": "claude-opus-5-5", "max_tokens": 10, "stream": True,
                                        "messages": [{"role": "user", "content": "x"}]})
        got = b""
        while b"text_delta" not in got:
            got += await asyncio.wait_for(resp.content.readany(), timeout=10)
        resp.close()  # the student hits Ctrl-C mid-stream
    seen = h.fake.seen[-1]
    # The upstream is held mid-stream; it only notices a disconnect if the gateway closes its connection.
    await wait_until(lambda: seen.disconnected)
    assert not seen.finished
    release.set()
    row = await _usage_row(h, "alice")
    assert row["input_tokens"] == 1234 and row["cache_read"] == 5000
    assert row["estimated"] is True and row["output_tokens"] >= 100  # ~4 chars a token of what was streamed


async def _usage_row(h: Harness, student: str) -> dict[str, object]:
    await h.flush()
    rows = await h.stores.pool.fetch(
        "SELECT * FROM usage_events WHERE course_id = $1 AND student_id = $2 ORDER BY at", h.course, student)
    assert rows, f"no usage row for {student}"
    return dict(rows[-1])


async def test_upstream_cookies_are_not_kept_for_later_requests(  # type: ignore[no-untyped-def]
    aiohttp_server, pg_dsn: str, redis_url: str, redis_prefix: str, tmp_path
) -> None:
    # Set-Cookie from upstream (a CDN's bot cookie, say) must not be replayed on other students' requests. The
    # upstream is reached by name: a cookie jar ignores cookies from bare IP addresses.
    from tests.harness import running_gateway

    async with running_gateway(aiohttp_server, pg_dsn=pg_dsn, redis_url=redis_url, redis_prefix=redis_prefix,
                               data_dir=tmp_path, upstream_host="localhost") as h:
        await _cookie_not_replayed(h)


async def _cookie_not_replayed(h: Harness) -> None:
    h.fake.queue(Scripted(body=message_json("a", model="claude-opus-5-5", usage_=usage(3, 1)),
                          headers={"set-cookie": "__cf_bm=abc123; Path=/; HttpOnly"}))
    status, _, _ = await _post(h, MESSAGE, h.key)
    assert status == 200
    other = await h.issue_key("cookie-other")
    status, _, _ = await _post(h, MESSAGE, other)
    assert status == 200
    assert not any(name.lower() == "cookie" for name in h.fake.seen[-1].headers)


async def test_keys_never_reach_the_logs(gateway: Harness, caplog: pytest.LogCaptureFixture) -> None:
    h = gateway
    caplog.set_level(logging.DEBUG)
    async with _sdk(h) as client:
        await client.messages.create(model="claude-opus-5-5", max_tokens=10,
                                     messages=[{"role": "user", "content": "hi"}])
    await _post(h, b"{broken", h.key)
    h.fake.queue(Scripted(status=500, raw=b'{"type":"error","error":{"type":"api_error","message":"x"}}'))
    await _post(h, MESSAGE, h.key)
    text = caplog.text + "".join(str(r.__dict__) for r in caplog.records)
    assert caplog.records, "expected some log output to check"
    assert h.key not in text and h.fake.api_key not in text

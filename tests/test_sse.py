"""The sans-IO SSE decoder, the stream meter and message reassembly, and the non-streamed meter."""

from __future__ import annotations

import math
import random
from typing import Any

import orjson
import pytest
from anthropic.lib.streaming._messages import accumulate_event

from gateway.fakeupstream import Event, message_json, sse_frame, text_stream, tool_use_stream, usage
from gateway.sse import SSEDecoder, SSEEvent, StreamMeter, meter_json_response
from gateway.usage import Usage, usage_from_json

# -- helpers -----------------------------------------------------------------------------------------------


def decode(chunks: list[bytes]) -> list[SSEEvent]:
    decoder = SSEDecoder()
    events: list[SSEEvent] = []
    for chunk in chunks:
        events += decoder.feed(chunk)
    return events + decoder.flush()


def frames(events: list[Event]) -> bytes:
    return b"".join(sse_frame(name, data) for name, data in events)


def meter(raw: bytes, *, chunk_size: int | None = None, complete: bool = True) -> StreamMeter:
    m = StreamMeter()
    size = chunk_size or len(raw) or 1
    for i in range(0, len(raw), size):
        m.feed(raw[i : i + size])
    m.finish(complete=complete)
    return m


def start_event(start_usage: dict[str, Any] | None = None, model: str = "claude-opus-5-5") -> Event:
    start_usage = start_usage or usage(input_tokens=10, output_tokens=1)
    msg = message_json("", model=model, usage_=start_usage, content=[])
    msg["stop_reason"] = None
    return ("message_start", {"type": "message_start", "message": msg})


def block_start(index: int, block: dict[str, Any]) -> Event:
    return ("content_block_start", {"type": "content_block_start", "index": index, "content_block": block})


def delta(index: int, body: dict[str, Any]) -> Event:
    return ("content_block_delta", {"type": "content_block_delta", "index": index, "delta": body})


def block_stop(index: int) -> Event:
    return ("content_block_stop", {"type": "content_block_stop", "index": index})


def message_delta(delta_usage: dict[str, Any], stop_reason: str = "end_turn") -> Event:
    body = {"stop_reason": stop_reason, "stop_sequence": None}
    return ("message_delta", {"type": "message_delta", "delta": body, "usage": delta_usage})


STOP: Event = ("message_stop", {"type": "message_stop"})

MIXED_STREAM = (
    b": a comment before anything\n\n"
    b"event: message_start\ndata: {\"a\": 1}\n\n"
    b"data: first line\ndata: second line\n\n"
    b"event: custom\ndata:no-space\ndata:  two spaces\nid: 7\nretry: 100\nunknown: x\n\n"
    b"event: ping\n: comment inside an event\ndata: {\"type\": \"ping\"}\n\n"
    b"event: no-data\n\n"
    b"data\n\n"
    b"event: utf8\ndata: h\xc3\xa9llo \xe2\x9c\x93 \xf0\x9f\x8e\x89\n\n"
)
MIXED_EXPECTED = [
    SSEEvent("message_start", b'{"a": 1}'),
    SSEEvent("message", b"first line\nsecond line"),
    SSEEvent("custom", b"no-space\n two spaces"),
    SSEEvent("ping", b'{"type": "ping"}'),
    SSEEvent("message", b""),
    SSEEvent("utf8", "héllo ✓ 🎉".encode()),
]


# -- decoder -----------------------------------------------------------------------------------------------


def test_decoder_field_rules() -> None:
    assert decode([MIXED_STREAM]) == MIXED_EXPECTED


@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"])
def test_decoder_same_events_for_every_two_way_split_and_line_ending(newline: bytes) -> None:
    raw = MIXED_STREAM.replace(b"\n", newline)
    for cut in range(len(raw) + 1):
        assert decode([raw[:cut], raw[cut:]]) == MIXED_EXPECTED, f"split at byte {cut}"


@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"])
def test_decoder_byte_by_byte_and_random_chunks(newline: bytes) -> None:
    raw = MIXED_STREAM.replace(b"\n", newline)
    assert decode([raw[i : i + 1] for i in range(len(raw))]) == MIXED_EXPECTED
    rng = random.Random(20261127)
    for _ in range(200):
        cuts = sorted(rng.sample(range(1, len(raw)), rng.randint(1, 12)))
        chunks = [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True)]
        assert decode(chunks) == MIXED_EXPECTED, cuts


def test_decoder_mixed_line_endings_and_cr_lf_split() -> None:
    raw = b"event: a\r\ndata: 1\r\n\r\nevent: b\rdata: 2\r\rdata: 3\n\n"
    expected = [SSEEvent("a", b"1"), SSEEvent("b", b"2"), SSEEvent("message", b"3")]
    assert decode([raw]) == expected
    # "\r" at the end of one chunk and "\n" at the start of the next is one line ending, not two.
    assert decode([b"data: x\r", b"\ndata: y\r", b"\n\r", b"\n"]) == [SSEEvent("message", b"x\ny")]


def test_decoder_dispatches_as_soon_as_the_blank_line_arrives() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"event: a\ndata: 1\n") == []
    assert decoder.feed(b"\nevent: b\nda") == [SSEEvent("a", b"1")]
    assert decoder.feed(b"ta: 2\r") == []
    assert decoder.feed(b"\r") == [SSEEvent("b", b"2")]  # CR CR: blank line, no need to wait for an LF
    assert decoder.feed(b"\n") == []  # ... and a late LF is just an empty line
    assert decoder.flush() == []


def test_decoder_strips_a_leading_bom_even_when_split() -> None:
    raw = b"\xef\xbb\xbfdata: x\n\n"
    for cut in range(len(raw) + 1):
        assert decode([raw[:cut], raw[cut:]]) == [SSEEvent("message", b"x")]
    # A BOM later in the stream is data, not a marker.
    assert decode([b"data: a\n\ndata: \xef\xbb\xbfb\n\n"]) == [SSEEvent("message", b"a"),
                                                               SSEEvent("message", b"\xef\xbb\xbfb")]


def test_flush_dispatches_an_unterminated_final_event_and_resets() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"event: message_delta\ndata: {\"x\": 1}") == []
    assert decoder.flush() == [SSEEvent("message_delta", b'{"x": 1}')]
    assert decoder.flush() == []
    assert decoder.feed(b"data: again\n\n") == [SSEEvent("message", b"again")]


def test_decoder_large_event_across_many_chunks() -> None:
    payload = orjson.dumps({"text": "x" * 200_000})
    raw = b"event: big\ndata: " + payload + b"\n\n"
    chunks = [raw[i : i + 1000] for i in range(0, len(raw), 1000)]
    assert decode(chunks) == [SSEEvent("big", payload)]


# -- meter: usage ------------------------------------------------------------------------------------------


def test_complete_stream_uses_start_usage_and_final_output() -> None:
    start = usage(input_tokens=52, output_tokens=1, cache_write=2000, cache_read=48_000, cache_write_1h=300)
    events = text_stream(["Hello", ", world"], model="claude-opus-5-5", start_usage=start, output_tokens=412)
    m = meter(frames(events))
    assert m.usage == Usage(input_tokens=52, cache_write_5m=2000, cache_write_1h=300, cache_read=48_000,
                            output_tokens=412)
    assert m.model == "claude-opus-5-5"
    assert m.message_id == events[0][1]["message"]["id"]
    assert m.stop_reason == "end_turn"
    assert m.saw_error is None and m.saw_stop and m.malformed == 0
    assert m.finished and m.ended_cleanly is True


def test_message_delta_output_is_cumulative_and_counts_never_shrink() -> None:
    events = [
        start_event(usage(input_tokens=100, output_tokens=1, cache_write=500, cache_read=9000)),
        block_start(0, {"type": "text", "text": ""}), delta(0, {"type": "text_delta", "text": "hi"}),
        block_stop(0),
        message_delta({"output_tokens": 10, "input_tokens": 120, "cache_read_input_tokens": 9500}),
        message_delta({"output_tokens": 25, "input_tokens": 90, "cache_read_input_tokens": 9000,
                       "cache_creation_input_tokens": 400, "server_tool_use": {"web_search_requests": 2}}),
        STOP,
    ]
    u = meter(frames(events)).usage
    assert u.output_tokens == 25  # overwritten, not 10 + 25
    assert u.input_tokens == 120  # the max of 100, 120, 90
    assert u.cache_read == 9500
    assert u.cache_write_5m == 500  # a smaller bare total in a delta does not reduce it
    assert u.web_searches == 2
    assert not u.estimated and not u.partial


def test_message_delta_cache_writes_with_and_without_breakdown() -> None:
    start = usage(input_tokens=5, output_tokens=1, cache_write=100, cache_write_1h=900)
    bare_total = message_delta({"output_tokens": 3, "cache_creation_input_tokens": 1500})
    u = meter(frames([start_event(start), bare_total, STOP])).usage
    assert (u.cache_write_5m, u.cache_write_1h) == (600, 900)  # the 500 new tokens count as 5m

    breakdown = message_delta({"output_tokens": 3, "cache_creation_input_tokens": 1200,
                               "cache_creation": {"ephemeral_5m_input_tokens": 50,
                                                  "ephemeral_1h_input_tokens": 1150}})
    u = meter(frames([start_event(start), breakdown, STOP])).usage
    assert (u.cache_write_5m, u.cache_write_1h) == (100, 1150)


def test_stream_cut_before_message_delta_is_estimated_from_characters() -> None:
    text, tool_json, thinking = "The answer is forty-two.", '{"command": "ls -la"}', "Let me think"
    events = [
        start_event(usage(input_tokens=70, output_tokens=1, cache_read=1000)),
        block_start(0, {"type": "thinking", "thinking": "", "signature": ""}),
        delta(0, {"type": "thinking_delta", "thinking": thinking}),
        delta(0, {"type": "signature_delta", "signature": "c2lnbmF0dXJl"}),
        block_stop(0),
        block_start(1, {"type": "text", "text": ""}),
        delta(1, {"type": "text_delta", "text": text[:10]}),
        delta(1, {"type": "text_delta", "text": text[10:]}),
        block_start(2, {"type": "tool_use", "id": "toolu_1", "name": "Bash", "input": {}}),
        delta(2, {"type": "input_json_delta", "partial_json": tool_json}),
    ]
    m = meter(frames(events), chunk_size=17, complete=False)
    u = m.usage
    assert u.estimated and u.partial
    assert u.output_tokens == math.ceil(len(text + tool_json + thinking) / 4)  # the signature is not counted
    assert (u.input_tokens, u.cache_read) == (70, 1000)
    assert m.ended_cleanly is False


def test_estimate_never_goes_below_the_start_output_count() -> None:
    m = meter(frames([start_event(usage(input_tokens=3, output_tokens=9))]), complete=False)
    assert m.usage.output_tokens == 9 and m.usage.estimated


def test_error_event_mid_stream() -> None:
    error = {"type": "overloaded_error", "message": "Overloaded"}
    events = [start_event(), block_start(0, {"type": "text", "text": ""}),
              delta(0, {"type": "text_delta", "text": "x" * 41}),
              ("error", {"type": "error", "error": error})]
    m = meter(frames(events))
    assert m.saw_error == error
    assert m.usage.estimated and m.usage.partial
    assert m.usage.output_tokens == 11  # ceil(41 / 4)


def test_message_delta_without_message_stop_is_partial_but_not_estimated() -> None:
    events = text_stream(["abc"], output_tokens=7)[:-1]  # everything but message_stop
    u = meter(frames(events), complete=False).usage
    assert u.partial and not u.estimated and u.output_tokens == 7


def test_ping_unknown_events_and_malformed_data_do_not_disturb_the_meter() -> None:
    events = text_stream(["hello"], output_tokens=5)
    clean = meter(frames(events)).usage
    noisy = (
        frames(events[:2])
        + b"event: ping\ndata: {\"type\": \"ping\"}\n\n"
        + b"event: brand_new\ndata: {\"type\": \"brand_new\", \"usage\": {\"output_tokens\": 999}}\n\n"
        + b"event: content_block_delta\ndata: {not json\n\n"
        + b"event: content_block_delta\ndata: [1, 2, 3]\n\n"
        + b"event: content_block_delta\ndata: {\"type\": \"content_block_delta\", \"index\": 0}\n\n"
        + b"event: message_delta\ndata: \xff\xfe\n\n"
        + b": keep-alive comment\n\n"
        + frames(events[2:])
    )
    m = meter(noisy, chunk_size=5)
    assert m.usage == clean
    assert m.malformed == 4
    assert m.message()["content"] == [{"type": "text", "text": "hello"}]


def test_events_without_an_event_line_are_typed_by_their_payload() -> None:
    events = text_stream(["ab", "cd"], output_tokens=3)
    raw = b"".join(b"data: " + orjson.dumps(data) + b"\n\n" for _, data in events)
    m = meter(raw)
    assert m.usage.output_tokens == 3 and not m.usage.partial
    assert m.message()["content"] == [{"type": "text", "text": "abcd"}]


def test_meter_is_independent_of_chunking() -> None:
    tool_input = {"path": "src/é.py", "old": "x = 1", "new": "x = 2 ✓"}
    events = tool_use_stream("Edit", tool_input, model="claude-opus-5-5")
    raw = frames(events).replace(b"\n", b"\r\n")
    whole = meter(raw)
    for size in (1, 2, 3, 7, 64, 1460):
        m = meter(raw, chunk_size=size)
        assert m.usage == whole.usage
        assert m.message() == whole.message()


def test_usage_is_readable_before_finish() -> None:
    events = text_stream(["abcdefgh"], output_tokens=2)
    m = StreamMeter()
    m.feed(frames(events[:4]))  # message_start, block start, ping, one delta
    assert m.usage.estimated and m.usage.partial and m.usage.output_tokens == 2
    assert not m.finished and m.ended_cleanly is None


# -- meter: message reassembly -----------------------------------------------------------------------------


def rich_stream() -> list[Event]:
    search_input = '{"query": "aiohttp streaming"}'
    return [
        start_event(usage(input_tokens=20, output_tokens=1)),
        block_start(0, {"type": "thinking", "thinking": "", "signature": ""}),
        delta(0, {"type": "thinking_delta", "thinking": "The user wants "}),
        delta(0, {"type": "thinking_delta", "thinking": "a listing."}),
        delta(0, {"type": "signature_delta", "signature": "EqQBCkYIBxgCKkD"}),
        block_stop(0),
        block_start(1, {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va"}),
        block_stop(1),
        block_start(2, {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {}}),
        delta(2, {"type": "input_json_delta", "partial_json": search_input[:9]}),
        delta(2, {"type": "input_json_delta", "partial_json": search_input[9:]}),
        block_stop(2),
        block_start(3, {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_1",
                        "content": [{"type": "web_search_result", "title": "aiohttp", "url": "https://x"}]}),
        block_stop(3),
        block_start(4, {"type": "text", "text": ""}),
        delta(4, {"type": "text_delta", "text": "I'll list "}),
        delta(4, {"type": "text_delta", "text": "the files."}),
        block_stop(4),
        block_start(5, {"type": "tool_use", "id": "toolu_9", "name": "Bash", "input": {}}),
        delta(5, {"type": "input_json_delta", "partial_json": ""}),
        delta(5, {"type": "input_json_delta", "partial_json": '{"command": '}),
        delta(5, {"type": "input_json_delta", "partial_json": '"ls -la"}'}),
        block_stop(5),
        message_delta({"output_tokens": 57, "server_tool_use": {"web_search_requests": 1}}, "tool_use"),
        STOP,
    ]


def test_message_reassembles_every_block_type() -> None:
    m = meter(frames(rich_stream()), chunk_size=11)
    message = m.message()
    assert message["role"] == "assistant" and message["model"] == "claude-opus-5-5"
    assert message["stop_reason"] == "tool_use" and message["stop_sequence"] is None
    assert message["usage"]["output_tokens"] == 57
    assert message["usage"]["server_tool_use"] == {"web_search_requests": 1}
    assert message["content"] == [
        {"type": "thinking", "thinking": "The user wants a listing.", "signature": "EqQBCkYIBxgCKkD"},
        {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va"},
        {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search",
         "input": {"query": "aiohttp streaming"}},
        {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_1",
         "content": [{"type": "web_search_result", "title": "aiohttp", "url": "https://x"}]},
        {"type": "text", "text": "I'll list the files."},
        {"type": "tool_use", "id": "toolu_9", "name": "Bash", "input": {"command": "ls -la"}},
    ]
    assert m.usage.web_searches == 1


def test_message_matches_the_anthropic_sdk_accumulator() -> None:
    events = rich_stream()
    snapshot = None
    json_bufs: dict[int, bytes] = {}
    for _, data in events:
        snapshot = accumulate_event(
            event=data, current_snapshot=snapshot, json_bufs=json_bufs  # type: ignore[arg-type]
        )
    assert snapshot is not None
    sdk = snapshot.to_dict(mode="json", exclude_none=True)
    ours = meter(frames(events)).message()
    assert ours["content"] == sdk["content"]
    assert ours["usage"] == sdk["usage"]
    for field in ("id", "model", "role", "stop_reason", "type"):
        assert ours[field] == sdk[field]


def test_blocks_come_back_in_index_order() -> None:
    events = [
        start_event(),
        block_start(1, {"type": "text", "text": ""}), delta(1, {"type": "text_delta", "text": "second"}),
        block_start(0, {"type": "text", "text": ""}), delta(0, {"type": "text_delta", "text": "first"}),
        message_delta({"output_tokens": 2}), STOP,
    ]
    assert [b["text"] for b in meter(frames(events)).message()["content"]] == ["first", "second"]


def test_unparsable_tool_input_is_kept_raw() -> None:
    events = [start_event(), block_start(0, {"type": "tool_use", "id": "t", "name": "Bash", "input": {}}),
              delta(0, {"type": "input_json_delta", "partial_json": '{"command": "ls'})]
    block = meter(frames(events), complete=False).message()["content"][0]
    assert block["input"] == {} and block["input_raw"] == '{"command": "ls'


def test_message_of_an_empty_or_garbage_stream() -> None:
    m = meter(b"this is not an event stream at all")
    message = m.message()
    assert message["content"] == [] and message["model"] is None and message["id"] is None
    assert m.model is None and m.usage.partial and m.usage.output_tokens == 0


# -- non-streamed replies and usage objects ----------------------------------------------------------------


def test_meter_json_response() -> None:
    body = message_json("hi", model="claude-haiku-4-5", usage_=usage(input_tokens=12, output_tokens=3,
                                                                      cache_read=40))
    u, model, message = meter_json_response(orjson.dumps(body))
    assert u == Usage(input_tokens=12, cache_read=40, output_tokens=3)
    assert model == "claude-haiku-4-5" and message == body


@pytest.mark.parametrize("body", [
    b"", b"not json", b"[1, 2]", b"null", b'"a string"', b"\xff\xfe",
    b'{"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}',
])
def test_meter_json_response_never_raises(body: bytes) -> None:
    assert meter_json_response(body) == (Usage(), None, None)


def test_usage_from_json_is_robust() -> None:
    assert usage_from_json(None) == Usage()
    assert usage_from_json({"input_tokens": None, "output_tokens": "12", "cache_read_input_tokens": -5,
                            "cache_creation": None, "server_tool_use": None}) == Usage()
    # No breakdown: every cache write is a 5-minute write.
    assert usage_from_json({"cache_creation_input_tokens": 800}) == Usage(cache_write_5m=800)
    # A breakdown that does not add up: the remainder is 5m, nothing is lost.
    assert usage_from_json({"cache_creation_input_tokens": 1000, "cache_creation": {
        "ephemeral_1h_input_tokens": 600}}) == Usage(cache_write_5m=400, cache_write_1h=600)
    assert usage_from_json({"input_tokens": 7.0, "server_tool_use": {"web_search_requests": 3}}) == Usage(
        input_tokens=7, web_searches=3)


def test_usage_dict_round_trip() -> None:
    u = Usage(1, 2, 3, 4, 5, 6, estimated=True, partial=True)
    assert Usage.from_dict(u.to_dict()) == u
    assert Usage.from_dict(orjson.loads(orjson.dumps(u.to_dict()))) == u
    assert Usage.from_dict({"output_tokens": 9, "surprise": 1}) == Usage(output_tokens=9)
    assert Usage.from_dict(None) == Usage()
    assert (u.prompt_tokens, u.total_tokens) == (10, 15)

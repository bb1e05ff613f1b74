"""How much CPU the stream meter costs per streamed reply.

Run: ``python bench/bench_sse.py [--rounds N]``. Prints µs of CPU per typical 50-delta stream (target: well
under 300 µs) under several chunkings, and decoder / meter throughput in MB/s on a long stream.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import orjson

from gateway.sse import SSEDecoder, StreamMeter


def frame(event: str, data: dict[str, Any]) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def stream_frames(deltas: int) -> list[bytes]:
    """A Claude Code-like streamed reply: a text block, then a tool call, ``deltas`` deltas in all."""
    usage = {"input_tokens": 52, "cache_creation_input_tokens": 2143, "cache_read_input_tokens": 48211,
             "cache_creation": {"ephemeral_5m_input_tokens": 2143, "ephemeral_1h_input_tokens": 0},
             "output_tokens": 1, "service_tier": "standard"}
    message: dict[str, Any] = {"id": "msg_01XFDUDYJgAACzvnptvVoYEL", "type": "message", "role": "assistant",
               "model": "claude-opus-5-5", "content": [], "stop_reason": None, "stop_sequence": None,
               "usage": usage}
    text_deltas = deltas * 3 // 5
    frames = [frame("message_start", {"type": "message_start", "message": message}),
              frame("content_block_start", {"type": "content_block_start", "index": 0,
                                            "content_block": {"type": "text", "text": ""}}),
              frame("ping", {"type": "ping"})]
    for i in range(text_deltas):
        frames.append(frame("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {
            "type": "text_delta", "text": f"Let me look at the failing test {i} and the fixture it uses. "}}))
    frames.append(frame("content_block_stop", {"type": "content_block_stop", "index": 0}))
    frames.append(frame("content_block_start", {"type": "content_block_start", "index": 1, "content_block": {
        "type": "tool_use", "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6", "name": "Bash", "input": {}}}))
    for i in range(deltas - text_deltas):
        frames.append(frame("content_block_delta", {"type": "content_block_delta", "index": 1, "delta": {
            "type": "input_json_delta", "partial_json": '{"command": "pytest -q tests/' if i == 0
            else f'test_{i}.py ' if i < deltas - text_deltas - 1 else '-x"}'}}))
    frames += [frame("content_block_stop", {"type": "content_block_stop", "index": 1}),
               frame("message_delta", {"type": "message_delta",
                                       "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                                       "usage": {"output_tokens": 412}}),
               frame("message_stop", {"type": "message_stop"})]
    return frames


def rechunk(raw: bytes, size: int) -> list[bytes]:
    return [raw[i : i + size] for i in range(0, len(raw), size)]


def cpu_us_per_call(fn: Callable[[], object], rounds: int, repeats: int = 5) -> float:
    """CPU µs per call, best of ``repeats`` runs (like timeit: the machine is shared, noise only adds)."""
    for _ in range(min(rounds, 200)):  # warm up
        fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        for _ in range(rounds):
            fn()
        best = min(best, time.process_time() - start)
    return best / rounds * 1e6


def meter_all(chunks: list[bytes]) -> Callable[[], object]:
    def run() -> object:
        meter = StreamMeter()
        for chunk in chunks:
            meter.feed(chunk)
        meter.finish(complete=True)
        return meter.usage
    return run


def meter_and_message(chunks: list[bytes]) -> Callable[[], object]:
    def run() -> object:
        meter = StreamMeter()
        for chunk in chunks:
            meter.feed(chunk)
        meter.finish(complete=True)
        return meter.message()
    return run


def decode_all(chunks: list[bytes]) -> Callable[[], object]:
    def run() -> object:
        decoder = SSEDecoder()
        events = []
        for chunk in chunks:
            events += decoder.feed(chunk)
        return events + decoder.flush()
    return run


def sdk_reference(frames: list[bytes]) -> tuple[float, float] | None:
    """CPU µs of the Anthropic Python SDK's decoder on the same stream (a yardstick for this machine's speed)."""
    try:
        from anthropic._streaming import SSEDecoder as SdkDecoder
    except ImportError:  # the SDK is only in the `test` extra
        return None

    def decode_only() -> object:
        return list(SdkDecoder().iter_bytes(iter(frames)))

    def decode_and_parse() -> object:
        return [event.json() for event in SdkDecoder().iter_bytes(iter(frames))]

    return cpu_us_per_call(decode_only, 500), cpu_us_per_call(decode_and_parse, 500)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=1000)
    args = parser.parse_args()

    frames = stream_frames(50)
    raw = b"".join(frames)
    print(f"typical stream: {len(frames)} events, {len(raw)} bytes, 50 deltas")
    cases = {
        "one chunk per event": frames,
        "whole stream in one chunk": [raw],
        "1460-byte chunks (TCP segments)": rechunk(raw, 1460),
        "64-byte chunks": rechunk(raw, 64),
        "one chunk per event, CRLF": [f.replace(b"\n", b"\r\n") for f in frames],
    }
    for name, chunks in cases.items():
        meter_us = cpu_us_per_call(meter_all(chunks), args.rounds)
        decode_us = cpu_us_per_call(decode_all(chunks), args.rounds)
        print(f"  {name:34s} meter {meter_us:7.1f} µs/stream   (decoder alone {decode_us:6.1f} µs)")
    message_us = cpu_us_per_call(meter_and_message(frames), args.rounds)
    print(f"  {'meter + message() reassembly':34s} meter {message_us:7.1f} µs/stream")
    reference = sdk_reference(frames)
    if reference is not None:
        print(f"  reference, same machine: the Anthropic SDK's own SSE decoder {reference[0]:.1f} µs/stream, "
              f"with .json() per event {reference[1]:.1f} µs/stream")

    long_frames = stream_frames(20_000)
    long_raw = b"".join(long_frames)
    mb = len(long_raw) / 1e6
    rounds = max(3, args.rounds // 300)
    for name, chunks in {"per event": long_frames, "16 KiB chunks": rechunk(long_raw, 16384)}.items():
        decode_s = cpu_us_per_call(decode_all(chunks), rounds) / 1e6
        meter_s = cpu_us_per_call(meter_all(chunks), rounds) / 1e6
        print(f"long stream ({mb:.1f} MB, {name}): "
              f"decoder {mb / decode_s:7.1f} MB/s, meter {mb / meter_s:6.1f} MB/s")


if __name__ == "__main__":
    main()

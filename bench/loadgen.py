"""A load generator for the Messages API: N concurrent workers, for a duration or a count, streamed or not.

Each worker sends ``POST /v1/messages?beta=true`` with Claude Code's headers and a Claude Code-sized body, reads
the whole reply, and records the latency (request sent -> last byte), the TTFB (request sent -> first body byte)
and the outcome. A streamed reply counts as a success only if it is a 200 that reached ``message_stop`` without an
``event: error``; a JSON reply only if it is a 200.

Bodies come from ``bench/session_gen.py`` (a deterministic Claude Code session generator): the first turn of a
session (~50 KB: tools, system prompt, first user message) or a late turn (~300 KB). Each body carries a nonce in
its last message that is rewritten for every request, so the gateway's leak scanner sees what it sees in a real
session: the history it has scanned before plus one message it has not.

Usage: python -m bench.loadgen --url http://127.0.0.1:8080 --key KEY [--auth bearer|x-api-key]
       [--concurrency 10] [--count 200 | --duration 5] [--body-kb 50] [--no-stream]
Prints a JSON summary.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import random
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp
import orjson

PATH = "/v1/messages?beta=true"
NONCE = b"bench-nonce-" + b"0" * 18
NONCE_PREFIX = b"bench-nonce-"
STREAM_END = b"event: message_stop"
STREAM_ERROR = b"event: error"


# -- bodies ---------------------------------------------------------------------------------------------------


def _with_nonce(payload: dict[str, Any], stream: bool) -> bytes:
    """The body with the nonce appended to its last message's last text, and ``stream`` set as asked."""
    messages = payload["messages"]
    last = messages[-1]
    content = last["content"]
    nonce = NONCE.decode()
    if isinstance(content, str):
        last["content"] = content + "\n" + nonce
    else:
        block = content[-1]
        if block.get("type") == "tool_result" and isinstance(block.get("content"), str):
            block["content"] += "\n" + nonce
        elif block.get("type") == "text":
            block["text"] += "\n" + nonce
        else:
            content.append({"type": "text", "text": nonce})
    payload["stream"] = stream
    return orjson.dumps(payload)


def _fallback_payload(size: int, seed: int) -> dict[str, Any]:
    """A Claude Code-shaped body of about ``size`` bytes, for when bench/session_gen.py is not there."""
    words = ("the", "test", "file", "should", "read", "the", "fixture", "and", "check", "each", "value", "before",
             "it", "writes", "the", "output")
    rng = random.Random(seed)

    def text(n: int) -> str:
        out: list[str] = []
        length = 0
        while length < n:
            word = rng.choice(words)
            out.append(word)
            length += len(word) + 1
        return " ".join(out)

    tools = [{"name": f"Tool{i}", "description": text(1500), "input_schema": {"type": "object", "properties": {
        "path": {"type": "string", "description": text(200)}}}} for i in range(17)]
    system = [{"type": "text", "text": text(7000), "cache_control": {"type": "ephemeral"}}]
    messages: list[dict[str, Any]] = [{"role": "user", "content": [{"type": "text", "text": text(10_000)}]}]
    total = 50_000
    turn = 0
    while total < size:
        tool_id = f"toolu_{seed:04d}{turn:08d}"
        messages.append({"role": "assistant", "content": [
            {"type": "text", "text": text(400)},
            {"type": "tool_use", "id": tool_id, "name": "Read", "input": {"file_path": f"/src/m{turn}.py"}}]})
        messages.append({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": tool_id, "content": text(4000)}]})
        total += 4600
        turn += 1
    return {"model": "claude-opus-5-5", "messages": messages, "system": system, "tools": tools,
            "metadata": {"user_id": f"user_{seed}"}, "max_tokens": 128000, "stream": True}


def _session_payload(size: int, seed: int) -> dict[str, Any] | None:
    try:
        from bench.session_gen import SessionConfig, generate_session
    except ImportError:
        return None
    if size <= 60_000:
        turns = generate_session(seed, SessionConfig(turns=1))
        return dict(orjson.loads(turns[0].body))
    # Bigger tool results reach a late-session size in fewer turns (generation is quadratic in turns).
    config = SessionConfig(turns=max(2, size // 7_000 + 4), result_bytes=(2_000, 10_000))
    for turn in generate_session(seed, config):
        if len(turn.body) >= size:
            return dict(orjson.loads(turn.body))
    return dict(orjson.loads(turn.body))


def make_bodies(size: int, *, stream: bool, variants: int = 4) -> list[bytes]:
    """``variants`` different Claude Code request bodies of about ``size`` bytes, each carrying the nonce."""
    out = []
    for seed in range(variants):
        payload = _session_payload(size, seed) or _fallback_payload(size, seed)
        out.append(_with_nonce(payload, stream))
    return out


def session_headers() -> dict[str, str]:
    try:
        from bench.session_gen import session_headers as generated
    except ImportError:
        return {"anthropic-version": "2023-06-01", "content-type": "application/json",
                "user-agent": "claude-cli/2.1.328 (external, cli)", "x-app": "cli"}
    return generated()


# -- measuring ------------------------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by linear interpolation; ``values`` need not be sorted. NaN if empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def distribution(values: Sequence[float]) -> dict[str, float]:
    return {"p50": percentile(values, 50), "p90": percentile(values, 90), "p99": percentile(values, 99),
            "max": max(values) if values else float("nan"),
            "mean": sum(values) / len(values) if values else float("nan")}


@dataclass(frozen=True)
class Target:
    """Where to send requests and with what credentials (one per worker, round-robin)."""

    name: str
    base_url: str
    keys: tuple[str, ...]
    auth: Literal["x-api-key", "bearer"] = "x-api-key"
    headers: Mapping[str, str] = field(default_factory=dict)  # extra headers (e.g. the fake's x-bench-*)

    def headers_for(self, worker: int) -> dict[str, str]:
        key = self.keys[worker % len(self.keys)]
        auth = {"x-api-key": key} if self.auth == "x-api-key" else {"authorization": f"Bearer {key}"}
        return {**session_headers(), **self.headers, **auth}


@dataclass
class LoadResult:
    target: str
    concurrency: int
    ok: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    error_samples: list[str] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    ttfb_ms: list[float] = field(default_factory=list)
    bytes_in: int = 0
    bytes_out: int = 0
    elapsed_s: float = 0.0

    @property
    def rps(self) -> float:
        return self.ok / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def error(self, kind: str, detail: str = "") -> None:
        self.errors[kind] += 1
        if len(self.error_samples) < 5:
            self.error_samples.append(f"{kind}: {detail}"[:300])

    def merge(self, other: LoadResult) -> None:
        self.ok += other.ok
        self.errors.update(other.errors)
        self.error_samples = (self.error_samples + other.error_samples)[:5]
        self.latencies_ms += other.latencies_ms
        self.ttfb_ms += other.ttfb_ms
        self.bytes_in += other.bytes_in
        self.bytes_out += other.bytes_out
        self.elapsed_s += other.elapsed_s

    def summary(self) -> dict[str, Any]:
        return {"target": self.target, "concurrency": self.concurrency, "ok": self.ok,
                "errors": dict(self.errors), "error_samples": self.error_samples,
                "elapsed_s": round(self.elapsed_s, 3), "rps": round(self.rps, 1),
                "latency_ms": {k: round(v, 3) for k, v in distribution(self.latencies_ms).items()},
                "ttfb_ms": {k: round(v, 3) for k, v in distribution(self.ttfb_ms).items()},
                "mb_in": round(self.bytes_in / 1e6, 2), "mb_out": round(self.bytes_out / 1e6, 2)}


def _stamp(body: bytes, run: int, number: int) -> bytes:
    return body.replace(NONCE, NONCE_PREFIX + f"{run:06x}{number:012d}".encode(), 1)


async def _one(session: aiohttp.ClientSession, url: str, headers: dict[str, str], body: bytes,
               result: LoadResult) -> None:
    started = time.perf_counter()
    first: float | None = None
    received = 0
    head = b""
    tail = b""
    saw_error = False
    try:
        async with session.post(url, data=body, headers=headers) as response:
            while True:
                chunk = await response.content.readany()
                if not chunk:
                    break
                if first is None:
                    first = time.perf_counter()
                received += len(chunk)
                if len(head) < 300:
                    head += chunk[: 300 - len(head)]
                window = tail + chunk
                saw_error = saw_error or STREAM_ERROR in window
                tail = window[-128:]
            status = response.status
            streamed = response.headers.get("content-type", "").startswith("text/event-stream")
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        result.error(type(exc).__name__, str(exc))
        return
    ended = time.perf_counter()
    result.bytes_in += received
    result.bytes_out += len(body)
    if status != 200:
        result.error(f"http_{status}", head.decode("utf-8", "replace"))
        return
    if streamed and (saw_error or STREAM_END not in tail):
        result.error("sse_error" if saw_error else "incomplete_stream", tail.decode("utf-8", "replace"))
        return
    result.ok += 1
    result.latencies_ms.append((ended - started) * 1e3)
    result.ttfb_ms.append(((first or ended) - started) * 1e3)


async def run_load(target: Target, bodies: Sequence[bytes], *, concurrency: int, count: int | None = None,
                   duration_s: float | None = None, timeout_s: float = 120.0, path: str = PATH,
                   session: aiohttp.ClientSession | None = None, ramp_s: float = 0.0) -> LoadResult:
    """Run ``concurrency`` workers until ``count`` requests were sent or ``duration_s`` passed (whichever first).

    Requests in flight at the deadline are completed and counted; ``elapsed_s`` runs until the last one ends.
    ``ramp_s``: start the workers evenly over this many seconds instead of all at once.
    """
    if count is None and duration_s is None:
        raise ValueError("give a count, a duration or both: the load must be bounded")
    if not bodies:
        raise ValueError("no bodies to send")
    result = LoadResult(target.name, concurrency)
    url = target.base_url.rstrip("/") + path
    numbers = itertools.count()
    run = int.from_bytes(os.urandom(3), "big")
    own = session is None
    if session is None:
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=max(1, concurrency), force_close=False),
            timeout=aiohttp.ClientTimeout(total=timeout_s), skip_auto_headers=("User-Agent",),
            auto_decompress=False)
    started = time.perf_counter()
    deadline = started + duration_s if duration_s is not None else float("inf")

    async def worker(index: int) -> None:
        headers = target.headers_for(index)
        if ramp_s > 0:
            await asyncio.sleep(ramp_s * index / concurrency)  # the ramp's schedule, not synchronisation
        while time.perf_counter() < deadline:
            number = next(numbers)
            if count is not None and number >= count:
                return
            body = _stamp(bodies[number % len(bodies)], run, number)
            await _one(session, url, headers, body, result)

    try:
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
    finally:
        result.elapsed_s = time.perf_counter() - started
        if own:
            await session.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True, help="base URL, e.g. http://127.0.0.1:8080")
    parser.add_argument("--key", required=True, action="append", help="repeat to rotate keys over workers")
    parser.add_argument("--auth", choices=["x-api-key", "bearer"], default="x-api-key")
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--count", type=int)
    parser.add_argument("--duration", type=float)
    parser.add_argument("--body-kb", type=int, default=50)
    parser.add_argument("--no-stream", action="store_true")
    parser.add_argument("--header", action="append", default=[], help="extra header NAME:VALUE")
    args = parser.parse_args()
    if args.count is None and args.duration is None:
        args.duration = 5.0
    extra = dict(h.split(":", 1) for h in args.header)
    target = Target("cli", args.url, tuple(args.key), args.auth, {k.strip(): v.strip() for k, v in extra.items()})
    bodies = make_bodies(args.body_kb * 1000, stream=not args.no_stream)
    result = asyncio.run(run_load(target, bodies, concurrency=args.concurrency, count=args.count,
                                  duration_s=args.duration))
    print(orjson.dumps(result.summary(), option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()

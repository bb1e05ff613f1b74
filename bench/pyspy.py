"""Sampling the gateway with py-spy while it is under load, and reducing the samples to a table of hot spots.

``py-spy record --format raw`` writes one line per distinct stack: ``frame;frame;...;frame count`` (root first).
A frame reads ``function (file:line)``. The table gives, per function, the share of samples in which it is the
innermost frame (self) and in which it is anywhere on the stack (inclusive), and the self share per source file.
Only samples of running threads are taken (py-spy's default skips idle ones), so shares are shares of CPU time.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def find_pyspy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    if beside.exists():
        return str(beside)
    return shutil.which("py-spy")


async def record(pid: int, duration_s: int, out: Path, *, rate: int = 250) -> tuple[int, str]:
    """Run ``py-spy record`` against ``pid`` for ``duration_s``; returns (exit status, its stderr)."""
    exe = find_pyspy()
    if exe is None:
        return 127, "py-spy not found (pip install py-spy)"
    proc = await asyncio.create_subprocess_exec(
        exe, "record", "--pid", str(pid), "--duration", str(duration_s), "--rate", str(rate), "--format", "raw",
        "--nonblocking", "--output", str(out), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        _, err = await asyncio.wait_for(proc.communicate(), duration_s + 60)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return 124, "py-spy timed out"
    return proc.returncode or 0, err.decode(errors="replace")[-2000:]


def _short(path: str) -> str:
    for marker in ("site-packages/", "lib/python3.11/", "lib/python3.12/", "/work/main/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


@dataclass(frozen=True)
class Frame:
    func: str
    file: str
    line: str

    @property
    def name(self) -> str:
        return f"{self.func} ({self.file})"


def parse_frame(text: str) -> Frame:
    match = _FRAME.match(text.strip())
    if match is None:
        return Frame(text.strip(), "", "")
    return Frame(match["func"], _short(match["file"]), match["line"] or "")


def summarize(raw: str, top: int = 20) -> dict[str, Any]:
    self_counts: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    by_file: Counter[str] = Counter()
    by_area: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [parse_frame(f) for f in stack.split(";")]
        frames = [f for f in frames if f.file]  # drop "process ..." / "thread ..." pseudo-frames
        if not frames:
            continue
        total += count
        leaf = frames[-1]
        self_counts[leaf.name] += count
        by_file[leaf.file] += count
        by_area[area_of(frames)] += count
        for name in {f.name for f in frames}:
            inclusive[name] += count

    def table(counter: Counter[str]) -> list[dict[str, Any]]:
        return [{"what": k, "samples": v, "pct": round(100 * v / total, 1)} for k, v in counter.most_common(top)]

    gateway_only: Counter[str] = Counter({k: v for k, v in inclusive.items()
                                          if "(gateway/" in k and not any(e in k for e in _ENTRY)})
    return {"samples": total, "self": table(self_counts), "inclusive": table(inclusive),
            "inclusive_gateway": table(gateway_only), "by_file": table(by_file), "by_area": table(by_area)}


# Which part of the request path a sample belongs to: the innermost gateway module on the stack decides (the entry
# points serve/cli/__main__ do not count); a sample with no gateway frame (an event-loop callback: a socket read,
# a write of a request body, a Redis send) goes to the first library below the event loop.
_ENTRY = ("gateway/serve.py", "gateway/cli.py", "gateway/__main__.py")
_AREAS = (
    ("gateway/leak", "leak scanner"), ("gateway/incidents", "leak scanner"),
    ("gateway/writer", "transcript writer"), ("gateway/contentstore", "transcript writer"),
    ("gateway/spool", "transcript spool"), ("gateway/transcript", "transcript record"),
    ("gateway/sse", "SSE meter"), ("gateway/usage", "metering + pricing"), ("gateway/pricing", "metering + pricing"),
    ("gateway/weights", "metering + pricing"),
    ("gateway/ledger", "ledger (Redis)"), ("gateway/gate", "ledger (Redis)"), ("gateway/scripts", "ledger (Redis)"),
    ("gateway/keystatus", "ledger (Redis)"), ("gateway/quota_headers", "quota headers"),
    ("gateway/keys", "auth (JWT)"), ("gateway/auth", "auth (JWT)"), ("gateway/policy", "policy cache"),
    ("gateway/metrics", "metrics"), ("gateway/logs", "logging"),
    ("gateway/proxy", "proxy handler"), ("gateway/upstream", "proxy handler"), ("gateway/errors", "proxy handler"),
)
_LIBRARIES = (("redis/", "redis-py"), ("asyncpg/", "asyncpg"), ("aiohttp/", "aiohttp"), ("jwt/", "PyJWT"),
              ("prometheus_client/", "prometheus"), ("logging/", "logging"), ("concurrent/", "worker threads"),
              ("threading", "worker threads"))


_LOOP_FRAMES = ("Handle._run", "BaseEventLoop._run_once", "BaseEventLoop.run_forever")


def area_of(frames: list[Frame]) -> str:
    for frame in reversed(frames):
        if frame.file.startswith("gateway/") and frame.file not in _ENTRY:
            for prefix, area in _AREAS:
                if frame.file.startswith(prefix):
                    return area
            return "gateway, other modules"
    loop = [i for i, f in enumerate(frames) if f.file.startswith("asyncio/") and f.func in _LOOP_FRAMES]
    for frame in frames[loop[-1] + 1 if loop else 0 :]:
        for prefix, area in _LIBRARIES:
            if prefix in frame.file:
                return f"{area} (no gateway frame)"
    return "event loop (asyncio, selectors)"

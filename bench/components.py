"""Running the component benchmarks (bench/bench_*.py, written with each component) and collecting their numbers.

Each script is run as its own process with a time limit; its whole output is kept, and the headline numbers are
picked out of it with one pattern per number (a script whose output changed shows ``None`` there, never a guess).
"""

from __future__ import annotations

import asyncio
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent


@dataclass(frozen=True)
class Component:
    script: str
    what: str
    quick_args: tuple[str, ...] = ()
    full_args: tuple[str, ...] = ()
    # name -> regex whose first group is the number (commas allowed)
    numbers: dict[str, str] = field(default_factory=dict)
    target: tuple[str, str, float] | None = None  # (number name, ">=" or "<=", bound)


COMPONENTS = (
    Component("bench_ledger.py", "ledger reserve + settle pairs/s (real Redis)", ("--pairs", "5000"), (),
              {"pairs_per_s": r"([\d,.]+) pairs/s", "client_cpu_us_per_pair": r"client CPU: ([\d,.]+) µs per pair",
               "one_core_pairs_per_s": r"one core sustains ([\d,.]+) pairs/s",
               "redis_us_per_pair": r"Redis in the scripts: ([\d,.]+) µs per pair"},
              ("pairs_per_s", ">=", 10_000)),
    Component("bench_writer.py", "transcript writer transcripts/s (real Postgres)", ("--records", "2000"),
              ("--records", "20000"),
              {"transcripts_per_s": r"([\d,.]+) transcripts/s end to end",
               "writer_cpu_us_per_record": r"writer process ([\d,.]+) us",
               "postgres_cpu_us_per_record": r"Postgres ([\d,.]+) us",
               "one_core_transcripts_per_s": r"can carry ([\d,.]+) transcripts/s",
               "durable_mb_s_at_20000": r"at 20,000 transcripts/s: ([\d,.]+) MB/s",
               "cores_at_20000": r"at 20,000 transcripts/s: [\d,.]+ MB/s of durable writes and ([\d.]+) cores",
               "disk_fdatasync_mb_s": r"this disk: ([\d,.]+) MB/s"},
              ("transcripts_per_s", ">=", 20_000)),
    Component("bench_scanner.py", "leak scanner MB/s", ("--mb", "1", "--repeat", "1"), (),
              {"fresh_mb_s": r"fresh:\s*([\d,.]+) MB/s", "cached_mb_s": r"cached:\s*([\d,.]+) MB/s",
               "next_turn_ms": r"next turn .*?: ([\d,.]+) ms"}, ("fresh_mb_s", ">=", 40)),
    Component("bench_storage.py", "transcript storage vs raw request bodies (session generator)", (), (),
              {"request_storage_ratio": r"request storage: [\d.]+ MB = ([\d.]+) of raw",
               "everything_on_disk_ratio": r"on disk, everything.*?= ([\d.]+) of raw"},
              ("request_storage_ratio", "<=", 0.10)),
    Component("bench_sse.py", "SSE meter µs per 50-delta stream", ("--rounds", "100"), (),
              {"meter_us_per_stream": r"one chunk per event\s+meter\s+([\d,.]+) µs",
               "meter_plus_message_us": r"meter \+ message\(\) reassembly\s+meter\s+([\d,.]+) µs"}),
    Component("bench_usage_report.py", "usage report queries (312k usage rows)", (), (),
              {"by_student_semester_median_ms": r"by student, whole semester\s+\d+\s+([\d.]+)",
               "by_student_week_median_ms": r"by student, one week\s+\d+\s+([\d.]+)"}),
)


def _number(pattern: str, text: str) -> float | None:
    match = re.search(pattern, text)
    if match is None:
        return None
    try:
        return float(match.group(1).replace(",", ""))
    except ValueError:
        return None


async def _supports_quick(path: Path) -> bool:
    proc = await asyncio.create_subprocess_exec(sys.executable, str(path), "--help", cwd=ROOT,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return False
    return b"--quick" in out


async def run_component(component: Component, *, quick: bool, env: dict[str, str],
                        timeout_s: float) -> dict[str, Any]:
    path = BENCH / component.script
    if not path.exists():
        return {"what": component.what, "status": "absent"}
    args = list(component.quick_args if quick else component.full_args)
    if quick and not args and await _supports_quick(path):
        args = ["--quick"]
    started = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(sys.executable, str(path), *args, cwd=ROOT, env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout_s)
        status = "ok" if proc.returncode == 0 else f"exit {proc.returncode}"
    except TimeoutError:
        proc.kill()
        out, _ = await proc.communicate()
        status = f"timed out after {timeout_s:.0f} s"
    text = out.decode(errors="replace")
    numbers = {name: _number(pattern, text) for name, pattern in component.numbers.items()}
    result: dict[str, Any] = {"what": component.what, "status": status, "args": args,
                              "seconds": round(time.perf_counter() - started, 1), "numbers": numbers,
                              "output": text[-4000:]}
    if component.target is not None:
        name, op, bound = component.target
        value = numbers.get(name)
        result["target"] = f"{name} {op} {bound:g}"
        result["meets_target"] = None if value is None else (value >= bound if op == ">=" else value <= bound)
    return result


async def run_all(*, quick: bool, env: dict[str, str], log: Any = print) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for component in COMPONENTS:
        log(f"component {component.script} ...")
        result = await run_component(component, quick=quick, env=env, timeout_s=240 if quick else 900)
        log(f"  {result['status']}: {result.get('numbers', {})}")
        results[component.script] = result
    return results

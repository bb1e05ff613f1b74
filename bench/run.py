"""The benchmark runner: the gateway's overhead over a direct upstream, its scale, and its components.

    python bench/run.py overhead     # direct vs gateway (vs --compare-url), interleaved rounds, c = 1, 10, 50
    python bench/run.py scale        # 1,000 slow streams; RSS after --requests requests; 1, 2 and 4 workers
    python bench/run.py components   # bench_ledger / bench_writer / bench_scanner / bench_storage / bench_sse
    python bench/run.py profile      # py-spy on the gateway under streamed c=10 load: hot-spot table
    python bench/run.py all          # all of the above
    add --quick for a smoke run of a few seconds per mode

Every service is its own process on 127.0.0.1: the fake upstream (bench/fake_upstream_server.py), the gateway
(``python -m gateway serve``, with Redis, a fresh PostgreSQL database and the transcript writer, all real), and this
process, which is the load generator. Results: a table on stdout, bench/results/latest.md and latest.json (each
mode replaces its own section), and a line in bench/results/history.md for every full overhead run; a --quick run
writes /tmp/gw-bench-logs/quick.md instead (with the services' logs and the raw profile).
See bench/README.md for what each number means.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import secrets
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``bench`` and ``gateway`` importable from the checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp
import orjson

from bench import components as component_bench
from bench import pyspy
from bench.loadgen import LoadResult, Target, make_bodies, run_load
from bench.procstat import memory, role, tree_cpu_seconds, tree_memory
from bench.report import append_history, write_results
from bench.stack import ROOT, Stack, open_stack

RESULTS = Path(__file__).resolve().parent / "results"
LOGS = Path("/tmp/gw-bench-logs")  # the services' logs and the raw profile of the last run
KB50, KB300 = 50_000, 300_000
RAMP_S = 2.0  # slow streams: the ramped variant starts its streams evenly over this many seconds


def log(message: str) -> None:
    print(message, flush=True)


# -- measuring a round -------------------------------------------------------------------------------------------


@dataclass
class Tally:
    """One target's results over all the rounds of one configuration."""

    load: LoadResult
    cpu_s: dict[str, float] = field(default_factory=dict)  # process name -> CPU seconds during its rounds
    client_cpu_s: float = 0.0

    def add(self, result: LoadResult, cpu: dict[str, float], client_cpu_s: float) -> None:
        self.load.merge(result)
        for name, seconds in cpu.items():
            self.cpu_s[name] = self.cpu_s.get(name, 0.0) + seconds
        self.client_cpu_s += client_cpu_s

    def per_request_ms(self, seconds: float) -> float | None:
        return round(1e3 * seconds / self.load.ok, 3) if self.load.ok else None

    def summary(self) -> dict[str, Any]:
        out = self.load.summary()
        out["cpu_ms_per_req"] = {name: self.per_request_ms(s) for name, s in self.cpu_s.items()}
        out["cpu_ms_per_req"]["loadgen"] = self.per_request_ms(self.client_cpu_s)
        return out


async def measured(target: Target, bodies: Sequence[bytes], *, watch: dict[str, int], concurrency: int,
                   count: int | None = None, duration_s: float | None = None, timeout_s: float = 120.0,
                   ramp_s: float = 0.0) -> tuple[LoadResult, dict[str, float], float]:
    """One load run, with the CPU time each watched process (and this one) spent during it."""
    before = {name: tree_cpu_seconds(pid) for name, pid in watch.items()}
    client_before = time.process_time()
    result = await run_load(target, bodies, concurrency=concurrency, count=count, duration_s=duration_s,
                            timeout_s=timeout_s, ramp_s=ramp_s)
    client = time.process_time() - client_before
    cpu = {name: tree_cpu_seconds(pid) - before[name] for name, pid in watch.items()}
    return result, cpu, client


def watched(stack: Stack, compare_pid: int | None) -> dict[str, int]:
    out = {}
    if stack.gateway is not None:
        out["gateway"] = stack.gateway.pid
    if stack.fake is not None:
        out["fake"] = stack.fake.pid
    if compare_pid is not None:
        out["compare"] = compare_pid
    return out


async def scanner_probe(stack: Stack) -> str:
    """Is secret scanning on? Send a body holding a fresh Anthropic-key-shaped secret and see if it is refused."""
    secret = "sk-ant-api03-" + secrets.token_urlsafe(72)[:90].replace("-", "x").replace("_", "y") + "AA"
    body = orjson.dumps({"model": "claude-opus-5-5", "max_tokens": 16, "stream": False, "messages": [
        {"role": "user", "content": f"my config has ANTHROPIC_API_KEY={secret} in it"}]})
    assert stack.gateway is not None
    headers = {"authorization": f"Bearer {stack.probe_key}", "content-type": "application/json",
               "anthropic-version": "2023-06-01"}
    async with (aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session,
                session.post(stack.gateway.url + "/v1/messages", data=body, headers=headers) as response):
        text = await response.text()
    if response.status == 403 and "permission_error" in text:
        return "on (a planted key was refused with 403)"
    return f"OFF: a planted key got {response.status} (the scanner is not wired into the proxy yet)"


def meta(args: argparse.Namespace) -> dict[str, Any]:
    def git(*argv: str) -> str:
        try:
            return subprocess.run(["git", *argv], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    cpu_model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    return {
        "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "commit": git("rev-parse", "--short", "HEAD"),
        "uncommitted_changes": bool(git("status", "--porcelain", "--", "gateway", "lua", "migrations")),
        "cpus": os.cpu_count(), "cpu_model": cpu_model, "python": platform.python_version(),
        "aiohttp": aiohttp.__version__, "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "quick": args.quick,
    }


# -- overhead ---------------------------------------------------------------------------------------------------


def derive(direct: dict[str, Any], other: dict[str, Any], cpu_name: str) -> dict[str, Any]:
    def sub(a: float, b: float) -> float:
        return round(a - b, 3)

    return {
        "throughput_ratio": round(other["rps"] / direct["rps"], 3) if direct["rps"] else None,
        "ttfb_overhead_ms_p50": sub(other["ttfb_ms"]["p50"], direct["ttfb_ms"]["p50"]),
        "ttfb_overhead_ms_p99": sub(other["ttfb_ms"]["p99"], direct["ttfb_ms"]["p99"]),
        "latency_overhead_ms_p50": sub(other["latency_ms"]["p50"], direct["latency_ms"]["p50"]),
        "cpu_ms_per_req": other["cpu_ms_per_req"].get(f"{cpu_name}_all_rounds", other["cpu_ms_per_req"].get(cpu_name)),
    }


async def overhead(stack: Stack, args: argparse.Namespace) -> dict[str, Any]:
    gateway = await stack.start_gateway(1)
    scanner = await scanner_probe(stack)
    log(f"secret scanning: {scanner}")
    targets = [stack.direct(), stack.through_gateway()]
    watch = watched(stack, args.compare_pid)
    refs = {}  # reference targets: name -> what it is
    if args.compare_bare:
        bare = await stack.start_bare_proxy(uvloop=args.compare_bare == "uvloop")
        targets.append(stack.through_bare_proxy())
        watch["bare"] = bare.pid
        refs["bare"] = ("bench/bare_proxy.py: a bare aiohttp relay (no auth, ledger, scanner or transcripts)"
                        + (" on uvloop" if args.compare_bare == "uvloop" else ""))
    if args.compare_url:
        targets.append(Target("compare", args.compare_url, (args.compare_key,), args.compare_auth))
        refs["compare"] = args.compare_url
    rows = []
    duration = args.duration or (0.5 if args.quick else 3.0)
    rounds = args.rounds or (1 if args.quick else 3)
    concurrencies = args.concurrency or ([1, 10] if args.quick else [1, 10, 50])
    for stream in (True, False):
        for size in (KB50, KB300):
            if args.shapes and f"{'stream' if stream else 'json'}{size // 1000}" not in args.shapes:
                continue
            bodies = make_bodies(size, stream=stream)
            for concurrency in concurrencies:
                tallies = {t.name: Tally(LoadResult(t.name, concurrency)) for t in targets}
                for target in targets:  # warm-up: connections open, caches filled, not measured
                    await run_load(target, bodies, concurrency=concurrency, count=max(2 * concurrency, 8),
                                   duration_s=2.0)
                for number in range(rounds):
                    order = targets if number % 2 == 0 else targets[::-1]
                    for target in order:
                        tallies[target.name].add(*await measured(target, bodies, watch=watch,
                                                                 concurrency=concurrency, duration_s=duration))
                summaries = {name: tally.summary() for name, tally in tallies.items()}
                # All the gateway process's CPU in this configuration is caused by gateway requests, including
                # what it finishes (the transcript writer's batches) while the other targets' rounds run.
                for name in ("gateway", *refs):
                    if name in watch:
                        all_rounds = sum(t.cpu_s.get(name, 0.0) for t in tallies.values())
                        summaries[name]["cpu_ms_per_req"][f"{name}_all_rounds"] = tallies[name].per_request_ms(
                            all_rounds)
                row: dict[str, Any] = {"stream": stream, "body_kb": round(len(bodies[0]) / 1000),
                                       "concurrency": concurrency, "rounds": rounds, "round_s": duration,
                                       "targets": summaries,
                                       "gateway": derive(summaries["direct"], summaries["gateway"], "gateway"),
                                       "gateway_rss_mb": memory(gateway.pid).rss_mb}
                row["refs"] = {name: derive(summaries["direct"], summaries[name], name) for name in refs}
                rows.append(row)
                log(overhead_line(row))
    mem = memory(gateway.pid)
    return {"meta": meta(args), "secret_scanning": scanner, "rows": rows,
            "gateway_memory": {"rss_mb": mem.rss_mb, "peak_rss_mb": mem.hwm_mb},
            "refs": refs}


def overhead_line(row: dict[str, Any]) -> str:
    t, g = row["targets"], row["gateway"]
    return (f"{'stream' if row['stream'] else 'json  '} {row['body_kb']:>3} KB c={row['concurrency']:<3} "
            f"direct {t['direct']['rps']:7.1f}/s  gateway {t['gateway']['rps']:7.1f}/s  "
            f"ratio {g['throughput_ratio']}  p50 {t['direct']['latency_ms']['p50']:.1f}/"
            f"{t['gateway']['latency_ms']['p50']:.1f} ms  p99 {t['direct']['latency_ms']['p99']:.1f}/"
            f"{t['gateway']['latency_ms']['p99']:.1f} ms  TTFB +{g['ttfb_overhead_ms_p50']:.2f} ms  "
            f"gw CPU {g['cpu_ms_per_req']} ms/req  errors {t['gateway']['errors'] or 0}"
            + "".join(f"  | {name}: {t[name]['rps']:.1f}/s ratio {r['throughput_ratio']} TTFB "
                      f"+{r['ttfb_overhead_ms_p50']:.2f} ms CPU {r['cpu_ms_per_req']} ms/req"
                      for name, r in row.get("refs", {}).items()))


# -- scale ------------------------------------------------------------------------------------------------------


class PeakSampler:
    """Samples the RSS of a process tree every ``interval_s`` while a load runs (peak resident during it)."""

    def __init__(self, pid: int, interval_s: float = 0.2) -> None:
        self.pid, self.interval_s = pid, interval_s
        self.peak_mb = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            self.peak_mb = max(self.peak_mb, sum(m.rss_mb for _, m in tree_memory(self.pid)))
            await asyncio.sleep(self.interval_s)  # a sampling period, not synchronisation

    def __enter__(self) -> PeakSampler:
        self._task = asyncio.create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()


async def slow_streams(stack: Stack, args: argparse.Namespace) -> dict[str, Any]:
    streams = args.streams or (100 if args.quick else 1_000)
    gateway = await stack.start_gateway(1)
    pace = {"x-bench-delay-ms": "10", "x-bench-deltas": "50"}
    bodies = make_bodies(KB50, stream=True)
    watch = watched(stack, None)
    out: dict[str, Any] = {"streams": streams, "delay_ms": 10, "deltas": 50, "ramp_s": RAMP_S}
    # All at once (the target: a burst of ``streams`` requests in the same instant), then started evenly over
    # RAMP_S seconds (students do not all press enter in the same millisecond).
    for ramp, suffix in ((0.0, ""), (RAMP_S, "_ramped")):
        for target in (stack.direct(**pace), stack.through_gateway(**pace)):
            await run_load(target, bodies, concurrency=20, count=20, timeout_s=120)
            with PeakSampler(gateway.pid) as sampler:
                result, cpu, client = await measured(target, bodies, watch=watch, concurrency=streams,
                                                     count=2 * streams, timeout_s=300, ramp_s=ramp)
            tally = Tally(LoadResult(target.name, streams))
            tally.add(result, cpu, client)
            name = target.name + suffix
            out[name] = tally.summary()
            if target.name == "gateway":
                out[name]["gateway_peak_rss_mb_during"] = round(sampler.peak_mb, 1)
            s = out[name]
            log(f"{streams} concurrent slow streams ({2 * streams} in all, ramp {ramp:g} s), {target.name}: ok "
                f"{s['ok']} errors {s['errors'] or 0} p50 {s['latency_ms']['p50']:.0f} ms "
                f"p99 {s['latency_ms']['p99']:.0f} ms")
    out["gateway_rss_after_mb"] = memory(gateway.pid).rss_mb
    return out


#: Idle time before the settled RSS reading: longer than the gateway's heap-trim interval (heap_trim_interval_s).
SETTLE_S = 3.0


async def writer_drained(base_url: str, timeout_s: float = 60.0) -> bool:
    """Waits until the gateway's transcript queue is empty (its /metrics gauge); False if it stays busy."""
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        while time.monotonic() < deadline:
            async with session.get(base_url + "/metrics") as resp:
                text = await resp.text()
            depth = [line.split()[-1] for line in text.splitlines()
                     if line.startswith("gateway_writer_queue_depth")]
            if depth and all(float(d) == 0 for d in depth):
                return True
            await asyncio.sleep(0.2)
    return False


async def rss_after(stack: Stack, args: argparse.Namespace) -> dict[str, Any]:
    total = args.requests or (2_000 if args.quick else 50_000)
    await stack.stop_gateway()
    transcripts_before = await stack.count_rows("transcripts")
    gateway = await stack.start_gateway(1)
    idle = memory(gateway.pid)
    bodies = make_bodies(KB50, stream=True)
    target = stack.through_gateway()
    await run_load(target, bodies, concurrency=10, count=100)
    start = memory(gateway.pid)
    checkpoints = [{"requests": 100, "rss_mb": start.rss_mb, "peak_rss_mb": start.hwm_mb}]
    steps = 10
    done = LoadResult("gateway", 50)
    cpu_before = tree_cpu_seconds(gateway.pid)
    for step in range(steps):
        count = total // steps + (1 if step < total % steps else 0)
        done.merge(await run_load(target, bodies, concurrency=50, count=count, timeout_s=300))
        mem = memory(gateway.pid)
        checkpoints.append({"requests": 100 + done.ok + sum(done.errors.values()), "rss_mb": mem.rss_mb,
                            "peak_rss_mb": mem.hwm_mb, "rps": round(done.rps, 1)})
        log(f"  after {checkpoints[-1]['requests']} requests: RSS {mem.rss_mb} MB (peak {mem.hwm_mb} MB)")
    cpu = tree_cpu_seconds(gateway.pid) - cpu_before
    final = memory(gateway.pid)
    drained = await writer_drained(gateway.url)
    await asyncio.sleep(SETTLE_S)
    settled = memory(gateway.pid)
    log(f"  settled (writer queue {'empty' if drained else 'NOT empty'}, {SETTLE_S:.0f} s idle): "
        f"RSS {settled.rss_mb} MB")
    code = await stack.stop_gateway()  # drains the transcript writer
    transcripts_after = await stack.count_rows("transcripts")
    written = (None if transcripts_after is None or transcripts_before is None
               else transcripts_after - transcripts_before)
    return {"requests": total + 100, "ok": done.ok + 100, "errors": dict(done.errors),
            "error_samples": done.error_samples, "rss_mb": final.rss_mb, "peak_rss_mb": final.hwm_mb,
            "settled_rss_mb": settled.rss_mb, "writer_drained": drained,
            "rss_at_start_mb": start.rss_mb, "rss_idle_mb": idle.rss_mb, "checkpoints": checkpoints,
            "rps": round(done.rps, 1),
            "cpu_ms_per_req": round(1e3 * cpu / max(1, done.ok), 3), "gateway_exit": code,
            "transcripts_written": written}


async def workers(stack: Stack, args: argparse.Namespace) -> list[dict[str, Any]]:
    duration = 1.0 if args.quick else 8.0
    bodies = make_bodies(KB50, stream=True)
    direct = stack.direct()
    await run_load(direct, bodies, concurrency=50, count=100)
    baseline, _, _ = await measured(direct, bodies, watch={}, concurrency=50, duration_s=duration)
    rows = [{"workers": 0, "what": "direct to the fake upstream", "rps": round(baseline.rps, 1)}]
    log(f"direct c=50: {baseline.rps:.1f}/s")
    for n in args.workers:
        gateway = await stack.start_gateway(n)
        target = stack.through_gateway()
        await run_load(target, bodies, concurrency=50, count=200, timeout_s=120)
        result, cpu, client = await measured(target, bodies, watch={"gateway": gateway.pid}, concurrency=50,
                                             duration_s=duration)
        per_process: dict[str, list[float]] = {}
        for pid, mem in tree_memory(gateway.pid):
            per_process.setdefault(role(pid, gateway.pid), []).append(mem.rss_mb)
        rows.append({"workers": n, "rps": round(result.rps, 1), "ratio_to_direct": round(result.rps / baseline.rps, 3),
                     "ok": result.ok, "errors": dict(result.errors),
                     "latency_ms_p50": round(percentile50(result.latencies_ms), 2),
                     "cpu_ms_per_req": round(1e3 * cpu["gateway"] / max(1, result.ok), 3),
                     "loadgen_cpu_ms_per_req": round(1e3 * client / max(1, result.ok), 3),
                     "rss_mb_per_process": per_process})
        log(f"workers={n}: {result.rps:.1f}/s ({result.rps / baseline.rps:.2f} of direct), errors "
            f"{dict(result.errors) or 0}, CPU {rows[-1]['cpu_ms_per_req']} ms/req, RSS {per_process}")
    await stack.stop_gateway()
    return rows


def percentile50(values: Sequence[float]) -> float:
    from bench.loadgen import percentile

    return percentile(values, 50)


async def scale(stack: Stack, args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"meta": meta(args)}
    parts = {"slow_streams": slow_streams, "rss": rss_after, "workers": workers}
    for name, part in parts.items():
        if name in args.parts:
            log(f"-- {name}")
            out[name] = await part(stack, args)
    return out


# -- profile ----------------------------------------------------------------------------------------------------


async def profile(stack: Stack, args: argparse.Namespace) -> dict[str, Any]:
    if pyspy.find_pyspy() is None:
        return {"meta": meta(args), "error": "py-spy not installed (pip install py-spy)"}
    seconds = int(args.duration) if args.duration else (5 if args.quick else 20)
    gateway = await stack.start_gateway(1)
    bodies = make_bodies(args.profile_kb * 1000, stream=True)
    target = stack.through_gateway()
    await run_load(target, bodies, concurrency=10, count=200)
    out_path = stack.workdir / "profile.raw"
    spy = asyncio.create_task(pyspy.record(gateway.pid, seconds, out_path))
    result, cpu, _ = await measured(target, bodies, watch={"gateway": gateway.pid}, concurrency=10,
                                    duration_s=seconds + 1)
    code, err = await spy
    cpu_ms = 1e3 * cpu["gateway"] / max(1, result.ok)
    if code != 0 or not out_path.exists():
        return {"meta": meta(args), "error": f"py-spy exited {code}: {err}"}
    raw = await asyncio.to_thread(keep_profile, out_path, LOGS / f"profile-{args.profile_kb}kb.raw")
    summary = pyspy.summarize(raw)
    for entry in summary["by_area"]:
        entry["ms_per_req"] = round(entry["pct"] / 100 * cpu_ms, 3)
    log(f"profile: {summary['samples']} samples; load {result.rps:.1f}/s, errors {dict(result.errors) or 0}, "
        f"gateway CPU {cpu_ms:.3f} ms/req")
    for entry in summary["by_area"][:12]:
        log(f"  {entry['pct']:5.1f}%  {entry['ms_per_req']:.3f} ms/req  {entry['what']}")
    return {"meta": meta(args), "load": {"concurrency": 10, "stream": True, "body_kb": round(len(bodies[0]) / 1000),
                                         "seconds": seconds,
                                         "rps": round(result.rps, 1), "gateway_cpu_ms_per_req": round(cpu_ms, 3)},
            **summary}


def results_dir(args: argparse.Namespace) -> Path:
    """bench/results for measurements; smoke runs (--quick) go next to the logs, out of the repository."""
    return LOGS if args.quick else RESULTS


def keep_profile(source: Path, into: Path) -> str:
    """The raw samples, also kept for a closer look (flamegraph.pl and speedscope read this format)."""
    raw = source.read_text()
    into.parent.mkdir(parents=True, exist_ok=True)
    into.write_text(raw)
    return raw


# -- main -------------------------------------------------------------------------------------------------------


Mode = Callable[[Stack, argparse.Namespace], Awaitable[dict[str, Any]]]


async def main_async(args: argparse.Namespace) -> int:
    modes: dict[str, Mode] = {"overhead": overhead, "scale": scale, "profile": profile}
    wanted = ["overhead", "scale", "components", "profile"] if args.mode == "all" else [args.mode]
    results: dict[str, Any] = {}
    if "components" in wanted:
        log("== components")
        env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
        results["components"] = {"meta": meta(args),
                                 "results": await component_bench.run_all(quick=args.quick, env=env, log=log)}
        write_results(results_dir(args), results, quick=args.quick)
    stack_modes = [m for m in wanted if m in modes]
    if stack_modes:
        async with open_stack(pg_admin_dsn=args.pg_admin, redis_url=args.redis_url, students=args.students,
                              keep_logs=LOGS, fake_port=args.fake_port,
                              gateway_env=dict(item.split("=", 1) for item in args.gateway_env)) as stack:
            for mode in stack_modes:
                log(f"== {mode}")
                name = mode if mode != "profile" or args.profile_kb == 50 else f"profile_{args.profile_kb}kb"
                results[name] = await modes[mode](stack, args)
                write_results(results_dir(args), results, quick=args.quick)
                if name == "overhead" and not args.quick:
                    append_history(RESULTS, results[name])
    log(f"results: {results_dir(args) / ('quick.md' if args.quick else 'latest.md')}")
    return 0


def csv_ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["overhead", "scale", "components", "profile", "all"])
    parser.add_argument("--quick", action="store_true", help="a smoke run of seconds, not a measurement")
    parser.add_argument("--rounds", type=int, help="interleaved rounds per configuration (default 3)")
    parser.add_argument("--duration", type=float, help="seconds per round (default 3)")
    parser.add_argument("--concurrency", type=csv_ints, help="e.g. 1,10,50 (the default)")
    parser.add_argument("--requests", type=int, help="scale: requests before the RSS reading (default 50,000; "
                                                     "--quick 2,000)")
    parser.add_argument("--streams", type=int, help="scale: concurrent slow streams (default 1,000; --quick 100)")
    parser.add_argument("--workers", type=csv_ints, default=[1, 2, 4], help="scale: worker counts to compare")
    parser.add_argument("--parts", type=lambda text: text.split(","), default=["slow_streams", "rss", "workers"],
                        help="scale: which parts to run (default slow_streams,rss,workers)")
    parser.add_argument("--gateway-env", action="append", default=[], metavar="GATEWAY_X=VALUE",
                        help="extra setting for the gateway process (repeatable), e.g. GATEWAY_REDIS_TIMEOUT_S=2")
    parser.add_argument("--shapes", type=lambda text: text.split(","), default=None,
                        help="overhead: only these of stream50,stream300,json50,json300 (default: all four)")
    parser.add_argument("--profile-kb", type=int, default=50, help="profile: request body size (50 or 300)")
    parser.add_argument("--students", type=int, default=4, help="student keys to issue and rotate over")
    parser.add_argument("--compare-bare", nargs="?", const="asyncio", choices=["asyncio", "uvloop"],
                        help="overhead: also measure bench/bare_proxy.py (a relay doing nothing else) as the floor "
                             "(optionally on uvloop)")
    parser.add_argument("--compare-url", help="another gateway's base URL, measured in the same rounds")
    parser.add_argument("--compare-key", default="", help="its key")
    parser.add_argument("--compare-auth", choices=["x-api-key", "bearer"], default="x-api-key")
    parser.add_argument("--compare-pid", type=int, help="its process id, to measure its CPU and memory too")
    parser.add_argument("--fake-port", type=int, help="fixed port for the fake upstream (to point --compare-url's "
                                                      "gateway at it); default: a free port")
    parser.add_argument("--pg-admin", default="postgresql://postgres@127.0.0.1:5432/test",
                        help="an admin DSN on the PostgreSQL where the bench database is created and dropped")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args(argv)
    if any(not item.startswith("GATEWAY_") or "=" not in item for item in args.gateway_env):
        parser.error("--gateway-env takes GATEWAY_NAME=VALUE")
    if args.compare_url and not args.compare_key:
        parser.error("--compare-url needs --compare-key")
    for url in (args.compare_url, args.pg_admin, args.redis_url):
        if url and not any(h in url for h in ("127.0.0.1", "localhost", "[::1]")):
            parser.error(f"only loopback addresses: {url}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    return asyncio.run(main_async(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())

"""Writing results: latest.json (every mode's last run, one section each), latest.md (tables made from it), and
history.md (one line per full overhead run, so a change to the hot path shows up as a new line).

A ``--quick`` run writes quick.json / quick.md (in /tmp/gw-bench-logs) instead: smoke numbers never replace
measured ones.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import orjson

NOTE = ("Note: the fake upstream, the gateway and the load generator are three processes sharing the same "
        "cores (2 on the reference box), so wall-clock numbers (req/s, latency) are lower bounds of what the "
        "gateway alone could do and move with whatever else runs on the box; direct and gateway rounds are "
        "interleaved in one run so both see the same conditions. CPU ms per request is counted from the "
        "gateway process's own CPU time (/proc/<pid>/stat), which does not depend on the sharing.")
SETTLE_NOTE = "then 3 s idle, past one heap trim"


def _load(path: Path) -> dict[str, Any]:
    try:
        data = orjson.loads(path.read_bytes())
    except (FileNotFoundError, orjson.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def write_results(folder: Path, fresh: dict[str, Any], *, quick: bool) -> dict[str, Any]:
    folder.mkdir(parents=True, exist_ok=True)
    stem = "quick" if quick else "latest"
    merged = _load(folder / f"{stem}.json")
    for section, value in fresh.items():  # one level deep: ``scale --parts rss`` keeps the other parts
        old = merged.get(section)
        merged[section] = {**old, **value} if isinstance(old, dict) and isinstance(value, dict) else value
    (folder / f"{stem}.json").write_bytes(orjson.dumps(merged, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
    (folder / f"{stem}.md").write_text(render(merged, quick=quick))
    return merged


def append_history(folder: Path, overhead: dict[str, Any]) -> None:
    path = folder / "history.md"
    if not path.exists():
        path.write_text("# Overhead history\n\nOne line per full `python bench/run.py overhead` run (newest last). "
                        "Ratio = gateway req/s ÷ direct req/s in the same run; TTFB overhead = gateway - direct "
                        "p50; CPU = gateway CPU ms per request.\n\n"
                        "| when | commit | scanning | c=10 stream 50 KB ratio | c=1 stream TTFB overhead p50 | "
                        "CPU ms/streamed req (50 KB, c=10) | CPU ms/streamed req (300 KB, c=10) | peak RSS |\n"
                        "|---|---|---|---|---|---|---|---|\n")
    m = overhead["meta"]
    s10, s1, b10 = (_row(overhead, True, 50, 10), _row(overhead, True, 50, 1), _row(overhead, True, 300, 10))
    scanning = "on" if overhead.get("secret_scanning", "").startswith("on") else "off"
    line = (f"| {m['when']} | {m['commit']}{'+' if m.get('uncommitted_changes') else ''} | {scanning} | "
            f"{_g(s10, 'throughput_ratio')} | {_g(s1, 'ttfb_overhead_ms_p50')} ms | {_g(s10, 'cpu_ms_per_req')} | "
            f"{_g(b10, 'cpu_ms_per_req')} | {overhead['gateway_memory']['peak_rss_mb']} MB |\n")
    with path.open("a") as out:
        out.write(line)


def _row(overhead: dict[str, Any] | None, stream: bool, kb: int, concurrency: int) -> dict[str, Any] | None:
    for row in (overhead or {}).get("rows", []):
        if row["stream"] == stream and abs(row["body_kb"] - kb) < kb * 0.3 and row["concurrency"] == concurrency:
            return dict(row)
    return None


def _g(row: dict[str, Any] | None, key: str) -> Any:
    return None if row is None else row["gateway"].get(key)


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:,.{digits}f}"
    return str(value)


def _check(value: Any, op: str, bound: float) -> str:
    if value is None:
        return "not measured"
    ok = value >= bound if op == ">=" else value <= bound
    return "yes" if ok else "**NO**"


def targets(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    overhead = results.get("overhead")
    s10, s1 = _row(overhead, True, 50, 10), _row(overhead, True, 50, 1)
    out = [
        ("≥ 50 % of direct throughput, c=10, streamed, 50 KB", _fmt(_g(s10, "throughput_ratio"), 3),
         _check(_g(s10, "throughput_ratio"), ">=", 0.5)),
        ("TTFB overhead ≤ 1 ms p50, c=1, streamed, 50 KB", _fmt(_g(s1, "ttfb_overhead_ms_p50"), 3) + " ms",
         _check(_g(s1, "ttfb_overhead_ms_p50"), "<=", 1.0)),
        ("≤ 1.5 ms gateway CPU per streamed request (50 KB, c=10)", _fmt(_g(s10, "cpu_ms_per_req"), 3) + " ms",
         _check(_g(s10, "cpu_ms_per_req"), "<=", 1.5)),
    ]
    rss = (results.get("scale") or {}).get("rss")
    if rss:
        settled = rss["settled_rss_mb"]
        out.append((f"RSS ≤ 100 MB after 50,000 requests (measured after {rss['requests']:,}, settled: "
                    f"transcripts written, {SETTLE_NOTE})",
                    f"{settled} MB settled; {rss['rss_mb']} MB at the last reply (peak {rss['peak_rss_mb']} MB)",
                    _check(settled, "<=", 100) + ("" if rss["requests"] >= 50_000 else " (fewer requests)")))
    slow = (results.get("scale") or {}).get("slow_streams")
    for name, how in (("gateway", "all at once"), ("gateway_ramped", "started over 2 s")):
        if slow and name in slow:
            errors = sum(slow[name]["errors"].values())
            out.append((f"{slow['streams']:,} concurrent slow streams, one worker, no errors ({how})",
                        f"{slow[name]['ok']:,} ok, {errors:,} errors", "yes" if errors == 0 else "**NO**"))
    comps = (results.get("components") or {}).get("results", {})
    for script, label, name, op, bound, unit in (
        ("bench_writer.py", "writer ≥ 20,000 transcripts/s", "transcripts_per_s", ">=", 20_000, "/s"),
        ("bench_scanner.py", "scanner ≥ 40 MB/s (fresh text)", "fresh_mb_s", ">=", 40, " MB/s"),
        ("bench_ledger.py", "ledger ≥ 10,000 reserve+settle pairs/s", "pairs_per_s", ">=", 10_000, "/s"),
        ("bench_storage.py", "transcript request storage ≤ 0.10 of raw bodies", "request_storage_ratio", "<=", 0.10,
         ""),
    ):
        comp = comps.get(script)
        value = None if comp is None else comp.get("numbers", {}).get(name)
        status = "not measured" if comp is None else comp["status"]
        shown = _fmt(value, 0 if bound > 1 else 3)
        out.append((label, f"{shown}{unit}" if value is not None else status, _check(value, op, bound)))
    return out


def render(results: dict[str, Any], *, quick: bool) -> str:
    lines = ["# Benchmark results" + (" (--quick smoke run: not a measurement)" if quick else ""), "",
             "Written by `python bench/run.py`; see bench/README.md for what each number means.", "", NOTE, ""]
    profiles = sorted(k for k in results if k.startswith("profile"))
    order = ["overhead", "scale", "components", *profiles]
    sections = [results[k]["meta"] for k in order if k in results]
    if sections:
        m = sections[0]
        lines += [f"Machine: {m['cpus']} CPUs ({m['cpu_model']}), Python {m['python']}, aiohttp {m['aiohttp']}.", ""]
        for key in order:
            if key in results:
                mm = results[key]["meta"]
                lines.append(f"- {key}: {mm['when']}, commit {mm['commit']}"
                             f"{' + uncommitted changes' if mm.get('uncommitted_changes') else ''}, load average "
                             f"at start {mm['load_average_at_start']}")
        lines.append("")
    lines += ["## Targets", "", "| target | measured | met |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in targets(results)]
    lines.append("")
    if "overhead" in results:
        lines += render_overhead(results["overhead"])
    if "scale" in results:
        lines += render_scale(results["scale"])
    if "components" in results:
        lines += render_components(results["components"])
    for key in profiles:
        lines += render_profile(results[key])
    return "\n".join(lines) + "\n"


def render_overhead(o: dict[str, Any]) -> list[str]:
    rows = o["rows"]
    lines = ["## Overhead: direct to the fake upstream vs through the gateway", "",
             f"Secret scanning: {o['secret_scanning']}. Redis ledger and Postgres transcript writer: on. "
             f"{rows[0]['rounds'] if rows else 0} interleaved rounds of {rows[0]['round_s'] if rows else 0} s per "
             "line and target; streamed replies have 50 deltas. Gateway RSS after all rows: "
             f"{o['gateway_memory']['rss_mb']} MB (peak {o['gateway_memory']['peak_rss_mb']} MB).", "",
             "| reply | body | c | direct req/s | gateway req/s | ratio | p50 ms direct / gw | p99 ms direct / gw "
             "| TTFB p50 ms direct / gw | TTFB overhead p50 / p99 ms | gw CPU ms/req | fake CPU ms/req "
             "| loadgen CPU ms/req | gw errors |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        d, g, x = row["targets"]["direct"], row["targets"]["gateway"], row["gateway"]
        lines.append(
            f"| {'stream' if row['stream'] else 'JSON'} | {row['body_kb']} KB | {row['concurrency']} | "
            f"{_fmt(d['rps'], 1)} | {_fmt(g['rps'], 1)} | {_fmt(x['throughput_ratio'], 3)} | "
            f"{_fmt(d['latency_ms']['p50'])} / {_fmt(g['latency_ms']['p50'])} | "
            f"{_fmt(d['latency_ms']['p99'])} / {_fmt(g['latency_ms']['p99'])} | "
            f"{_fmt(d['ttfb_ms']['p50'])} / {_fmt(g['ttfb_ms']['p50'])} | "
            f"{_fmt(x['ttfb_overhead_ms_p50'])} / {_fmt(x['ttfb_overhead_ms_p99'])} | "
            f"{_fmt(x['cpu_ms_per_req'], 3)} | {_fmt(g['cpu_ms_per_req'].get('fake'), 3)} | "
            f"{_fmt(g['cpu_ms_per_req'].get('loadgen'), 3)} | {sum(g['errors'].values())} |")
    for name, what in (o.get("refs") or {}).items():
        lines += ["", f"Reference target `{name}` ({what}), same interleaved rounds:", "",
                  f"| reply | body | c | {name} req/s | ratio to direct | p50 / p99 ms | TTFB overhead p50 ms | "
                  "CPU ms/req | errors |", "|---|---|---|---|---|---|---|---|---|"]
        for row in rows:
            c, x = row["targets"][name], row["refs"][name]
            lines.append(f"| {'stream' if row['stream'] else 'JSON'} | {row['body_kb']} KB | {row['concurrency']} | "
                         f"{_fmt(c['rps'], 1)} | {_fmt(x['throughput_ratio'], 3)} | {_fmt(c['latency_ms']['p50'])} / "
                         f"{_fmt(c['latency_ms']['p99'])} | {_fmt(x['ttfb_overhead_ms_p50'])} | "
                         f"{_fmt(x['cpu_ms_per_req'], 3)} | {sum(c['errors'].values())} |")
    errors = [(row, row["targets"]["gateway"]["error_samples"]) for row in rows
              if row["targets"]["gateway"]["error_samples"]]
    if errors:
        lines += ["", "Gateway errors (first samples):", ""]
        for row, samples in errors[:4]:
            lines.append(f"- c={row['concurrency']} {row['body_kb']} KB: `{samples[0][:200]}`")
    return [*lines, ""]


def render_scale(s: dict[str, Any]) -> list[str]:
    lines = ["## Scale", ""]
    slow = s.get("slow_streams")
    if slow:
        lines += [f"### {slow['streams']:,} concurrent slow streams (one worker; {slow['deltas']} deltas, "
                  f"{slow['delay_ms']} ms apart: ideally ~{slow['deltas'] * slow['delay_ms'] + 20} ms each; "
                  f"{2 * slow['streams']:,} streams in all)", "",
                  "| target | ok | errors | p50 ms | p99 ms | max ms | TTFB p99 ms | gw CPU ms per stream sent | "
                  "gw peak RSS during |", "|---|---|---|---|---|---|---|---|---|"]
        for name in ("direct", "gateway", "direct_ramped", "gateway_ramped"):
            t = slow.get(name)
            if t:
                label = name.replace("_ramped", f", started over {slow.get('ramp_s', 0):g} s")
                lines.append(f"| {label} | {t['ok']:,} | {sum(t['errors'].values())} | "
                             f"{_fmt(t['latency_ms']['p50'], 0)} | {_fmt(t['latency_ms']['p99'], 0)} | "
                             f"{_fmt(t['latency_ms']['max'], 0)} | "
                             f"{_fmt(t['ttfb_ms']['p99'], 0)} | {_fmt(_per_attempt(t), 3)} | "
                             f"{t.get('gateway_peak_rss_mb_during', '-')} MB |")
        errs = (slow.get("gateway") or {}).get("error_samples")
        if errs:
            lines += ["", f"First gateway errors: `{errs[0][:200]}`"]
        lines.append("")
    rss = s.get("rss")
    if rss:
        lines += [f"### Memory over {rss['requests']:,} requests (one worker, fresh process, streamed 50 KB, c=50)",
                  "", f"RSS {rss.get('rss_idle_mb', '-')} MB idle after start, {rss['rss_at_start_mb']} MB after "
                  f"warm-up → **{rss['rss_mb']} MB** at the last reply, "
                  f"**{rss['settled_rss_mb']} MB** settled ({SETTLE_NOTE}) "
                  f"(peak {rss['peak_rss_mb']} MB); {rss['ok']:,} ok, errors {rss['errors'] or 0}; "
                  f"{rss['rps']} req/s; {rss['cpu_ms_per_req']} gateway CPU ms/req; transcripts in Postgres after "
                  f"shutdown: {rss['transcripts_written']}.", "", "| requests | RSS MB | peak MB |", "|---|---|---|"]
        lines += [f"| {c['requests']:,} | {c['rss_mb']} | {c['peak_rss_mb']} |" for c in rss["checkpoints"]]
        lines.append("")
    rows = s.get("workers")
    if rows:
        lines += ["### Workers (`gateway serve --workers N`, streamed 50 KB, c=50)", "",
                  "| workers | req/s | ratio to direct | p50 ms | gw CPU ms/req (all processes) | loadgen CPU ms/req "
                  "| RSS MB per process | errors |", "|---|---|---|---|---|---|---|---|"]
        for r in rows:
            if r["workers"] == 0:
                lines.append(f"| direct | {r['rps']} | 1 | | | | | |")
                continue
            rss = r["rss_mb_per_process"]
            rss_text = "; ".join(f"{k} {v}" for k, v in rss.items()) if isinstance(rss, dict) else str(rss)
            lines.append(f"| {r['workers']} | {r['rps']} | {r['ratio_to_direct']} | {r['latency_ms_p50']} | "
                         f"{r['cpu_ms_per_req']} | {r['loadgen_cpu_ms_per_req']} | {rss_text} | "
                         f"{sum(r['errors'].values())} |")
        lines.append("")
    return lines


def _per_attempt(t: dict[str, Any]) -> float | None:
    """Gateway CPU per request sent (ok or not): per ok request would blow up when most were refused."""
    per_ok = t["cpu_ms_per_req"].get("gateway")
    attempts = t["ok"] + sum(t["errors"].values())
    return None if per_ok is None or not attempts else per_ok * t["ok"] / attempts


def render_components(c: dict[str, Any]) -> list[str]:
    lines = ["## Components", "", "| benchmark | status | numbers | target met |", "|---|---|---|---|"]
    for script, r in c["results"].items():
        if r["status"] == "absent":
            lines.append(f"| {script} | not written yet | | |")
            continue
        numbers = ", ".join(f"{k} = {_fmt(v, 1 if v is None or abs(v) >= 10 else 3)}"
                            for k, v in r.get("numbers", {}).items())
        met = {True: "yes", False: "**NO**", None: "-"}[r.get("meets_target")] if "target" in r else ""
        lines.append(f"| {script} ({r['what']}) | {r['status']} in {r['seconds']} s | {numbers} | {met} |")
    return [*lines, ""]


def render_profile(p: dict[str, Any]) -> list[str]:
    if "error" in p:
        return ["## Profile", "", f"Not taken: {p['error']}", ""]
    load = p["load"]
    lines = [f"## Profile (py-spy, gateway process, streamed {load.get('body_kb', 50)} KB at c=10)", "",
             f"{p['samples']:,} samples of running threads over {load['seconds']} s at {load['rps']} req/s; gateway "
             f"CPU {load.get('gateway_cpu_ms_per_req', '-')} ms per request during the profile.", "",
             "Where the CPU goes (innermost gateway module on the stack, else the library):", "",
             "| area | % of samples | ≈ CPU ms per request |", "|---|---|---|"]
    lines += [f"| {e['what']} | {e['pct']} | {_fmt(e.get('ms_per_req'), 3)} |" for e in p["by_area"][:16]]
    lines += ["", "Top functions by self time:", "", "| function | self % |", "|---|---|"]
    lines += [f"| `{e['what']}` | {e['pct']} |" for e in p["self"][:15]]
    lines += ["", "Top gateway functions by inclusive time:", "", "| function | inclusive % |", "|---|---|"]
    lines += [f"| `{e['what']}` | {e['pct']} |" for e in p["inclusive_gateway"][:15]]
    return [*lines, ""]

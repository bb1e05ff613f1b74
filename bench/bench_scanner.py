"""Leak-scanner speed on Claude-Code-shaped requests built from realistic text (no secrets in it).

Text: the Python standard library's sources (code) and its documentation topics (prose), cut into tool results,
assistant texts and tool inputs the way Claude Code lays out a conversation. Prints:

* fresh MB/s: a new Scanner (empty cache) over several MB of such requests (target: >= 40 MB/s);
* cached MB/s: the same requests again (Claude Code resends the whole history every turn);
* ms for one 1 MB request, fresh and cached, and for the next turn (1 MB history cached + 20 KB new).

Times are the best of ``--repeat`` runs in CPU time of this process, so other load on the machine does not
distort them.

Usage: python bench/bench_scanner.py [--mb 8] [--repeat 5]
"""

from __future__ import annotations

import argparse
import itertools
import random
import sysconfig
import time
from pathlib import Path
from typing import Any

from gateway.leaks import Scanner, load_rules


def corpus() -> tuple[list[str], list[str]]:
    """(code files, prose paragraphs) from this Python's standard library."""
    root = Path(sysconfig.get_paths()["stdlib"])
    code = []
    for path in sorted(root.glob("*.py")) + sorted((root / "asyncio").glob("*.py")):
        code.append(path.read_text(encoding="utf-8", errors="replace"))
    from pydoc_data.topics import topics  # the language reference as plain text

    prose = [para for text in topics.values() for para in text.split("\n\n") if len(para) > 200]
    return code, prose


def conversation(code: list[str], prose: list[str], size: int, seed: int) -> dict[str, Any]:
    """A Messages body of about ``size`` characters: system prompt, then turns of text + tool use + result."""
    rng = random.Random(seed)
    system = [{"type": "text", "text": "\n\n".join(rng.sample(prose, 12))}]
    messages: list[dict[str, Any]] = [{"role": "user", "content": rng.choice(prose)}]
    total = sum(len(b["text"]) for b in system)
    for turn in itertools.count():
        source = rng.choice(code)
        start = rng.randrange(max(1, len(source) - 8000))
        result = source[start:start + rng.randint(500, 8000)]
        messages.append({"role": "assistant", "content": [
            {"type": "text", "text": rng.choice(prose)[:600]},
            {"type": "tool_use", "id": f"toolu_{turn:05d}", "name": "Read",
             "input": {"file_path": f"/home/student/project/module_{turn}.py", "limit": 2000}},
        ]})
        messages.append({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": f"toolu_{turn:05d}", "content": result},
        ]})
        total += len(result) + 700
        if total >= size:
            break
    return {"model": "claude-opus-5-5", "max_tokens": 128000, "system": system, "messages": messages,
            "stream": True}


def text_size(scanner_body: dict[str, Any]) -> int:
    from gateway.leaks import request_pieces

    return sum(len(t) for _, t in request_pieces(scanner_body))


def timed(fn: Any, repeat: int) -> float:
    """Best of ``repeat`` runs, in CPU seconds of this process (other load on the machine does not count)."""
    best = float("inf")
    for _ in range(repeat):
        started = time.process_time()
        fn()
        best = min(best, time.process_time() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=float, default=8.0, help="MB of fresh text for the throughput figures")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    code, prose = corpus()
    bodies = [conversation(code, prose, 1_000_000, seed) for seed in range(max(1, round(args.mb)))]
    chars = sum(text_size(b) for b in bodies)

    rules = load_rules()

    def fresh_all() -> None:
        scanner = Scanner(rules)
        for body in bodies:
            scanner.scan_request(body)

    warm = Scanner.load()
    for body in bodies:
        warm.scan_request(body)

    def cached_all() -> None:
        for body in bodies:
            warm.scan_request(body)

    fresh_s, cached_s = timed(fresh_all, args.repeat), timed(cached_all, args.repeat)
    print(f"text scanned: {chars / 1e6:.1f} MB in {len(bodies)} requests")
    print(f"fresh:  {chars / 1e6 / fresh_s:7.1f} MB/s   (target >= 40)")
    print(f"cached: {chars / 1e6 / cached_s:7.1f} MB/s")

    one = bodies[0]
    one_mb = text_size(one) / 1e6
    fresh_one = timed(lambda: Scanner(rules).scan_request(one), args.repeat)
    cached_one = timed(lambda: warm.scan_request(one), args.repeat)
    print(f"1 request of {one_mb:.2f} MB: fresh {fresh_one * 1e3:.1f} ms, cached {cached_one * 1e3:.1f} ms")

    extra = conversation(code, prose, 20_000, seed=999)["messages"][1:]
    turns = [{**one, "messages": one["messages"] + [dict(m) for m in extra]} for _ in range(args.repeat)]
    scanner = Scanner.load()
    scanner.scan_request(one)
    best = float("inf")
    for i, body in enumerate(turns):
        for m in body["messages"][-len(extra):]:  # fresh text each time: different strings, different hashes
            m["content"] = [dict(b, **({"content": b["content"] + f"\n# turn {i}"} if "content" in b else {}))
                            for b in m["content"]] if isinstance(m["content"], list) else m["content"]
        started = time.process_time()
        scanner.scan_request(body)
        best = min(best, time.process_time() - started)
    print(f"next turn (history cached + {text_size({'messages': extra}) / 1e3:.0f} KB new): {best * 1e3:.1f} ms")


if __name__ == "__main__":
    main()

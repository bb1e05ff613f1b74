"""False-positive corpus: the Python standard library's sources, sent as tool results, block nothing."""

from __future__ import annotations

import sysconfig
from pathlib import Path

from gateway.leaks import Scanner

FILES_PER_REQUEST = 40


def stdlib_sources() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    return [p for p in sorted(root.rglob("*.py")) if not {"site-packages", "dist-packages"} & set(p.parts)]


def test_the_standard_library_yields_no_block_level_finding() -> None:
    paths = stdlib_sources()
    texts = [p.read_text(encoding="utf-8", errors="replace") for p in paths]
    scanner = Scanner.load()
    blocked: list[str] = []
    alerts = 0
    for start in range(0, len(texts), FILES_PER_REQUEST):
        batch = texts[start:start + FILES_PER_REQUEST]
        request = {"messages": [{"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": f"toolu_{i}", "content": text} for i, text in enumerate(batch)]}]}
        for finding in scanner.scan_request(request):
            if finding.severity == "block":
                blocked.append(f"{paths[start]}…: {finding.rule_id} {finding.excerpt}")
            else:
                alerts += 1
    megabytes = sum(map(len, texts)) / 1e6
    print(f"scanned {megabytes:.1f} MB of standard library sources in {len(paths)} files: "
          f"{len(blocked)} block-level findings, {alerts} alerts")
    assert megabytes > 10 and len(paths) > 500  # the corpus really is there
    assert blocked == []

"""CPU time and memory of a process (and its children) from /proc: no psutil needed.

CPU time is ``utime + stime`` of every thread of the process (``/proc/<pid>/stat``), in clock ticks (10 ms on
Linux); memory is ``VmRSS`` (resident now) and ``VmHWM`` (peak resident) from ``/proc/<pid>/status``. A process's
own CPU time does not depend on what else runs on the machine, which makes CPU ms per request a fair number on a
shared 2-core box where the wall-clock numbers are not.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after the last ")".
    return text[text.rindex(")") + 2 :].split()


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by ``pid`` (all its threads); 0.0 once it is gone."""
    fields = _stat_fields(pid)
    if fields is None:
        return 0.0
    return (int(fields[11]) + int(fields[12])) * TICK_S


def children_map() -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is not None:
            out.setdefault(int(fields[1]), []).append(int(entry.name))
    return out


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants alive now (``gateway serve --workers N`` spawns its workers)."""
    children = children_map()
    tree: list[int] = []
    todo = [pid]
    while todo and len(tree) < 10_000:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def tree_cpu_seconds(pid: int) -> float:
    return sum(cpu_seconds(p) for p in process_tree(pid))


@dataclass(frozen=True)
class Memory:
    rss_mb: float  # resident now
    hwm_mb: float  # peak resident since the process started


def memory(pid: int) -> Memory:
    values = {"VmRSS": 0.0, "VmHWM": 0.0}
    try:
        for line in (PROC / str(pid) / "status").read_text().splitlines():
            name, _, rest = line.partition(":")
            if name in values:
                values[name] = int(rest.split()[0]) / 1024  # kB -> MiB
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return Memory(round(values["VmRSS"], 1), round(values["VmHWM"], 1))


def tree_memory(pid: int) -> list[tuple[int, Memory]]:
    return [(p, memory(p)) for p in process_tree(pid)]


def command_line(pid: int) -> str:
    try:
        return (PROC / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return ""


def role(pid: int, root: int) -> str:
    """What a process of a ``gateway serve`` tree is: the serving parent, a spawned worker, or a helper."""
    if pid == root:
        return "parent"
    cmd = command_line(pid)
    if "spawn_main" in cmd or "forkserver" in cmd:
        return "worker"
    if "resource_tracker" in cmd:
        return "resource tracker"
    return "other"

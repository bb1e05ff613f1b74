"""Throwaway Redis servers for tests: a standalone one (safe to flush or kill) and a 3-node Redis Cluster.

Both run the ``redis-server`` binary on free loopback ports with their files in a temporary directory, and are
torn down (processes stopped, directory removed) when the context manager exits. Nothing here sleeps to wait:
readiness is polled against a deadline.
"""

from __future__ import annotations

import contextlib
import functools
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

STARTUP_TIMEOUT_S = 20.0


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(count: int, *, bus_offset: int | None = None) -> list[int]:
    """``count`` free loopback ports (with ``port + bus_offset`` free too, for cluster bus ports)."""
    ports: list[int] = []
    while len(ports) < count:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        bus_taken = bus_offset is not None and (port + bus_offset > 65535 or not _port_free(port + bus_offset))
        if port in ports or bus_taken:
            continue
        ports.append(port)
    return ports


def _poll(check: Callable[[], bool], what: str, timeout_s: float = STARTUP_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.02)  # polling interval against a deadline, not synchronisation by sleeping


def _cli(port: int, *args: str) -> str:
    done = subprocess.run(
        ["redis-cli", "-h", "127.0.0.1", "-p", str(port), *args], capture_output=True, text=True, timeout=30
    )
    return done.stdout.strip()


def _cluster_ok(port: int) -> bool:
    return "cluster_state:ok" in _cli(port, "cluster", "info")


def _start(port: int, directory: Path, *extra: str) -> subprocess.Popen[bytes]:
    directory.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [
            "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory),
            "--save", "", "--appendonly", "no", "--protected-mode", "no", *extra,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def ready() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"redis-server on port {port} exited with {process.returncode}")
        return _cli(port, "ping") == "PONG"

    _poll(ready, f"redis-server on port {port}")
    return process


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    """A standalone redis-server of our own; yields its URL."""
    workdir = Path(tempfile.mkdtemp(prefix="gw-redis-"))
    processes: list[subprocess.Popen[bytes]] = []
    try:
        (port,) = free_ports(1)
        processes.append(_start(port, workdir))
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        _stop(processes)
        shutil.rmtree(workdir, ignore_errors=True)


@contextlib.contextmanager
def redis_cluster(nodes: int = 3) -> Iterator[str]:
    """A Redis Cluster of ``nodes`` primaries (no replicas), every slot assigned; yields a startup node's URL."""
    workdir = Path(tempfile.mkdtemp(prefix="gw-cluster-"))
    processes: list[subprocess.Popen[bytes]] = []
    try:
        ports = free_ports(nodes, bus_offset=10000)
        for port in ports:
            processes.append(
                _start(port, workdir / str(port), "--cluster-enabled", "yes",
                       "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "5000")
            )
        created = subprocess.run(
            ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports),
             "--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True, text=True, timeout=60,
        )
        if created.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed: {created.stdout}{created.stderr}")
        for port in ports:
            _poll(functools.partial(_cluster_ok, port), f"cluster state ok on port {port}")
        yield f"redis://127.0.0.1:{ports[0]}/0"
    finally:
        _stop(processes)
        shutil.rmtree(workdir, ignore_errors=True)

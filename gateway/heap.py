"""Hand freed heap memory back to the operating system now and then (glibc's ``malloc_trim``).

Request bodies (50-300 KB), their parses and the transcript writer's batches are allocated and freed all the
time. glibc keeps freed chunks in its heap for reuse, and fragmentation keeps the top of the heap from
shrinking, so a busy worker's resident size drifts upwards although the live data does not grow.
``malloc_trim(0)`` releases the free pages; it costs well under a millisecond on a gateway-sized heap, so a
call every few seconds is free. On a C library without ``malloc_trim`` (musl, macOS) this does nothing.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
from collections.abc import Callable

from .tasks import stop_tasks

Trim = Callable[[int], int]


def find_malloc_trim() -> Trim | None:
    """glibc's ``malloc_trim``, or None where the C library has none."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


class HeapTrimmer:
    """Calls ``trim(0)`` every ``interval_s`` seconds while it runs."""

    def __init__(self, interval_s: float, trim: Trim) -> None:
        self.interval_s = interval_s
        self._trim = trim
        self._task: asyncio.Task[None] | None = None
        self.trims = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="heap-trimmer")

    async def stop(self) -> None:
        await stop_tasks(self._task)
        self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            self._trim(0)
            self.trims += 1

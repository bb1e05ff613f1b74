"""Workers hand freed heap back to the OS periodically (gateway/heap.py)."""

from __future__ import annotations

import asyncio
import sys

import pytest

from gateway.heap import HeapTrimmer, find_malloc_trim


async def test_the_trimmer_calls_trim_every_interval_until_stopped() -> None:
    calls: list[int] = []
    three = asyncio.Event()

    def trim(pad: int) -> int:
        calls.append(pad)
        if len(calls) == 3:
            three.set()
        return 1

    trimmer = HeapTrimmer(0.001, trim)
    trimmer.start()
    task = next(t for t in asyncio.all_tasks() if t.get_name() == "heap-trimmer")
    await asyncio.wait_for(three.wait(), 5)
    await trimmer.stop()
    assert calls[:3] == [0, 0, 0]
    assert trimmer.trims == len(calls)
    assert task.cancelled()  # nothing trims after stop()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim is a Linux function")
def test_glibc_malloc_trim_is_found_and_callable() -> None:
    trim = find_malloc_trim()
    assert trim is not None
    assert trim(0) in (0, 1)  # 1: memory was released, 0: there was nothing to release

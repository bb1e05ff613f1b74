"""Crash safety: a worker killed with SIGKILL loses nothing whose submit() returned; replaying a spool is
idempotent; a dead worker's spool is adopted by another worker."""

from __future__ import annotations

import asyncio
import shutil
import signal
import sys
from pathlib import Path

import asyncpg

from gateway.db import create_pool
from gateway.writer import TranscriptWriter
from tests.test_writer_support import (
    TcpProxy,
    counts,
    make_record,
    pool_factory,
    segment_files,
    stored_bodies,
    wait_until,
)

ROOT = Path(__file__).resolve().parent.parent


async def _rows(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM transcripts"))
    finally:
        await conn.close()


async def test_sigkill_mid_load_then_restart_loses_nothing_and_duplicates_nothing(
    pg_dsn: str, tmp_path: Path
) -> None:
    first, second = 600, 900
    spool_dir = tmp_path / "spool"
    proxy = TcpProxy.for_dsn(pg_dsn)
    await proxy.open()
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.test_writer_support", "child", proxy.dsn(pg_dsn), str(spool_dir),
        str(first), str(second), cwd=ROOT, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    assert child.stdin is not None and child.stdout is not None
    try:
        assert await asyncio.wait_for(child.stdout.readline(), 60) == b"half\n"
        # Let the child commit part of the first half (so the replay meets rows that exist already) ...
        async with asyncio.timeout(30):
            while await _rows(pg_dsn) == 0:  # noqa: ASYNC110 - another process writes them: poll the table
                await asyncio.sleep(0.01)
        # ... then cut Postgres off, so the second half can only be in the child's spool when it dies.
        await proxy.close()
        child.stdin.write(b"go\n")
        await child.stdin.drain()
        assert await asyncio.wait_for(child.stdout.readline(), 60) == b"done\n"
    finally:
        child.send_signal(signal.SIGKILL)
        await child.wait()
    assert child.returncode == -signal.SIGKILL
    before = await _rows(pg_dsn)
    assert 0 < before <= first  # the second half was never written before the kill

    pool = await create_pool(pg_dsn)
    writer = TranscriptWriter(pool, spool_dir, worker_name="victim")  # the restarted worker
    await writer.start()
    await writer.wait_idle(60)
    total = first + second
    assert await counts(pg_dsn) == {"transcripts": total, "distinct_ids": total, "ids": total,
                                    "usage_events": total}
    assert writer.replayed_records >= total - before
    expected = {make_record(i, prefix="kill").request_id: make_record(i).request_body for i in range(total)}
    assert await stored_bodies(pg_dsn) == expected
    await writer.close()
    assert segment_files(spool_dir) == []
    await pool.close()


async def test_replaying_a_spool_twice_adds_nothing(pg_dsn: str, tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    pool = await create_pool(pg_dsn)
    writer = TranscriptWriter(pool, spool_dir, worker_name="w0")
    await writer.start()
    for i in range(300):
        writer.submit(make_record(i))
    await writer.wait_idle(30)
    # A crash after the commit but before the segment was deleted: keep a copy of the spool as it was.
    saved = tmp_path / "saved"
    shutil.copytree(spool_dir / "w0", saved)
    await writer.close()
    before = await counts(pg_dsn)
    assert before["transcripts"] == 300
    for copy in range(2):
        shutil.copytree(saved, spool_dir / "w0", dirs_exist_ok=True)
        (spool_dir / "w0" / "lock").unlink()
        again = TranscriptWriter(pool, spool_dir, worker_name="w0")
        await again.start()
        await again.wait_idle(30)
        assert again.replayed_records == 300, copy
        assert again.replay_conflicts >= 1, copy  # the fast COPY met stored ids and fell back to claiming
        assert await counts(pg_dsn) == before
        await again.close()
    assert segment_files(spool_dir) == []
    await pool.close()


async def test_a_dead_workers_spool_is_adopted(pg_dsn: str, tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    unreachable = TranscriptWriter(pool_factory("postgresql://postgres@127.0.0.1:1/none"), spool_dir,
                                   worker_name="dead", retry_max_s=0.05)
    await unreachable.start()
    for i in range(200):
        unreachable.submit(make_record(i))
    await wait_until(lambda: unreachable.write_errors > 0)
    await unreachable.close()  # gone without writing anything; its spool directory is unlocked now
    assert (spool_dir / "dead").exists()

    pool = await create_pool(pg_dsn)
    other = TranscriptWriter(pool, spool_dir, worker_name="alive")
    await other.start()
    await other.wait_idle(30)
    assert other.replayed_records == 200
    assert (await counts(pg_dsn))["transcripts"] == 200
    assert sorted(p.name for p in spool_dir.iterdir()) == ["alive"]
    await other.close()
    await pool.close()

"""Postgres outages: the writer keeps every record (spool + memory), retries with backoff and writes each one
exactly once when Postgres is back. The outage is simulated by a TCP proxy between the writer and the shared
server that the test closes (every connection cut, new ones refused) and reopens on the same port."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

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


async def run_outage(pg_dsn: str, spool_dir: Path, *, records: int, outage_s: float, min_failures: int) -> None:
    """Write 100 records, cut Postgres off, submit ``records`` more while it is away for at least
    ``outage_s`` and ``min_failures`` failed attempts, bring it back: every record is there exactly once."""
    proxy = TcpProxy.for_dsn(pg_dsn)
    await proxy.open()
    writer = TranscriptWriter(pool_factory(proxy.dsn(pg_dsn)), spool_dir, batch_size=200, flush_interval_s=0.05,
                              retry_initial_s=0.02, retry_max_s=0.5)
    await writer.start()
    sent = {}
    for i in range(100):
        record = make_record(i)
        sent[record.request_id] = record.request_body
        writer.submit(record)
    await writer.wait_idle(30)
    assert (await counts(pg_dsn))["transcripts"] == 100

    await proxy.close()
    cut_at = time.monotonic()
    errors_before = writer.write_errors
    for i in range(100, 100 + records):
        record = make_record(i)
        sent[record.request_id] = record.request_body
        writer.submit(record)
        if i % 100 == 0:
            await asyncio.sleep(0)  # requests keep flowing while Postgres is away
    # No event reports a failed attempt; poll the counter (bounded by a deadline).
    await wait_until(lambda: writer.write_errors >= errors_before + min_failures
                     and time.monotonic() - cut_at >= outage_s, deadline_s=outage_s + 60)
    assert (await counts(pg_dsn))["transcripts"] == 100  # nothing got through the outage
    assert writer.spool_bytes > 0 and writer.queue_depth + writer.spilled_records > 0

    await proxy.open()
    await writer.wait_idle(60 + records / 100)
    assert await counts(pg_dsn) == {"transcripts": 100 + records, "distinct_ids": 100 + records,
                                    "ids": 100 + records, "usage_events": 100 + records}
    assert await stored_bodies(pg_dsn) == sent
    assert writer.spool_bytes == 0 and writer.records_rejected == 0
    await writer.close()
    assert segment_files(spool_dir) == []
    await proxy.close()


async def test_records_submitted_during_an_outage_all_arrive_once(pg_dsn: str, tmp_path: Path) -> None:
    # The drill is 60 s; here the outage lasts until the writer has failed 5 times in a row (with
    # backoff from 20 ms, ~1 s): long enough to exercise broken connections, refused reconnects and backoff,
    # short enough for the suite. bench-style: run_outage(..., outage_s=60) for the full drill.
    await run_outage(pg_dsn, tmp_path / "spool", records=2000, outage_s=0.5, min_failures=5)

"""A full queue: records stay only in the spool (counted and logged, never dropped) and are read back from
the spool segments once the writer catches up, while new records keep arriving."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import orjson
import pytest

from gateway.writer import TranscriptWriter
from tests.test_writer_support import counts, make_record, pool_factory, segment_files, stored_bodies


async def test_a_full_queue_spills_to_the_spool_and_everything_arrives_once(
    pg_dsn: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    postgres_ready = asyncio.Event()  # the writer cannot reach Postgres until the test says so
    writer = TranscriptWriter(pool_factory(pg_dsn, postgres_ready), tmp_path / "spool", batch_size=40,
                              queue_max=50, segment_max_bytes=256 << 10)
    await writer.start()
    sent = {}
    with caplog.at_level(logging.WARNING, logger="gateway.writer"):
        for i in range(1000):
            record = make_record(i)
            sent[record.request_id] = record.request_body
            writer.submit(record)
    assert writer.queue_depth == 50  # the bound holds ...
    assert writer.spilled_records == 950 and writer.spill_episodes == 1 and writer.spilling  # ... and says so
    assert any("queue full" in r.getMessage() for r in caplog.records)
    assert len(segment_files(tmp_path / "spool")) > 3  # the spilled records span several segments

    postgres_ready.set()
    # More records arrive while the writer reads the spilled ones back.
    for i in range(1000, 1500):
        record = make_record(i)
        sent[record.request_id] = record.request_body
        writer.submit(record)
        if i % 25 == 0:
            await asyncio.sleep(0)
    await writer.wait_idle(60)
    assert not writer.spilling
    assert await counts(pg_dsn) == {"transcripts": 1500, "distinct_ids": 1500, "ids": 1500, "usage_events": 1500}
    assert await stored_bodies(pg_dsn) == sent
    assert writer.spool_bytes == 0
    # Every sealed segment is gone once its records committed; only the live one is left.
    assert segment_files(tmp_path / "spool") == [writer.spool.active.path]
    await writer.close()
    assert segment_files(tmp_path / "spool") == []


async def test_records_queued_behind_a_full_batch_let_their_parse_go_and_are_stored_all_the_same(
    pg_dsn: str, tmp_path: Path
) -> None:
    postgres_ready = asyncio.Event()
    writer = TranscriptWriter(pool_factory(pg_dsn, postgres_ready), tmp_path / "spool", batch_size=10)
    await writer.start()
    sent = {}
    for i in range(30):
        record = make_record(i)
        record.request_payload = orjson.loads(record.request_body)  # as the proxy hands it over
        sent[record.request_id] = record.request_body
        writer.submit(record)
    queued = [item.record.request_payload is not None for item in writer._mem]  # what the queue holds in memory
    assert queued == [True] * 10 + [False] * 20
    postgres_ready.set()
    await writer.wait_idle(60)
    assert await stored_bodies(pg_dsn) == sent  # parsed again from the bytes: byte-exact all the same
    await writer.close()


async def test_the_byte_bound_spills_too(pg_dsn: str, tmp_path: Path) -> None:
    postgres_ready = asyncio.Event()
    writer = TranscriptWriter(pool_factory(pg_dsn, postgres_ready), tmp_path / "spool", queue_max=10_000,
                              queue_max_bytes=200_000)
    await writer.start()
    for i in range(200):
        writer.submit(make_record(i))
    assert 0 < writer.queue_depth < 200 and writer.spilled_records == 200 - writer.queue_depth
    postgres_ready.set()
    await writer.wait_idle(60)
    assert (await counts(pg_dsn))["transcripts"] == 200
    await writer.close()


async def test_a_record_the_spool_cannot_take_waits_in_memory(
    pg_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    postgres_ready = asyncio.Event()
    writer = TranscriptWriter(pool_factory(pg_dsn, postgres_ready), tmp_path / "spool", queue_max=1)
    await writer.start()
    writer.submit(make_record(1))

    def disk_full(*args: object) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "writev", disk_full)
    writer.submit(make_record(2))  # not durable, but kept (in memory, past the queue bound) and counted
    monkeypatch.undo()
    assert writer.spool_errors == 1 and writer.queue_depth == 2
    postgres_ready.set()
    await writer.wait_idle(30)
    assert (await counts(pg_dsn))["transcripts"] == 2
    await writer.close()

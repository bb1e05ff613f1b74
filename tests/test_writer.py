"""The batched transcript writer against the real PostgreSQL: exactly-once rows, byte-exact bodies, partitions,
drain, records Postgres refuses, and the read side (show / export)."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import orjson
import pytest

from gateway import transcript_read
from gateway.db import create_pool
from gateway.writer import REJECTED_DIR, TranscriptWriter
from tests.test_writer_support import counts, make_record, pool_factory, segment_files, stored_bodies


async def test_10000_records_become_exactly_10000_rows_with_byte_equal_bodies(pg_dsn: str, tmp_path: Path) -> None:
    pool = await create_pool(pg_dsn)
    writer = TranscriptWriter(pool, tmp_path / "spool", worker_name="w0")
    await writer.start()
    sent = {}
    for i in range(10_000):
        record = make_record(i)
        if i % 1000 == 7:  # not Claude Code's compact JSON: stored through the scanner / as one blob
            record.request_body = b'{\n  "model": "claude-haiku-4-5",\n  "messages": [ {"role": "user"} ]\n}'
        if i % 1000 == 8:
            record.request_body = b"\x00\xff not json"
        sent[record.request_id] = record.request_body
        writer.submit(record)
    await writer.wait_idle(120)
    assert await counts(pg_dsn) == {"transcripts": 10_000, "distinct_ids": 10_000, "ids": 10_000,
                                    "usage_events": 10_000}
    assert await stored_bodies(pg_dsn) == sent
    async with pool.acquire() as conn:
        headers = await conn.fetch("SELECT DISTINCT json_object_keys(request_headers::json) AS k FROM transcripts")
        keys = {row["k"].lower() for row in headers}
        assert "x-claude-code-session-id" in keys
        assert not keys & {"x-api-key", "authorization"}
        usage = await conn.fetchrow("SELECT * FROM usage_events WHERE request_id = 'req_001234'")
        expected = make_record(1234)
        assert (usage["course_id"], usage["student_id"], usage["input_tokens"], usage["output_tokens"],
                usage["weighted"], str(usage["cost_usd"])) == (
            expected.course, expected.student, expected.usage["input_tokens"], expected.usage["output_tokens"],
            expected.weighted, expected.cost_usd)
        # Content addressing: 400 sessions of 25 turns share their parts.
        blobs = await conn.fetchval("SELECT count(*) FROM transcript_blobs")
        assert blobs < 10_000
    assert writer.records_written == 10_000 and writer.write_errors == 0 and writer.records_rejected == 0
    assert await writer.drain(10)
    await writer.close()
    assert segment_files(tmp_path / "spool") == []
    await pool.close()


async def test_drain_writes_what_waits_for_the_flush_timer(pg_dsn: str, tmp_path: Path) -> None:
    pool = await create_pool(pg_dsn)
    writer = TranscriptWriter(pool, tmp_path / "spool", batch_size=10_000, flush_interval_s=3600)
    await writer.start()
    for i in range(300):
        writer.submit(make_record(i))
    assert writer.queue_depth == 300 and writer.spool_bytes > 0
    spooled = b"".join(path.read_bytes() for path in segment_files(tmp_path / "spool"))
    assert b"req_000299" in spooled and b"SECRET" not in spooled  # the credentials never touch the disk
    assert await writer.drain(30)
    assert (await counts(pg_dsn))["transcripts"] == 300
    assert writer.queue_depth == 0 and writer.spool_bytes == 0
    await writer.close()
    await pool.close()


async def test_drain_gives_up_at_its_timeout_and_the_next_start_replays(pg_dsn: str, tmp_path: Path) -> None:
    never = pool_factory("postgresql://postgres@127.0.0.1:1/none")  # nothing listens there
    writer = TranscriptWriter(never, tmp_path / "spool", worker_name="w0", retry_max_s=0.05)
    await writer.start()
    for i in range(50):
        writer.submit(make_record(i))
    assert not await writer.drain(0.3)
    assert writer.write_errors > 0
    await writer.close()
    pool = await create_pool(pg_dsn)
    again = TranscriptWriter(pool, tmp_path / "spool", worker_name="w0")
    await again.start()
    await again.wait_idle(30)
    assert again.replayed_records == 50
    assert (await counts(pg_dsn))["transcripts"] == 50
    await again.close()
    await pool.close()


async def test_months_get_their_partition(pg_dsn: str, tmp_path: Path) -> None:
    pool = await create_pool(pg_dsn)
    writer = TranscriptWriter(pool, tmp_path / "spool")
    await writer.start()
    march = datetime(2031, 3, 15, 12, tzinfo=UTC).timestamp()
    writer.submit(make_record(1, started_at=march))
    writer.submit(make_record(2, started_at=datetime(2031, 4, 1, tzinfo=UTC).timestamp()))
    await writer.wait_idle(30)
    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT tableoid::regclass::text AS part, request_id FROM transcripts ORDER BY 2")
        assert [(r["part"], r["request_id"]) for r in rows] == [
            ("transcripts_2031_03", "req_000001"), ("transcripts_2031_04", "req_000002")]
    await writer.close()
    await pool.close()


async def test_rows_stranded_in_the_default_partition_move_into_their_new_partition(pg_dsn: str) -> None:
    conn = await asyncpg.connect(pg_dsn)
    try:
        at = datetime(2032, 1, 9, tzinfo=UTC)
        await conn.execute("""
            INSERT INTO transcripts_default (request_id, started_at, ended_at, request_size, request_skeleton,
                                             request_offsets, request_parts)
            VALUES ('stranded', $1, $1, 0, '\\x', '\\x', '\\x')""", at)
        assert await conn.fetchval("SELECT ensure_transcript_partition($1)", at) == "transcripts_2032_01"
        assert await conn.fetchval("SELECT ensure_transcript_partition($1)", at) == "transcripts_2032_01"
        assert await conn.fetchval("SELECT count(*) FROM transcripts_default") == 0
        assert await conn.fetchval("SELECT tableoid::regclass::text FROM transcripts") == "transcripts_2032_01"
    finally:
        await conn.close()


async def test_a_record_postgres_refuses_is_kept_aside_and_the_rest_is_written(
    pg_dsn: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pool = await create_pool(pg_dsn)
    writer = TranscriptWriter(pool, tmp_path / "spool", worker_name="w0")
    await writer.start()
    for i in range(20):
        writer.submit(make_record(i, cost_usd="not-a-number" if i == 13 else "0.5"))
    with caplog.at_level(logging.ERROR, logger="gateway.writer"):
        await writer.wait_idle(30)
    assert (await counts(pg_dsn))["transcripts"] == 19
    assert writer.records_rejected == 1
    (kept,) = (tmp_path / "spool" / REJECTED_DIR).iterdir()
    assert kept.name == "req_000013.rec" and b"not-a-number" in kept.read_bytes()
    assert any("req_000013" in r.getMessage() for r in caplog.records)
    assert await writer.drain(5)
    await writer.close()
    assert segment_files(tmp_path / "spool") == []
    await pool.close()


async def test_nul_characters_and_undecodable_header_bytes_are_stored(pg_dsn: str, tmp_path: Path) -> None:
    pool = await create_pool(pg_dsn)
    writer = TranscriptWriter(pool, tmp_path / "spool")
    await writer.start()
    writer.submit(make_record(1, error="upstream said \x00", response_message={"content": [{"text": "a\x00b"}]},
                             request_headers={"x-odd": "caf\udce9"}))
    await writer.wait_idle(30)
    shown = await transcript_read.show(pool, "req_000001")
    assert shown is not None
    assert shown["error"] == "upstream said \ufffd"
    assert shown["response_message"] == {"content": [{"text": "a\ufffdb"}]}
    assert shown["request_headers"] == {"x-odd": "caf\ufffd"}
    assert writer.records_rejected == 0
    await writer.close()
    await pool.close()


async def test_show_and_export(pg_dsn: str, tmp_path: Path) -> None:
    pool = await create_pool(pg_dsn)
    writer = TranscriptWriter(pool, tmp_path / "spool")
    await writer.start()
    base = time.time() - 1000
    records = [make_record(i, started_at=base + i) for i in range(60)]
    records.append(make_record(60, course="other"))
    records.append(make_record(61, request_body=b"\xff\xfe", response_body=None, response_message=None,
                               stream=False, status=429, refused="quota", refused_reason="weekly quota used up",
                               cost_usd=None))
    for record in records:
        writer.submit(record)
    await writer.wait_idle(30)

    shown = await transcript_read.show(pool, "req_000030")
    expected = records[30]
    assert shown is not None
    assert shown["request_body"].encode() == expected.request_body
    assert shown["response_body"].encode() == expected.response_body
    assert shown["response_message"] == expected.response_message
    assert shown["student"] == expected.student and shown["key_id"] == expected.jti
    assert shown["session_id"] == expected.session_id and shown["path"] == "/v1/messages?beta=true"
    assert "x-api-key" not in shown["request_headers"]
    assert await transcript_read.request_body(pool, "req_000030") == expected.request_body
    assert await transcript_read.show(pool, "req_nope") is None

    refused = await transcript_read.show(pool, "req_000061")
    assert refused is not None
    assert refused["request_body"] is None and refused["request_body_base64"] == "//4="
    assert (refused["refused"], refused["status"], refused["cost_usd"]) == ("quota", 429, None)

    async with pool.acquire() as conn:
        lines = [orjson.loads(line) async for line in transcript_read.export(conn, "comp1000", chunk=7)]
    assert [d["request_id"] for d in lines] == [r.request_id for r in records if r.course == "comp1000"]
    assert all(d["request_body"].encode() == records[int(d["request_id"][4:])].request_body
               for d in lines if d["request_body"] is not None)
    student = records[30].student
    since = datetime.fromtimestamp(base + 40, UTC)
    lines = [orjson.loads(line) async for line in transcript_read.export(pool, "comp1000", student=student,
                                                                        since=since)]
    assert [d["request_id"] for d in lines] == [r.request_id for r in records[40:60] if r.student == student]
    await writer.close()
    await pool.close()

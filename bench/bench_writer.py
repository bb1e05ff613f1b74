"""Transcript writer throughput: records/s from submit() to committed rows, for ~10 KB records.

Each record is one turn of a small Claude Code-like session (bench/session_gen.py): a ~7.3 KB request body
(1 tool, short system prompt, a conversation that grows by a tool_use and a tool_result every turn), a ~2.3 KB
SSE response, the reassembled message, Claude Code's headers and usage. Every session is distinct, so every
record brings new content (its new messages) besides the parts it shares with the session's earlier turns.

Runs the real writer (spool on local disk, batched COPY) into a fresh database on the given server and prints
the rate, plus the CPU time spent per record by the writer's process and by Postgres (its backends for this
database and its WAL writer, checkpointer and background writer, read from /proc): on a shared or small
machine the wall-clock rate says more about the neighbours than about the writer, CPU per record does not.
Target: >= 20,000 transcripts/s.

    python bench/bench_writer.py [--records 50000] [--dsn postgresql://postgres@127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.scratch import scratch_database
from bench.session_gen import SessionConfig, generate_session, session_headers
from gateway.db import create_pool
from gateway.transcript import TranscriptRecord, encode
from gateway.writer import TranscriptWriter

TARGET = 20_000  # transcripts/s (issue 4)
CONFIG = SessionConfig(turns=12, tools_bytes=2000, system_bytes=600, first_user_bytes=600,
                       result_bytes=(80, 400), reply_bytes=(40, 200), thinking=False)


def make_records(count: int, *, with_payload: bool = True) -> list[TranscriptRecord]:
    """``with_payload``: each record carries the body already parsed, as the proxy hands it to the writer (False:
    the writer parses each body itself, as for records replayed from the spool)."""
    records: list[TranscriptRecord] = []
    now = time.time()
    session = 0
    while len(records) < count:
        headers = session_headers(session)
        for turn in generate_session(session, CONFIG):
            i = len(records)
            records.append(TranscriptRecord(
                request_id=f"req_bench_{i:08d}", upstream_request_id=f"req_011C{i:020d}",
                started_at=now + i * 1e-4, first_byte_at=now + i * 1e-4 + 0.3, ended_at=now + i * 1e-4 + 2.0,
                course="comp1000", student=f"s{session % 200:03d}", jti=f"k{session % 200:03d}",
                session_id=headers["x-claude-code-session-id"], user_agent=headers["user-agent"],
                path="/v1/messages?beta=true", model=CONFIG.model, stream=True, status=200,
                request_headers=headers, request_body=turn.body,
                request_payload=orjson.loads(turn.body) if with_payload else None,
                response_headers={"content-type": "text/event-stream", "request-id": f"req_011C{i:020d}"},
                response_body=turn.sse, response_message=turn.message,
                usage={"input_tokens": 12, "cache_write_5m": 900, "cache_write_1h": 0, "cache_read": 4000,
                       "output_tokens": 300, "web_searches": 0, "estimated": False, "partial": False},
                weighted=5000, cost_usd="0.012345", period_start=now - 86400,
            ))
            if len(records) == count:
                break
        session += 1
    return records


def _cpu_seconds(pids: set[int]) -> float:
    """utime + stime of processes (0 for those gone or unreadable)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


PG_PIDS = """
SELECT pid FROM pg_stat_activity
WHERE datname = current_database() OR backend_type IN ('walwriter', 'checkpointer', 'background writer')
"""


async def run(dsn: str, count: int, batch_size: int, concurrency: int, *, with_payload: bool = True,
              disk_probe_mb: int = 256) -> None:
    records = make_records(count, with_payload=with_payload)
    print("records carry the proxy's parse of the body" if with_payload else "the writer parses every body itself")
    gc.freeze()  # the test data is not the writer's: keep the collector from rescanning it
    sizes = [sum(len(p) for p in encode(r)) for r in records]
    bodies = [len(r.request_body) + len(r.response_body or b"") for r in records]
    print(f"{count} records: request+response bodies {statistics.mean(bodies) / 1000:.1f} KB on average, "
          f"{statistics.mean(sizes) / 1000:.1f} KB as spooled")

    async with scratch_database(dsn) as scratch:
        pool = await create_pool(scratch, max_size=concurrency + 1)
        with tempfile.TemporaryDirectory() as spool:
            writer = TranscriptWriter(pool, Path(spool), batch_size=batch_size, concurrency=concurrency,
                                      queue_max=count, queue_max_bytes=4 << 30)
            await writer.start()
            # Open every pool connection, to find the backends' pids.
            holders = [await pool.acquire() for _ in range(concurrency + 1)]
            for held in holders:
                await pool.release(held)
            async with pool.acquire() as conn:
                pg_pids = {row["pid"] for row in await conn.fetch(PG_PIDS)}
                wal_before = await conn.fetchval("SELECT pg_current_wal_lsn()")
            pg_cpu = _cpu_seconds(pg_pids)
            own_cpu = time.process_time()
            start = time.perf_counter()
            for record in records:
                writer.submit(record)
            submitted = time.perf_counter()
            await writer.wait_idle()
            done = time.perf_counter()
            own_cpu = time.process_time() - own_cpu
            pg_cpu = _cpu_seconds(pg_pids) - pg_cpu
            async with pool.acquire() as conn:
                wal_bytes = await conn.fetchval("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1)", wal_before)
            await writer.close()
            disk_mb_s = None
            if disk_probe_mb:
                disk_mb_s = await asyncio.to_thread(_durable_write_mb_s, Path(spool), disk_probe_mb)
        async with pool.acquire() as conn:
            rows = await conn.fetchval("SELECT count(*) FROM transcripts")
        await pool.close()
    assert rows == count, (rows, count)
    print(f"submit(): {(submitted - start) / count * 1e6:.1f} us per record (spool write + enqueue)")
    print(f"{count / (done - start):,.0f} transcripts/s end to end ({done - start:.2f} s for {count}, "
          f"{writer.batches_written} batches of up to {batch_size}, {concurrency} in flight, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f})")
    own_us = own_cpu / count * 1e6
    pg_us = pg_cpu / count * 1e6
    print(f"CPU per record: writer process {own_us:.0f} us (submit, split, COPY), Postgres {pg_us:.0f} us")
    print(f"=> one writer process can carry {1e6 / own_us:,.0f} transcripts/s when it has a core to itself and "
          f"Postgres has {max(1, round(pg_us / own_us))} more")
    spool_kb = statistics.mean(sizes) / 1000
    wal_kb = float(wal_bytes) / count / 1000
    print(f"durable bytes per record: spool {spool_kb:.1f} KB + Postgres WAL {wal_kb:.1f} KB (the server's whole WAL "
          f"over the run: run it alone)")
    for rate in (count / (done - start), TARGET):
        print(f"at {rate:,.0f} transcripts/s: {rate * (spool_kb + wal_kb) / 1000:,.0f} MB/s of durable writes and "
              f"{rate * (own_us + pg_us) / 1e6:.1f} cores of CPU (writer + Postgres)")
    if disk_mb_s is not None:
        print(f"this disk: {disk_mb_s:,.0f} MB/s of sequential writes with fdatasync ({disk_probe_mb} MB probe in "
              "the spool's file system)")


def _durable_write_mb_s(directory: Path, megabytes: int) -> float:
    """Sequential 1 MiB writes, then fdatasync: what the disk under ``directory`` takes per second."""
    path = directory / "disk-probe"
    block = os.urandom(1 << 20)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        started = time.perf_counter()
        for _ in range(megabytes):
            os.write(fd, block)
        os.fdatasync(fd)
        return megabytes * (1 << 20) / 1e6 / (time.perf_counter() - started)
    finally:
        os.close(fd)
        path.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=50_000)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--disk-probe-mb", type=int, default=256,
                        help="also time this many MB of fdatasync'd writes in the spool's file system (0: skip)")
    parser.add_argument("--no-payload", action="store_true",
                        help="records without the proxy's parse (as replayed from the spool)")
    args = parser.parse_args()
    asyncio.run(run(args.dsn, args.records, args.batch_size, args.concurrency, with_payload=not args.no_payload,
                    disk_probe_mb=args.disk_probe_mb))


if __name__ == "__main__":
    main()

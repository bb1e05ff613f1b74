"""Transcript storage: bytes stored for realistic Claude Code sessions vs. the sum of their raw request bodies.

Writes the turns of ``--sessions`` 30-turn sessions (bench/session_gen.py: ~32 KB tools, ~7 KB system, growing
messages with tool_use/tool_result, moving cache_control) through the real writer into a fresh database, then
reports, against the sum of the raw request bodies (target: request storage <= 0.10 of it):

* request storage: the request side as Postgres holds it, compressed - ``pg_column_size`` summed over the
  blobs' ``content`` and the transcripts' ``request_skeleton``, ``request_offsets`` and ``request_parts``
  (row headers, page slack and indexes excluded: those are in the next number);
* on disk, everything: growth of ``pg_total_relation_size`` of transcript_blobs, transcript_ids and every
  transcripts partition (heap, TOAST, indexes) - requests AND responses (SSE + reassembled message), headers
  and usage. With one session the fixed cost of empty index/TOAST pages weighs a lot; more sessions amortise it.

    python bench/bench_storage.py [--sessions 1] [--dsn postgresql://postgres@127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.scratch import scratch_database
from bench.session_gen import generate_session, session_headers
from gateway.db import create_pool
from gateway.transcript import TranscriptRecord
from gateway.writer import TranscriptWriter

TABLES = """
SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint
FROM pg_class c
WHERE c.relkind = 'r' AND (c.relname IN ('transcript_blobs', 'transcript_ids') OR c.relname LIKE 'transcripts\\_%')
"""
REQUEST_STORAGE = """
SELECT (SELECT coalesce(sum(pg_column_size(content)), 0) FROM transcript_blobs)
     + (SELECT coalesce(sum(pg_column_size(request_skeleton) + pg_column_size(request_offsets)
                            + pg_column_size(request_parts)), 0) FROM transcripts)
"""
BLOBS = "SELECT count(*), coalesce(sum(size), 0), coalesce(sum(pg_column_size(content)), 0) FROM transcript_blobs"


async def run(dsn: str, sessions: int) -> None:
    async with scratch_database(dsn) as scratch:
        conn = await asyncpg.connect(scratch)
        await conn.execute("SELECT ensure_transcript_partition(now())")
        empty = await conn.fetchval(TABLES)
        pool = await create_pool(scratch)
        raw = 0
        responses = 0
        turns = 0
        with tempfile.TemporaryDirectory() as spool:
            writer = TranscriptWriter(pool, Path(spool))
            await writer.start()
            now = time.time()
            for seed in range(sessions):
                headers = session_headers(seed)
                for n, turn in enumerate(generate_session(seed)):
                    raw += len(turn.body)
                    responses += len(turn.sse)
                    turns += 1
                    writer.submit(TranscriptRecord(
                        request_id=f"req_{seed}_{n}", started_at=now, ended_at=now + 5, course="comp1000",
                        student=f"s{seed}", session_id=headers["x-claude-code-session-id"],
                        user_agent=headers["user-agent"], path="/v1/messages?beta=true", model="claude-opus-5-5",
                        stream=True, status=200, request_headers=headers, request_body=turn.body,
                        response_headers={"content-type": "text/event-stream"}, response_body=turn.sse,
                        response_message=turn.message, weighted=1000, cost_usd="0.01"))
            await writer.drain(120)
            await writer.close()
        await pool.close()
        await conn.execute("VACUUM ANALYZE")  # settle the free-space and visibility maps
        request_storage = await conn.fetchval(REQUEST_STORAGE)
        on_disk = await conn.fetchval(TABLES) - empty
        blob_count, blob_raw, blob_stored = await conn.fetchrow(BLOBS)
        await conn.close()

    print(f"{sessions} session(s), {turns} requests: raw request bodies {raw / 1e6:.2f} MB "
          f"(responses {responses / 1e6:.2f} MB more)")
    print(f"blobs: {blob_count} distinct parts, {blob_raw / 1e6:.2f} MB before compression, "
          f"{blob_stored / 1e6:.2f} MB stored")
    print(f"request storage: {request_storage / 1e6:.3f} MB = {request_storage / raw:.3f} of raw (target <= 0.10)")
    print(f"on disk, everything (requests, responses, indexes): {on_disk / 1e6:.3f} MB = {on_disk / raw:.3f} of "
          f"raw request bodies")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=1)
    parser.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()
    asyncio.run(run(args.dsn, args.sessions))


if __name__ == "__main__":
    main()

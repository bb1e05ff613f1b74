"""The memory-for-CPU caches are sized by settings (GATEWAY_SCAN_CACHE_*, GATEWAY_WRITER_BLOB_CACHE_ENTRIES) and
stay within them, while every request is still scanned and stored exactly."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import orjson

from gateway import appkeys, transcript_read
from tests.harness import running_gateway


async def test_small_caches_stay_small_and_lose_nothing(aiohttp_server, pg_dsn: str, redis_url: str,  # type: ignore[no-untyped-def]
                                                         redis_prefix: str, tmp_path: Path) -> None:
    async with running_gateway(aiohttp_server, pg_dsn=pg_dsn, redis_url=redis_url, redis_prefix=redis_prefix,
                               data_dir=tmp_path, scan_cache_entries=64, scan_cache_bytes=0,
                               writer_blob_cache_entries=3) as h:
        guard, writer = h.app[appkeys.LEAK_GUARD], h.app[appkeys.WRITER]
        assert writer.blob_cache_size == 3
        sent = []
        async with aiohttp.ClientSession() as session:
            for turn in range(6):
                messages = [{"role": "user", "content": f"turn {turn} note {i}: the build log says {i * turn}"}
                            for i in range(30)]
                body = orjson.dumps({"model": "claude-opus-5-5", "max_tokens": 10, "messages": messages})
                async with session.post(h.url + "/v1/messages", data=body,
                                        headers={"x-api-key": h.key, "content-type": "application/json"}) as resp:
                    assert resp.status == 200, await resp.text()
                sent.append(body)
        assert guard.scanner.cache_size <= 64  # 180 distinct texts went through it
        assert guard.scanner.cache_text_bytes == 0
        await h.flush()
        assert len(writer._known_blobs) <= 3  # the bound itself is what is tested
        ids = [row[0] for row in await h.stores.pool.fetch(
            "SELECT request_id FROM transcripts WHERE student_id = 'alice' ORDER BY started_at")]
        assert [await transcript_read.request_body(h.stores.pool, i) for i in ids] == sent

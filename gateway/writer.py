"""The batched transcript writer: handlers never wait on Postgres, and nothing submitted is lost.

Path of a record::

    submit(record)               synchronous, in the handler, before the last response bytes go out
      -> spool.append()          one writev() on an O_APPEND file: survives SIGKILL (page cache); a
                                 background task fdatasyncs in groups (survives power loss after that)
      -> memory queue            bounded by count and bytes; when full the record stays ONLY in the spool
                                 ("spill mode", counted and logged) and is read back from the spool
                                 segments once the writer has caught up
    writer task                  batches of batch_size records or flush_interval_s, whichever first
      -> prepare                 split request bodies into content-addressed parts (contentstore.py)
      -> one transaction         new blobs: INSERT ... ON CONFLICT DO NOTHING (after skipping those known
                                 to be stored); then binary COPY of the ids (transcript_ids), usage_events
                                 and transcripts (routed to the month's partition) in a savepoint; if an
                                 id was stored before (a replay), the savepoint is rolled back and the ids
                                 are claimed instead (INSERT ... ON CONFLICT DO NOTHING RETURNING) and only
                                 the claimed records are copied
      -> spool.mark_done()       a segment file is deleted once all its records have committed

Postgres errors that are about the connection or the server (anything but bad data) are retried with
exponential backoff, forever: records wait in memory and in the spool. A record Postgres rejects as bad data
is isolated (its batch is retried one record at a time) and written to ``<spool>/rejected/`` with an ERROR
log; it is never silently dropped. Start-up replays the spool of this worker's previous run and adopts the
spools of dead workers. ``drain()`` (SIGTERM) writes everything queued, then stops; what it cannot write in
time stays in the spool for the next start.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Container, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import orjson

from gateway import contentstore
from gateway.db import close_pool
from gateway.spool import Segment, Spool, SpoolError
from gateway.tasks import stop_tasks
from gateway.transcript import TranscriptRecord, decode, encode, storable

log = logging.getLogger(__name__)

PoolFactory = Callable[[], Awaitable[asyncpg.Pool]]

REJECTED_DIR = "rejected"

TRANSCRIPT_COLUMNS = (
    "request_id", "started_at", "first_byte_at", "ended_at", "upstream_request_id", "course_id", "student_id",
    "jti", "session_id", "user_agent", "method", "path", "model", "stream", "status", "error", "request_headers",
    "request_size", "request_skeleton", "request_offsets", "request_parts", "response_headers", "response_body",
    "response_message", "usage", "weighted", "cost_usd", "estimated", "refused", "refused_reason", "period_start",
    "carried",
)
ID_COLUMNS = ("request_id", "started_at")
USAGE_COLUMNS = (
    "request_id", "at", "course_id", "student_id", "jti", "session_id", "model", "status", "input_tokens",
    "cache_write_5m", "cache_write_1h", "cache_read", "output_tokens", "web_searches", "weighted", "cost_usd",
    "estimated", "refused", "period_start", "carried",
)
EXISTING_BLOBS = "SELECT hash FROM transcript_blobs WHERE hash = ANY($1::bytea[])"
INSERT_BLOBS = """
INSERT INTO transcript_blobs (hash, kind, size, content)
SELECT * FROM unnest($1::bytea[], $2::text[], $3::integer[], $4::bytea[]) ORDER BY 1
ON CONFLICT (hash) DO NOTHING
"""
# Idempotency. Fast path: binary COPY of the batch's ids into transcript_ids (primary key request_id), then of
# its rows, in a savepoint. A record written before makes the COPY fail with a unique violation; the savepoint
# is rolled back and the batch takes the slow path: claim the ids ON CONFLICT DO NOTHING, copy only the records
# whose id was claimed just now (same transaction). A replayed record finds its id taken and adds nothing.
CLAIM_IDS = """
INSERT INTO transcript_ids (request_id, started_at)
SELECT * FROM unnest($1::text[], $2::timestamptz[]) ORDER BY 1
ON CONFLICT (request_id) DO NOTHING
RETURNING request_id
"""
ENSURE_PARTITION = "SELECT ensure_transcript_partition($1)"

# Errors that mean "this data cannot be stored" rather than "Postgres cannot be reached right now".
_RECORD_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.DataError,
    asyncpg.IntegrityConstraintViolationError,
    asyncpg.ProgramLimitExceededError,
    ValueError,  # includes asyncpg's client-side "invalid input for query argument"
    TypeError,
    OverflowError,
)
_YIELD_EVERY_BYTES = 256 << 10  # give the event loop a turn after splitting this many body bytes


@dataclass(slots=True)
class _Item:
    record: TranscriptRecord  # as Postgres stores it (transcript.storable)
    segment: Segment | None  # None: the spool write failed, the record lives only in memory
    size: int  # payload bytes
    queued_at: float = 0.0


@dataclass(slots=True)
class _Cursor:
    """A stretch of spool to read back: a replayed segment, or the spilled tail of the live spool."""

    segment: Segment
    offset: int
    replay: bool


@dataclass(slots=True)
class _Prepared:
    ids: list[str] = field(default_factory=list)
    started: list[datetime] = field(default_factory=list)
    transcripts: list[tuple[Any, ...]] = field(default_factory=list)
    usage: list[tuple[Any, ...]] = field(default_factory=list)
    blobs: dict[bytes, contentstore.Part] = field(default_factory=dict)
    months: set[tuple[int, int]] = field(default_factory=set)
    rejected: list[tuple[_Item, BaseException]] = field(default_factory=list)


async def _copy(conn: asyncpg.Connection, ids: list[str], started: list[datetime], transcripts: list[tuple[Any, ...]],
                usage: list[tuple[Any, ...]]) -> None:
    """Binary COPY of a batch whose ids are new. An id stored before raises UniqueViolationError (the primary
    keys of transcript_ids and usage_events). Rows go in request-id order, so that two batches sharing ids
    wait on each other instead of deadlocking."""
    order = sorted(range(len(ids)), key=ids.__getitem__)
    copy = conn.copy_records_to_table
    await copy("transcript_ids", columns=ID_COLUMNS, records=[(ids[i], started[i]) for i in order])
    await copy("usage_events", columns=USAGE_COLUMNS, records=[usage[i] for i in order])
    await copy("transcripts", columns=TRANSCRIPT_COLUMNS, records=[transcripts[i] for i in order])


def _month(epoch: float) -> tuple[int, int]:
    at = datetime.fromtimestamp(epoch, UTC)
    return at.year, at.month


def _months_ahead() -> set[tuple[int, int]]:
    """This month and the next: their partitions are created before any record needs them."""
    year, month = _month(time.time())
    return {(year, month), (year + month // 12, month % 12 + 1)}


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


def _time(epoch: float | None) -> datetime | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC)


def _rows(record: TranscriptRecord, body: contentstore.SplitBody) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """The record's transcripts row and usage_events row, in TRANSCRIPT_COLUMNS / USAGE_COLUMNS order."""
    usage = record.usage or {}
    message = record.response_message
    started = datetime.fromtimestamp(record.started_at, UTC)
    period_start = _time(record.period_start)
    cost = None if record.cost_usd is None else Decimal(record.cost_usd)
    transcript = (
        record.request_id, started, _time(record.first_byte_at), _time(record.ended_at),
        record.upstream_request_id, record.course, record.student, record.jti, record.session_id,
        record.user_agent, record.method, record.path, record.model, record.stream, record.status, record.error,
        _json(record.request_headers), body.size, body.skeleton, contentstore.pack_offsets(body.offsets),
        contentstore.pack_hashes([part.hash for part in body.parts]), _json(record.response_headers),
        record.response_body, None if message is None else _json(message), _json(usage), record.weighted, cost,
        record.estimated, record.refused, record.refused_reason, period_start, record.carried,
    )
    usage_row = (
        record.request_id, started, record.course, record.student, record.jti, record.session_id, record.model,
        record.status, int(usage.get("input_tokens") or 0), int(usage.get("cache_write_5m") or 0),
        int(usage.get("cache_write_1h") or 0), int(usage.get("cache_read") or 0),
        int(usage.get("output_tokens") or 0), int(usage.get("web_searches") or 0), record.weighted,
        cost, record.estimated, record.refused, period_start, record.carried,
    )
    return transcript, usage_row


async def prepare(
    items: list[_Item], known: Container[bytes] = frozenset(), recent: contentstore.RecentValues | None = None
) -> _Prepared:
    """CPU work of a batch: split the request bodies into content-addressed parts, build the COPY rows.
    Parts whose hash is in ``known`` (stored already) are not kept; ``recent`` spares re-serialising and
    re-hashing the ``tools`` and ``system`` every request repeats. Runs on the event loop in slices, so that
    a batch of big bodies never holds the loop for long."""
    out = _Prepared()
    seen: set[str] = set()
    since_yield = 0
    for item in items:
        record = item.record
        if record.request_id in seen:
            continue  # the same request twice in one batch: the first one wins, as ON CONFLICT would decide
        seen.add(record.request_id)
        try:
            body = contentstore.split(record.request_body, record.request_payload, recent)
            record.request_payload = None  # not needed any more: let the parse go before the batch commits
            transcript, usage = _rows(record, body)
        except Exception as exc:  # a record that cannot be prepared is set aside, not dropped
            out.rejected.append((item, exc))
            continue
        out.ids.append(record.request_id)
        out.started.append(transcript[1])
        out.transcripts.append(transcript)
        out.usage.append(usage)
        out.months.add((transcript[1].year, transcript[1].month))
        for part in body.parts:
            if part.hash not in known:
                out.blobs.setdefault(part.hash, part)
        since_yield += len(record.request_body)
        if since_yield >= _YIELD_EVERY_BYTES:
            since_yield = 0
            await asyncio.sleep(0)
    return out


class TranscriptWriter:
    """Queue + spool + batched COPY writer. See the module docstring for the path of a record."""

    def __init__(
        self,
        pool: asyncpg.Pool | PoolFactory,
        spool_dir: Path,
        *,
        batch_size: int = 500,
        flush_interval_s: float = 0.2,
        queue_max: int = 10_000,
        queue_max_bytes: int = 64 << 20,
        worker_name: str | None = None,
        concurrency: int = 2,
        segment_max_bytes: int = 64 << 20,
        segment_max_age_s: float = 60.0,
        fsync_interval_s: float = 0.05,
        retry_initial_s: float = 0.05,
        retry_max_s: float = 5.0,
        batch_timeout_s: float = 60.0,
        blob_cache_size: int = 50_000,  # ~100 bytes each
        read_max_bytes: int = 32 << 20,
    ) -> None:
        if isinstance(pool, asyncpg.Pool):
            self._pool: asyncpg.Pool | None = pool
            self._pool_factory: PoolFactory | None = None
        else:
            self._pool = None
            self._pool_factory = pool
        self.spool_dir = Path(spool_dir)
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.queue_max = queue_max
        self.queue_max_bytes = queue_max_bytes
        self.concurrency = concurrency
        self.fsync_interval_s = fsync_interval_s
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.batch_timeout_s = batch_timeout_s
        self.blob_cache_size = blob_cache_size
        self.read_max_bytes = read_max_bytes
        self.spool = Spool(self.spool_dir, worker_name or f"pid{os.getpid()}",
                           segment_max_bytes=segment_max_bytes, segment_max_age_s=segment_max_age_s)
        self._mem: deque[_Item] = deque()
        self._mem_bytes = 0
        self._pending_bytes = 0  # spooled, not yet committed
        self._disk: deque[_Cursor] = deque()
        self._spilling = False
        self._wake = asyncio.Event()
        self._progress = asyncio.Event()
        self._slots = asyncio.Semaphore(concurrency)
        self._batches: set[asyncio.Task[None]] = set()
        self._runner: asyncio.Task[None] | None = None
        self._syncer: asyncio.Task[None] | None = None
        self._known_blobs: dict[bytes, None] = {}
        self._recent_values = contentstore.RecentValues()
        self._months: set[tuple[int, int]] = set()
        self._months_lock = asyncio.Lock()
        self._open = False
        self._stopping = False
        self._holding = False
        # metrics
        self.batches_written = 0
        self.records_written = 0  # records committed (including replays that were already there)
        self.write_errors = 0  # failed batch attempts (each is retried)
        self.records_rejected = 0  # records Postgres refused as bad data, kept in <spool>/rejected/
        self.spilled_records = 0  # records that went to the spool only because the queue was full
        self.spill_episodes = 0
        self.spool_errors = 0  # spool writes that failed (the record then waits in memory only)
        self.replayed_records = 0
        self.replay_conflicts = 0  # batches that held ids written before (the slow, claiming path)

    # -- lifecycle -------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Lock the spool, queue the previous run's and dead workers' segments for replay, start writing.

        Replay runs in the background ahead of new records, so the gateway can start while Postgres is down;
        :meth:`wait_idle` waits for it.
        """
        backlog = await asyncio.to_thread(self.spool.open)
        self._disk.extend(_Cursor(segment, 0, replay=True) for segment in backlog)
        if backlog:
            log.info("transcripts: replaying %d spool segment(s), %d bytes", len(backlog),
                     self.spool.live_bytes)
        self._open = True
        self._runner = asyncio.create_task(self._run(), name="transcript-writer")
        self._syncer = asyncio.create_task(self._sync_loop(), name="transcript-spool-sync")

    async def drain(self, timeout: float | None = None) -> bool:  # noqa: ASYNC109
        """Write everything submitted so far, then stop. False if the timeout came first (the rest stays
        spooled for the next start)."""
        self._stopping = True
        self._wake.set()
        try:
            async with asyncio.timeout(timeout):
                while not self._idle():
                    self._progress.clear()
                    await self._progress.wait()
        except TimeoutError:
            log.warning("transcripts: drain timed out with %d queued, %d bytes spooled", self.queue_depth,
                        self.spool_bytes)
            return False
        return True

    async def close(self) -> None:
        """Stop now; whatever has not committed stays in the spool and is replayed on the next start."""
        self._stopping = True
        await stop_tasks(self._runner, self._syncer, *self._batches)
        self._runner = self._syncer = None
        if self._open:
            self._open = False
            await asyncio.to_thread(self.spool.close)
        if self._pool_factory is not None and self._pool is not None:
            await close_pool(self._pool)
            self._pool = None

    async def wait_idle(self, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Wait until everything submitted (and replayed) so far has committed. TimeoutError otherwise."""
        async with asyncio.timeout(timeout):
            while not self._idle():
                self._progress.clear()
                await self._progress.wait()

    def _idle(self) -> bool:
        return not self._mem and not self._disk and not self._batches and not self._holding

    # -- metrics ---------------------------------------------------------------------------------------------

    @property
    def queue_depth(self) -> int:
        return len(self._mem)

    @property
    def spool_bytes(self) -> int:
        """Bytes of spooled records that have not committed yet (the backlog a crash would replay)."""
        return self._pending_bytes

    @property
    def spilling(self) -> bool:
        return self._spilling

    # -- submit ----------------------------------------------------------------------------------------------

    def submit(self, record: TranscriptRecord) -> None:
        """Make ``record`` durable in the spool and queue it. Synchronous, fast, never waits on Postgres."""
        if not self._open:
            raise RuntimeError("transcript writer is not running")
        pieces, record = storable(record)
        size = sum(len(p) for p in pieces)
        try:
            segment, offset = self.spool.append(pieces)
        except SpoolError as exc:
            # Not durable, but not lost while this process lives: keep it in memory whatever the bound.
            self.spool_errors += 1
            log.error("transcripts: spool write failed for %s (%s); keeping it in memory only",
                      record.request_id, exc)
            self._enqueue(_Item(record, None, size, time.monotonic()))
            return
        self._pending_bytes += size
        if self._spilling:
            self._spill(segment, offset)
            return
        if len(self._mem) >= self.queue_max or self._mem_bytes + size > self.queue_max_bytes:
            self._spilling = True
            self.spill_episodes += 1
            log.warning("transcripts: queue full (%d records, %d bytes): new records stay in the spool only "
                        "until the writer catches up", len(self._mem), self._mem_bytes)
            self._spill(segment, offset)
            return
        self._enqueue(_Item(record, segment, size, time.monotonic()))

    def _enqueue(self, item: _Item) -> None:
        if len(self._mem) >= self.batch_size:
            # The writer is behind (Postgres slow or away): keep the body's bytes but let its parse go, which
            # costs a few times their size in memory; the split parses the bytes again when the record's turn
            # comes, as it does for records read back from the spool.
            item.record.request_payload = None
        self._mem.append(item)
        self._mem_bytes += item.size
        if len(self._mem) == 1 or len(self._mem) >= self.batch_size:
            self._wake.set()

    def _spill(self, segment: Segment, offset: int) -> None:
        self.spilled_records += 1
        last = self._disk[-1] if self._disk else None
        if last is None or last.replay or last.segment is not segment:
            self._disk.append(_Cursor(segment, offset, replay=False))
            self._wake.set()

    # -- the writer loop -------------------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            items = self._take()
            if items is None:
                if self._idle():
                    self._progress.set()
                    if self._stopping:
                        return
                try:
                    async with asyncio.timeout(self._wait_s()):
                        await self._wake.wait()
                except TimeoutError:
                    pass
                continue
            if not items:
                continue
            self._holding = True  # taken from the queue, not yet a batch task: not idle
            try:
                await self._slots.acquire()
                task = asyncio.create_task(self._write(items))
                self._batches.add(task)
                task.add_done_callback(self._batch_done)
            finally:
                self._holding = False

    def _batch_done(self, task: asyncio.Task[None]) -> None:
        self._batches.discard(task)
        self._slots.release()
        self._progress.set()
        self._wake.set()
        if not task.cancelled() and task.exception() is not None:  # pragma: no cover - _write catches all
            log.error("transcripts: batch task failed", exc_info=task.exception())

    def _wait_s(self) -> float | None:
        if self._mem:
            return max(0.0, self._mem[0].queued_at + self.flush_interval_s - time.monotonic())
        return None

    def _take(self) -> list[_Item] | None:
        """The next batch, or None when nothing is ready yet ([] when a read found nothing but may retry)."""
        if self._disk and self._disk[0].replay:
            return self._read_disk()
        if self._mem:
            ready = (
                len(self._mem) >= self.batch_size
                or self._stopping
                or self._spilling
                or time.monotonic() - self._mem[0].queued_at >= self.flush_interval_s
            )
            if not ready:
                return None
            batch = [self._mem.popleft() for _ in range(min(self.batch_size, len(self._mem)))]
            self._mem_bytes -= sum(item.size for item in batch)
            return batch
        if self._disk:
            return self._read_disk()
        return None

    def _read_disk(self) -> list[_Item]:
        cursor = self._disk[0]
        result = self.spool.read(cursor.segment, cursor.offset, max_records=self.batch_size,
                                 max_bytes=self.read_max_bytes)
        cursor.offset = result.offset
        items: list[_Item] = []
        if cursor.replay:
            self._pending_bytes += sum(len(payload) for payload in result.payloads)
        for payload in result.payloads:
            try:
                items.append(_Item(decode(payload), cursor.segment, len(payload)))
            except Exception as exc:  # the crc was fine, so this is a format problem: keep it aside
                self._reject_payload(cursor.segment, payload, exc)
        if cursor.replay:
            self.replayed_records += len(items)
        if result.at_end:
            # A sealed segment is finished; the live one is caught up with (single-threaded: no record can
            # be appended between this read and the next submit, which will then go to memory again).
            self._disk.popleft()
            if self._spilling and not self._disk:
                self._spilling = False
                log.info("transcripts: caught up with the spool (%d records spilled so far)",
                         self.spilled_records)
        return items

    # -- writing a batch -------------------------------------------------------------------------------------

    async def _write(self, items: list[_Item]) -> None:
        try:
            prepared = await prepare(items, self._known_blobs, self._recent_values)
            for item, exc in prepared.rejected:
                self._reject(item, exc)
            delay = self.retry_initial_s
            while prepared.ids:
                try:
                    async with asyncio.timeout(self.batch_timeout_s):
                        await self._store(prepared)
                    break
                except _RECORD_ERRORS as exc:
                    rejected = {id(item) for item, _ in prepared.rejected}
                    rest = [item for item in items if id(item) not in rejected]
                    if len(rest) == 1:
                        self._reject(rest[0], exc)
                        return
                    log.warning("transcripts: batch of %d refused (%s); writing its records one by one",
                                len(rest), exc)
                    for item in rest:
                        await self._write([item])
                    return
                except Exception as exc:
                    self.write_errors += 1
                    log.warning("transcripts: writing a batch of %d failed (%s: %s); retrying in %.2fs",
                                len(items), type(exc).__name__, exc, delay)
                    await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                    delay = min(delay * 2, self.retry_max_s)
            self.batches_written += 1
            self.records_written += len(prepared.ids)
            rejected = {id(item) for item, _ in prepared.rejected}
            for item in items:
                if id(item) not in rejected:
                    self._retire(item)
        except asyncio.CancelledError:
            raise
        except Exception:  # pragma: no cover - a bug; the records stay in the spool for the next start
            log.exception("transcripts: unexpected error writing a batch")

    def _retire(self, item: _Item) -> None:
        if item.segment is not None:
            self._pending_bytes -= item.size
            self.spool.mark_done(item.segment)

    async def _get_pool(self) -> asyncpg.Pool:
        if self._pool is None:
            assert self._pool_factory is not None
            self._pool = await self._pool_factory()
        return self._pool

    async def _store(self, prepared: _Prepared) -> None:
        pool = await self._get_pool()
        async with pool.acquire() as conn:
            months = prepared.months | _months_ahead()
            if months - self._months:
                async with self._months_lock:
                    for year, month in sorted(months - self._months):
                        await conn.execute(ENSURE_PARTITION, datetime(year, month, 1, tzinfo=UTC))
                        self._months.add((year, month))
            known = self._known_blobs
            new = [part for key, part in prepared.blobs.items() if key not in known]
            if new:
                existing = await conn.fetch(EXISTING_BLOBS, [part.hash for part in new])
                present = {row[0] for row in existing}
                self._remember(present)
                new = [part for part in new if part.hash not in present]
            async with conn.transaction():
                if new:
                    await conn.execute(INSERT_BLOBS, [p.hash for p in new], [p.kind for p in new],
                                       [len(p.content) for p in new], [p.content for p in new])
                try:
                    async with conn.transaction():  # a savepoint: the fast path, when no id was written before
                        await _copy(conn, prepared.ids, prepared.started, prepared.transcripts, prepared.usage)
                except asyncpg.UniqueViolationError:
                    await self._store_claimed(conn, prepared)
            self._remember(part.hash for part in new)

    async def _store_claimed(self, conn: asyncpg.Connection, prepared: _Prepared) -> None:
        """The batch holds records written before (a replay after a crash, or one record in two batches): claim
        the ids ON CONFLICT DO NOTHING, then copy only the records whose id was claimed just now."""
        self.replay_conflicts += 1
        claimed = {row[0] for row in await conn.fetch(CLAIM_IDS, prepared.ids, prepared.started)}
        transcripts = [row for row in prepared.transcripts if row[0] in claimed]
        usage = [row for row in prepared.usage if row[0] in claimed]
        if transcripts:
            await conn.copy_records_to_table("transcripts", columns=TRANSCRIPT_COLUMNS, records=transcripts)
            await conn.copy_records_to_table("usage_events", columns=USAGE_COLUMNS, records=usage)

    def _remember(self, hashes: Iterable[bytes]) -> None:
        """Blobs known to be committed: later batches do not send them again."""
        known = self._known_blobs
        for key in hashes:
            known[key] = None
        overflow = len(known) - self.blob_cache_size
        if overflow > 0:
            for key in list(itertools.islice(known, overflow)):  # the oldest: dicts keep insertion order
                del known[key]

    # -- records Postgres will not take ----------------------------------------------------------------------

    def _reject(self, item: _Item, exc: BaseException) -> None:
        self.records_rejected += 1
        request_id = item.record.request_id
        path = self._rejected_path(request_id)
        try:
            path.write_bytes(b"".join(encode(item.record)))
        except OSError as write_exc:
            log.error("transcripts: could not keep rejected record %s: %s", request_id, write_exc)
            return  # leave it in the spool: replayed (and rejected again) on the next start
        log.error("transcripts: Postgres refused record %s (%s: %s); kept in %s", request_id,
                  type(exc).__name__, exc, path)
        self._retire(item)

    def _reject_payload(self, segment: Segment, payload: bytes, exc: BaseException) -> None:
        self.records_rejected += 1
        path = self._rejected_path(f"undecodable-{time.time_ns()}")
        path.write_bytes(payload)
        log.error("transcripts: undecodable spool record in %s (%s); kept in %s", segment.path, exc, path)
        self._pending_bytes -= len(payload)
        self.spool.mark_done(segment)

    def _rejected_path(self, name: str) -> Path:
        directory = self.spool_dir / REJECTED_DIR
        directory.mkdir(parents=True, exist_ok=True)
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:200]
        return directory / f"{safe}.rec"

    # -- fsync in groups -------------------------------------------------------------------------------------

    async def _sync_loop(self) -> None:
        while True:
            await asyncio.sleep(self.fsync_interval_s)
            try:
                self.spool.maybe_rotate()
                if self.spool.needs_sync:
                    await asyncio.to_thread(self.spool.sync)
            except OSError as exc:
                log.error("transcripts: spool maintenance failed: %s", exc)

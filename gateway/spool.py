"""The local append-only spool: where a transcript becomes durable before Postgres has seen it.

Layout under the spool root (``GATEWAY_DATA_DIR/spool`` by default)::

    <root>/<worker>/lock               flock(LOCK_EX) held by the live worker that owns the directory
    <root>/<worker>/000000000007.seg   segments: frames of (u32 length, u32 crc32, payload), appended in order
    <root>/.adopt-<worker>-<hex>/      a dead worker's directory being replayed by another worker
    <root>/damaged/                    segments with a corrupt frame, moved aside for an operator

Each worker process appends to its own directory with plain ``write()`` calls on an ``O_APPEND`` descriptor:
once ``append`` returns the frame is in the page cache and survives SIGKILL of the process;
:meth:`Spool.sync` (run in a thread, in groups) makes it survive a power cut too. A torn frame can only be
the last one of a segment; the crc finds it and reading stops there.

Segments rotate by size and age. A segment is deleted only when it is sealed and every record in it has been
counted and marked done (committed to Postgres, or moved to the rejected directory). Segments of an earlier
run (``replay``) count their records as they are read back.

Nothing here knows what a payload means; ``gateway/transcript.py`` encodes records into payloads.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import struct
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

FRAME = struct.Struct("<II")  # payload length, crc32 of the payload
SEGMENT_SUFFIX = ".seg"
LOCK_NAME = "lock"
ADOPT_PREFIX = ".adopt-"
DAMAGED_DIR = "damaged"
_MAX_PAYLOAD = 0xFFFFFFFF


class SpoolError(Exception):
    """The spool cannot be used (directory owned by a live process, disk full, ...)."""


@dataclass(eq=False)
class _Dir:
    path: Path
    lock_fd: int
    adopted: bool
    segments: set[Segment] = field(default_factory=set)


@dataclass(eq=False)
class Segment:
    path: Path
    owner: _Dir
    size: int = 0  # bytes appended (own segments) or the file's size (replayed ones)
    sealed: bool = False
    replay: bool = False  # from an earlier run: records are counted while they are read back
    records: int = 0  # records known to be in the segment
    done: int = 0  # of those, how many are committed (or set aside)
    read_all: bool = True  # every record of the segment has been counted
    damaged: bool = False
    created: float = 0.0

    @property
    def name(self) -> str:
        return self.path.name


@dataclass(slots=True)
class ReadResult:
    payloads: list[bytes]
    offset: int  # where the next read starts
    at_end: bool  # nothing more to read in this segment (for the active one: nothing more *yet*)


def _try_lock(directory: Path) -> int | None:
    """Open and flock ``directory/lock`` exclusively without blocking; None if it is held or moved away."""
    lock_path = directory / LOCK_NAME
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        # The directory may have been adopted (renamed) between open() and flock(): then the path no longer
        # names the file we locked.
        if os.stat(lock_path).st_ino != os.fstat(fd).st_ino:
            raise FileNotFoundError(lock_path)
    except (BlockingIOError, FileNotFoundError):
        os.close(fd)
        return None
    return fd


def _segment_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.name.endswith(SEGMENT_SUFFIX))


class Spool:
    def __init__(
        self,
        root: Path,
        name: str,
        *,
        segment_max_bytes: int = 64 << 20,
        segment_max_age_s: float = 60.0,
        lock_timeout_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not name or "/" in name or name.startswith(".") or name == DAMAGED_DIR:
            raise ValueError(f"bad spool worker name: {name!r}")
        self.root = Path(root)
        self.name = name
        self.segment_max_bytes = segment_max_bytes
        self.segment_max_age_s = segment_max_age_s
        self.lock_timeout_s = lock_timeout_s
        self._clock = clock
        self._own: _Dir | None = None
        self._adopted: list[_Dir] = []
        self._active: Segment | None = None
        self._fd = -1
        self._next_number = 1
        self._unsynced = False
        self._retired: list[int] = []  # descriptors of sealed segments, closed by the next sync()
        self._fd_lock = threading.Lock()
        self._sync_lock = threading.Lock()  # sync() (in a thread) and close() never overlap
        self.live_bytes = 0
        self.torn_frames = 0
        self.damaged_segments = 0

    # -- opening ---------------------------------------------------------------------------------------------

    def open(self) -> list[Segment]:
        """Lock this worker's directory and adopt dead workers' ones; returns their segments, oldest first.

        Blocking (it may wait up to ``lock_timeout_s`` for the lock): call it in a thread from async code.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        own_path = self.root / self.name
        deadline = self._clock() + self.lock_timeout_s
        while True:
            own_path.mkdir(exist_ok=True)
            fd = _try_lock(own_path)
            if fd is not None:
                break
            if self._clock() >= deadline:
                raise SpoolError(f"spool directory {own_path} is locked by another live process")
            time.sleep(0.01)
        self._own = _Dir(own_path, fd, adopted=False)
        backlog = [self._replay_segment(self._own, p) for p in _segment_files(own_path)]
        for entry in sorted(self.root.iterdir()):
            if entry == own_path or not entry.is_dir() or entry.name == DAMAGED_DIR:
                continue
            adopted = self._adopt(entry)
            if adopted is not None:
                backlog.extend(self._replay_segment(adopted, p) for p in _segment_files(adopted.path))
                self._cleanup_dir(adopted)
        numbers = [int(p.name[: -len(SEGMENT_SUFFIX)]) for p in _segment_files(own_path)]
        self._next_number = max(numbers, default=0) + 1
        self._open_active()
        return backlog

    def _adopt(self, directory: Path) -> _Dir | None:
        fd = _try_lock(directory)
        if fd is None:
            return None  # a live worker owns it
        if not directory.name.startswith(ADOPT_PREFIX):
            # Move it out of the way so that a new worker of that name can start at once.
            target = self.root / f"{ADOPT_PREFIX}{directory.name}-{uuid.uuid4().hex[:8]}"
            os.rename(directory, target)
            directory = target
        log.info("spool: adopting %s", directory)
        adopted = _Dir(directory, fd, adopted=True)
        self._adopted.append(adopted)
        return adopted

    def _replay_segment(self, owner: _Dir, path: Path) -> Segment:
        size = path.stat().st_size
        segment = Segment(path, owner, size=size, sealed=True, replay=True, read_all=False)
        owner.segments.add(segment)
        self.live_bytes += size
        return segment

    def _open_active(self) -> None:
        """Open the next segment and make it the active one (nothing changes if that fails)."""
        assert self._own is not None
        path = self._own.path / f"{self._next_number:012d}{SEGMENT_SUFFIX}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        self._next_number += 1
        with self._fd_lock:
            self._fd = fd
        self._active = Segment(path, self._own, created=self._clock())
        self._own.segments.add(self._active)

    # -- appending -------------------------------------------------------------------------------------------

    @property
    def active(self) -> Segment:
        assert self._active is not None, "spool is not open"
        return self._active

    def append(self, pieces: Sequence[bytes]) -> tuple[Segment, int]:
        """Append one payload (pieces written with one ``writev``); returns its segment and its offset."""
        length = sum(len(p) for p in pieces)
        if length > _MAX_PAYLOAD:
            raise SpoolError("payload too large for a spool frame")
        crc = 0
        for piece in pieces:
            crc = zlib.crc32(piece, crc)
        frame = [FRAME.pack(length, crc), *pieces]
        total = FRAME.size + length
        segment = self.active
        try:
            if segment.size and (
                segment.size + total > self.segment_max_bytes
                or self._clock() - segment.created >= self.segment_max_age_s
            ):
                self.rotate()
                segment = self.active
            written = os.writev(self._fd, frame)
        except OSError as exc:
            raise SpoolError(f"spool write failed: {exc}") from exc
        if written != total:
            # Disk full half-way: cut the torn frame off so that later frames stay readable.
            os.ftruncate(self._fd, segment.size)
            raise SpoolError(f"spool write failed: short write ({written}/{total} bytes), disk full?")
        offset = segment.size
        segment.size += total
        segment.records += 1
        self.live_bytes += total
        self._unsynced = True
        return segment, offset

    def rotate(self) -> None:
        """Seal the active segment (if it holds anything) and start a new one."""
        segment = self.active
        if not segment.size:
            return
        old_fd = self._fd
        self._open_active()  # raises OSError (and leaves the active segment as it was) if it cannot
        segment.sealed = True
        with self._fd_lock:
            self._retired.append(old_fd)
        self._maybe_delete(segment)

    def maybe_rotate(self) -> None:
        """Rotate an active segment that is old enough (call it now and then)."""
        segment = self.active
        if segment.size and self._clock() - segment.created >= self.segment_max_age_s:
            self.rotate()

    @property
    def needs_sync(self) -> bool:
        return self._unsynced or bool(self._retired)

    def sync(self) -> None:
        """fdatasync what was appended since the last call; close retired descriptors. Blocking."""
        with self._sync_lock:
            with self._fd_lock:
                retired, self._retired = self._retired, []
                fd = self._fd
                unsynced, self._unsynced = self._unsynced, False
            for old in retired:
                with contextlib.suppress(OSError):
                    os.fdatasync(old)
                os.close(old)
            if unsynced and fd >= 0:
                with contextlib.suppress(OSError):
                    os.fdatasync(fd)

    # -- reading back ----------------------------------------------------------------------------------------

    def read(self, segment: Segment, offset: int, *, max_records: int, max_bytes: int) -> ReadResult:
        """Payloads from ``offset``: at most ``max_records``, about ``max_bytes`` (always at least one)."""
        limit = segment.size if segment is self._active else segment.path.stat().st_size
        payloads: list[bytes] = []
        pos = 0
        torn = False
        with open(segment.path, "rb", buffering=0) as file:
            file.seek(offset)
            buf = file.read(max(FRAME.size, min(max_bytes, limit - offset)))
            while len(payloads) < max_records:
                left = limit - offset - pos
                if left <= 0:
                    break
                if left < FRAME.size:
                    torn = True
                    break
                if len(buf) - pos < FRAME.size:
                    break  # the next read continues here
                length, crc = FRAME.unpack_from(buf, pos)
                end = pos + FRAME.size + length
                if offset + end > limit:
                    torn = True
                    break
                if end > len(buf):
                    if payloads:
                        break
                    buf += file.read(end - len(buf))  # a single frame larger than max_bytes
                payload = buf[pos + FRAME.size : end]
                if zlib.crc32(payload) != crc:
                    return self._damaged(segment, payloads, offset + pos, limit)
                payloads.append(payload)
                pos = end
        new_offset = offset + pos
        if torn:
            # Only a crash in the middle of a write (power cut) leaves this: the record never completed.
            self.torn_frames += 1
            log.warning("spool: torn frame at %s:%d (%d bytes ignored)", segment.path, new_offset,
                        limit - new_offset)
        return self._finish_read(segment, payloads, new_offset, at_end=torn or new_offset >= limit)

    def _finish_read(
        self, segment: Segment, payloads: list[bytes], offset: int, *, at_end: bool
    ) -> ReadResult:
        if segment.replay:
            segment.records += len(payloads)
            if at_end:
                segment.read_all = True
                self._maybe_delete(segment)
        return ReadResult(payloads, offset, at_end)

    def _damaged(self, segment: Segment, payloads: list[bytes], at: int, limit: int) -> ReadResult:
        log.error("spool: corrupt frame at %s:%d; %d bytes after it kept for inspection", segment.path, at,
                  limit - at)
        segment.damaged = True
        self.damaged_segments += 1
        return self._finish_read(segment, payloads, limit, at_end=True)

    # -- retiring --------------------------------------------------------------------------------------------

    def mark_done(self, segment: Segment, count: int = 1) -> None:
        segment.done += count
        self._maybe_delete(segment)

    def _maybe_delete(self, segment: Segment) -> None:
        if not (segment.sealed and segment.read_all and segment.done >= segment.records):
            return
        owner = segment.owner
        if segment not in owner.segments:
            return
        owner.segments.discard(segment)
        self.live_bytes -= segment.size
        try:
            if segment.damaged:
                damaged = self.root / DAMAGED_DIR
                damaged.mkdir(exist_ok=True)
                os.rename(segment.path, damaged / f"{owner.path.name}-{segment.name}")
            else:
                with contextlib.suppress(FileNotFoundError):
                    segment.path.unlink()
        except OSError as exc:  # left behind: replayed (idempotently) by the next worker that adopts it
            log.error("spool: could not remove %s: %s", segment.path, exc)
        if owner.adopted:
            self._cleanup_dir(owner)

    def _cleanup_dir(self, directory: _Dir) -> None:
        """Remove an adopted directory once its last segment is gone."""
        if directory.segments or directory.lock_fd < 0:
            return
        with contextlib.suppress(FileNotFoundError):
            (directory.path / LOCK_NAME).unlink()
        try:
            directory.path.rmdir()
        except OSError as exc:
            log.warning("spool: could not remove %s: %s", directory.path, exc)
        os.close(directory.lock_fd)
        directory.lock_fd = -1
        if directory in self._adopted:
            self._adopted.remove(directory)

    def pending_segments(self) -> list[Segment]:
        dirs = [d for d in (self._own, *self._adopted) if d is not None]
        return sorted((s for d in dirs for s in d.segments), key=lambda s: (str(s.owner.path), s.name))

    def close(self) -> None:
        """Sync and close everything; an empty own directory is removed, a non-empty one stays for replay."""
        if self._own is None:
            return
        active = self._active
        self.sync()
        with self._sync_lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
        if active is not None:
            active.sealed = True
            self._maybe_delete(active)
        self._active = None
        for directory in list(self._adopted):
            if directory.lock_fd >= 0:
                os.close(directory.lock_fd)  # unfinished: the next worker to start adopts it again
                directory.lock_fd = -1
        self._adopted.clear()
        own = self._own
        if not own.segments:
            with contextlib.suppress(FileNotFoundError):
                (own.path / LOCK_NAME).unlink()
            with contextlib.suppress(OSError):
                own.path.rmdir()
        os.close(own.lock_fd)
        self._own = None

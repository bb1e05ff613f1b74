"""Debits waiting for Redis (fail mode ``open``), journaled on local disk so that a restart loses none.

Layout under the journal root (``GATEWAY_DATA_DIR/debits``)::

    <root>/<worker>.jsonl    one JSON object per queued debit, appended with one write() on an O_APPEND file;
                             flock(LOCK_EX) held by the live worker that owns it

A worker truncates its file when its queue is empty (everything replayed). On start it adopts the files of
workers that are gone (their lock is free): their debits are appended to its own journal and queued, then the
old file is deleted. Replaying a debit twice is harmless (settles are idempotent by request id), so a crash
between those steps at worst replays again. A write survives the death of the process (page cache); a power
cut can lose the last ones -- ``gateway ledger rebuild`` restores every bucket from Postgres.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from .policy import Policy

log = logging.getLogger(__name__)

SUFFIX = ".jsonl"


@dataclass(frozen=True, slots=True)
class PendingDebit:
    policy: Policy
    course: str
    student: str
    request_id: str
    weighted: int

    def encode(self) -> bytes:
        return orjson.dumps({"policy": self.policy.model_dump(mode="json"), "course": self.course,
                             "student": self.student, "request_id": self.request_id,
                             "weighted": self.weighted}) + b"\n"

    @classmethod
    def decode(cls, line: bytes) -> PendingDebit:
        data: dict[str, Any] = orjson.loads(line)
        return cls(Policy.model_validate(data["policy"]), str(data["course"]), str(data["student"]),
                   str(data["request_id"]), int(data["weighted"]))


def _lock(path: Path, *, create: bool) -> int | None:
    """Open and flock ``path`` without blocking; None if another live process holds it or it is gone."""
    flags = os.O_RDWR | os.O_APPEND | os.O_CLOEXEC | (os.O_CREAT if create else 0)
    try:
        fd = os.open(path, flags, 0o600)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.stat(path).st_ino != os.fstat(fd).st_ino:  # deleted (adopted) between open() and flock()
            raise FileNotFoundError(path)
    except (BlockingIOError, FileNotFoundError):
        os.close(fd)
        return None
    return fd


def _read_all(fd: int) -> bytes:
    chunks: list[bytes] = []
    offset = 0
    while chunk := os.pread(fd, 1 << 20, offset):
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


class DebitJournal:
    def __init__(self, root: Path, worker: str | None = None) -> None:
        self.root = root
        self.path = root / f"{worker or f'pid{os.getpid()}'}{SUFFIX}"
        self._fd: int | None = None
        self._dirty = False

    def open(self) -> list[PendingDebit]:
        """Lock this worker's journal; adopt and return the debits of workers that are gone."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = _lock(self.path, create=True)
        if fd is None:
            raise RuntimeError(f"debit journal {self.path} is locked by another live process")
        self._fd = fd
        adopted = self._decode(_read_all(fd), self.path)  # our own leftovers (same worker name, earlier run)
        self._dirty = bool(adopted)
        for other in sorted(self.root.glob("*" + SUFFIX)):
            if other == self.path:
                continue
            other_fd = _lock(other, create=False)
            if other_fd is None:
                continue  # a live worker's journal
            try:
                debits = self._decode(_read_all(other_fd), other)
                for debit in debits:
                    self.append(debit)
                other.unlink()
            finally:
                os.close(other_fd)
            adopted.extend(debits)
        if adopted:
            log.warning("adopted %d debit(s) queued by an earlier run; replaying them to Redis", len(adopted))
        return adopted

    @staticmethod
    def _decode(data: bytes, path: Path) -> list[PendingDebit]:
        debits: list[PendingDebit] = []
        for line in data.splitlines():
            if not line.strip():
                continue
            try:
                debits.append(PendingDebit.decode(line))
            except (ValueError, KeyError, TypeError) as exc:  # a torn last line after a crash
                log.error("skipping an unreadable line of %s: %s", path, exc)
        return debits

    def append(self, debit: PendingDebit) -> None:
        if self._fd is None:
            return
        try:
            os.write(self._fd, debit.encode())
            self._dirty = True
        except OSError as exc:  # the debit still waits in memory; only a restart would lose it
            log.error("could not journal the debit of %s: %s", debit.request_id, exc)

    def reset(self) -> None:
        """Everything journaled has been replayed: empty the file."""
        if self._fd is not None and self._dirty:
            os.ftruncate(self._fd, 0)
            self._dirty = False

    def close(self) -> None:
        """Release the journal; what it still holds is adopted by the next worker to start."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        empty = not self._dirty
        if empty:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        os.close(fd)

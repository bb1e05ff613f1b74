"""The append-only spool: frames, rotation, deletion after commit, replay, torn tails, locks and adoption."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.spool import DAMAGED_DIR, Segment, Spool, SpoolError


def payload(i: int, size: int = 100) -> bytes:
    return (f"record-{i:06d}-".encode() * (size // 14 + 1))[:size]


def read_all(sp: Spool, segment: Segment, *, max_records: int = 1000, max_bytes: int = 1 << 20) -> list[bytes]:
    out: list[bytes] = []
    offset = 0
    while True:
        result = sp.read(segment, offset, max_records=max_records, max_bytes=max_bytes)
        out.extend(result.payloads)
        offset = result.offset
        if result.at_end:
            return out


def segment_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob("*.seg"))


@pytest.fixture
def opened(tmp_path: Path) -> Iterator[Spool]:
    sp = Spool(tmp_path, "w1")
    assert sp.open() == []
    yield sp
    sp.close()


def test_append_and_read_back_in_chunks(opened: Spool) -> None:
    sent = [payload(i, 10 + i * 37) for i in range(200)]
    for data in sent:
        opened.append([data[:5], data[5:]])  # pieces are written as one frame
    segment = opened.active
    assert segment.records == 200
    assert read_all(opened, segment, max_records=7) == sent
    assert read_all(opened, segment, max_bytes=300) == sent  # smaller than some frames: still one at a time
    assert opened.live_bytes == segment.size == sum(len(d) + 8 for d in sent)


def test_sealed_segment_is_deleted_only_when_every_record_is_done(tmp_path: Path) -> None:
    sp = Spool(tmp_path, "w1", segment_max_bytes=1000)
    sp.open()
    segments = [sp.append([payload(i, 300)])[0] for i in range(10)]
    first = segments[0]
    assert first.sealed and first.records == 3  # 3 frames of 308 bytes fit under 1000
    assert len(segment_files(tmp_path / "w1")) == 4
    sp.mark_done(first, 2)
    assert first.path.exists()
    sp.mark_done(first, 1)
    assert not first.path.exists()
    active = sp.active
    sp.mark_done(active, active.records)
    assert active.path.exists()  # the active segment stays until it is sealed
    sp.close()


def test_segments_rotate_by_age(tmp_path: Path) -> None:
    now = [1000.0]
    sp = Spool(tmp_path, "w1", segment_max_age_s=60, clock=lambda: now[0])
    sp.open()
    first, _ = sp.append([b"a"])
    sp.maybe_rotate()
    assert sp.active is first
    now[0] += 61
    sp.maybe_rotate()
    assert first.sealed and sp.active is not first
    sp.maybe_rotate()  # an empty active segment is not rotated
    second = sp.active
    now[0] += 61
    sp.maybe_rotate()
    assert sp.active is second
    sp.close()


def test_a_restarted_worker_replays_what_was_not_done(tmp_path: Path) -> None:
    sp = Spool(tmp_path, "w1", segment_max_bytes=2000)
    sp.open()
    sent = [payload(i, 250) for i in range(20)]
    done_segment = None
    for data in sent:
        segment, _ = sp.append([data])
        done_segment = done_segment or segment
    assert done_segment is not None
    sp.mark_done(done_segment, done_segment.records)  # the first segment committed and is gone
    committed = done_segment.records
    sp.close()  # no sync/commit of the rest: as after a crash
    again = Spool(tmp_path, "w1")
    backlog = again.open()
    replayed = [p for segment in backlog for p in read_all(again, segment)]
    assert replayed == sent[committed:]
    for segment in backlog:
        again.mark_done(segment, segment.records)
    assert segment_files(tmp_path / "w1") == [again.active.name]
    again.close()
    assert not (tmp_path / "w1").exists()  # an empty directory is removed on close


def test_a_torn_tail_is_ignored(tmp_path: Path) -> None:
    sp = Spool(tmp_path, "w1")
    sp.open()
    segment, _ = sp.append([payload(1)])
    sp.append([payload(2)])
    sp.append([payload(3)])
    sp.close()
    with open(segment.path, "r+b") as file:
        file.truncate(segment.size - 30)  # the last frame was cut short by a power failure
    again = Spool(tmp_path, "w1")
    (replay,) = again.open()
    assert read_all(again, replay) == [payload(1), payload(2)]
    assert again.torn_frames == 1 and replay.read_all
    again.mark_done(replay, 2)
    assert not replay.path.exists()
    again.close()


def test_a_corrupt_frame_stops_reading_and_the_segment_is_kept_aside(tmp_path: Path) -> None:
    sp = Spool(tmp_path, "w1")
    sp.open()
    segment, _ = sp.append([payload(1)])
    _, second = sp.append([payload(2)])
    sp.append([payload(3)])
    sp.close()
    with open(segment.path, "r+b") as file:
        file.seek(second + 20)
        file.write(b"X")
    again = Spool(tmp_path, "w1")
    (replay,) = again.open()
    assert read_all(again, replay) == [payload(1)]
    again.mark_done(replay, 1)
    kept = list((tmp_path / DAMAGED_DIR).iterdir())
    assert len(kept) == 1 and kept[0].read_bytes().count(b"record-000003") > 0
    assert again.damaged_segments == 1
    again.close()


def test_a_short_write_is_cut_off_so_later_frames_stay_readable(
    opened: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened.append([payload(1)])
    real_writev = os.writev
    monkeypatch.setattr(os, "writev", lambda fd, bufs: os.write(fd, b"".join(bufs)[:11]))
    with pytest.raises(SpoolError):
        opened.append([payload(2)])
    monkeypatch.setattr(os, "writev", real_writev)
    opened.append([payload(3)])
    assert read_all(opened, opened.active) == [payload(1), payload(3)]
    assert os.path.getsize(opened.active.path) == opened.active.size


def test_one_directory_one_live_worker(opened: Spool, tmp_path: Path) -> None:
    with pytest.raises(SpoolError, match="locked"):
        Spool(tmp_path, "w1", lock_timeout_s=0.05).open()


def test_a_live_workers_directory_is_not_adopted(opened: Spool, tmp_path: Path) -> None:
    opened.append([payload(1)])
    other = Spool(tmp_path, "w2")
    assert other.open() == []
    assert (tmp_path / "w1").exists()
    other.close()


def test_a_dead_workers_directory_is_adopted_and_removed_once_replayed(tmp_path: Path) -> None:
    dead = Spool(tmp_path, "w1")
    dead.open()
    sent = [payload(i) for i in range(5)]
    for data in sent:
        dead.append([data])
    dead.close()  # the lock is released, as when the process dies
    adopter = Spool(tmp_path, "w2")
    backlog = adopter.open()
    assert not (tmp_path / "w1").exists()  # moved aside at once ...
    reborn = Spool(tmp_path, "w1")  # ... so a new w1 can start while w2 replays
    assert reborn.open() == []
    assert [p for segment in backlog for p in read_all(adopter, segment)] == sent
    adopted_dir = backlog[0].path.parent
    assert adopted_dir.name.startswith(".adopt-w1-")
    for segment in backlog:
        adopter.mark_done(segment, segment.records)
    assert not adopted_dir.exists()
    reborn.close()
    adopter.close()


def test_an_unfinished_adoption_is_adopted_again(tmp_path: Path) -> None:
    dead = Spool(tmp_path, "w1")
    dead.open()
    dead.append([payload(1)])
    dead.close()
    first = Spool(tmp_path, "w2")
    assert len(first.open()) == 1
    first.close()  # died while replaying
    second = Spool(tmp_path, "w3")
    (segment,) = second.open()
    assert read_all(second, segment) == [payload(1)]
    second.mark_done(segment, 1)
    assert [p.name for p in tmp_path.iterdir()] == ["w3"]
    second.close()


def test_a_failed_rotation_leaves_the_active_segment_usable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sp = Spool(tmp_path, "w1", segment_max_bytes=300)
    sp.open()
    first, _ = sp.append([payload(1, 200)])
    real_open = os.open

    def no_space(*args: object, **kwargs: object) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "open", no_space)
    with pytest.raises(SpoolError):
        sp.append([payload(2, 200)])  # needs a new segment, which cannot be created
    monkeypatch.setattr(os, "open", real_open)
    assert sp.active is first and not first.sealed
    second, _ = sp.append([payload(3, 200)])
    assert second is not first and first.sealed
    assert read_all(sp, first) == [payload(1, 200)] and read_all(sp, second) == [payload(3, 200)]
    sp.close()

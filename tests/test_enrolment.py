"""Issue 6: enrolment sync (parse with line-numbered errors, plan, apply, idempotence, revocation reaching a running
gateway, key files created 0600)."""

from __future__ import annotations

import csv
import io
import stat
from pathlib import Path

import pytest

from gateway import courses, enrolment
from gateway.enrolment import EnrolmentError, KeysFile, parse_roster
from tests.harness import Harness

COURSE = "comp2000"


# -- parsing --------------------------------------------------------------------------------------------------


def test_aliases_bom_and_optional_columns() -> None:
    roster = parse_roster("\ufeffUID,E-mail,Group\nz1,z1@uni.edu,T01\n\nz2,,T02\n".encode())
    assert [(s.student_id, s.email, s.group, s.name, s.line) for s in roster.students] == [
        ("z1", "z1@uni.edu", "T01", "", 2), ("z2", "", "T02", "", 4)]
    assert roster.columns == frozenset({"email", "group"}) and roster.bad == ()
    for alias in ("id", "user", "student_id", "Student ID"):
        assert [s.student_id for s in parse_roster(f"{alias}\nabc\n").students] == ["abc"]
    semicolons = parse_roster("user;name\nq1;Quinn Q\n")
    assert [(s.student_id, s.name) for s in semicolons.students] == [("q1", "Quinn Q")]


def test_bad_rows_are_reported_with_their_line_numbers_and_good_rows_kept() -> None:
    data = (b"student_id,email,name,group\n"            # 1
            b"ok1,ok1@uni.edu,One,A\n"                  # 2
            b",nobody@uni.edu,No Id,A\n"                # 3 no id
            b"ok2,not-an-email,Two,A\n"                 # 4 bad email
            b"ok3,ok3@uni.edu,Three,A,extra\n"          # 5 too many fields
            b'ok4,ok4@uni.edu,"Multi\nline name",A\n'   # 6-7 newline inside a name
            b"ok1,dup@uni.edu,Again,B\n"                # 8 duplicate id
            b"ok5,ok5@uni.edu,\xff\xfe,A\n"             # 9 not UTF-8
            b"has space,x@uni.edu,Sp,A\n"               # 10 bad id
            b"ok6,ok6@uni.edu,Six,B\n")                 # 11
    roster = parse_roster(data)
    assert [b.line for b in roster.bad] == [3, 4, 5, 6, 8, 9, 10]
    reasons = {b.line: b.reason for b in roster.bad}
    assert "no student id" in reasons[3] and "email" in reasons[4] and "5 fields" in reasons[5]
    assert "line 2" in reasons[8] and "UTF-8" in reasons[9] and "student id" in reasons[10]
    assert [(s.student_id, s.line) for s in roster.students] == [("ok1", 2), ("ok6", 11)]
    assert str(roster.bad[0]).startswith("line 3: ")


def test_unusable_files_are_refused_as_a_whole(tmp_path: Path) -> None:
    with pytest.raises(EnrolmentError, match="no student id column"):
        parse_roster("email,name\na@b.cd,A\n")
    with pytest.raises(EnrolmentError, match="empty"):
        parse_roster("")
    with pytest.raises(EnrolmentError, match="cannot read"):
        enrolment.read_roster(tmp_path / "missing.csv")


def test_keys_file_is_created_0600_and_never_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "keys.csv"
    sink = KeysFile(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    sink.close()
    with pytest.raises(EnrolmentError, match="already exists"):
        KeysFile(path)
    KeysFile(tmp_path / "gone.csv").discard()
    assert not (tmp_path / "gone.csv").exists()


# -- sync against Postgres, Redis and a running gateway -------------------------------------------------------


def _csv(rows: list[tuple[str, str, str, str]], bad_at: dict[int, str] | None = None) -> bytes:
    """A CSV of ``rows``; ``bad_at`` maps a line number to a malformed line inserted there."""
    lines = ["student_id,email,name,group"]
    bad_at = dict(bad_at or {})
    for row in rows:
        while len(lines) + 1 in bad_at:
            lines.append(bad_at.pop(len(lines) + 1))
        lines.append(",".join(row))
    lines.extend(bad_at[n] for n in sorted(bad_at))
    return ("\n".join(lines) + "\n").encode()


def _students(n: int) -> list[tuple[str, str, str, str]]:
    return [(f"z{i:07d}", f"z{i:07d}@student.uni.edu", f"Student {i}", f"T{i % 12:02d}") for i in range(n)]


async def _audit_counts(h: Harness, course: str) -> dict[tuple[str, str | None], int]:
    rows = await h.stores.pool.fetch(
        "SELECT action, student_id, count(*) AS n FROM audit_log WHERE course_id = $1 GROUP BY 1, 2", course)
    return {(r["action"], r["student_id"]): r["n"] for r in rows}


async def _sync(h: Harness, data: bytes, sink: enrolment.KeySink | None = None, *, dry_run: bool = False,
                force: bool = False) -> enrolment.SyncResult:
    s = h.stores
    return await enrolment.sync(s.pool, s.ledger, s.codec, "cli", COURSE, parse_roster(data), sink=sink,
                                dry_run=dry_run, force=force)


def _read_keys(path: Path) -> dict[str, str]:
    with path.open(newline="") as f:
        return {row["student_id"]: row["key"] for row in csv.DictReader(f)}


async def test_thousand_students_five_bad_rows_then_noop_then_ten_dropped(gateway: Harness, tmp_path: Path) -> None:
    h = gateway
    await courses.create(h.stores.pool, "test", COURSE, limit=500_000, period_seconds=7 * 86400)
    everyone = _students(995)
    bad_lines = {17: "z9999001,not-an-email,Bad Mail,T01", 230: ",nobody@uni.edu,No Id,T02",
                 498: "z9999002,a@b.cd,Too,Many,Fields", 777: "z0000005,dup@uni.edu,Duplicate,T03",
                 1001: "bad id,x@uni.edu,Space,T04"}
    data = _csv(everyone, bad_lines)
    roster = parse_roster(data)
    assert len(data.splitlines()) == 1001
    assert [b.line for b in roster.bad] == sorted(bad_lines)

    keys_path = tmp_path / "keys.csv"
    result = await _sync(h, data, KeysFile(keys_path))
    assert len(result.issued) == 995 and not result.revoked and result.redis_error is None
    assert stat.S_IMODE(keys_path.stat().st_mode) == 0o600
    keys = _read_keys(keys_path)
    assert set(keys) == {r[0] for r in everyone}
    pool = h.stores.pool
    assert await pool.fetchval("SELECT count(*) FROM students WHERE course_id = $1 AND enrolled", COURSE) == 995
    assert await pool.fetchval("SELECT count(*) FROM api_keys WHERE course_id = $1 AND status = 'active'",
                               COURSE) == 995
    row = await pool.fetchrow("SELECT email, name, grp FROM students WHERE course_id = $1 AND student_id = $2",
                              COURSE, "z0000013")
    assert tuple(row) == ("z0000013@student.uni.edu", "Student 13", "T01")
    audit_before = await _audit_counts(h, COURSE)
    assert all(audit_before[("key.issue", sid)] == 1 for sid, *_ in everyone)
    assert audit_before[("enrolment.sync", None)] == 1

    second = await _sync(h, data, KeysFile(tmp_path / "keys2.csv"))
    assert second.plan.empty and second.plan.unchanged == 995 and not second.issued
    assert not (tmp_path / "keys2.csv").exists()  # nothing to write: the sink was discarded unused
    assert await _audit_counts(h, COURSE) == audit_before
    assert await pool.fetchval("SELECT count(*) FROM api_keys WHERE course_id = $1", COURSE) == 995

    dropped = {everyone[i][0] for i in range(3, 990, 99)}
    assert len(dropped) == 10
    kept_one = everyone[1][0]
    for sid in [*sorted(dropped)[:3], kept_one]:
        assert await h.status_of(keys[sid]) == 200
    third = await _sync(h, _csv([r for r in everyone if r[0] not in dropped]))
    assert set(third.revoked) == dropped and all(len(j) == 1 for j in third.revoked.values())
    assert not third.issued and third.plan.unchanged == 985
    for sid in sorted(dropped):
        assert await h.status_of(keys[sid]) == 403
    assert await h.status_of(keys[kept_one]) == 200
    revoked = await pool.fetch("SELECT student_id FROM api_keys WHERE course_id = $1 AND status = 'revoked'", COURSE)
    assert {r["student_id"] for r in revoked} == dropped
    audit_after = await _audit_counts(h, COURSE)
    assert {k: v for k, v in audit_after.items() if k[0] == "student.drop"} == {
        ("student.drop", sid): 1 for sid in dropped}


async def test_updates_reenrolment_and_absent_columns(gateway: Harness, tmp_path: Path) -> None:
    h = gateway
    await courses.create(h.stores.pool, "test", COURSE, limit=500_000, period_seconds=7 * 86400)
    await _sync(h, _csv([("a1", "a1@uni.edu", "Ann", "T1"), ("b2", "b2@uni.edu", "Bob", "T1")]),
                KeysFile(tmp_path / "k1.csv"))
    # Bob changes group and email; Ann is dropped.
    result = await _sync(h, _csv([("b2", "bob@uni.edu", "Bob", "T2")]))
    assert [(u.enrolee.student_id, u.changes) for u in result.plan.update] == [
        ("b2", {"email": ("b2@uni.edu", "bob@uni.edu"), "group": ("T1", "T2")})]
    assert list(result.revoked) == ["a1"]
    # A listed student whose keys were all revoked by hand is left alone, and said so.
    await h.stores.keyring.set_status("test", COURSE, "b2", "revoked")
    left = await _sync(h, _csv([("b2", "bob@uni.edu", "Bob", "T2")]))
    assert left.plan.empty and left.plan.keyless == ("b2",) and not left.issued
    assert any(line.startswith("! b2: enrolled, but every key is revoked") for line in left.plan.lines())
    # A CSV with ids only changes no e-mail, name or group; Ann comes back with a new key.
    back = await _sync(h, b"id\nb2\na1\n", KeysFile(tmp_path / "k2.csv"))
    assert [k.enrolee.student_id for k in back.issued] == ["a1"] and back.plan.reenrol == {"a1"}
    assert not back.plan.update
    rows = {r["student_id"]: tuple(r)[1:] for r in await h.stores.pool.fetch(
        "SELECT student_id, email, grp, enrolled FROM students WHERE course_id = $1", COURSE)}
    assert rows == {"a1": ("a1@uni.edu", "T1", True), "b2": ("bob@uni.edu", "T2", True)}
    new_key = _read_keys(tmp_path / "k2.csv")["a1"]
    assert await h.status_of(new_key) == 200
    statuses = await h.stores.pool.fetch(
        "SELECT status FROM api_keys WHERE course_id = $1 AND student_id = 'a1' ORDER BY issued_at, status", COURSE)
    assert sorted(r["status"] for r in statuses) == ["active", "revoked"]


async def test_guards_change_nothing(gateway: Harness, tmp_path: Path) -> None:
    h = gateway
    await courses.create(h.stores.pool, "test", COURSE, limit=500_000, period_seconds=7 * 86400)
    everyone = _students(60)
    await _sync(h, _csv(everyone), KeysFile(tmp_path / "k.csv"))
    before = await h.stores.pool.fetchval("SELECT count(*) FROM audit_log")
    with pytest.raises(EnrolmentError, match="would drop 20 of 60"):
        await _sync(h, _csv(everyone[:40]))
    with pytest.raises(EnrolmentError, match="need keys"):
        await _sync(h, _csv([*everyone, ("new1", "", "", "")]))
    dry = await _sync(h, _csv([*everyone[:40], ("new1", "", "", "")]), dry_run=True, force=True)
    assert len(dry.plan.drop) == 20 and len(dry.plan.provision) == 1 and not dry.issued
    assert await h.stores.pool.fetchval("SELECT count(*) FROM audit_log") == before
    assert await h.stores.pool.fetchval(
        "SELECT count(*) FROM api_keys WHERE course_id = $1 AND status = 'active'", COURSE) == 60
    forced = await _sync(h, _csv(everyone[:40]), force=True)
    assert len(forced.revoked) == 20


async def test_failed_commit_discards_the_keys_file(gateway: Harness, tmp_path: Path) -> None:
    h = gateway
    await courses.create(h.stores.pool, "test", COURSE, limit=500_000, period_seconds=7 * 86400)

    class Failing(KeysFile):
        def write(self, keys: object) -> None:
            super().write(keys)  # type: ignore[arg-type]
            raise OSError("disk full")

    path = tmp_path / "keys.csv"
    with pytest.raises(OSError, match="disk full"):
        await _sync(h, _csv(_students(5)), Failing(path))
    assert not path.exists()
    assert await h.stores.pool.fetchval("SELECT count(*) FROM students WHERE course_id = $1", COURSE) == 0
    assert await h.stores.pool.fetchval("SELECT count(*) FROM audit_log WHERE course_id = $1 AND action <> "
                                        "'course.create'", COURSE) == 0


def test_plan_lines_describe_each_change() -> None:
    e = enrolment.Enrolee("s1", "s1@uni.edu", "S", "T1", 2)
    p = enrolment.SyncPlan("c", frozenset({"email"}), (e,), frozenset(), (
        enrolment.Update(enrolment.Enrolee("s2", "new@uni.edu", "", "", 3), {"email": ("old@uni.edu", "new@uni.edu")}),
    ), (enrolment.Drop("s3", 2),), 7, 10)
    out = io.StringIO()
    out.write("\n".join(p.lines()))
    text = out.getvalue()
    assert "+ s1: issue a key" in text and "~ s2: email 'old@uni.edu' -> 'new@uni.edu'" in text
    assert "- s3: drop, revoke 2 key(s)" in text
    assert p.summary() == "1 to provision, 1 to update, 1 to drop (2 keys to revoke), 7 unchanged"

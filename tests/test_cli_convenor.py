"""Issue 6: the convenor's command line (course show/list, sync, quota show, grant, usage, admin-token, audit)."""

from __future__ import annotations

import csv
import io
import stat
from pathlib import Path

import aiohttp
import orjson
import pytest

from gateway import appkeys, courses
from gateway.cli import UsageError, build_parser
from tests.harness import Harness

ROSTER = "student_id,email,name,group\ns1,s1@uni.edu,Sam,T1\ns2,s2@uni.edu,Sue,T2\ns3,s3@uni.edu,Sid,T1\n"


async def _run(h: Harness, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[str, str]:
    """Run one command in-process against the harness's stores; returns (stdout, stderr)."""
    args = build_parser().parse_args(["--course", h.course, *argv])
    await args.run(args, h.stores)
    captured = capsys.readouterr()
    return captured.out, captured.err


async def _audit(h: Harness) -> list[tuple[str, str | None]]:
    rows = await h.stores.pool.fetch("SELECT action, student_id FROM audit_log WHERE actor = 'cli' ORDER BY audit_id")
    return [(r["action"], r["student_id"]) for r in rows]


async def test_course_show_and_list(gateway: Harness, capsys: pytest.CaptureFixture[str]) -> None:
    h = gateway
    await courses.create(h.stores.pool, "test", "math101", limit=1_500_000, period_seconds=14 * 86400,
                         tz="Australia/Sydney", carry_over=True, name="Maths")
    out, _ = await _run(h, capsys, "course", "show", "math101")
    assert "limit_tokens    1.5m (1,500,000)" in out and "period_seconds  14d" in out and "Australia/Sydney" in out
    out, _ = await _run(h, capsys, "course", "show", "--format", "json")
    assert orjson.loads(out)["course_id"] == h.course and orjson.loads(out)["students"] == 1
    out, _ = await _run(h, capsys, "course", "list", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [(r["course"], r["limit"], r["period"], r["students"]) for r in rows] == [
        (h.course, "500k", "7d", "1"), ("math101", "1.5m", "14d", "0")]
    with pytest.raises(UsageError, match="no such course"):
        await _run(h, capsys, "course", "show", "nope")


async def test_sync_dry_run_keys_out_and_print_keys(gateway: Harness, capsys: pytest.CaptureFixture[str],
                                                    tmp_path: Path) -> None:
    h = gateway
    source = tmp_path / "enrolments.csv"
    source.write_text(ROSTER + ",no-id@uni.edu,Nobody,T1\n")
    out, err = await _run(h, capsys, "sync", "--source", str(source), "--dry-run")
    assert "+ s1: issue a key" in out and "- alice: drop, revoke 1 key(s)" in out
    assert "dry run, nothing changed: 3 to provision" in out and "1 bad row(s) skipped" in out
    assert "enrolments.csv: line 5: no student id" in err
    assert await _audit(h) == []

    with pytest.raises(UsageError, match="3 new students need keys"):
        await _run(h, capsys, "sync", "--source", str(source))
    with pytest.raises(UsageError, match="nothing applied"):
        await _run(h, capsys, "sync", "--source", str(source), "--strict", "--keys-out", str(tmp_path / "k0.csv"))
    assert not (tmp_path / "k0.csv").exists()
    assert await _audit(h) == []

    keys_out = tmp_path / "keys.csv"
    out, err = await _run(h, capsys, "sync", "--source", str(source), "--keys-out", str(keys_out))
    assert "provisioned 3 (keys in" in out and "dropped 1 (1 keys revoked)" in out
    assert "eyJ" not in out + err  # keys never reach the terminal
    assert stat.S_IMODE(keys_out.stat().st_mode) == 0o600
    keys = {r["student_id"]: r["key"] for r in csv.DictReader(io.StringIO(keys_out.read_text()))}
    assert sorted(keys) == ["s1", "s2", "s3"] and all(k.startswith("eyJ") for k in keys.values())
    assert sorted(await _audit(h)) == sorted([("key.issue", "s1"), ("key.issue", "s2"), ("key.issue", "s3"),
                                              ("student.drop", "alice"), ("enrolment.sync", None)])

    out, _ = await _run(h, capsys, "sync", "--source", str(source))
    assert out.startswith("nothing to change: 3 students up to date")

    source.write_text(ROSTER + "s4,s4@uni.edu,Sol,T2\n")
    with pytest.raises(ValueError, match="already exists"):
        await _run(h, capsys, "sync", "--source", str(source), "--keys-out", str(keys_out))
    out, err = await _run(h, capsys, "sync", "--source", str(source), "--print-keys")
    printed = list(csv.DictReader(io.StringIO(out)))
    assert [(r["student_id"], r["email"], r["group"]) for r in printed] == [("s4", "s4@uni.edu", "T2")]
    assert printed[0]["key"].startswith("eyJ") and "provisioned 1" in err


async def test_quota_show_grant_usage_and_audit(gateway: Harness, capsys: pytest.CaptureFixture[str]) -> None:
    h = gateway
    await h.issue_key("bob")
    await h.stores.pool.execute("UPDATE students SET grp = 'T9' WHERE student_id = 'bob'")
    out, _ = await _run(h, capsys, "grant", "bob", "--tokens", "100k", "--reason", "extension",
                        "--idempotency-key", "k1")
    assert out.startswith("granted 100k tokens to bob") and "remaining this period: 600,000" in out
    out, _ = await _run(h, capsys, "grant", "bob", "--tokens", "100k", "--reason", "extension",
                        "--idempotency-key", "k1")
    assert out.startswith("already granted")
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["grant", "bob", "--tokens", "5k"])
    assert exited.value.code == 2
    capsys.readouterr()

    out, _ = await _run(h, capsys, "quota", "show", "--format", "json")
    entries = {e["student"]: e for e in orjson.loads(out)}
    assert entries["bob"]["granted"] == 100_000 and entries["bob"]["group"] == "T9"
    assert entries["alice"]["granted"] == 0 and entries["alice"]["remaining"] == 500_000
    out, _ = await _run(h, capsys, "quota", "show", "--group", "T9", "--format", "csv")
    assert [(r["student"], r["granted"]) for r in csv.DictReader(io.StringIO(out))] == [("bob", "100000")]
    out, _ = await _run(h, capsys, "quota", "show")
    assert "600,000" in out and "alice" in out

    async with aiohttp.ClientSession() as session, session.post(
        h.url + "/v1/messages", headers={"authorization": f"Bearer {h.key}"},
        json={"model": "claude-opus-5-5", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]},
    ) as resp:
        assert resp.status == 200
    await h.app[appkeys.WRITER].wait_idle(10)
    out, _ = await _run(h, capsys, "usage", "--by", "student", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [(r["student"], r["requests"]) for r in rows] == [("alice", "1")] and int(rows[0]["weighted"]) > 0
    out, _ = await _run(h, capsys, "usage", "--by", "class")
    assert out.splitlines()[0].split()[:3] == ["class", "students", "requests"]

    out, _ = await _run(h, capsys, "audit", "--format", "json", "--action", "grant")
    entries_json = orjson.loads(out)
    assert [(e["action"], e["student"], e["reason"], e["details"]["tokens"]) for e in entries_json] == [
        ("grant", "bob", "extension", 100_000)]
    out, _ = await _run(h, capsys, "audit")
    assert "grant" in out and "course.create" in out


async def test_admin_token_create_list_revoke(gateway: Harness, capsys: pytest.CaptureFixture[str]) -> None:
    h = gateway
    out, err = await _run(h, capsys, "admin-token", "create", "--label", "dashboard")
    token = out.strip()
    assert token.startswith("gwadm_") and token not in err and "shown once" in err
    token_id = err.split()[3]
    stored = await h.stores.pool.fetchval("SELECT count(*) FROM admin_tokens WHERE token_sha256 = "
                                          "sha256(convert_to($1, 'UTF8'))", token)
    assert stored == 1
    out, _ = await _run(h, capsys, "admin-token", "list", "--format", "json")
    listed = orjson.loads(out)
    assert [(t["token_id"], t["course"], t["label"]) for t in listed] == [(token_id, h.course, "dashboard")]
    assert token not in out

    async def courses_status() -> int:
        async with aiohttp.ClientSession() as session, session.get(
            h.url + "/admin/courses", headers={"authorization": f"Bearer {token}"}
        ) as resp:
            await resp.read()
            return resp.status

    assert await courses_status() == 200
    out, _ = await _run(h, capsys, "admin-token", "revoke", token_id, "--reason", "laptop lost")
    assert "revoked" in out
    assert await courses_status() == 401
    with pytest.raises(ValueError, match="no active admin token"):
        await _run(h, capsys, "admin-token", "revoke", token_id)
    assert [a for a in await _audit(h) if a[0].startswith("admin_token")] == [
        ("admin_token.create", None), ("admin_token.revoke", None)]


async def test_cli_process_exit_status_and_progress(gateway: Harness, tmp_path: Path) -> None:
    h = gateway
    source = tmp_path / "roster.csv"
    source.write_text(ROSTER + "alice\nbad id,x@y.zz,,\n")
    code, out, err = await h.cli("sync", "--source", str(source), "--strict")
    assert code == 2 and "line 6: bad student id" in err and err.strip().endswith("nothing applied (--strict)")
    keys_out = tmp_path / "keys.csv"
    code, out, err = await h.cli("sync", "--source", str(source), "--keys-out", str(keys_out), "--progress")
    assert code == 0, err
    assert "provisioned 3" in out and "eyJ" not in out + err
    assert "signing keys: [" in err and "3/3" in err
    assert stat.S_IMODE(keys_out.stat().st_mode) == 0o600
    code, out, err = await h.cli("usage", "--since", "not-a-date")
    assert code == 2 and "not a date" in err and err.count("\n") == 1

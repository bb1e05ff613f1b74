"""Issue 6: usage reports aggregate usage_events exactly (every grouping and filter), render to a CSV that parses
back to the same numbers, and match the transcripts written by a running gateway."""

from __future__ import annotations

import asyncio
import csv
import io
import random
import time
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import asyncpg
import orjson
import pytest

from gateway import courses
from gateway.db import create_pool
from gateway.usage_report import NUMBERS, ReportError, UsageReport, render, usage_report
from tests.harness import Harness

TZ = "Australia/Sydney"
COURSE = "comp3000"
GROUPS = {f"s{i:02d}": f"T{i % 3}" for i in range(9)}
DAY0 = date(2026, 3, 2)
TOKENS = ("input_tokens", "cache_write_5m", "cache_write_1h", "cache_read", "output_tokens", "web_searches")
INSERT = """
INSERT INTO usage_events (request_id, at, course_id, student_id, session_id, model, status, input_tokens,
    cache_write_5m, cache_write_1h, cache_read, output_tokens, web_searches, weighted, cost_usd, refused)
VALUES ($1, $2, $3, $4, $5, 'claude-opus-5-5', $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
"""


def _events(seed: int, n: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    zone = ZoneInfo(TZ)
    out = []
    for i in range(n):
        student = rng.choice(sorted(GROUPS))
        local = datetime.combine(DAY0 + timedelta(days=rng.randrange(10)), datetime.min.time(), tzinfo=zone)
        at = (local + timedelta(seconds=rng.randrange(86_400))).astimezone(UTC)
        refused = rng.choice(["", "", "", "", "quota", "permission"])
        served = refused == ""
        event = {"request_id": f"req_{seed}_{i}", "at": at, "student_id": student,
                 "session_id": rng.choice(["", f"sess-{student}-{rng.randrange(3)}"]),
                 "status": 200 if served else (429 if refused == "quota" else 403), "refused": refused}
        for name in TOKENS:
            event[name] = rng.randrange(0, 50_000) if served and name != "web_searches" else 0
        event["web_searches"] = rng.randrange(3) if served else 0
        event["weighted"] = rng.randrange(100_000) if served else 0
        event["cost_usd"] = Decimal(rng.randrange(0, 2_000_000)) / 1_000_000 if served else Decimal(0)
        out.append(event)
    return out


async def _seed(pool: asyncpg.Pool, events: list[dict[str, Any]]) -> None:
    await courses.create(pool, "test", COURSE, limit=500_000, period_seconds=7 * 86400, tz=TZ)
    await courses.create(pool, "test", "other", limit=500_000, period_seconds=7 * 86400)
    await pool.executemany(
        "INSERT INTO students (course_id, student_id, grp) VALUES ($1, $2, $3)",
        [(COURSE, s, g) for s, g in GROUPS.items()])
    rows = [(e["request_id"], e["at"], COURSE, e["student_id"], e["session_id"], e["status"],
             *(e[t] for t in TOKENS), e["weighted"], e["cost_usd"], e["refused"]) for e in events]
    rows.append(("req_other", events[0]["at"], "other", "s00", "x", 200, 1, 1, 1, 1, 1, 1, 1, Decimal(1), ""))
    await pool.executemany(INSERT, rows)


def _key(e: dict[str, Any], by: str) -> str:
    if by == "student":
        return str(e["student_id"])
    if by == "group":
        return GROUPS[e["student_id"]]
    if by == "day":
        return str(e["at"].astimezone(ZoneInfo(TZ)).date().isoformat())
    return "all"


def _expected(events: list[dict[str, Any]]) -> dict[str, Any]:
    """The report's numbers for ``events``, computed independently of the SQL."""
    return {
        "students": len({e["student_id"] for e in events}),
        "requests": sum(1 for e in events if e["refused"] == ""),
        "refused": sum(1 for e in events if e["refused"] != ""),
        "limit_hits": sum(1 for e in events if e["refused"] == "quota"),
        "students_limited": len({e["student_id"] for e in events if e["refused"] == "quota"}),
        "sessions": len({e["session_id"] for e in events if e["session_id"]}),
        **{t: sum(e[t] for e in events) for t in (*TOKENS, "weighted")},
        "cost_usd": sum((e["cost_usd"] for e in events), Decimal(0)),
    }


def _numbers(row: Any) -> dict[str, Any]:
    return {n: getattr(row, n) for n in NUMBERS}


@pytest.fixture
async def pool(pg_dsn: str) -> Any:
    p = await create_pool(pg_dsn)
    yield p
    await p.close()


FILTERS: list[dict[str, str]] = [
    {}, {"student": "s04"}, {"group": "T1"}, {"since": "2026-03-04"}, {"until": "2026-03-06"},
    {"since": "2026-03-04", "until": "2026-03-04", "group": "T2"},
]


@pytest.mark.parametrize("by", ["student", "group", "class", "day"])
async def test_every_grouping_and_filter_matches_the_rows(pool: asyncpg.Pool, by: str) -> None:
    events = _events(7, 600)
    await _seed(pool, events)
    zone = ZoneInfo(TZ)
    for filters in FILTERS:
        since, until = (date.fromisoformat(filters.get(k, default)) for k, default in (
            ("since", "2000-01-01"), ("until", "2100-01-01")))
        chosen = [e for e in events
                  if ("student" not in filters or e["student_id"] == filters["student"])
                  and ("group" not in filters or GROUPS[e["student_id"]] == filters["group"])
                  and since <= e["at"].astimezone(zone).date() <= until]
        assert chosen, filters
        report = await usage_report(pool, COURSE, by=by, **filters)
        groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for e in chosen:
            groups[_key(e, by)].append(e)
        assert [r.key for r in report.rows] == sorted(groups), filters
        for row in report.rows:
            assert _numbers(row) == _expected(groups[row.key]), (filters, row.key)
        assert _numbers(report.total) == _expected(chosen), filters


async def test_days_are_local_to_the_course(pool: asyncpg.Pool) -> None:
    events = _events(1, 5)
    # 23:30 UTC on 2 March is 10:30 on 3 March in Sydney (UTC+11 in March).
    events[0]["at"] = datetime(2026, 3, 2, 23, 30, tzinfo=UTC)
    await _seed(pool, events)
    report = await usage_report(pool, COURSE, by="day", since="2026-03-03", until="2026-03-03")
    assert "2026-03-03" in [r.key for r in report.rows]
    earlier = await usage_report(pool, COURSE, by="day", until="2026-03-02")
    assert "2026-03-03" not in [r.key for r in earlier.rows]
    assert report.since == datetime(2026, 3, 3, tzinfo=ZoneInfo(TZ))


def _parse_csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


async def test_csv_and_json_parse_back_to_the_same_numbers(pool: asyncpg.Pool) -> None:
    events = _events(3, 300)
    await _seed(pool, events)
    for by in ("student", "group", "day", "class"):
        report = await usage_report(pool, COURSE, by=by)
        parsed = _parse_csv(render(report, "csv"))
        assert len(parsed) == len(report.rows)
        for line, row in zip(parsed, report.rows, strict=True):
            assert line[by] == row.key
            assert {n: Decimal(line[n]) if n == "cost_usd" else int(line[n]) for n in NUMBERS} == _numbers(row)
        additive = [n for n in NUMBERS if n not in ("students", "students_limited", "sessions")]
        for n in additive:
            column_sum = sum(Decimal(p[n]) for p in parsed)
            assert column_sum == Decimal(getattr(report.total, n)), (by, n)
        data = orjson.loads(render(report, "json"))
        assert data["total"]["weighted"] == report.total.weighted
        assert Decimal(str(data["total"]["cost_usd"])) == report.total.cost_usd
        assert [r["key"] for r in data["rows"]] == [r.key for r in report.rows]
        table = render(report, "table")
        assert f"{report.total.weighted:,}" in table


async def test_empty_and_bad_input(pool: asyncpg.Pool) -> None:
    await _seed(pool, _events(5, 3))
    empty = await usage_report(pool, COURSE, by="student", since="2030-01-01")
    assert empty.rows == () and empty.total.requests == 0 and empty.total.cost_usd == 0
    assert isinstance(empty, UsageReport) and render(empty, "csv").count("\n") == 1
    with pytest.raises(ReportError, match="--by"):
        await usage_report(pool, COURSE, by="week")
    with pytest.raises(ReportError, match="not a date"):
        await usage_report(pool, COURSE, since="last tuesday")
    with pytest.raises(ReportError, match="before"):
        await usage_report(pool, COURSE, since="2026-03-05", until="2026-03-04")
    with pytest.raises(ReportError, match="no such course"):
        await usage_report(pool, "nope")


# -- against a running gateway: the report equals the transcripts --------------------------------------------

TRANSCRIPT_TOTALS = """
SELECT count(*) FILTER (WHERE refused = '') AS requests, count(*) FILTER (WHERE refused = 'quota') AS limit_hits,
       count(DISTINCT NULLIF(session_id, '')) AS sessions,
       sum((usage::jsonb->>'input_tokens')::bigint) AS input_tokens,
       sum((usage::jsonb->>'cache_write_5m')::bigint) AS cache_write_5m,
       sum((usage::jsonb->>'cache_write_1h')::bigint) AS cache_write_1h,
       sum((usage::jsonb->>'cache_read')::bigint) AS cache_read,
       sum((usage::jsonb->>'output_tokens')::bigint) AS output_tokens, sum(weighted) AS weighted,
       COALESCE(sum(cost_usd), 0) AS cost_usd
FROM transcripts WHERE course_id = $1 AND ($2::text IS NULL OR student_id = $2)
"""


async def _send(h: Harness, key: str, session: str) -> int:
    body = {"model": "claude-opus-5-5", "max_tokens": 100, "messages": [{"role": "user", "content": "hello"}]}
    async with aiohttp.ClientSession() as client, client.post(
        h.url + "/v1/messages?beta=true", json=body,
        headers={"authorization": f"Bearer {key}", "x-claude-code-session-id": session},
    ) as resp:
        await resp.read()
        return resp.status


async def _wait_for_rows(h: Harness, course: str, n: int) -> None:
    deadline = time.monotonic() + 15
    while await h.stores.pool.fetchval("SELECT count(*) FROM usage_events WHERE course_id = $1", course) < n:
        assert time.monotonic() < deadline, "the writer did not store the usage rows in time"
        await asyncio.sleep(0.05)


async def test_report_totals_equal_the_transcripts_of_a_running_gateway(gateway: Harness) -> None:
    h = gateway
    course = "tiny"
    await courses.create(h.stores.pool, "test", course, limit=1, period_seconds=7 * 86400)
    keys = {s: await h.issue_key(s, course) for s in ("ann", "bob")}
    statuses = [await _send(h, keys["ann"], "sess-a1") for _ in range(3)]
    statuses += [await _send(h, keys["bob"], f"sess-b{i}") for i in range(2)]
    assert statuses == [200, 429, 429, 200, 429]  # a 1-token limit: the first request of each overshoots it
    await _wait_for_rows(h, course, 5)
    for student in (None, "ann", "bob"):
        expected = dict(await h.stores.pool.fetchrow(TRANSCRIPT_TOTALS, course, student))
        report = await usage_report(h.stores.pool, course, by="class", student=student)
        got = report.total
        assert {k: getattr(got, k) for k in expected} == expected, student
        assert got.weighted > 0 and got.cost_usd > 0
    by_student = await usage_report(h.stores.pool, course, by="student")
    assert [(r.key, r.requests, r.limit_hits, r.students_limited) for r in by_student.rows] == [
        ("ann", 1, 2, 1), ("bob", 1, 1, 1)]
    assert by_student.total.students_limited == 2 and by_student.total.limit_hits == 3

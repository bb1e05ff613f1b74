"""Usage reports (``gateway usage``, ``GET /admin/courses/{c}/usage``): SQL aggregates over ``usage_events``.

``usage_events`` holds one narrow row per metered or refused request, written by the transcript writer in the
same transaction as the transcript, indexed by ``(course_id, at)`` and ``(course_id, student_id, at)``: a report
is one indexed aggregate query, never a scan of transcripts.

Rows are grouped by ``student``, ``group`` (the student's current group), ``day`` (in the course's time zone) or
``class`` (one row); the total is computed by the same query (``GROUPING SETS``), so distinct counts (students,
sessions) are right in the total too. ``since`` / ``until`` are days (inclusive) or times in the course's zone.

Columns: ``students`` (distinct students with a row), ``requests`` (served, i.e. not refused by the gateway),
``refused`` (refused by the gateway for any reason), ``limit_hits`` (refused for quota) and ``students_limited``
(students refused for quota at least once), ``sessions`` (distinct Claude Code sessions), raw tokens by type,
``weighted`` (quota) tokens and ``cost_usd``.
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, fields
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any, Literal, TypeAlias, cast, get_args
from zoneinfo import ZoneInfo

import asyncpg
import orjson

By: TypeAlias = Literal["student", "group", "class", "day"]
BY_CHOICES: tuple[str, ...] = get_args(By)
FORMATS = ("table", "csv", "json")
CENT = Decimal("0.000001")

_KEY = {
    "student": "q.student_id",
    "group": "COALESCE(s.grp, '')",
    "class": "'all'::text",
    "day": "q.day",
}

# Two levels: the events in range are first summed per (day, student, session) -- one pass over the index range
# -- so the join to students, the distinct counts and the GROUPING SETS (the total row) of the outer level work on
# a few thousand rows, not on every event.
_REPORT = """
SELECT {key}::text AS key, GROUPING({key}) = 1 AS is_total,
       count(DISTINCT q.student_id) AS students,
       COALESCE(sum(q.requests), 0)::bigint AS requests,
       COALESCE(sum(q.refused), 0)::bigint AS refused,
       COALESCE(sum(q.limit_hits), 0)::bigint AS limit_hits,
       count(DISTINCT q.student_id) FILTER (WHERE q.limit_hits > 0) AS students_limited,
       count(DISTINCT NULLIF(q.session_id, '')) AS sessions,
       COALESCE(sum(q.input_tokens), 0)::bigint AS input_tokens,
       COALESCE(sum(q.cache_write_5m), 0)::bigint AS cache_write_5m,
       COALESCE(sum(q.cache_write_1h), 0)::bigint AS cache_write_1h,
       COALESCE(sum(q.cache_read), 0)::bigint AS cache_read,
       COALESCE(sum(q.output_tokens), 0)::bigint AS output_tokens,
       COALESCE(sum(q.web_searches), 0)::bigint AS web_searches,
       COALESCE(sum(q.weighted), 0)::bigint AS weighted,
       COALESCE(sum(q.cost_usd), 0)::numeric AS cost_usd
FROM (
    SELECT {day} AS day, e.student_id, e.session_id,
           count(*) FILTER (WHERE e.refused = '') AS requests,
           count(*) FILTER (WHERE e.refused <> '') AS refused,
           count(*) FILTER (WHERE e.refused = 'quota') AS limit_hits,
           sum(e.input_tokens) AS input_tokens, sum(e.cache_write_5m) AS cache_write_5m,
           sum(e.cache_write_1h) AS cache_write_1h, sum(e.cache_read) AS cache_read,
           sum(e.output_tokens) AS output_tokens, sum(e.web_searches) AS web_searches,
           sum(e.weighted) AS weighted, sum(e.cost_usd) AS cost_usd
    FROM usage_events e
    WHERE {where}
    GROUP BY 1, 2, 3
) q {join}
GROUP BY GROUPING SETS (({key}), ())
ORDER BY is_total, key
"""

# Enough for the hash aggregate and sorts of a semester of a large class to stay in memory (this query only).
WORK_MEM = "SET LOCAL work_mem = '64MB'"
SELECT_TZ = "SELECT tz FROM courses WHERE course_id = $1"


class ReportError(ValueError):
    """Bad report input (unknown grouping, unparseable date, no such course); one line for the CLI / API."""


@dataclass(frozen=True, slots=True)
class UsageRow:
    key: str  # student id / group / 'all' / YYYY-MM-DD; 'total' on the total row
    students: int
    requests: int
    refused: int
    limit_hits: int
    students_limited: int
    sessions: int
    input_tokens: int
    cache_write_5m: int
    cache_write_1h: int
    cache_read: int
    output_tokens: int
    web_searches: int
    weighted: int
    cost_usd: Decimal

    def to_json(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["cost_usd"] = float(self.cost_usd)
        return out


COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(UsageRow))
NUMBERS: tuple[str, ...] = COLUMNS[1:]


@dataclass(frozen=True, slots=True)
class UsageReport:
    course: str
    by: By
    tz: str
    since: datetime | None
    until: datetime | None  # exclusive
    student: str | None
    group: str | None
    rows: tuple[UsageRow, ...]
    total: UsageRow

    def to_json(self) -> dict[str, Any]:
        return {
            "course": self.course, "by": self.by, "tz": self.tz,
            "since": self.since.isoformat() if self.since else None,
            "until": self.until.isoformat() if self.until else None,
            "student": self.student, "group": self.group,
            "rows": [r.to_json() for r in self.rows], "total": self.total.to_json(),
        }


def parse_bound(text: str, tz: str, *, end: bool) -> datetime:
    """``YYYY-MM-DD`` (a whole day: its start, or with ``end`` the start of the next day) or an ISO time
    (without an offset: in ``tz``), as an aware datetime."""
    zone = ZoneInfo(tz)
    value = text.strip()
    try:
        day = date.fromisoformat(value)
    except ValueError:
        day = None
    if day is not None and len(value) == 10:
        if end:
            day += timedelta(days=1)
        return datetime.combine(day, time(0), tzinfo=zone)
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ReportError(f"not a date: {text!r} (use YYYY-MM-DD or YYYY-MM-DDTHH:MM)") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=zone)


@asynccontextmanager
async def _connection(conn: asyncpg.Connection | asyncpg.Pool) -> AsyncIterator[asyncpg.Connection]:
    if isinstance(conn, asyncpg.Pool):
        async with conn.acquire() as c:
            yield c
    else:
        yield conn


def empty_row(key: str) -> UsageRow:
    return UsageRow(key, **{n: 0 for n in NUMBERS if n != "cost_usd"}, cost_usd=Decimal(0))


def _row(record: asyncpg.Record, key: str) -> UsageRow:
    values = {name: record[name] for name in NUMBERS}
    values["cost_usd"] = Decimal(values["cost_usd"]).quantize(CENT)
    return UsageRow(key=key, **values)


async def usage_report(
    conn: asyncpg.Connection | asyncpg.Pool, course: str, *, by: str = "student", since: str | None = None,
    until: str | None = None, student: str | None = None, group: str | None = None,
) -> UsageReport:
    """Aggregate a course's usage rows for the filters; ``since`` / ``until`` are inclusive days or times."""
    if by not in BY_CHOICES:
        raise ReportError(f"--by must be one of {', '.join(BY_CHOICES)}, not {by!r}")
    tz = await conn.fetchval(SELECT_TZ, course)
    if tz is None:
        raise ReportError(f"no such course: {course!r}")
    start = parse_bound(since, tz, end=False) if since else None
    stop = parse_bound(until, tz, end=True) if until else None
    if start and stop and stop <= start:
        raise ReportError("--until is before --since")
    args: list[Any] = [course]
    day = "NULL::date"
    if by == "day":
        args.append(tz)
        day = f"(e.at AT TIME ZONE ${len(args)})::date"
    where = ["e.course_id = $1"]
    for condition, value in (("e.at >= ${}", start), ("e.at < ${}", stop), ("e.student_id = ${}", student), (
            "e.student_id IN (SELECT g.student_id FROM students g WHERE g.course_id = $1 AND g.grp = ${})", group)):
        if value is not None:
            args.append(value)
            where.append(condition.format(len(args)))
    join = "LEFT JOIN students s ON s.course_id = $1 AND s.student_id = q.student_id" if by == "group" else ""
    sql = _REPORT.format(key=_KEY[by], day=day, join=join, where=" AND ".join(where))
    async with _connection(conn) as c, c.transaction(readonly=True):
        await c.execute(WORK_MEM)
        records = await c.fetch(sql, *args)
    rows = tuple(_row(r, r["key"]) for r in records if not r["is_total"])
    totals = [r for r in records if r["is_total"]]
    total = _row(totals[0], "total") if totals else empty_row("total")
    return UsageReport(course, cast(By, by), tz, start, stop, student, group, rows, total)


# -- rendering ------------------------------------------------------------------------------------------------

_TITLES = {
    "students": "students", "requests": "requests", "refused": "refused", "limit_hits": "limit hits",
    "students_limited": "students limited", "sessions": "sessions", "input_tokens": "input",
    "cache_write_5m": "cache write 5m", "cache_write_1h": "cache write 1h", "cache_read": "cache read",
    "output_tokens": "output", "web_searches": "web searches", "weighted": "weighted", "cost_usd": "cost USD",
}


def text_table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, left: int = 1) -> str:
    """A plain aligned table: the first ``left`` columns left-aligned, the rest right-aligned."""
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i < left else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(r) for r in rows)]) + "\n"


def _cells(row: UsageRow) -> list[str]:
    out = [row.key]
    for name in NUMBERS:
        value = getattr(row, name)
        out.append(f"{value:,.2f}" if name == "cost_usd" else f"{value:,}")
    return out


def render_table(report: UsageReport) -> str:
    headers = [report.by, *(_TITLES[n] for n in NUMBERS)]
    body = [_cells(r) for r in report.rows]
    if report.by != "class":
        body.append(["-" * len(report.by), *([""] * len(NUMBERS))])
        body.append(_cells(report.total))
    elif not body:
        body.append(_cells(report.total))
    return text_table(headers, body)


def render_csv(report: UsageReport) -> str:
    """One header row and one row per group (no total row: a spreadsheet sums the columns itself)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([report.by, *NUMBERS])
    for r in report.rows:
        writer.writerow([r.key, *(f"{r.cost_usd:f}" if n == "cost_usd" else getattr(r, n) for n in NUMBERS)])
    return out.getvalue()


def render_json(report: UsageReport) -> bytes:
    return orjson.dumps(report.to_json(), option=orjson.OPT_INDENT_2)


def render(report: UsageReport, fmt: str) -> str:
    if fmt == "csv":
        return render_csv(report)
    if fmt == "json":
        return render_json(report).decode() + "\n"
    if fmt == "table":
        return render_table(report)
    raise ReportError(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}")

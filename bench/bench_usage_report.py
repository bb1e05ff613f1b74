"""Usage report speed on a semester of data: ``gateway usage`` for every grouping, with and without filters.

Fills a fresh database (created from ``--admin-dsn``, migrated, dropped afterwards) with ``--students`` students in
``--groups`` groups x ``--weeks`` weeks x ``--per-week`` requests each (default 200 x 13 x 60 = 156,000
``usage_events`` rows, in sessions of 15 requests within 2.5 hours, about one in forty refused for quota), plus
the same again for a second course so the indexes have something to skip. Then runs each report ``--repeat``
times and prints the median and the worst time. Target: under a second per report.

Usage: python bench/bench_usage_report.py [--admin-dsn postgresql://postgres@127.0.0.1:5432/test]
       [--students 200] [--weeks 13] [--per-week 60] [--repeat 5]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.scratch import scratch_database
from gateway import courses
from gateway.db import create_pool
from gateway.usage_report import usage_report

COURSE = "bench"
TZ = "Australia/Sydney"
START = datetime(2026, 2, 23, tzinfo=UTC)
SESSION_REQUESTS = 15
COLUMNS = ("request_id", "at", "course_id", "student_id", "jti", "session_id", "model", "status", "input_tokens",
           "cache_write_5m", "cache_write_1h", "cache_read", "output_tokens", "web_searches", "weighted", "cost_usd",
           "refused")


def rows(course: str, students: int, weeks: int, per_week: int, seed: int) -> list[tuple[object, ...]]:
    rng = random.Random(seed)
    out: list[tuple[object, ...]] = []
    for s in range(students):
        student = f"z{s:07d}"
        for w in range(weeks):
            session_start = START
            for i in range(per_week):
                if i % SESSION_REQUESTS == 0:  # a sitting: a burst of requests in one Claude Code session
                    session_start = START + timedelta(weeks=w, seconds=rng.randrange(7 * 86_400 - 3 * 3_600))
                at = session_start + timedelta(seconds=(i % SESSION_REQUESTS) * rng.randrange(30, 600))
                refused = "quota" if rng.random() < 0.025 else ""
                tokens = [0] * 6 if refused else [rng.randrange(2_000), rng.randrange(20_000), 0,
                                                  rng.randrange(200_000), rng.randrange(4_000), 0]
                weighted = 0 if refused else rng.randrange(10_000)
                cost = Decimal(0) if refused else Decimal(rng.randrange(300_000)) / 1_000_000
                session = f"sess-{s}-{w}-{i // SESSION_REQUESTS}"
                out.append((f"{course}-{s}-{w}-{i}", at, course, student, "jti", session, "claude-opus-5-5",
                            429 if refused else 200, *tokens, weighted, cost, refused))
    return out


async def main(args: argparse.Namespace) -> None:
    async with scratch_database(args.admin_dsn) as dsn:
        pool = await create_pool(dsn)
        for course in (COURSE, "other"):
            await courses.create(pool, "bench", course, limit=1_000_000, period_seconds=7 * 86_400, tz=TZ)
        await pool.executemany("INSERT INTO students (course_id, student_id, grp) VALUES ($1, $2, $3)",
                               [(COURSE, f"z{s:07d}", f"T{s % args.groups:02d}") for s in range(args.students)])
        started = time.perf_counter()
        total = 0
        async with pool.acquire() as conn:
            for seed, course in enumerate((COURSE, "other")):
                data = rows(course, args.students, args.weeks, args.per_week, seed)
                total += len(data)
                await conn.copy_records_to_table("usage_events", records=data, columns=COLUMNS)
            await conn.execute("ANALYZE usage_events")
        print(f"loaded {total:,} usage_events rows in {time.perf_counter() - started:.1f}s")
        mid = (START + timedelta(weeks=args.weeks // 2)).date()
        cases = [
            ("by student, whole semester", {"by": "student"}),
            ("by group, whole semester", {"by": "group"}),
            ("by day, whole semester", {"by": "day"}),
            ("class total, whole semester", {"by": "class"}),
            ("by student, one week", {"by": "student", "since": mid.isoformat(),
                                      "until": (mid + timedelta(days=6)).isoformat()}),
            ("by day, one student", {"by": "day", "student": "z0000042"}),
            ("by student, one group", {"by": "student", "group": "T03"}),
        ]
        print(f"{'report':34} {'rows':>6} {'median ms':>10} {'max ms':>8}")
        for label, kwargs in cases:
            times = []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                report = await usage_report(pool, COURSE, **kwargs)
                times.append((time.perf_counter() - t0) * 1000)
            print(f"{label:34} {len(report.rows):>6} {statistics.median(times):>10.1f} {max(times):>8.1f}")
        await pool.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--admin-dsn", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--students", type=int, default=200)
    parser.add_argument("--groups", type=int, default=10)
    parser.add_argument("--weeks", type=int, default=13)
    parser.add_argument("--per-week", type=int, default=60)
    parser.add_argument("--repeat", type=int, default=5)
    asyncio.run(main(parser.parse_args()))

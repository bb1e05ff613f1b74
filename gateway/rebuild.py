"""Rebuild the Redis ledger from Postgres (``gateway ledger rebuild``), e.g. after Redis lost its data.

Postgres holds one ``usage_events`` row per metered or refused request (with the bucket's ``period_start`` and
``carried`` when it was debited) and every grant, so each student's bucket for the current period is:

* ``used``: the sum of ``weighted`` over the period's usage rows (``period_start``, else ``at``, in the period);
* ``granted``: the sum of the period's grants;
* ``limit_hits``: the period's rows refused for quota;
* ``carried``: the ``carried`` of the period's latest usage row; without one, the previous period's left-over
  (``limit + carried + granted - used``, never negative) clamped to the carry cap, walking forward from
  ``HISTORY_PERIODS`` periods back (from a student's first row when that is later). With the carry cap at most
  ``HISTORY_PERIODS - 1`` limits the walk reaches the same value the Redis bucket would have had.

Students are those with any usage or grant row; key statuses come from ``api_keys``.
:func:`ensure_bucket` does the same for one student whose bucket Redis reports ``fresh`` (just created), adding
the record to whatever the new bucket collected since.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import asyncpg

from .ledger import BucketSnapshot, BucketState, Ledger, fresh_contents
from .periods import boundaries
from .policy import Policy

HISTORY_PERIODS = 8

SELECT_COURSES = "SELECT * FROM courses WHERE $1::text IS NULL OR course_id = $1 ORDER BY course_id"

# Per (period index, student): usage of periods given as parallel arrays of starts and ends.
PERIOD_USAGE = """
SELECT p.idx, e.student_id,
       sum(e.weighted)::bigint AS used,
       count(*) FILTER (WHERE e.refused = 'quota') AS hits,
       (array_agg(e.carried ORDER BY e.at DESC, e.request_id DESC))[1] AS carried
FROM unnest($2::timestamptz[], $3::timestamptz[]) WITH ORDINALITY AS p(ps, pe, idx)
JOIN usage_events e
  ON e.course_id = $1
 AND e.at >= ($2::timestamptz[])[1] - interval '1 day'
 AND COALESCE(e.period_start, e.at) >= p.ps AND COALESCE(e.period_start, e.at) < p.pe
WHERE ($4::text[] IS NULL OR e.student_id = ANY($4)) AND NOT (e.request_id = ANY($5::text[]))
GROUP BY p.idx, e.student_id
"""

PERIOD_GRANTS = """
SELECT p.idx, g.student_id, sum(g.tokens)::bigint AS granted
FROM unnest($2::timestamptz[], $3::timestamptz[]) WITH ORDINALITY AS p(ps, pe, idx)
JOIN grants g ON g.course_id = $1 AND g.period_start >= p.ps AND g.period_start < p.pe
WHERE ($4::text[] IS NULL OR g.student_id = ANY($4)) AND NOT (g.request_id = ANY($5::text[]))
GROUP BY p.idx, g.student_id
"""

# Students with rows before the first period looked at: their buckets existed before it. (A debit lands in the
# period current when it is settled, never an earlier one, so a row's period starts before $2 only if `at` does.)
OLDER_STUDENTS = """
SELECT student_id FROM usage_events
WHERE course_id = $1 AND at < $2 AND ($3::text[] IS NULL OR student_id = ANY($3))
UNION
SELECT student_id FROM grants
WHERE course_id = $1 AND period_start < $2 AND ($3::text[] IS NULL OR student_id = ANY($3))
"""

SELECT_KEYS = """
SELECT jti, student_id, status, status_reason FROM api_keys
WHERE course_id = $1 AND ($2::text[] IS NULL OR student_id = ANY($2))
"""


@dataclass
class RebuildReport:
    courses: int = 0
    buckets: int = 0
    keys: int = 0
    students: dict[str, list[str]] = field(default_factory=dict)  # course -> students restored


@dataclass
class _Totals:
    used: int = 0
    granted: int = 0
    hits: int = 0
    carried: int | None = None  # from the period's latest usage row


def _ts(epoch: int) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


async def snapshots(
    conn: asyncpg.Connection | asyncpg.Pool,
    policy: Policy,
    now: float,
    students: Sequence[str] | None = None,
    *,
    exclude_requests: Sequence[str] = (),
    exclude_grants: Sequence[str] = (),
) -> dict[str, BucketSnapshot]:
    """The current period's bucket of every student with a record (or of ``students``), from Postgres,
    leaving out the usage rows and grants named in ``exclude_*`` (already counted in a fresh Redis bucket)."""
    bounds = boundaries(policy, now, HISTORY_PERIODS + 1, 1)
    starts, ends = [_ts(b) for b in bounds[:-1]], [_ts(b) for b in bounds[1:]]
    periods = len(starts)
    wanted = list(students) if students is not None else None
    totals: dict[str, list[_Totals]] = {}

    def slot(student: str, idx: int) -> _Totals:
        return totals.setdefault(student, [_Totals() for _ in range(periods)])[idx - 1]

    for row in await conn.fetch(PERIOD_USAGE, policy.course, starts, ends, wanted, list(exclude_requests)):
        entry = slot(row["student_id"], row["idx"])
        entry.used, entry.hits, entry.carried = row["used"], row["hits"], row["carried"]
    for row in await conn.fetch(PERIOD_GRANTS, policy.course, starts, ends, wanted, list(exclude_grants)):
        slot(row["student_id"], row["idx"]).granted = row["granted"]
    older = {row["student_id"] for row in await conn.fetch(OLDER_STUDENTS, policy.course, starts[0], wanted)}
    for student in older:
        slot(student, 1)

    cap, limit = policy.effective_carry_cap, policy.limit
    result: dict[str, BucketSnapshot] = {}
    for student, history in totals.items():
        started = student in older
        carried = 0
        previous: _Totals | None = None
        for entry in history:
            has_rows = entry != _Totals()
            if previous is not None and started:
                left = limit + carried + previous.granted - previous.used
                carried = min(max(left, 0), cap)
            if entry.carried is not None:
                carried = entry.carried
            started = started or has_rows
            previous = entry
        current = history[-1]
        result[student] = BucketSnapshot(
            bounds[-2], bounds[-1], carried, current.granted, current.used, current.hits
        )
    return result


async def _load_policies(pool: asyncpg.Pool, course: str | None) -> list[Policy]:
    return [Policy.from_row(row) for row in await pool.fetch(SELECT_COURSES, course)]


async def restore_keys(
    pool: asyncpg.Connection | asyncpg.Pool, ledger: Ledger, course: str, students: Iterable[str] | None = None
) -> int:
    """Copy key statuses of a course (or of some of its students) from ``api_keys`` into Redis."""
    wanted = list(students) if students is not None else None
    rows = await pool.fetch(SELECT_KEYS, course, wanted)
    for row in rows:
        await ledger.set_key_status(course, row["student_id"], row["jti"], row["status"], row["status_reason"])
    return len(rows)


async def rebuild(
    pool: asyncpg.Pool,
    ledger: Ledger,
    policies: Iterable[Policy] | None = None,
    *,
    course: str | None = None,
) -> RebuildReport:
    """Restore every student's bucket (current period) and key statuses from Postgres, for one or all courses.

    ``policies`` defaults to the ``courses`` table. Buckets are overwritten exactly.
    """
    if policies is None:
        policies = await _load_policies(pool, course)
    report = RebuildReport()
    now = ledger.now()
    for policy in sorted(policies, key=lambda p: p.course):
        name = policy.course
        if course is not None and name != course:
            continue
        restored = await snapshots(pool, policy, now)
        for student, snapshot in sorted(restored.items()):
            await ledger.restore(policy, name, student, snapshot)
        report.courses += 1
        report.buckets += len(restored)
        report.keys += await restore_keys(pool, ledger, name)
        report.students[name] = sorted(restored)
    return report


async def ensure_bucket(pool: asyncpg.Pool, ledger: Ledger, policy: Policy, course: str, student: str) -> BucketState:
    """Reconcile a bucket Redis reports ``fresh`` (missing or just created) with the Postgres record.

    Adds the record's totals to what the new bucket collected since it was created, once (a second call, or a
    call for a bucket already reconciled, changes nothing). Call it when a reservation or read says ``fresh``.

    Exact also when the reconcile comes late (a first attempt failed, or a student's first requests ran
    concurrently): debits and grants the fresh bucket already holds are left out of the Postgres totals. The
    Postgres snapshot is taken before Redis is asked what the bucket holds, and a debit reaches Redis before its
    row reaches Postgres, so every row the snapshot sees that the bucket holds too is named by Redis.
    """
    now = ledger.now()
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        await conn.execute("SELECT 1")  # fixes the snapshot every query below sees
        held = await fresh_contents(ledger, course, student)
        snapshot = (await snapshots(
            conn, policy, now, [student],
            exclude_requests=sorted(held.settled) if held else (),
            exclude_grants=sorted(held.grants) if held else (),
        )).get(student)
    if snapshot is None:
        start, end = boundaries(policy, now, 1, 1)
        snapshot = BucketSnapshot(start, end, 0, 0, 0, 0)
    return await ledger.restore(policy, course, student, snapshot, merge=True)

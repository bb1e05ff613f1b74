"""Convenor commands (course show/list, sync, quota show, grant, usage, admin tokens, audit): registered into
``gateway``'s parser. Each command is a thin wrapper over a library module; messages go to stderr, data to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import orjson

from . import admin_tokens, audit_query, courses, enrolment, grants
from .amounts import format_amount
from .cli import ACTOR, Parser, UsageError, amount_arg, course_of
from .policy import Policy
from .quota_api import SELECT_STUDENTS as SELECT_QUOTA_STUDENTS
from .quota_api import quota_entry
from .stores import Stores
from .usage_report import BY_CHOICES, FORMATS, parse_bound, render, text_table, usage_report

PROGRESS_MIN_ROWS = 200


def _say(*parts: object) -> None:
    print(*parts, file=sys.stderr)


def _emit(text: str) -> None:
    sys.stdout.write(text if text.endswith("\n") else text + "\n")


def _dump_json(data: Any) -> str:
    return orjson.dumps(data, option=orjson.OPT_INDENT_2, default=str).decode()


def _csv(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(headers)
    writer.writerows(rows)
    return out.getvalue()


def _records(fmt: str, headers: Sequence[str], rows: Sequence[Sequence[object]], data: Any) -> str:
    if fmt == "json":
        return _dump_json(data)
    if fmt == "csv":
        return _csv(headers, rows)
    return text_table(headers, [[str(c) for c in r] for r in rows])


class ProgressBar:
    """``stage: [#####.....] 500/995`` redrawn in place on a stream (stderr), finished with a newline."""

    WIDTH = 30

    def __init__(self, stream: TextIO, enabled: bool) -> None:
        self.stream = stream
        self.enabled = enabled

    def __call__(self, stage: str, done: int, total: int) -> None:
        if not self.enabled or total <= 0:
            return
        filled = self.WIDTH * done // total
        self.stream.write(f"\r{stage}: [{'#' * filled}{'.' * (self.WIDTH - filled)}] {done}/{total}")
        if done >= total:
            self.stream.write("\n")
        self.stream.flush()


# -- course ---------------------------------------------------------------------------------------------------

_COURSE_FIELDS = ("course_id", "name", "limit_tokens", "period_seconds", "reset_at", "tz", "carry_over", "carry_cap",
                  "max_inflight", "students", "created_at", "updated_at")


def _period(seconds: int) -> str:
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


async def cmd_course_show(args: argparse.Namespace, stores: Stores) -> None:
    course = args.course_id or course_of(args, stores.settings)
    rows = [r for r in await courses.list_all(stores.pool) if r["course_id"] == course]
    if not rows:
        raise UsageError(f"no such course: {course!r}")
    row = {k: rows[0][k] for k in _COURSE_FIELDS}
    if args.format == "json":
        _emit(_dump_json(row))
        return
    shown = {**row, "limit_tokens": f"{format_amount(row['limit_tokens'])} ({row['limit_tokens']:,})",
             "period_seconds": _period(row["period_seconds"]),
             "carry_cap": "" if row["carry_cap"] is None else format_amount(row["carry_cap"])}
    width = max(map(len, shown))
    _emit("\n".join(f"{k.ljust(width)}  {'' if v is None else v}" for k, v in shown.items()))


async def cmd_course_list(args: argparse.Namespace, stores: Stores) -> None:
    rows = await courses.list_all(stores.pool)
    headers = ["course", "name", "limit", "period", "reset_at", "tz", "carry_over", "students"]
    body = [[r["course_id"], r["name"], format_amount(r["limit_tokens"]), _period(r["period_seconds"]), r["reset_at"],
             r["tz"], ("yes" if r["carry_over"] else "no"), r["students"]] for r in rows]
    _emit(_records(args.format, headers, body, [{k: r[k] for k in _COURSE_FIELDS} for r in rows]))


# -- sync -----------------------------------------------------------------------------------------------------


def _open_sink(args: argparse.Namespace, new: int) -> enrolment.KeysFile | enrolment.KeysStream | None:
    if new == 0:
        return None
    if args.keys_out is not None:
        return enrolment.KeysFile(args.keys_out)
    if args.print_keys:
        return enrolment.KeysStream(sys.stdout)
    raise UsageError(f"{new} new students need keys: give --keys-out FILE (created with mode 0600) "
                     "or --print-keys; nothing was changed")


async def cmd_sync(args: argparse.Namespace, stores: Stores) -> None:
    course = course_of(args, stores.settings)
    if args.keys_out is not None and args.print_keys:
        raise UsageError("--keys-out and --print-keys: pick one")
    roster = enrolment.read_roster(args.source)
    for bad in roster.bad:
        _say(f"gateway: {args.source}: {bad}")
    if roster.bad and args.strict:
        raise UsageError(f"{len(roster.bad)} bad row(s) in {args.source}: nothing applied (--strict)")
    drop_missing = not args.no_drop
    plan = await enrolment.plan(stores.pool, course, roster, drop_missing=drop_missing)
    skipped = f"; {len(roster.bad)} bad row(s) skipped" if roster.bad else ""
    if args.dry_run:
        for line in plan.lines():
            _emit(line)
        try:
            enrolment.check_drop_limit(plan, force=args.force)
        except enrolment.EnrolmentError as exc:
            _say(f"gateway: a real run would be refused: {exc}")
        _emit(f"dry run, nothing changed: {plan.summary()}{skipped}")
        return
    out: TextIO = sys.stderr if args.print_keys else sys.stdout
    if plan.keyless:
        _say(f"gateway: note: {len(plan.keyless)} listed student(s) have only revoked keys (e.g. "
             f"{plan.keyless[0]}): sync leaves them; issue keys with `gateway keys issue`")
    if plan.empty:
        print(f"nothing to change: {plan.unchanged} students up to date{skipped}", file=out)
        return
    enrolment.check_drop_limit(plan, force=args.force)
    sink = _open_sink(args, len(plan.provision))
    bar = ProgressBar(sys.stderr, args.progress if args.progress is not None else
                      (sys.stderr.isatty() and len(roster.students) >= PROGRESS_MIN_ROWS))
    result = await enrolment.sync(stores.pool, stores.ledger, stores.codec, ACTOR, course, roster, sink=sink,
                                  drop_missing=drop_missing, force=args.force, reason=args.reason,
                                  source=str(args.source), progress=bar)
    revoked = sum(len(v) for v in result.revoked.values())
    where = f" (keys in {args.keys_out}, mode 0600)" if result.issued and args.keys_out else ""
    print(f"provisioned {len(result.issued)}{where}, updated {len(result.plan.update)}, dropped "
          f"{len(result.plan.drop)} ({revoked} keys revoked), {result.plan.unchanged} unchanged{skipped}", file=out)
    if result.redis_error:
        raise UsageError(f"saved in Postgres, but key statuses did not all reach Redis ({result.redis_error}): "
                         "run `gateway ledger rebuild`")


# -- quota show, grant ----------------------------------------------------------------------------------------


async def _policy(stores: Stores, course: str) -> Policy:
    return Policy.from_row(await courses.get(stores.pool, course))


async def cmd_quota_show(args: argparse.Namespace, stores: Stores) -> None:
    course = course_of(args, stores.settings)
    policy = await _policy(stores, course)
    rows = await stores.pool.fetch(SELECT_QUOTA_STUDENTS, course, args.group, args.student)
    if args.student and not rows:
        raise UsageError(f"no enrolled student {args.student!r} in {course!r}")
    states = await asyncio.gather(*(stores.ledger.read(policy, course, r["student_id"]) for r in rows))
    entries = [quota_entry(course, r["student_id"], r["grp"], s) for r, s in zip(rows, states, strict=True)]
    headers = ["student", "group", "limit", "carried", "granted", "used", "remaining", "resets_at", "limit_hits",
               "status"]
    body = [[e[h] for h in headers] for e in entries]
    if args.format == "table":
        body = [[*r[:2], *(f"{v:,}" for v in r[2:7]), *r[7:]] for r in body]
    _emit(_records(args.format, headers, body, entries))


async def cmd_grant(args: argparse.Namespace, stores: Stores) -> None:
    course = course_of(args, stores.settings)
    policy = await _policy(stores, course)
    done = await grants.grant(stores.pool, stores.ledger, policy, ACTOR, args.student, args.tokens, args.reason,
                              idempotency_key=args.idempotency_key)
    if done.duplicate:
        _emit(f"already granted (grant {done.grant_id}, {done.at:%Y-%m-%d %H:%M}): nothing changed")
        return
    assert done.state is not None
    _emit(f"granted {format_amount(done.tokens)} tokens to {args.student} in {course} (grant {done.grant_id}); "
          f"remaining this period: {done.state.remaining:,}")


# -- usage ----------------------------------------------------------------------------------------------------


async def cmd_usage(args: argparse.Namespace, stores: Stores) -> None:
    course = course_of(args, stores.settings)
    report = await usage_report(stores.pool, course, by=args.by, since=args.since, until=args.until,
                                student=args.student, group=args.group)
    sys.stdout.write(render(report, args.format))


# -- admin tokens ---------------------------------------------------------------------------------------------


async def cmd_admin_token(args: argparse.Namespace, stores: Stores) -> None:
    if args.action == "create":
        course = None if args.all_courses else course_of(args, stores.settings)
        created = await admin_tokens.create(stores.pool, ACTOR, course, label=args.label)
        print(created.token)
        _say(f"# admin token {created.info.token_id} for {created.info.scope}: shown once, only its hash is stored")
        return
    if args.action == "revoke":
        token = await admin_tokens.revoke(stores.pool, ACTOR, args.token_id, reason=args.reason)
        _emit(f"admin token {token.token_id} ({token.scope}) revoked")
        return
    course = None if args.all_courses else getattr(args, "course", None) or stores.settings.course
    found = await admin_tokens.listing(stores.pool, course, include_revoked=args.include_revoked)
    headers = ["token_id", "course", "label", "created_at", "revoked_at"]
    body = [[t.token_id, t.scope, t.label, f"{t.created_at:%Y-%m-%d %H:%M}",
             f"{t.revoked_at:%Y-%m-%d %H:%M}" if t.revoked_at else ""] for t in found]
    _emit(_records(args.format, headers, body, [t.to_json() for t in found]))


# -- audit ----------------------------------------------------------------------------------------------------


async def cmd_audit(args: argparse.Namespace, stores: Stores) -> None:
    course = None if args.all_courses else getattr(args, "course", None) or stores.settings.course
    since = None
    if args.since:
        tz = "UTC"
        if course is not None:
            tz = (await courses.get(stores.pool, course))["tz"]
        since = parse_bound(args.since, tz, end=False)
    found = await audit_query.entries(stores.pool, course=course, student=args.student, action=args.action,
                                      since=since, actor=args.actor, limit=args.limit)
    data = [audit_query.entry_json(e) for e in found]
    headers = ["at", "actor", "action", "course", "student", "reason", "details"]
    body = [[e["at"].strftime("%Y-%m-%d %H:%M:%S") if args.format == "table" else e["at"].isoformat(), e["actor"],
             e["action"], e["course_id"] or "", e["student_id"] or "", e["reason"],
             orjson.dumps(e["details"]).decode()] for e in found]
    _emit(_records(args.format, headers, body, data))


# -- registration ---------------------------------------------------------------------------------------------


def _subparsers(parser: argparse.ArgumentParser) -> Any:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    raise RuntimeError(f"{parser.prog} has no subcommands")


def _format(parser: argparse.ArgumentParser, choices: Sequence[str] = FORMATS) -> None:
    parser.add_argument("--format", choices=list(choices), default="table")


def register(sub: Any, quota: Any) -> None:
    """Add this module's subcommands to the top-level subparsers (and ``quota``'s)."""
    course = _subparsers(sub.choices["course"])
    show = course.add_parser("show", help="a course's quota policy")
    show.add_argument("course_id", nargs="?", help="default: --course / GATEWAY_COURSE")
    _format(show, ("table", "json"))
    show.set_defaults(run=cmd_course_show)
    listing = course.add_parser("list", help="every course")
    _format(listing)
    listing.set_defaults(run=cmd_course_list)

    sync = sub.add_parser("sync", help="make students and keys match an enrolment CSV (provision new, revoke dropped)")
    sync.add_argument("--source", type=Path, required=True, help="CSV: student_id (or id/uid/user), email, name, group")
    sync.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    sync.add_argument("--keys-out", type=Path, help="write new keys to this new file (mode 0600), for a mail merge")
    sync.add_argument("--print-keys", action="store_true", help="print new keys (CSV) on stdout instead")
    sync.add_argument("--strict", action="store_true", help="apply nothing if any row is bad")
    sync.add_argument("--no-drop", action="store_true", help="do not drop students missing from the CSV")
    sync.add_argument("--force", action="store_true", help="allow dropping more than a quarter of the class")
    sync.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                      help="progress bar on stderr (default: when stderr is a terminal and the file is large)")
    sync.add_argument("--reason", default="", help="recorded in the audit log")
    sync.set_defaults(run=cmd_sync)

    qshow = quota.add_parser("show", help="students' buckets this period")
    qshow.add_argument("--student")
    qshow.add_argument("--group")
    _format(qshow)
    qshow.set_defaults(run=cmd_quota_show)

    grant = sub.add_parser("grant", help="give a student extra tokens this period")
    grant.add_argument("student")
    grant.add_argument("--tokens", type=amount_arg, required=True, help="weighted tokens, e.g. 100k")
    grant.add_argument("--reason", required=True, help="recorded with the grant and in the audit log")
    grant.add_argument("--idempotency-key", help="a retried grant with the same key is applied once")
    grant.set_defaults(run=cmd_grant)

    usage = sub.add_parser("usage", help="usage report")
    usage.add_argument("--student")
    usage.add_argument("--group")
    usage.add_argument("--by", choices=list(BY_CHOICES), default="student")
    usage.add_argument("--since", help="first day, YYYY-MM-DD in the course's time zone")
    usage.add_argument("--until", help="last day (inclusive), YYYY-MM-DD")
    _format(usage)
    usage.set_defaults(run=cmd_usage)

    tokens = _subparsers_of(sub.add_parser("admin-token", help="admin API tokens"))
    create = tokens.add_parser("create", help="a new admin token (printed once)")
    create.add_argument("--all-courses", action="store_true", help="a university-level token: every course")
    create.add_argument("--label", default="", help="who or what it is for")
    create.set_defaults(run=cmd_admin_token)
    tlist = tokens.add_parser("list", help="admin tokens (ids only)")
    tlist.add_argument("--all-courses", action="store_true")
    tlist.add_argument("--include-revoked", action="store_true")
    _format(tlist)
    tlist.set_defaults(run=cmd_admin_token)
    revoke = tokens.add_parser("revoke", help="revoke an admin token")
    revoke.add_argument("token_id")
    revoke.add_argument("--reason", default="")
    revoke.set_defaults(run=cmd_admin_token)

    audit = sub.add_parser("audit", help="the audit log (newest first)")
    audit.add_argument("--student")
    audit.add_argument("--action", help="e.g. key.revoke, or a prefix: key")
    audit.add_argument("--actor")
    audit.add_argument("--since", help="YYYY-MM-DD or an ISO time")
    audit.add_argument("--limit", type=int, default=100)
    audit.add_argument("--all-courses", action="store_true")
    _format(audit)
    audit.set_defaults(run=cmd_audit)


def _subparsers_of(parser: argparse.ArgumentParser) -> Any:
    return parser.add_subparsers(dest="action", required=True, parser_class=Parser)

"""Record-keeping commands: ``ledger rebuild``, ``transcripts show|export``, ``incidents``."""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import orjson

from . import courses, incidents, transcript_read
from .rebuild import rebuild
from .stores import Stores


def parse_when(text: str, tz: str) -> datetime:
    """``2026-03-02`` or an ISO 8601 time; a time without an offset is read in the course's time zone."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"not a date: {text!r} (use YYYY-MM-DD or an ISO 8601 time)") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=ZoneInfo(tz))


async def cmd_ledger_rebuild(args: argparse.Namespace, stores: Stores) -> None:
    course = getattr(args, "course", None) or stores.settings.course
    report = await rebuild(stores.pool, stores.ledger, course=course)
    print(f"rebuilt {report.buckets} bucket(s) and {report.keys} key status(es) in {report.courses} course(s)")


async def cmd_transcripts_show(args: argparse.Namespace, stores: Stores) -> None:
    found = await transcript_read.show(stores.pool, args.request_id)
    if found is None:
        raise ValueError(f"no transcript for request {args.request_id!r}")
    sys.stdout.buffer.write(orjson.dumps(found, option=orjson.OPT_INDENT_2) + b"\n")


async def cmd_transcripts_export(args: argparse.Namespace, stores: Stores) -> None:
    from .cli import course_of

    course = course_of(args, stores.settings)
    tz = (await courses.get(stores.pool, course))["tz"]
    since = parse_when(args.since, tz) if args.since else None
    until = parse_when(args.until, tz) if args.until else None
    out = open(args.output, "wb") if args.output else sys.stdout.buffer  # noqa: SIM115, ASYNC230 - a CLI, closed below
    try:
        async for line in transcript_read.export(stores.pool, course, student=args.student, since=since,
                                                 until=until, bodies=not args.no_bodies):
            out.write(line)
    finally:
        if out is not sys.stdout.buffer:
            out.close()


async def cmd_incidents(args: argparse.Namespace, stores: Stores) -> None:
    course = getattr(args, "course", None) or stores.settings.course
    found = await incidents.listing(stores.pool, course, open_only=args.open, student_id=args.student)
    if args.format == "json":
        sys.stdout.buffer.write(orjson.dumps([i.to_json() for i in found], option=orjson.OPT_INDENT_2) + b"\n")
        return
    if not found:
        print("no incidents" + (" open" if args.open else ""))
        return
    rows: list[list[Any]] = [["id", "at", "course", "student", "kind", "severity", "status", "excerpt"]]
    rows += [[i.incident_id, i.at.strftime("%Y-%m-%d %H:%M"), i.course_id, i.student_id, i.kind, i.severity,
              i.status, i.excerpt[:60]] for i in found]
    widths = [max(len(str(r[c])) for r in rows) for c in range(len(rows[0]))]
    for row in rows:
        print("  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def register(sub: Any, quota: Any) -> None:
    from .cli import Parser

    ledger = sub.add_parser("ledger", help="the Redis ledger").add_subparsers(dest="action", required=True,
                                                                                parser_class=Parser)
    ledger.add_parser("rebuild", help="restore buckets and key statuses from Postgres (e.g. after Redis lost data)"
                      ).set_defaults(run=cmd_ledger_rebuild)

    transcripts = sub.add_parser("transcripts", help="stored requests and responses").add_subparsers(
        dest="action", required=True, parser_class=Parser)
    show = transcripts.add_parser("show", help="one request and its response, exactly")
    show.add_argument("request_id")
    show.set_defaults(run=cmd_transcripts_show)
    export = transcripts.add_parser("export", help="JSON lines for audits")
    export.add_argument("--student")
    export.add_argument("--since")
    export.add_argument("--until")
    export.add_argument("--format", choices=["jsonl"], default="jsonl")
    export.add_argument("--no-bodies", action="store_true", help="leave out request bodies")
    export.add_argument("-o", "--output", help="write to this file instead of standard output")
    export.set_defaults(run=cmd_transcripts_export)

    inc = sub.add_parser("incidents", help="leaked-secret incidents")
    inc.add_argument("--open", action="store_true", help="only open incidents")
    inc.add_argument("--student")
    inc.add_argument("--format", choices=["table", "json"], default="table")
    inc.set_defaults(run=cmd_incidents)

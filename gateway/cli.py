"""``gateway``: a thin command line over the library (CONTRACT.md, "CLI").

Exit status 0 on success; 2 on bad arguments or input, with a one-line reason on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NoReturn

from pydantic import ValidationError

from .amounts import parse_amount
from .courses import CourseError, PolicyChange
from .keyring import KeyringError
from .periods import parse_period
from .settings import Settings
from .stores import Stores, open_stores

ACTOR = "cli"


class UsageError(Exception):
    """Bad arguments or input: printed as one line, exit status 2."""


def course_of(args: argparse.Namespace, settings: Settings) -> str:
    course = getattr(args, "course", None) or settings.course
    if not course:
        raise UsageError("say which course: --course C or GATEWAY_COURSE")
    return str(course)


def amount_arg(text: str) -> int:
    try:
        return parse_amount(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _period(text: str) -> int:
    try:
        return parse_period(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"gateway: {message}\n")


# -- commands -------------------------------------------------------------------------------------------------


async def cmd_migrate(args: argparse.Namespace, stores: Stores) -> None:
    print("migrations are up to date")


async def cmd_course_create(args: argparse.Namespace, stores: Stores) -> None:
    from . import courses

    if args.carry_cap is not None and not args.carry_over:
        raise UsageError("--carry-cap needs --carry-over")
    created = await courses.create(
        stores.pool, ACTOR, args.course_id, limit=args.limit, period_seconds=args.reset_period,
        reset_at=args.reset_at, tz=args.tz, carry_over=args.carry_over, carry_cap=args.carry_cap, name=args.name)
    print(f"course {args.course_id} {'created' if created else 'already exists (unchanged)'}")


async def cmd_keys(args: argparse.Namespace, stores: Stores) -> None:
    course = course_of(args, stores.settings)
    if args.action == "issue":
        issued = await stores.keyring.issue(ACTOR, course, args.student, reason=args.reason)
        print(issued.token)
        print(f"# key {issued.claims.jti} for {args.student} in {course}: shown once, not stored", file=sys.stderr)
        return
    if args.action == "rotate":
        issued = await stores.keyring.rotate(ACTOR, course, args.student, reason=args.reason)
        print(issued.token)
        return
    status = {"revoke": "revoked", "suspend": "suspended", "reinstate": "active"}[args.action]
    change = await stores.keyring.set_status(ACTOR, course, args.student, status, reason=args.reason)
    if not change.jtis and not change.resolved_incidents:
        raise UsageError(f"no key of {args.student!r} in {course!r} could be set to {status}")
    print(f"{len(change.jtis)} key(s) of {args.student} {status if status != 'active' else 'reinstated'}"
          + (f"; {len(change.resolved_incidents)} incident(s) resolved" if change.resolved_incidents else ""))


async def cmd_quota_set(args: argparse.Namespace, stores: Stores) -> None:
    from . import courses

    change = PolicyChange(limit=args.limit, period_seconds=args.reset_period, reset_at=args.reset_at, tz=args.tz,
                          carry_over=args.carry_over, carry_cap_set=args.carry_cap is not None,
                          carry_cap=args.carry_cap)
    course = course_of(args, stores.settings)
    await courses.change_policy(stores.pool, ACTOR, course, change, reason=args.reason)
    print("quota policy updated")
    await _tell_workers(stores, course)


async def _tell_workers(stores: Stores, course: str) -> None:
    """Running workers reload the course's policy now (without the message: within their 1 s cache TTL)."""
    from .invalidation import publish_invalidation
    from .redis_client import REDIS_DOWN

    try:
        await publish_invalidation(stores.redis, stores.ledger.keyspace, course)
    except REDIS_DOWN as exc:
        print(f"# Redis unreachable ({type(exc).__name__}): running gateways pick the change up within 1 s",
              file=sys.stderr)


Command = Callable[[argparse.Namespace, Stores], Awaitable[None]]


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="gateway", description="Class token gateway")
    parser.add_argument("--course", help="the course (default: GATEWAY_COURSE)")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--workers", type=int)

    demo = sub.add_parser("demo", help="run the gateway in front of a local fake Anthropic API, with a ready key")
    demo.add_argument("--port", type=int)

    sub.add_parser("migrate", help="apply database migrations").set_defaults(run=cmd_migrate)

    course = sub.add_parser("course", help="courses").add_subparsers(dest="action", required=True,
                                                                      parser_class=Parser)
    create = course.add_parser("create", help="create a course")
    create.add_argument("course_id")
    create.add_argument("--limit", type=amount_arg, required=True, help="weighted tokens per period, e.g. 500k")
    create.add_argument("--reset-period", type=_period, required=True, help="e.g. 7d")
    create.add_argument("--reset-at", default="mon 00:00")
    create.add_argument("--tz", default="UTC")
    create.add_argument("--carry-over", action="store_true")
    create.add_argument("--carry-cap", type=amount_arg)
    create.add_argument("--name", default="")
    create.set_defaults(run=cmd_course_create)

    keys = sub.add_parser("keys", help="students' virtual keys")
    keys.add_argument("action", choices=["issue", "revoke", "suspend", "reinstate", "rotate"])
    keys.add_argument("student")
    keys.add_argument("--reason", default="")
    keys.set_defaults(run=cmd_keys)

    quota = sub.add_parser("quota", help="quota policy").add_subparsers(dest="action", required=True,
                                                                         parser_class=Parser)
    qset = quota.add_parser("set", help="change the course's quota policy")
    qset.add_argument("--limit", type=amount_arg)
    qset.add_argument("--reset-period", type=_period)
    qset.add_argument("--reset-at")
    qset.add_argument("--tz")
    qset.add_argument("--carry-over", dest="carry_over", action="store_true", default=None)
    qset.add_argument("--no-carry-over", dest="carry_over", action="store_false")
    qset.add_argument("--carry-cap", type=amount_arg)
    qset.add_argument("--reason", default="")
    qset.set_defaults(run=cmd_quota_set)

    for register in _command_modules():
        register(sub, quota)
    _accept_course_anywhere(parser)
    return parser


def _accept_course_anywhere(parser: argparse.ArgumentParser) -> None:
    """``--course`` works before or after the subcommand (``gateway keys issue S --course C``)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                if "--course" not in child._option_string_actions:
                    child.add_argument("--course", default=argparse.SUPPRESS, help="the course")
                _accept_course_anywhere(child)


def _command_modules() -> list[Callable[[Any, Any], None]]:
    """Each area of the CLI registers its own subcommands (``register(subparsers, quota_subparsers)``)."""
    from . import cli_convenor, cli_records

    return [cli_convenor.register, cli_records.register]


def _settings(args: argparse.Namespace) -> Settings:
    try:
        settings = Settings()
    except ValidationError as exc:
        raise UsageError(f"bad configuration: {exc.errors()[0]['loc'][0]}: {exc.errors()[0]['msg']}") from None
    overrides: dict[str, Any] = {k: getattr(args, k) for k in ("host", "port", "workers")
                                 if getattr(args, k, None) is not None}
    if args.course:
        overrides["course"] = args.course
    return settings.model_copy(update=overrides) if overrides else settings


async def _run(command: Command, args: argparse.Namespace, settings: Settings) -> None:
    async with open_stores(settings) as stores:
        await command(args, stores)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = _settings(args)
        if args.command == "serve":
            from .serve import serve

            if settings.upstream_api_key is None:
                raise UsageError("GATEWAY_UPSTREAM_API_KEY is required (the real Anthropic key)")
            return serve(settings)
        if args.command == "demo":
            from .demo import run_demo

            run_demo(settings, port=args.port)
            return 0
        asyncio.run(_run(args.run, args, settings))
    except (UsageError, CourseError, KeyringError, ValueError) as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Enrolment sync: make a course's students and keys match an enrolment CSV (``gateway sync``).

::

    CSV ──parse_roster──> Roster (good rows + BadRow(line, reason))
                              │
    students/api_keys ──plan──┴──> SyncPlan: provision (new or re-enrolled: issue a key), update (email / name /
                                   group changed), drop (enrolled but not in the CSV: revoke their keys)
                                        │
                        apply (one transaction, under a per-course advisory lock) ──> KeySink (new keys, once)
                                        │ commit
                                        └──> Redis key statuses (every worker refuses a dropped key at once)

A second run with the same CSV plans nothing and changes nothing. Columns the CSV does not have are left alone
(a CSV without ``email`` never blanks e-mail addresses). Keys are signed here, written to the sink before the
transaction commits (a failed commit discards the sink), and never stored: only their ``jti`` and SHA-256.
"""

from __future__ import annotations

import asyncio
import csv
import io
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TextIO

import asyncpg

from . import audit
from .keys import IssuedKey, KeyCodec
from .ledger import Ledger

# Header aliases (case-insensitive); the first alias found in the header wins.
ID_ALIASES = ("student_id", "studentid", "student", "id", "uid", "user")
FIELD_ALIASES = {"email": ("email", "e-mail", "mail"), "name": ("name", "full_name"), "group": ("group", "grp")}
FIELDS = ("email", "name", "group")

_STUDENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,99}$")
_EMAIL = re.compile(r"^[^@\s,;<>]+@[^@\s,;<>]+\.[^@\s,;<>]+$")
_MAX_TEXT = 200
REDIS_CONCURRENCY = 64
# A sync refuses to drop more than max(DROP_GUARD_MIN, DROP_GUARD_FRACTION x enrolled) students without force:
# a truncated or wrong CSV must not revoke a whole class.
DROP_GUARD_MIN = 10
DROP_GUARD_FRACTION = 0.25
DROP_REASON = "no longer enrolled (enrolment sync)"

LOCK = "SELECT pg_advisory_xact_lock(hashtext('gateway.enrolment'), hashtext($1))"
COURSE_EXISTS = "SELECT 1 FROM courses WHERE course_id = $1"
SELECT_STUDENTS = """
SELECT s.student_id, s.email, s.name, s.grp, s.enrolled,
       count(k.jti) FILTER (WHERE k.status <> 'revoked') AS live_keys
FROM students s LEFT JOIN api_keys k ON k.course_id = s.course_id AND k.student_id = s.student_id
WHERE s.course_id = $1
GROUP BY s.course_id, s.student_id
"""
# $2..$5: parallel arrays; $6..$8: whether the CSV has the email / name / group column at all.
UPSERT_STUDENTS = """
INSERT INTO students AS s (course_id, student_id, email, name, grp, enrolled)
SELECT $1, u.student_id, u.email, u.name, u.grp, true
FROM unnest($2::text[], $3::text[], $4::text[], $5::text[]) AS u(student_id, email, name, grp)
ON CONFLICT (course_id, student_id) DO UPDATE SET
    email = CASE WHEN $6::boolean THEN EXCLUDED.email ELSE s.email END,
    name = CASE WHEN $7::boolean THEN EXCLUDED.name ELSE s.name END,
    grp = CASE WHEN $8::boolean THEN EXCLUDED.grp ELSE s.grp END,
    enrolled = true, updated_at = now()
"""
INSERT_KEYS = """
INSERT INTO api_keys (jti, course_id, student_id, token_sha256, issued_at, expires_at)
SELECT u.jti, $1, u.student_id, u.sha, to_timestamp(u.iat), to_timestamp(u.exp)
FROM unnest($2::text[], $3::text[], $4::bytea[], $5::bigint[], $6::bigint[]) AS u(jti, student_id, sha, iat, exp)
"""
UNENROL = "UPDATE students SET enrolled = false, updated_at = now() WHERE course_id = $1 AND student_id = ANY($2)"
REVOKE_KEYS = """
UPDATE api_keys SET status = 'revoked', status_reason = $3, status_changed_at = now()
WHERE course_id = $1 AND student_id = ANY($2) AND status IN ('active', 'suspended')
RETURNING student_id, jti
"""


class EnrolmentError(ValueError):
    """The CSV (as a whole) or the sync cannot be used; one line for the CLI / API."""


@dataclass(frozen=True, slots=True)
class Enrolee:
    student_id: str
    email: str
    name: str
    group: str
    line: int

    def value(self, name: str) -> str:
        return str(getattr(self, name))


@dataclass(frozen=True, slots=True)
class BadRow:
    line: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


@dataclass(frozen=True, slots=True)
class Roster:
    """A parsed enrolment CSV: good rows in file order, bad rows with line numbers, and the columns present."""

    students: tuple[Enrolee, ...]
    bad: tuple[BadRow, ...]
    columns: frozenset[str]  # subset of FIELDS present in the header


@dataclass(frozen=True, slots=True)
class Update:
    enrolee: Enrolee
    changes: dict[str, tuple[str, str]]  # field -> (old, new)


@dataclass(frozen=True, slots=True)
class Drop:
    student_id: str
    live_keys: int


@dataclass(frozen=True, slots=True)
class SyncPlan:
    course: str
    columns: frozenset[str]
    provision: tuple[Enrolee, ...]
    reenrol: frozenset[str]  # those of ``provision`` already known (enrolled before, dropped since)
    update: tuple[Update, ...]
    drop: tuple[Drop, ...]
    unchanged: int
    enrolled: int  # enrolled before the sync
    keyless: tuple[str, ...] = ()  # listed and enrolled, but every key revoked: left alone (a convenor's decision)

    @property
    def empty(self) -> bool:
        return not (self.provision or self.update or self.drop)

    def summary(self) -> str:
        return (f"{len(self.provision)} to provision, {len(self.update)} to update, {len(self.drop)} to drop "
                f"({sum(d.live_keys for d in self.drop)} keys to revoke), {self.unchanged} unchanged")

    def lines(self) -> Iterable[str]:
        """The plan, one student a line (``+`` provision, ``~`` update, ``-`` drop)."""
        for e in self.provision:
            again = " (re-enrolled)" if e.student_id in self.reenrol else ""
            yield f"+ {e.student_id}{again}: issue a key [group {e.group!r}, email {e.email!r}]"
        for u in self.update:
            diff = ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in u.changes.items())
            yield f"~ {u.enrolee.student_id}: {diff}"
        for d in self.drop:
            yield f"- {d.student_id}: drop, revoke {d.live_keys} key(s)"
        for student in self.keyless:
            yield f"! {student}: enrolled, but every key is revoked (left as is; `gateway keys issue {student}`)"


@dataclass(frozen=True, slots=True)
class NewKey:
    enrolee: Enrolee
    issued: IssuedKey


@dataclass
class SyncResult:
    plan: SyncPlan
    issued: list[NewKey] = field(default_factory=list)
    revoked: dict[str, list[str]] = field(default_factory=dict)  # student -> jtis
    redis_error: str | None = None  # committed to Postgres, but key statuses could not all reach Redis


Progress = Callable[[str, int, int], None]  # (stage, done, total)


def _no_progress(stage: str, done: int, total: int) -> None:
    return None


# -- parsing --------------------------------------------------------------------------------------------------


def _decode(data: bytes) -> str:
    # Undecodable bytes survive as surrogates so the rows holding them are reported by line, not the whole file.
    return data.decode("utf-8-sig", errors="surrogateescape")


def _dialect(first_line: str) -> str:
    if "," in first_line:
        return ","
    for delimiter in ("\t", ";"):
        if delimiter in first_line:
            return delimiter
    return ","


def _header_columns(header: Sequence[str]) -> tuple[int, dict[str, int]]:
    names = [h.strip().lower().replace(" ", "_") for h in header]
    id_column = next((names.index(a) for a in ID_ALIASES if a in names), None)
    if id_column is None:
        raise EnrolmentError(
            f"the header row has no student id column (one of {', '.join(ID_ALIASES)}); it has: "
            + ", ".join(repr(h) for h in header))
    columns = {}
    for name, aliases in FIELD_ALIASES.items():
        found = next((names.index(a) for a in aliases if a in names), None)
        if found is not None:
            columns[name] = found
    return id_column, columns


def _check_row(
    values: Sequence[str], width: int, id_column: int, columns: dict[str, int]
) -> tuple[str, dict[str, str]]:
    """The row's (student id, fields), or ValueError with the reason it is bad."""
    if len(values) != width:
        raise ValueError(f"{len(values)} fields, but the header has {width}")
    if any("\udc80" <= ch <= "\udcff" for v in values for ch in v):
        raise ValueError("not UTF-8 text (save the CSV as UTF-8)")
    student = values[id_column].strip()
    if not student:
        raise ValueError("no student id")
    if not _STUDENT_ID.match(student):
        raise ValueError(f"bad student id {student!r} (letters, digits and . _ @ + - only, up to 100)")
    fields = {name: values[i].strip() for name, i in columns.items()}
    email = fields.get("email", "")
    if email and not _EMAIL.match(email):
        raise ValueError(f"bad email {email!r}")
    for name, value in fields.items():
        if len(value) > _MAX_TEXT or any(ch in value for ch in "\r\n\x00"):
            raise ValueError(f"bad {name} (one line, up to {_MAX_TEXT} characters)")
    return student, fields


def parse_roster(data: bytes | str) -> Roster:
    """Parse an enrolment CSV: a header row, then one student a row; blank lines are ignored.

    Bad rows (wrong number of fields, missing or malformed id or e-mail, a repeated id, bytes that are not UTF-8)
    are returned with their line numbers; the good rows are kept. A file without a usable header raises
    :class:`EnrolmentError`.
    """
    text = _decode(data) if isinstance(data, bytes) else data.removeprefix("\ufeff")
    stream = io.StringIO(text, newline="")
    reader = csv.reader(stream, delimiter=_dialect(text.split("\n", 1)[0]), strict=True)
    try:
        header = next(reader, None)
    except csv.Error as exc:
        raise EnrolmentError(f"line 1: unreadable header row ({exc})") from None
    if not header or not any(h.strip() for h in header):
        raise EnrolmentError("the CSV is empty: it needs a header row (student_id, email, name, group)")
    id_column, columns = _header_columns(header)
    students: list[Enrolee] = []
    bad: list[BadRow] = []
    seen: dict[str, int] = {}
    while True:
        line = reader.line_num + 1
        try:
            values = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            bad.append(BadRow(line, f"unreadable row ({exc})"))
            continue
        if not any(v.strip() for v in values):
            continue
        try:
            student, fields = _check_row(values, len(header), id_column, columns)
        except ValueError as exc:
            bad.append(BadRow(line, str(exc)))
            continue
        if student in seen:
            bad.append(BadRow(line, f"student {student!r} already on line {seen[student]}"))
            continue
        seen[student] = line
        students.append(Enrolee(student, fields.get("email", ""), fields.get("name", ""), fields.get("group", ""),
                                line))
    return Roster(tuple(students), tuple(bad), frozenset(columns))


def read_roster(path: Path) -> Roster:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise EnrolmentError(f"cannot read {path}: {exc.strerror or exc}") from None
    return parse_roster(data)


# -- planning -------------------------------------------------------------------------------------------------


async def plan(conn: asyncpg.Connection | asyncpg.Pool, course: str, roster: Roster, *,
               drop_missing: bool = True) -> SyncPlan:
    """What :func:`apply` would change (reads only)."""
    if not await conn.fetchval(COURSE_EXISTS, course):
        raise EnrolmentError(f"no such course: {course!r} (create it with `gateway course create`)")
    known = {r["student_id"]: r for r in await conn.fetch(SELECT_STUDENTS, course)}
    provision: list[Enrolee] = []
    reenrol: set[str] = set()
    updates: list[Update] = []
    unchanged = 0
    keyless: list[str] = []
    listed = set()
    for e in roster.students:
        listed.add(e.student_id)
        row = known.get(e.student_id)
        if row is None or not row["enrolled"]:
            provision.append(e)
            if row is not None:
                reenrol.add(e.student_id)
            continue
        current = {"email": row["email"], "name": row["name"], "group": row["grp"]}
        changes = {k: (current[k], e.value(k)) for k in FIELDS if k in roster.columns and current[k] != e.value(k)}
        if changes:
            updates.append(Update(e, changes))
        else:
            unchanged += 1
        if row["live_keys"] == 0:
            keyless.append(e.student_id)
    enrolled = [r for r in known.values() if r["enrolled"]]
    drops = sorted((Drop(r["student_id"], r["live_keys"]) for r in enrolled if r["student_id"] not in listed),
                   key=lambda d: d.student_id) if drop_missing else []
    return SyncPlan(course, roster.columns, tuple(provision), frozenset(reenrol), tuple(updates), tuple(drops),
                    unchanged, len(enrolled), tuple(keyless))


def drop_limit(enrolled: int) -> int:
    return max(DROP_GUARD_MIN, int(enrolled * DROP_GUARD_FRACTION))


def check_drop_limit(p: SyncPlan, *, force: bool) -> None:
    if not force and len(p.drop) > drop_limit(p.enrolled):
        raise EnrolmentError(
            f"the CSV would drop {len(p.drop)} of {p.enrolled} enrolled students (more than "
            f"{drop_limit(p.enrolled)}): check the file, or pass --force")


# -- applying -------------------------------------------------------------------------------------------------


class KeySink(Protocol):
    """Where new keys go: ``write`` before the transaction commits, then ``close`` after it (or ``discard``)."""

    def write(self, keys: Sequence[NewKey]) -> None: ...

    def close(self) -> None: ...

    def discard(self) -> None: ...


KEY_COLUMNS = ("student_id", "email", "name", "group", "key")


def _key_rows(keys: Sequence[NewKey]) -> list[list[str]]:
    return [[k.enrolee.student_id, k.enrolee.email, k.enrolee.name, k.enrolee.group, k.issued.token] for k in keys]


class KeysFile:
    """A new CSV of keys for a mail merge, created with mode 0600; never overwrites an existing file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise EnrolmentError(f"{path} already exists: keys are never written over a file; pick a new name") \
                from None
        except OSError as exc:
            raise EnrolmentError(f"cannot create {path}: {exc.strerror or exc}") from None
        self._file: TextIO | None = os.fdopen(fd, "w", newline="", encoding="utf-8")

    def write(self, keys: Sequence[NewKey]) -> None:
        assert self._file is not None
        writer = csv.writer(self._file)
        writer.writerow(KEY_COLUMNS)
        writer.writerows(_key_rows(keys))
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def discard(self) -> None:
        """Remove the file (the keys in it were never committed)."""
        self.close()
        self.path.unlink(missing_ok=True)


class KeysStream:
    """New keys as CSV on a text stream (``gateway sync --print-keys``)."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._buffer: list[NewKey] = []

    def write(self, keys: Sequence[NewKey]) -> None:
        self._buffer = list(keys)  # printed only once the transaction has committed

    def discard(self) -> None:
        self._buffer = []

    def close(self) -> None:
        if self._buffer:
            writer = csv.writer(self._stream)
            writer.writerow(KEY_COLUMNS)
            writer.writerows(_key_rows(self._buffer))
            self._stream.flush()
        self._buffer = []


async def _apply(conn: asyncpg.Connection, codec: KeyCodec, actor: str, p: SyncPlan, sink: KeySink | None,
                 reason: str, source: str, progress: Progress) -> SyncResult:
    result = SyncResult(p)
    course = p.course
    if p.provision and sink is None:
        raise EnrolmentError(f"{len(p.provision)} new students need keys: say where they go (--keys-out FILE)")
    upserts = [*p.provision, *(u.enrolee for u in p.update)]
    if upserts:
        await conn.execute(
            UPSERT_STUDENTS, course, [e.student_id for e in upserts], [e.email for e in upserts],
            [e.name for e in upserts], [e.group for e in upserts],
            "email" in p.columns, "name" in p.columns, "group" in p.columns)
    total = len(p.provision)
    for i, e in enumerate(p.provision, 1):
        result.issued.append(NewKey(e, codec.issue(course, e.student_id)))
        if i % 100 == 0 or i == total:
            progress("signing keys", i, total)
    if result.issued:
        claims = [k.issued.claims for k in result.issued]
        await conn.execute(INSERT_KEYS, course, [c.jti for c in claims], [c.student for c in claims],
                           [k.issued.sha256 for k in result.issued], [c.issued_at for c in claims],
                           [c.expires_at for c in claims])
    dropped = [d.student_id for d in p.drop]
    if dropped:
        await conn.execute(UNENROL, course, dropped)
        for row in await conn.fetch(REVOKE_KEYS, course, dropped, DROP_REASON):
            result.revoked.setdefault(row["student_id"], []).append(row["jti"])
    entries: list[tuple[str, str, str | None, str | None, str, dict[str, object]]] = []
    for k in result.issued:
        e = k.enrolee
        entries.append((actor, "key.issue", course, e.student_id, reason, {
            "jti": k.issued.claims.jti, "source": source, "reenrolled": e.student_id in p.reenrol,
            "email": e.email, "name": e.name, "group": e.group}))
    for u in p.update:
        entries.append((actor, "student.update", course, u.enrolee.student_id, reason, {
            "source": source, "changes": {k: list(v) for k, v in u.changes.items()}}))
    for d in p.drop:
        entries.append((actor, "student.drop", course, d.student_id, reason or DROP_REASON, {
            "source": source, "revoked": result.revoked.get(d.student_id, [])}))
    if entries:
        entries.append((actor, "enrolment.sync", course, None, reason, {
            "source": source, "provisioned": len(p.provision), "updated": len(p.update), "dropped": len(p.drop),
            "revoked_keys": sum(len(v) for v in result.revoked.values())}))
        await conn.executemany(audit.INSERT, entries)
    if sink is not None and result.issued:
        sink.write(result.issued)
    return result


async def _publish(ledger: Ledger, result: SyncResult, progress: Progress) -> None:
    """Key statuses into Redis after the commit: revocations first (they matter most), then new keys."""
    course = result.plan.course
    changes = [(s, jti, "revoked", DROP_REASON) for s, jtis in result.revoked.items() for jti in jtis]
    changes += [(k.enrolee.student_id, k.issued.claims.jti, "active", "") for k in result.issued]
    done = 0
    slots = asyncio.Semaphore(REDIS_CONCURRENCY)

    async def one(student: str, jti: str, status: str, why: str) -> None:
        nonlocal done
        async with slots:
            await ledger.set_key_status(course, student, jti, status, why)
        done += 1
        if done % 100 == 0 or done == len(changes):
            progress("updating key status", done, len(changes))

    await asyncio.gather(*(one(*c) for c in changes))


async def sync(pool: asyncpg.Pool, ledger: Ledger, codec: KeyCodec, actor: str, course: str, roster: Roster, *,
               sink: KeySink | None = None, dry_run: bool = False, drop_missing: bool = True,
               force: bool = False, reason: str = "", source: str = "",
               progress: Progress = _no_progress) -> SyncResult:
    """Plan and (unless ``dry_run``) apply, in one transaction under a per-course lock.

    Without ``force`` a plan that drops more than :func:`drop_limit` students is refused (nothing changes).
    New keys go to ``sink`` before the commit and the sink is closed after it; if the commit fails, or there are
    no new keys, the sink is discarded.
    A Redis failure after the commit is reported in ``SyncResult.redis_error`` (Postgres already holds the new
    statuses; ``gateway ledger rebuild`` copies them to Redis).
    """
    try:
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(LOCK, course)
            p = await plan(conn, course, roster, drop_missing=drop_missing)
            check_drop_limit(p, force=force)
            if dry_run or p.empty:
                result = SyncResult(p)  # nothing written: the (read-only) transaction just ends
            else:
                result = await _apply(conn, codec, actor, p, sink, reason, source, progress)
    except BaseException:
        if sink is not None:
            sink.discard()
        raise
    if sink is not None and not result.issued:
        sink.discard()  # nothing to deliver (e.g. the plan changed under the lock): leave no empty key file
    elif sink is not None:
        sink.close()
    if dry_run or p.empty:
        return result
    try:
        await _publish(ledger, result, progress)
    except Exception as exc:  # reported to the caller (and the CLI), never silently dropped
        result.redis_error = f"{type(exc).__name__}: {exc}"
    return result

"""Content-addressed request bodies: split the raw bytes into parts stored once by hash, and join them back.

Claude Code resends the whole conversation every turn, so consecutive request bodies share nearly all of their
bytes: the same ``tools`` (~32 KB), ``system`` (~7 KB) and every earlier message. A body is stored as

* a **skeleton**: the raw body with the byte spans of ``system``, ``tools``, every other top-level value of at
  least :data:`FIELD_MIN_BYTES`, and each element of ``messages`` cut out, and
* **parts**: for each cut span, its offset in the skeleton and the SHA-256 of its bytes; the bytes
themselves go to ``transcript_blobs`` once per distinct hash.

Splitting works on the RAW bytes, never on re-serialised JSON, so :func:`join` gives back exactly what the
client sent (whitespace, key order, escapes and all). Spans are found by a fast path that checks the body is
compact JSON as orjson (and Node's ``JSON.stringify``) would write it - each top-level value and each message
dumped once and compared in place with the raw bytes, with the proxy's parse of the body reused when given -
and otherwise by a scanner that walks the raw bytes. A body that is not a JSON object is stored whole, as
one ``body`` part.
"""

from __future__ import annotations

import hashlib
import re
import struct
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import orjson

FIELD_MIN_BYTES = 256  # other top-level values at least this long become parts of their own
SPLIT_KEYS = frozenset({"system", "tools"})  # always parts, whatever their size

_WS = re.compile(rb"[ \t\n\r]*")
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_TOKEN = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]', re.DOTALL)
_SCALAR = re.compile(rb"[^,\]}\s]+")
_OPEN = frozenset(b"[{")


class Part(NamedTuple):
    hash: bytes  # sha256 of content
    kind: str  # 'system' | 'tools' | 'message' | 'field' | 'body'
    content: bytes


class SplitBody(NamedTuple):
    skeleton: bytes
    offsets: list[int]  # where each part goes back into the skeleton
    parts: list[Part]
    size: int


def digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


Span = tuple[int, int, str]


class RecentValues:
    """The last few serialised top-level values (``tools``, ``system``, ...) with their hashes, per key: every
    request of a course carries the same ``tools`` and ``system``, so :func:`split` finds them in the raw bytes by
    comparison instead of serialising and hashing ~40 KB again. Bounded: ``per_key`` values for each of at most
    ``keys`` keys. Owned by its user (the transcript writer); not thread-safe."""

    def __init__(self, per_key: int = 4, keys: int = 16) -> None:
        self._per_key = per_key
        self._keys = keys
        self._values: dict[str, list[tuple[bytes, bytes]]] = {}

    def find(self, key: str, raw: bytes, at: int) -> tuple[bytes, bytes] | None:
        """``(content, digest)`` of a remembered value of ``key`` that ``raw`` holds at ``at``, followed by the
        end of that value (``,`` or ``}``): a complete JSON value that is a prefix there is the value there."""
        for content, digest_ in self._values.get(key, ()):
            if raw.startswith(content, at) and raw[at + len(content) : at + len(content) + 1] in (b",", b"}"):
                return content, digest_
        return None

    def remember(self, key: str, content: bytes, digest_: bytes) -> None:
        values = self._values.get(key)
        if values is None:
            if len(self._values) >= self._keys:
                return
            values = self._values[key] = []
        values.insert(0, (content, digest_))
        del values[self._per_key :]


def split(raw: bytes, parsed: Any = None, recent: RecentValues | None = None) -> SplitBody:
    """Cut ``raw`` into a skeleton and content-addressed parts; ``join`` undoes it byte for byte.

    ``parsed`` may be ``orjson.loads(raw)`` when the caller has it already (the proxy parsed the body): it is
    only a guide to where the parts are -- every byte of the split is checked against ``raw`` -- so a stale or
    wrong ``parsed`` costs a fallback, never a wrong body. ``recent`` remembers top-level values across calls.
    """
    if not isinstance(parsed, dict):
        parsed = _parse(raw)
    if parsed is None:
        return _from_spans(raw, [(0, len(raw), "body")] if raw else [])
    fast = _compact_split(raw, parsed, recent)
    if fast is not None:
        return fast
    spans = scan_spans(raw)
    return _from_spans(raw, spans if spans is not None else [(0, len(raw), "body")])


def _compact_split(raw: bytes, parsed: dict[str, Any], recent: RecentValues | None = None) -> SplitBody | None:
    """The split of a body that is exactly the compact serialisation of ``parsed`` (what Claude Code sends);
    None when it is not (other whitespace, escapes, number forms, duplicate keys ...). Every value is dumped
    once (its bytes are needed for its hash anyway) and compared in place with the raw bytes it should be:
    the skeleton and the parts cover ``raw`` exactly, in order, or the fast path gives up."""
    if not raw.startswith(b"{"):
        return None
    skeleton = bytearray(b"{")
    offsets: list[int] = []
    parts: list[Part] = []
    at = 1  # the next byte of raw to account for
    sha256 = hashlib.sha256
    try:
        for i, (key, value) in enumerate(parsed.items()):
            head = (b"," if i else b"") + orjson.dumps(key) + b":"
            if not raw.startswith(head, at):
                return None
            at += len(head)
            skeleton += head
            if key == "messages" and isinstance(value, list):
                if not value:
                    if not raw.startswith(b"[]", at):
                        return None
                    at += 2
                    skeleton += b"[]"
                    continue
                if raw[at] != 0x5B:  # '['
                    return None
                at += 1
                base = len(skeleton) + 1  # message j goes after "[" and j commas
                for j, message in enumerate(value):
                    if j:
                        if raw[at] != 0x2C:  # ','
                            return None
                        at += 1
                    content = orjson.dumps(message)
                    if not raw.startswith(content, at):
                        return None
                    at += len(content)
                    parts.append(Part(sha256(content).digest(), "message", content))
                if raw[at] != 0x5D:  # ']'
                    return None
                at += 1
                offsets.extend(range(base, base + len(value)))
                skeleton += b"[" + b"," * (len(value) - 1) + b"]"
            else:
                known = recent.find(key, raw, at) if recent is not None else None
                if known is None:
                    content = orjson.dumps(value)
                    if not raw.startswith(content, at):
                        return None
                else:
                    content = known[0]
                at += len(content)
                kind = _kind(key, len(content))
                if kind is None:
                    skeleton += content
                else:
                    offsets.append(len(skeleton))
                    if known is None:
                        known = (content, sha256(content).digest())
                        if recent is not None:
                            recent.remember(key, *known)
                    parts.append(Part(known[1], kind, content))
    except (orjson.JSONEncodeError, IndexError):
        return None
    if at != len(raw) - 1 or raw[at] != 0x7D:  # exactly one closing brace left
        return None
    skeleton += b"}"
    if len(skeleton) + sum(len(p.content) for p in parts) != len(raw):  # never store a wrong body
        return None
    return SplitBody(bytes(skeleton), offsets, parts, len(raw))


def _from_spans(raw: bytes, spans: list[Span]) -> SplitBody:
    glue: list[bytes] = []
    offsets: list[int] = []
    parts: list[Part] = []
    at = 0
    kept = 0
    for start, end, kind in spans:
        glue.append(raw[at:start])
        kept += start - at
        content = raw[start:end]
        offsets.append(kept)
        parts.append(Part(digest(content), kind, content))
        at = end
    glue.append(raw[at:])
    return SplitBody(b"".join(glue), offsets, parts, len(raw))


# In the database a body's part list is two packed bytea columns (no per-element array overhead):
# request_offsets = big-endian uint32 per part, request_parts = the 32-byte hashes back to back.
HASH_SIZE = 32


def pack_offsets(offsets: Sequence[int]) -> bytes:
    return struct.pack(f">{len(offsets)}I", *offsets)


def unpack_offsets(packed: bytes) -> list[int]:
    return list(struct.unpack(f">{len(packed) // 4}I", packed))


def pack_hashes(hashes: Sequence[bytes]) -> bytes:
    return b"".join(hashes)


def unpack_hashes(packed: bytes) -> list[bytes]:
    return [packed[i : i + HASH_SIZE] for i in range(0, len(packed), HASH_SIZE)]


def join_packed(skeleton: bytes, offsets: bytes, hashes: bytes, blobs: Mapping[bytes, bytes]) -> bytes:
    """:func:`join` for the packed columns as stored."""
    return join(skeleton, unpack_offsets(offsets), unpack_hashes(hashes), blobs)


def join(
    skeleton: bytes, offsets: Sequence[int], hashes: Sequence[bytes], blobs: Mapping[bytes, bytes]
) -> bytes:
    """Rebuild a body from its skeleton and parts (``blobs``: hash -> content; KeyError if one is missing)."""
    out: list[bytes] = []
    at = 0
    for offset, key in zip(offsets, hashes, strict=True):
        out.append(skeleton[at:offset])
        out.append(blobs[key])
        at = offset
    out.append(skeleton[at:])
    return b"".join(out)


# -- finding the parts ---------------------------------------------------------------------------------------


def _parse(raw: bytes) -> dict[str, Any] | None:
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return parsed if isinstance(parsed, dict) else None


def find_spans(raw: bytes) -> list[Span] | None:
    """Byte spans (start, end, kind) of the values to store as parts; None if ``raw`` is not a JSON object."""
    parsed = _parse(raw)
    if parsed is None:
        return None
    fast = _compact_split(raw, parsed)
    if fast is None:
        return scan_spans(raw)
    spans: list[Span] = []
    shift = 0
    for offset, part in zip(fast.offsets, fast.parts, strict=True):
        spans.append((offset + shift, offset + shift + len(part.content), part.kind))
        shift += len(part.content)
    return spans


def _kind(key: str, length: int) -> str | None:
    if key in SPLIT_KEYS:
        return key
    return "field" if length >= FIELD_MIN_BYTES else None


def _skip_ws(raw: bytes, at: int) -> int:
    match = _WS.match(raw, at)
    assert match is not None  # the pattern matches the empty string
    return match.end()


def _value_end(raw: bytes, at: int) -> int:
    """End of the JSON value starting at ``at`` (``raw`` is known to be valid JSON)."""
    first = raw[at]
    if first == 0x22:  # '"'
        match = _STRING.match(raw, at)
        if match is None:
            raise ValueError("unterminated string")
        return match.end()
    if first in _OPEN:
        depth = 0
        for token in _TOKEN.finditer(raw, at):
            char = raw[token.start()]
            if char in _OPEN:
                depth += 1
            elif char != 0x22:
                depth -= 1
                if depth == 0:
                    return token.end()
        raise ValueError("unbalanced brackets")
    match = _SCALAR.match(raw, at)
    if match is None:
        raise ValueError("bad scalar")
    return match.end()


def _expect(raw: bytes, at: int, chars: bytes) -> int:
    if at >= len(raw) or raw[at] not in chars:
        raise ValueError(f"expected one of {chars!r} at byte {at}")
    return at


def scan_spans(raw: bytes) -> list[Span] | None:
    """Spans found by walking the raw bytes (any whitespace, escapes, duplicate keys); None: not an object."""
    try:
        return _scan(raw)
    except (ValueError, IndexError, orjson.JSONDecodeError):
        return None


def _scan(raw: bytes) -> list[Span]:
    spans: list[Span] = []
    at = _expect(raw, _skip_ws(raw, 0), b"{") + 1
    at = _skip_ws(raw, at)
    if raw[at] == 0x7D:  # '}'
        return spans
    while True:
        key_match = _STRING.match(raw, _expect(raw, at, b'"'))
        if key_match is None:
            raise ValueError("bad key")
        key = orjson.loads(key_match.group())
        at = _expect(raw, _skip_ws(raw, key_match.end()), b":") + 1
        start = _skip_ws(raw, at)
        end = _value_end(raw, start)
        if key == "messages" and raw[start] == 0x5B:  # '['
            spans.extend(_scan_messages(raw, start))
        else:
            kind = _kind(key, end - start)
            if kind is not None:
                spans.append((start, end, kind))
        at = _skip_ws(raw, end)
        if raw[_expect(raw, at, b",}")] == 0x7D:
            break
        at = _skip_ws(raw, at + 1)
    return spans


def _scan_messages(raw: bytes, start: int) -> list[Span]:
    spans: list[Span] = []
    at = _skip_ws(raw, start + 1)
    if raw[at] == 0x5D:  # ']'
        return spans
    while True:
        end = _value_end(raw, at)
        spans.append((at, end, "message"))
        at = _skip_ws(raw, end)
        if raw[_expect(raw, at, b",]")] == 0x5D:
            return spans
        at = _skip_ws(raw, at + 1)

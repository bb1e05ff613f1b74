"""Splitting request bodies into content-addressed parts and joining them back byte for byte."""

from __future__ import annotations

import itertools
import json
import random
from typing import Any

import orjson
import pytest

from bench.session_gen import SessionConfig, generate_session
from gateway import contentstore
from gateway.contentstore import find_spans, join, scan_spans, split


def roundtrip(raw: bytes) -> contentstore.SplitBody:
    parts = split(raw)
    blobs = {part.hash: part.content for part in parts.parts}
    assert join(parts.skeleton, parts.offsets, [p.hash for p in parts.parts], blobs) == raw
    assert parts.size == len(raw)
    for part in parts.parts:
        assert part.hash == contentstore.digest(part.content)
    return parts


def test_claude_code_turns_split_into_system_tools_and_messages() -> None:
    turns = generate_session(3, SessionConfig(turns=6))
    for turn in turns:
        parts = roundtrip(turn.body)
        payload = orjson.loads(turn.body)
        kinds = [p.kind for p in parts.parts]
        assert kinds.count("message") == len(payload["messages"])
        assert kinds.count("system") == 1 and kinds.count("tools") == 1
        assert len(parts.skeleton) < 400  # model, metadata, max_tokens, thinking, stream and the glue
        messages = [p for p in parts.parts if p.kind == "message"]
        assert [orjson.loads(p.content) for p in messages] == payload["messages"]


def test_claude_codes_compact_json_takes_the_fast_path() -> None:
    for turn in generate_session(2, SessionConfig(turns=3)):
        assert contentstore._compact_split(turn.body, orjson.loads(turn.body)) is not None
    spaced = b'{"messages": []}'
    assert contentstore._compact_split(spaced, orjson.loads(spaced)) is None


def test_consecutive_turns_share_all_but_the_newest_messages() -> None:
    turns = generate_session(5, SessionConfig(turns=4))
    for before, after in itertools.pairwise(turns):
        old = split(before.body).parts
        new = split(after.body).parts
        old_messages = [p.hash for p in old if p.kind == "message"]
        new_messages = [p.hash for p in new if p.kind == "message"]
        # Every message but the last (whose cache marker moves on) is stored already; so are system and tools.
        assert new_messages[: len(old_messages) - 1] == old_messages[:-1]
        assert [p.hash for p in new if p.kind != "message"] == [p.hash for p in old if p.kind != "message"]
        # New: the unmarked copy of the old last message, the assistant reply and the next user message.
        assert len({p.hash for p in new} - {p.hash for p in old}) == 3


def test_pretty_printed_body_takes_the_scanner_and_finds_the_same_parts() -> None:
    turn = generate_session(1, SessionConfig(turns=3))[-1]
    payload = orjson.loads(turn.body)
    pretty = json.dumps(payload, indent=2, ensure_ascii=True).encode()
    compact_parts = split(turn.body).parts
    pretty_parts = roundtrip(pretty).parts
    assert [p.kind for p in pretty_parts] == [p.kind for p in compact_parts]
    assert [orjson.loads(p.content) for p in pretty_parts] == [orjson.loads(p.content) for p in compact_parts]


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"not json at all",
        b"[1, 2, 3]",
        b'"a string"',
        b"{}",
        b" { } ",
        b'{"messages": []}',
        b'{"messages":"not a list","system":"s"}',
        b'{"system":"first","system":"second","messages":[1,2]}',
        b'{"messages":[{"content":"a]}\\"[{"}, "x\\\\", {"n":[[[]]]}],"tools":[{"a":"}"}]}',
        b'{"messages":["caf\\u00e9", "caf\xc3\xa9"],"system":"\\ud83d\\ude00"}',
        b'{"messages":[1.0, 1e5, -0, 2E-3, true, false, null]}',
        b'{"messages":[123456789012345678901234567890]}',
        b' \n{ "messages" :\t[ 1 ,\r\n{"a" : [ ] } ] , "tools" : [ ] , "x" : { } }\n',
        b'{"messages":["\xff\xfe invalid utf-8"]}',
        b'{"model":"m","metadata":{"user_id":"' + b"u" * 300 + b'"},"messages":[]}',
        b'{"messages":[{"role":"user","content":"hi"}]} trailing',
        b'{"messages":[{"role":"user"',
    ],
)
def test_edge_cases_join_back_exactly(raw: bytes) -> None:
    roundtrip(raw)


def test_what_is_split_on_edge_cases() -> None:
    assert [p.kind for p in split(b"[1]").parts] == ["body"]
    assert split(b"").parts == []
    dup = split(b'{"system":"first","system":"second","messages":[1,2]}')
    assert [p.content for p in dup.parts] == [b'"first"', b'"second"', b"1", b"2"]
    spaced = split(b' { "messages" : [ 1 , {"a" : [ ] } ] , "tools" : [ ] } ')
    assert [(p.kind, p.content) for p in spaced.parts] == [
        ("message", b"1"), ("message", b'{"a" : [ ] }'), ("tools", b"[ ]")]
    big = split(b'{"metadata":{"user_id":"' + b"u" * 300 + b'"},"model":"m"}')
    assert [p.kind for p in big.parts] == ["field"]


def test_join_needs_every_part() -> None:
    parts = split(b'{"messages":[{"a":1},{"b":2}]}')
    blobs = {p.hash: p.content for p in parts.parts[:1]}
    with pytest.raises(KeyError):
        join(parts.skeleton, parts.offsets, [p.hash for p in parts.parts], blobs)


# -- randomised: any JSON object in any formatting ----------------------------------------------------------

_STRINGS = ["", "a", "é", "ü\u2028", '"quoted"', "back\\slash", "]}{[", "tab\there", "\x00nul", "😀", "x" * 50]


def _value(rng: random.Random, depth: int) -> Any:
    kind = rng.randrange(8 if depth < 4 else 4)
    if kind == 0:
        return rng.choice(_STRINGS)
    if kind == 1:
        return rng.choice([0, -1, 7, 2**53, 1.5, -2.25e-7, 1e300])
    if kind == 2:
        return rng.choice([True, False, None])
    if kind == 3:
        return rng.choice(_STRINGS) * rng.randint(1, 3)
    if kind in (4, 5):
        return [_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {rng.choice(_STRINGS) + str(i): _value(rng, depth + 1) for i in range(rng.randint(0, 4))}


def _body(rng: random.Random) -> dict[str, Any]:
    body: dict[str, Any] = {}
    for key in rng.sample(["model", "messages", "system", "tools", "metadata", "stream", "extra"], k=rng.randint(1, 7)):
        if key == "messages":
            body[key] = [_value(rng, 1) for _ in range(rng.randint(0, 6))]
        else:
            body[key] = _value(rng, 1)
    return body


def _spaced(value: Any, rng: random.Random) -> str:
    """JSON with random whitespace between tokens."""

    def ws() -> str:
        return "".join(rng.choice(" \t\r\n") for _ in range(rng.randint(0, 2)))

    if isinstance(value, dict):
        items = [f"{ws()}{json.dumps(k)}{ws()}:{ws()}{_spaced(v, rng)}{ws()}" for k, v in value.items()]
        return "{" + ",".join(items) + ws() + "}"
    if isinstance(value, list):
        return "[" + ",".join(ws() + _spaced(v, rng) + ws() for v in value) + ws() + "]"
    return json.dumps(value, ensure_ascii=rng.random() < 0.5)


def test_random_bodies_in_any_formatting_join_back_exactly() -> None:
    rng = random.Random(20261101)
    for _ in range(400):
        body = _body(rng)
        compact = orjson.dumps(body)
        for raw in (compact, json.dumps(body).encode(), json.dumps(body, indent=1).encode(),
                    _spaced(body, rng).encode()):
            parts = roundtrip(raw)
            message_parts = [p for p in parts.parts if p.kind == "message"]
            if isinstance(body.get("messages"), list):
                assert [orjson.loads(p.content) for p in message_parts] == body["messages"]
        # Both span finders agree on compact bodies (the fast path is only a shortcut).
        assert scan_spans(compact) == find_spans(compact)


def test_the_proxys_parse_is_reused_and_a_wrong_one_never_changes_the_bytes() -> None:
    turns = generate_session(5, SessionConfig(turns=4))
    for turn in turns:
        parsed = orjson.loads(turn.body)
        assert split(turn.body, parsed) == split(turn.body)  # same split with or without the caller's parse
    raw, other = turns[-1].body, turns[0].body
    pretty = json.dumps(orjson.loads(raw), indent=1).encode()
    # A parse of a different body, or of the same content formatted otherwise: still exactly the raw bytes.
    for body, parse in ((raw, orjson.loads(other)), (pretty, orjson.loads(raw)), (b'{"a":1,"a":2}', {"a": 2}),
                        (b"[1]", {"a": 1}), (raw + b" ", orjson.loads(raw))):
        parts = split(body, parse)
        blobs = {part.hash: part.content for part in parts.parts}
        assert join(parts.skeleton, parts.offsets, [p.hash for p in parts.parts], blobs) == body
        assert parts.size == len(body)


def test_recent_values_give_the_same_split_without_serialising_again(monkeypatch: pytest.MonkeyPatch) -> None:
    turns = generate_session(6, SessionConfig(turns=4))
    recent = contentstore.RecentValues()
    for turn in turns:  # the first turn fills it; every split is the plain one
        assert split(turn.body, orjson.loads(turn.body), recent) == split(turn.body)
    body = turns[-1].body
    payload = orjson.loads(body)
    tools = orjson.dumps(payload["tools"])
    dumped: list[bytes] = []
    real_dumps = orjson.dumps

    def recording_dumps(value: Any) -> bytes:
        dumped.append(out := real_dumps(value))
        return out

    monkeypatch.setattr(contentstore.orjson, "dumps", recording_dumps)
    with_recent = split(body, payload, recent)
    assert tools not in dumped  # found among the recent values by comparison
    assert split(body, payload) == with_recent
    assert tools in dumped  # the plain split serialises it


def test_a_recent_value_counts_only_where_a_whole_value_matches() -> None:
    recent = contentstore.RecentValues(per_key=2)
    system_text = [{"type": "text", "text": "You are Claude Code. " * 20}]
    first = orjson.dumps({"system": system_text, "messages": []})
    split(first, None, recent)
    # The remembered value's bytes begin the raw value but are not all of it: not a match.
    longer = orjson.dumps({"system": [*system_text, {"type": "text", "text": "more"}], "messages": []})
    assert recent.find("system", longer, len(b'{"system":')) is None
    assert recent.find("system", first, len(b'{"system":')) is not None
    for raw in (first, longer):
        parts = split(raw, None, recent)
        assert parts == split(raw)
        blobs = {part.hash: part.content for part in parts.parts}
        assert join(parts.skeleton, parts.offsets, [p.hash for p in parts.parts], blobs) == raw

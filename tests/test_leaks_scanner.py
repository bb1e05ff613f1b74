"""The scanner over whole Messages requests: where it looks, split and escaped keys, caching, redaction."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import orjson
import pytest

from gateway.keys import KeyCodec
from gateway.leaks import (
    Finding,
    Scanner,
    block_message,
    describe,
    json_unescape,
    load_rules,
    redact_body,
    request_pieces,
)

RULES = load_rules()


def example(rule_id: str, index: int = 0) -> str:
    """The secret of a rule's positive example (the examples are synthetic)."""
    rule = next(r for r in RULES if r.id == rule_id)
    (finding,) = [f for f in Scanner(RULES).scan_text(rule.positive[index]) if f.rule_id == rule_id]
    return finding.secret


ANTHROPIC = example("anthropic_api_key")
AWS = example("aws_access_key_id")
WEBHOOK = example("slack_webhook")
PEM = example("private_key")
GITHUB = example("github_token")


def user(*blocks: Any) -> dict[str, Any]:
    return {"role": "user", "content": list(blocks)}


def text(value: str) -> dict[str, Any]:
    return {"type": "text", "text": value}


def body(*messages: dict[str, Any], system: Any = "You are Claude Code.") -> dict[str, Any]:
    return {"model": "claude-opus-5-5", "max_tokens": 128000, "system": system, "messages": list(messages)}


def blocking(scanner: Scanner, request: dict[str, Any]) -> list[Finding]:
    return Scanner.blocking(scanner.scan_request(request))


@pytest.fixture
def scanner() -> Scanner:
    return Scanner(RULES)


# -- where it looks


def test_it_looks_at_system_messages_tool_inputs_tool_results_and_documents(scanner: Scanner) -> None:
    request = body(
        user(text("hello")),
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "checking", "signature": "c2lnbmF0dXJl"},
            {"type": "tool_use", "id": "toolu_1", "name": "Bash",
             "input": {"command": "env", "options": {"args": ["-0", f"TOKEN={GITHUB}"]}}},
        ]},
        user({"type": "tool_result", "tool_use_id": "toolu_1",
              "content": [text(f"AWS_ACCESS_KEY_ID={AWS}"), {"type": "image", "source": {"type": "base64",
                                                                                          "data": "AAAA"}}]}),
        user({"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": WEBHOOK}}),
        system=[text(f"key: {ANTHROPIC}")],
    )
    found = {f.rule_id: f.location for f in scanner.scan_request(request)}
    assert found == {
        "anthropic_api_key": "system[0]",
        "github_token": "messages[1].content[1].input.options.args[1]",
        "aws_access_key_id": "messages[2].content[0].content[0].text",
        "slack_webhook": "messages[3].content[0].source.data",
    }


def test_string_content_and_string_system_are_scanned(scanner: Scanner) -> None:
    request = {"system": f"remember {AWS}", "messages": [{"role": "user", "content": f"use {ANTHROPIC}"}]}
    assert {(f.rule_id, f.location) for f in scanner.scan_request(request)} == {
        ("aws_access_key_id", "system"), ("anthropic_api_key", "messages[0].content")}


def test_base64_images_and_signatures_are_not_scanned(scanner: Scanner) -> None:
    request = body(user({"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": AWS}},
                        {"type": "redacted_thinking", "data": AWS}))
    assert scanner.scan_request(request) == []
    assert [t for _, t in request_pieces(request)] == ["You are Claude Code."]


def test_ordinary_requests_have_no_findings(scanner: Scanner) -> None:
    request = body(user(text("Please refactor utils.py; the API key lives in the ANTHROPIC_API_KEY env var.")),
                   {"role": "assistant", "content": [text("Sure. Use os.environ['ANTHROPIC_API_KEY'].")]})
    assert scanner.scan_request(request) == []


# -- split across blocks, escaped inside tool results


@pytest.mark.parametrize("cut", [1, 3, 7, 13, 14, 40, 100, len(ANTHROPIC) - 1])
def test_a_key_split_across_two_text_blocks_is_found(scanner: Scanner, cut: int) -> None:
    request = body(user(text("my key is " + ANTHROPIC[:cut]), text(ANTHROPIC[cut:] + " - is it valid?")))
    (finding,) = blocking(scanner, request)
    assert finding.rule_id == "anthropic_api_key"
    if cut < len("sk-ant-api03-") + 80:  # neither block holds a whole key
        assert finding.secret == ANTHROPIC
        assert finding.location == "messages[0].content[0]+messages[0].content[1]"
    else:  # the first block alone holds a key-shaped string; its continuation is still redacted
        assert finding.secret == ANTHROPIC[:cut] and finding.location == "messages[0].content[0]"
    redacted = redact_body(orjson.dumps(request), [finding])
    for i in range(len(ANTHROPIC) - 8):
        assert ANTHROPIC[i:i + 8].encode() not in redacted or ANTHROPIC[i:i + 8] in "sk-ant-api03-"
    assert Scanner(RULES).scan_request(orjson.loads(redacted)) == []


def test_a_key_split_across_messages_and_tool_results_is_found(scanner: Scanner) -> None:
    request = body(
        user({"type": "tool_result", "tool_use_id": "t1", "content": "AKIA" + AWS[4:9]}),
        user({"type": "tool_result", "tool_use_id": "t2", "content": [text(AWS[9:] + "\n")]}),
    )
    (finding,) = blocking(scanner, request)
    assert (finding.rule_id, finding.secret) == ("aws_access_key_id", AWS)


def test_a_gateway_key_split_across_blocks_is_found_with_its_owner() -> None:
    codec = KeyCodec(b"split-test-secret-0123456789abcdef0123456789", "class-token-gateway")
    issued = codec.issue("comp1000", "victim")
    scanner = Scanner(RULES, codec.check)
    cut = issued.token.index(".") + 5
    (finding,) = blocking(scanner, body(user(text(issued.token[:cut]), text(issued.token[cut:]))))
    assert finding.virtual_key == issued.claims


def test_a_pem_key_split_across_blocks_is_found_and_fully_redacted(scanner: Scanner) -> None:
    cut = PEM.index("\n", 100) + 1  # the opening marker and a little of the body in the first block
    request = body(user(text("here:\n" + PEM[:cut]), text(PEM[cut:] + "\nthanks")))
    (finding,) = blocking(scanner, request)
    assert finding.rule_id == "private_key"
    redacted = redact_body(orjson.dumps(request), [finding]).decode()
    body_lines = [line for line in PEM.splitlines() if "-----" not in line]
    assert not any(line in redacted for line in body_lines)


def test_two_blocks_that_only_touch_are_not_glued_into_a_false_key(scanner: Scanner) -> None:
    request = body(user(text("the key " + ANTHROPIC), text("Thanks, that was the whole key")))
    (finding,) = blocking(scanner, request)
    assert finding.secret == ANTHROPIC and finding.location == "messages[0].content[0]"


@pytest.mark.parametrize(("secret", "rule_id"), [(AWS, "aws_access_key_id"), (WEBHOOK, "slack_webhook"),
                                                  (PEM, "private_key"), (ANTHROPIC, "anthropic_api_key")])
def test_a_key_json_escaped_inside_a_tool_result_is_found(scanner: Scanner, secret: str, rule_id: str) -> None:
    # the tool printed JSON: its text holds the secret escaped once (\n before it, \/ in URLs, \n in PEM)
    tool_output = orjson.dumps({"stdout": "vars:\n" + secret + "\n"}).decode().replace("/", "\\/")
    assert ("\\n" + secret) in tool_output or secret not in tool_output
    request = body(user({"type": "tool_result", "tool_use_id": "t", "content": tool_output}))
    (finding,) = blocking(scanner, request)
    assert (finding.rule_id, finding.secret) == (rule_id, secret)
    raw = orjson.dumps(request)
    redacted = redact_body(raw, [finding])
    assert redacted != raw and b"[REDACTED:" + rule_id.encode() + b"]" in redacted
    assert Scanner(RULES).scan_request(orjson.loads(redacted)) == []


def test_a_key_escaped_twice_is_found(scanner: Scanner) -> None:
    inner = orjson.dumps({"env": "\n" + AWS}).decode()
    outer = orjson.dumps({"result": inner}).decode()  # "\\n" before the key
    (finding,) = blocking(scanner, body(user({"type": "tool_result", "tool_use_id": "t", "content": outer})))
    assert finding.secret == AWS


def test_json_unescape() -> None:
    assert json_unescape(r"a\nb\/c\u0041\"") == 'a\nb/cA"'
    assert json_unescape(r"x\\ny") == "x\ny"  # two levels
    assert json_unescape("no escapes") == "no escapes"


# -- findings


def test_each_distinct_secret_is_reported_once(scanner: Scanner) -> None:
    request = body(user(text(ANTHROPIC)), user(text(f"again: {ANTHROPIC}")), user(text(AWS)))
    assert sorted(f.rule_id for f in scanner.scan_request(request)) == ["anthropic_api_key", "aws_access_key_id"]


def test_an_alert_inside_a_block_level_finding_is_dropped(scanner: Scanner) -> None:
    (finding,) = scanner.scan_text(f"api_key = '{ANTHROPIC}'")
    assert finding.rule_id == "anthropic_api_key"
    (alert,) = scanner.scan_text("db_password = 'FAKEKnkQbCOJhLzi4CQ7alDGKW15CB7b'")
    assert alert.severity == "alert" and Scanner.blocking([alert]) == []


def test_the_student_is_told_what_was_found_but_never_the_secret() -> None:
    scanner = Scanner(RULES)
    assert describe(scanner.scan_text(ANTHROPIC)) == "Anthropic API key"
    findings = scanner.scan_text(f"{ANTHROPIC} {AWS} {GITHUB} {ANTHROPIC[:-2]}xy")
    assert describe(findings) == "Anthropic API key, AWS access key and GitHub token"
    message = block_message(findings, "the COMP1000 convenor (comp1000@uni.example)")
    assert "(Anthropic API key, AWS access key and GitHub token)" in message
    assert "suspended" in message and "comp1000@uni.example" in message
    assert not any(f.secret in message for f in findings) and "sk-ant-" not in message
    codec = KeyCodec(b"message-test-secret-0123456789abcdef0123456", "class-token-gateway")
    other = codec.issue("comp1000", "someone-else").token
    assert "gateway key found in the request has been suspended too" in block_message(
        Scanner(RULES, codec.check).scan_text(other), "x")


# -- caching


def test_history_resent_every_turn_is_scanned_once() -> None:
    scanner = Scanner(RULES)
    turn1 = body(user(text("first question " * 20)), {"role": "assistant", "content": [text("answer " * 30)]})
    assert scanner.scan_request(turn1) == []
    scanned = scanner.pieces_scanned
    turn2 = body(*turn1["messages"], user(text(f"next {ANTHROPIC}")))
    (finding,) = scanner.scan_request(turn2)
    assert scanner.pieces_scanned == scanned + 1  # only the new block
    assert finding.location == "messages[2].content[0]"
    again = scanner.scan_request(turn2)  # same request again: everything from the cache, same answer
    assert scanner.pieces_scanned == scanned + 1
    assert again == [finding]


def test_the_cache_is_bounded_and_per_scanner() -> None:
    scanner = Scanner(RULES, cache_entries=8)
    for i in range(50):
        scanner.scan_request(body(user(text(f"message number {i} " * 10))))
    assert scanner.cache_size <= 8
    assert Scanner(RULES).cache_size == 0


def test_a_cached_clean_block_next_to_a_new_block_still_catches_a_split_key() -> None:
    scanner = Scanner(RULES)
    first = text("config: " + ANTHROPIC[:30])
    scanner.scan_request(body(user(first)))  # alone: nothing to find, and now cached
    (finding,) = blocking(scanner, body(user(first, text(ANTHROPIC[30:]))))
    assert finding.secret == ANTHROPIC


# -- redaction


def test_redact_body_replaces_every_spelling_and_keeps_valid_json() -> None:
    scanner = Scanner(RULES)
    request = body(user(text(f"url {WEBHOOK}"),
                        {"type": "tool_result", "tool_use_id": "t",
                         "content": orjson.dumps({"hook": WEBHOOK}).decode().replace("/", "\\/")}))
    raw = orjson.dumps(request)
    findings = scanner.scan_request(request)
    assert [f.rule_id for f in findings] == ["slack_webhook"]
    redacted = redact_body(raw, findings)
    parsed = orjson.loads(redacted)
    assert WEBHOOK.encode() not in redacted and WEBHOOK.replace("/", "\\/").encode() not in redacted
    assert redacted.count(b"[REDACTED:slack_webhook]") == 2
    assert parsed["messages"][0]["content"][0]["text"] == "url [REDACTED:slack_webhook]"
    assert redact_body(raw, []) == raw


def test_texts_without_locations_are_the_same_texts_in_the_same_order() -> None:
    request = body(user(text("a"), {"type": "tool_result", "tool_use_id": "t", "content": [text("b"), "c"]}),
                   {"role": "assistant", "content": [{"type": "tool_use", "id": "x", "name": "Read",
                                                      "input": {"p": ["d", {"q": "e"}]}}]},
                   system=[text("s1"), text("s2")])
    pieces = request_pieces(request)
    assert [t for _, t in request_pieces(request, locations=False)] == [t for _, t in pieces]
    assert [t for _, t in pieces] == ["s1", "s2", "a", "b", "c", "Read", "d", "e"]


def test_a_text_that_recurs_after_different_pieces_still_catches_a_split_key() -> None:
    scanner = Scanner(RULES)
    recurring = text(ANTHROPIC[30:])  # the same tail after several different heads
    quiet = body(user(text("nothing here"), recurring), user(text("still nothing"), recurring))
    assert scanner.scan_request(quiet) == []
    split_key = body(user(text("nothing here"), recurring), user(text("config: " + ANTHROPIC[:30]), recurring))
    (finding,) = blocking(scanner, split_key)
    assert finding.location == "messages[1].content[0]+messages[1].content[1]"
    assert blocking(scanner, split_key) == [finding]  # again, from the cache


def test_by_default_no_text_is_kept_yet_known_texts_are_not_scanned_again() -> None:
    scanner = Scanner(RULES)
    clean = "x" * len(ANTHROPIC) + " in the config"
    for i in range(40):
        scanner.scan_request(body(user(text(f"message number {i} " * 20)), user(text(clean))))
    assert scanner.cache_text_bytes == 0 and scanner.cache_size > 0
    scanned = scanner.pieces_scanned
    assert scanner.scan_request(body(user(text("message number 3 " * 20)))) == []
    assert scanner.pieces_scanned == scanned  # known by its key
    same_length = ANTHROPIC + " in the config"  # as long as a known clean text: a different key all the same
    assert len(same_length) == len(clean)
    (finding,) = blocking(scanner, body(user(text(same_length))))
    assert finding.rule_id == "anthropic_api_key" and scanner.pieces_scanned == scanned + 1


@pytest.mark.parametrize("seed", [None, "0"])
def test_a_fixed_hash_seed_is_warned_about(seed: str | None) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONHASHSEED"} | ({"PYTHONHASHSEED": seed} if seed else {})
    code = "import logging; logging.basicConfig(); from gateway.leaks import Scanner; Scanner.load()"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, check=True)
    assert ("PYTHONHASHSEED is fixed" in out.stderr) == (seed is not None)


def test_the_texts_kept_are_bounded_in_bytes_and_evicted_texts_are_still_recognised() -> None:
    scanner = Scanner(RULES, cache_bytes=4_000)
    for i in range(40):
        scanner.scan_request(body(user(text(f"message number {i} " * 20))))
    assert 0 < scanner.cache_text_bytes <= 4_000
    scanned = scanner.pieces_scanned
    scanner.scan_request(body(user(text("message number 0 " * 20))))  # pushed out of the text tier long ago
    assert scanner.pieces_scanned == scanned  # known by its digest: not scanned again
    (finding,) = blocking(scanner, body(user(text("message number 0 " * 20 + ANTHROPIC))))
    assert finding.rule_id == "anthropic_api_key"

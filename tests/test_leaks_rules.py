"""Every leak rule's own examples (from gateway/data/leak_rules.toml), its boundaries, and the rule file's shape."""

from __future__ import annotations

import re._parser as sre_parse

import pytest

from gateway.keys import KeyCodec
from gateway.leaks import (
    MIN_SECRET_CHARS,
    Finding,
    Rule,
    Scanner,
    iter_rule_examples,
    load_rules,
)

# The test-only secret the virtual-key examples in leak_rules.toml were signed with.
EXAMPLE_KEY_SECRET = b"leak-rules-example-secret-not-for-production-use"
EXAMPLE_ISSUER = "class-token-gateway"

RULES = load_rules()
EXAMPLES = list(iter_rule_examples(RULES))


@pytest.fixture(scope="module")
def scanner() -> Scanner:
    return Scanner(RULES, KeyCodec(EXAMPLE_KEY_SECRET, EXAMPLE_ISSUER).check)


def of_rule(findings: list[Finding], rule: Rule) -> list[Finding]:
    return [f for f in findings if f.rule_id == rule.id]


def test_every_rule_has_positive_and_negative_examples() -> None:
    assert len(RULES) >= 15
    for rule in RULES:
        assert rule.positive, rule.id
        assert rule.negative, rule.id


def test_the_issue_s_secret_kinds_are_all_covered() -> None:
    ids = {r.id for r in RULES}
    assert {"gateway_virtual_key", "anthropic_api_key", "anthropic_admin_key", "anthropic_oauth_token",
            "openai_api_key", "aws_access_key_id", "github_token", "github_fine_grained_token", "gitlab_token",
            "slack_token", "slack_webhook", "stripe_live_key", "huggingface_token", "npm_token", "pypi_token",
            "google_api_key", "private_key", "generic_secret"} <= ids
    assert {r.id for r in RULES if r.severity == "alert"} == {"generic_secret"}


@pytest.mark.parametrize(("rule", "text", "positive"), EXAMPLES,
                         ids=[f"{r.id}-{'pos' if p else 'neg'}{i}" for i, (r, _, p) in enumerate(EXAMPLES)])
def test_rule_example(scanner: Scanner, rule: Rule, text: str, positive: bool) -> None:
    found = of_rule(scanner.scan_text(text), rule)
    if positive:
        assert len(found) == 1, found
        assert found[0].severity == rule.severity
        assert found[0].secret in text
    else:
        assert found == []


POSITIVES = [(r, t) for r, t, p in EXAMPLES if p and not r.multiline]


@pytest.mark.parametrize(("rule", "text"), POSITIVES, ids=[f"{r.id}-{i}" for i, (r, _) in enumerate(POSITIVES)])
@pytest.mark.parametrize("after", [".", ",", ")", ".\n", "\"", "'", " ", "\\n"])
def test_a_key_followed_by_punctuation_is_found_whole(scanner: Scanner, rule: Rule, text: str, after: str) -> None:
    (finding,) = of_rule(scanner.scan_text(text), rule)
    secret = finding.secret
    variant = text.replace(secret, secret + after, 1)
    assert [f.secret for f in of_rule(scanner.scan_text(variant), rule)] == [secret]
    if text == secret:  # a bare key: also inside brackets
        assert [f.secret for f in of_rule(scanner.scan_text(f"({secret})"), rule)] == [secret]


def test_a_freshly_issued_gateway_key_is_found_with_its_owner() -> None:
    codec = KeyCodec(b"another-test-secret-0123456789abcdef0123456789", "class-token-gateway")
    scanner = Scanner(RULES, codec.check)
    issued = codec.issue("comp1000", "z1234567")
    (finding,) = scanner.scan_text(f"my token is {issued.token}.")
    assert finding.rule_id == "gateway_virtual_key" and finding.severity == "block"
    assert finding.virtual_key == issued.claims
    # a key of some other gateway (another secret) is not ours, and without a check the rule finds nothing
    other = KeyCodec(b"yet-another-secret-0123456789abcdef0123456789", "class-token-gateway").issue("c", "s")
    assert scanner.scan_text(other.token) == []
    assert Scanner(RULES).scan_text(issued.token) == []


def test_findings_never_show_the_secret() -> None:
    scanner = Scanner(RULES)
    key = next(t for r, t, p in EXAMPLES if p and r.id == "anthropic_api_key")
    (finding,) = scanner.scan_text(f"export ANTHROPIC_API_KEY={key}")
    assert key not in repr(finding)
    assert key not in finding.redacted and key not in finding.excerpt
    assert finding.redacted.startswith("sk-ant-api03-") and "[redacted " in finding.redacted
    assert len(finding.redacted.split("…")[0]) == len("sk-ant-api03-") + 3
    assert finding.excerpt.startswith("export ANTHROPIC_API_KEY=sk-ant-api03-")


def test_no_rule_matches_fewer_characters_than_the_junction_scan_assumes() -> None:
    for rule in RULES:
        if not rule.multiline:
            shortest = sre_parse.parse(rule.pattern.pattern, rule.pattern.flags).getwidth()[0]
            assert shortest >= MIN_SECRET_CHARS, rule.id


def test_a_bad_rule_file_is_refused_with_the_rule_named() -> None:
    good = '[[rule]]\nid = "x"\nkind = "X"\nseverity = "block"\nkeywords = ["ab"]\nregex = "ab+"\n'
    assert load_rules(good)[0].id == "x"
    with pytest.raises(ValueError, match=r"'x'.*severity"):
        load_rules(good.replace('"block"', '"panic"'))
    with pytest.raises(ValueError, match=r"'x'.*keywords"):
        load_rules(good.replace('["ab"]', "[]"))
    with pytest.raises(ValueError, match="'x'"):
        load_rules(good.replace('"ab+"', '"(ab"'))
    with pytest.raises(ValueError, match="unique"):
        load_rules(good + good)


"""The leaked-secret scanner: finds credentials in an outgoing Messages request before it leaves the gateway.

The rules are data (``gateway/data/leak_rules.toml``: regex, literal keywords, severity, examples). How one
request is scanned::

    body ──walk──> text pieces, in order (system, messages[i].content[j], tool_use inputs, tool results, …)
          │
          ├─ each piece: looked up in the Scanner's LRU by its length and its Python str hash (SipHash-1-3,
          │  64 bits, keyed at random per process and cached on the str: no encoding, no other hashing); a piece
          │  seen before -- Claude Code resends the whole conversation every turn -- takes its hits from there.
          │  An entry costs ~240 bytes and keeps no text. No one outside the process can aim at a collision; by
          │  chance, with 50,000 entries, one lookup in ~3.7e14 would take another text's result. With
          │  ``cache_bytes`` > 0 a "hot" tier in front also keeps that many bytes of texts, looked up by the text
          │  itself (hash, then an exact comparison); texts pushed out of it stay in the keyed, "cold", tier.
          │  New pieces are joined (as UTF-8)
          │  and searched once per group of keywords; a rule's regex runs only on the pieces holding one of its
          │  keywords, on the text and, when it holds backslashes, on its JSON-unescaped view
          │  (``\\n``, ``\\/``, ``\\u…``).
          │
          └─ each junction between consecutive pieces: the run of token characters ending piece i + the run
             starting piece i+1 (a wider window for multi-line rules) is scanned the same way, its result kept
             with piece i+1's cache entry together with the identity (serial) of piece i's; only matches that
             straddle the junction count, so a key split across two content blocks is still found.

Findings never carry the secret in their repr; :func:`redact_body` replaces every found secret (and its
JSON-escaped spellings) in the raw request bytes for the stored transcript.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import math
import re
import string
import sys
import tomllib
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from importlib.resources import files
from typing import Any, Literal, Protocol, cast

import orjson

log = logging.getLogger(__name__)

Severity = Literal["block", "alert"]
SEVERITIES: tuple[Severity, ...] = ("block", "alert")


class VirtualKeyClaims(Protocol):
    """What the gateway's own key check tells about a verified virtual key (gateway.keys.VirtualKeyClaims)."""

    @property
    def course(self) -> str: ...

    @property
    def student(self) -> str: ...

    @property
    def jti(self) -> str: ...


#: Verifies a JWT-shaped candidate's signature; returns its claims, or None when it is not one of our keys.
VirtualKeyCheck = Callable[[str], VirtualKeyClaims | None]

#: Characters a single-line secret can be made of (the union over the rules); used to cut junction windows.
TOKEN_CHARS = string.ascii_letters + string.digits + "_-.+/=~:"
_TOKEN_SET = frozenset(TOKEN_CHARS)
#: How far a junction window reaches into each neighbour (and, for multi-line secrets, into the next piece).
JUNCTION_REACH = 512
MULTILINE_REACH = 16_384
#: No rule matches fewer characters (checked by the rule tests); shorter runs across a junction are skipped.
MIN_SECRET_CHARS = 20
#: Fragments of a split secret shorter than this are not redacted on their own (too likely to occur elsewhere).
MIN_FRAGMENT = 8
#: Characters of context kept on each side of a finding in its (redacted) excerpt.
EXCERPT_CONTEXT = 32
_HASH_BITS = (1 << 64) - 1

_SEPARATOR = b"\x00"  # joins pieces for the batched keyword search; no keyword contains it
_SKIP_KEYS = frozenset({"type", "id", "tool_use_id", "signature", "encrypted_content", "encrypted_index",
                        "media_type", "cache_control"})


# --------------------------------------------------------------------------------------------------- rules


@dataclass(frozen=True, slots=True)
class Rule:
    id: str
    kind: str
    severity: Severity
    pattern: re.Pattern[str]
    keywords: tuple[str, ...]
    ignore_case: bool = False
    entropy: float | None = None
    allow: re.Pattern[str] | None = None
    verify: Literal["virtual_key"] | None = None
    multiline: bool = False
    anchored: bool = False
    positive: tuple[str, ...] = ()
    negative: tuple[str, ...] = ()


def _rule_from_table(table: Mapping[str, Any]) -> Rule:
    rule_id = str(table["id"])
    try:
        severity = table["severity"]
        if severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {SEVERITIES}, not {severity!r}")
        keywords = tuple(str(k) for k in table["keywords"])
        if not keywords or any(not k or _SEPARATOR in k.encode() for k in keywords):
            raise ValueError("keywords must be a non-empty list of non-empty strings")
        ignore_case = bool(table.get("ignore_case", False))
        if ignore_case and any(k != k.lower() for k in keywords):
            raise ValueError("an ignore_case rule's keywords must be lower case")
        pattern = re.compile(table["regex"])
        verify = table.get("verify")
        if verify not in (None, "virtual_key"):
            raise ValueError(f"unknown verify {verify!r}")
        entropy = table.get("entropy")
        allow = table.get("allow")
        examples = table.get("examples", {})
        return Rule(
            id=rule_id, kind=str(table["kind"]), severity=severity, pattern=pattern, keywords=keywords,
            ignore_case=ignore_case, entropy=float(entropy) if entropy is not None else None,
            allow=re.compile(allow) if allow else None, verify=verify, multiline=bool(table.get("multiline")),
            anchored=bool(table.get("anchored", False)),
            positive=tuple(examples.get("positive", ())), negative=tuple(examples.get("negative", ())),
        )
    except (KeyError, TypeError, ValueError, re.error) as exc:
        raise ValueError(f"leak rule {rule_id!r}: {exc}") from exc


def load_rules(toml_text: str | None = None) -> tuple[Rule, ...]:
    """The rules from ``toml_text``, or from the packaged ``gateway/data/leak_rules.toml``."""
    if toml_text is None:
        toml_text = (files("gateway") / "data" / "leak_rules.toml").read_text(encoding="utf-8")
    rules = tuple(_rule_from_table(t) for t in tomllib.loads(toml_text).get("rule", ()))
    ids = [r.id for r in rules]
    if len(set(ids)) != len(ids):
        raise ValueError(f"leak rule ids must be unique: {ids}")
    return rules


# ------------------------------------------------------------------------------------------------ helpers


def shannon_entropy(text: str) -> float:
    """Bits per character of ``text``'s own character distribution."""
    if not text:
        return 0.0
    n = len(text)
    return -sum(c / n * math.log2(c / n) for c in Counter(text).values())


_ESCAPE = re.compile(r"\\(?:u([0-9a-fA-F]{4})|([\"\\/bfnrt']))")
_SIMPLE_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t",
                   "'": "'"}


def _unescape_match(m: re.Match[str]) -> str:
    code = m.group(1)
    return chr(int(code, 16)) if code is not None else _SIMPLE_ESCAPES[m.group(2)]


def json_unescape(text: str, levels: int = 2) -> str:
    """``text`` with JSON string escapes undone, up to ``levels`` deep (a JSON string inside a JSON string)."""
    for _ in range(levels):
        if "\\" not in text:
            break
        unescaped = _ESCAPE.sub(_unescape_match, text)
        if unescaped == text:
            break
        text = unescaped
    return text


def redacted_form(secret: str, prefix_len: int) -> str:
    """``sk-ant-api03-AbC…[redacted 92 chars]``: the rule's non-secret prefix and at most 3 more characters."""
    body = len(secret) - prefix_len
    shown = prefix_len + (3 if body >= 24 else 0)
    return f"{secret[:shown]}…[redacted {len(secret) - shown} chars]"




# ------------------------------------------------------------------------------------------------ findings


@dataclass(frozen=True, slots=True)
class Finding:
    """One distinct secret found in a request.

    ``start``/``end`` are offsets into the text at ``location`` (into its JSON-unescaped view when the secret was
    only visible there). A secret split across two pieces has ``location`` ``"<first>+<second>"``, ``start`` in
    the first piece and ``end`` in the second.
    """

    rule_id: str
    kind: str
    severity: Severity
    redacted: str
    start: int
    end: int
    location: str
    virtual_key: VirtualKeyClaims | None = None
    excerpt: str = ""
    secret: str = field(default="", repr=False, compare=False)
    fragments: tuple[str, ...] = field(default=(), repr=False, compare=False)

    @property
    def blocking(self) -> bool:
        return self.severity == "block"


@dataclass(frozen=True, slots=True)
class _Hit:
    """A match in one text (or one junction window), before it is tied to a location."""

    rule: Rule
    start: int
    end: int
    secret: str
    prefix_len: int
    claims: VirtualKeyClaims | None
    view: int  # 0: the text as sent, 1: its JSON-unescaped view
    at_start: bool = False
    at_end: bool = False
    excerpt: str = ""
    fragments: tuple[str, ...] = ()  # junction hits: the parts in each piece
    extends: str | None = None  # junction hits continuing a piece's hit: that hit's secret


_NO_HITS: tuple[_Hit, ...] = ()


@dataclass(slots=True, eq=False)
class _Entry:
    """What a Scanner remembers about one text it has scanned."""

    hits: tuple[_Hit, ...]
    cold_key: int  # key in the cold tier: cold_key(text)
    serial: int  # unique per Scanner: names this text in a neighbour's junction result
    prev: int = -1  # serial of the piece just before this one when ``junction`` was computed
    junction: tuple[_Hit, ...] = _NO_HITS  # hits straddling the junction (that piece, this one)


def cold_key(text: str) -> int:
    """A text's key in the Scanner's cold tier: its str hash (cached on the str) and its length, in one int."""
    return (hash(text) & _HASH_BITS) | (len(text) << 64)


def _excerpt(text: str, hit_start: int, hit_end: int, hits: Sequence[_Hit]) -> str:
    """Context around one hit with every hit inside it replaced by its redacted form, on one line."""
    lo, hi = max(0, hit_start - EXCERPT_CONTEXT), min(len(text), hit_end + EXCERPT_CONTEXT)
    inside = sorted((h for h in hits if h.start < hi and h.end > lo), key=lambda h: h.start)
    for h in inside:  # never cut a secret in half at the edges of the window
        lo, hi = min(lo, h.start), max(hi, h.end)
    parts: list[str] = []
    pos = lo
    for h in inside:
        if h.start < pos:
            continue
        parts.append(text[pos:h.start])
        parts.append(redacted_form(h.secret, h.prefix_len))
        pos = h.end
    parts.append(text[pos:hi])
    return " ".join("".join(parts).split())


# ------------------------------------------------------------------------------------------------ walking


def request_pieces(body: Mapping[str, Any], *, locations: bool = True) -> list[tuple[str, str]]:
    """Every text the model would read, as ``(location, text)`` in request order (empty texts left out).

    ``locations=False`` gives the same texts in the same order with every location ``""`` (cheaper: the scanner
    needs the locations only when it has found something)."""
    out: list[tuple[str, str]] = []
    system = body.get("system")
    if isinstance(system, str):
        out.append(("system" if locations else "", system))
    elif isinstance(system, list):
        _walk_blocks(system, "system" if locations else "", out, locations)
    messages = body.get("messages")
    if isinstance(messages, list):
        for i, message in enumerate(messages):
            if not isinstance(message, dict):
                continue
            content = message.get("content")
            where = f"messages[{i}].content" if locations else ""
            if isinstance(content, str):
                out.append((where, content))
            elif isinstance(content, list):
                _walk_blocks(content, where, out, locations)
    return [(loc, text) for loc, text in out if text]


def _walk_blocks(blocks: list[Any], where: str, out: list[tuple[str, str]], named: bool) -> None:
    for j, block in enumerate(blocks):
        here = f"{where}[{j}]" if named else where
        if isinstance(block, str):
            out.append((here, block))
            continue
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind in ("image", "redacted_thinking"):
            continue
        if kind == "text" and isinstance(block.get("text"), str):
            out.append((here, block["text"]))
        elif kind == "thinking" and isinstance(block.get("thinking"), str):
            out.append((here, block["thinking"]))
        else:  # tool_use input, tool_result content, documents, search results, anything new: every string
            _walk_json(block, here, out, named)


def _walk_json(value: Any, where: str, out: list[tuple[str, str]], named: bool) -> None:
    if isinstance(value, str):
        out.append((where, value))
    elif isinstance(value, dict):
        if value.get("type") == "base64":  # image / PDF bytes
            return
        for key, item in value.items():
            if key not in _SKIP_KEYS:
                _walk_json(item, f"{where}.{key}" if named else where, out, named)
    elif isinstance(value, list):
        for k, item in enumerate(value):
            _walk_json(item, f"{where}[{k}]" if named else where, out, named)


# ------------------------------------------------------------------------------------------------ prefilter


def ascii_lower(text: str) -> str:
    """``text`` with only A-Z lower-cased: same length, same offsets (``str.lower`` can change both)."""
    if text.isascii():
        return text.lower()
    return text.encode("utf-8", "surrogatepass").lower().decode("utf-8", "surrogatepass")


@dataclass(slots=True)
class _Keyword:
    literal: bytes
    lower: bool  # searched in the ASCII-lower-cased text
    rules: set[int] = field(default_factory=set)
    children: list[_Keyword] = field(default_factory=list)  # keywords containing this one: searched only if it is


@dataclass(slots=True)
class _Probe:
    """One pass over the joined text for the root keywords that share a first byte.

    ``re`` finds a literal by its first byte about as fast as ``bytes.find``, and an alternation of literals that
    share their first byte almost as fast as one literal; literals with different first bytes would make it slow.
    Long single literals go through ``bytes.find``, which skips ahead by the needle's length.
    """

    lower: bool
    members: list[_Keyword]
    pattern: re.Pattern[bytes] | None = None

    def find(self, hay: bytes, start: int) -> int:
        if self.pattern is None:
            return hay.find(self.members[0].literal, start)
        m = self.pattern.search(hay, start)
        return -1 if m is None else m.start()


class _Prefilter:
    """Which rules can match which texts, from the rules' keywords.

    A keyword that contains another one (``sk-ant-`` contains ``sk-``; ``SECRET_ACCESS_KEY`` lower-cased contains
    ``secret``) is looked for only in texts holding the shorter one. The remaining (root) keywords are searched
    over all new texts joined, one pass for each first byte (see :class:`_Probe`).
    """

    def __init__(self, rules: Sequence[Rule]) -> None:
        nodes: dict[tuple[bytes, bool], _Keyword] = {}
        for index, rule in enumerate(rules):
            for literal in rule.keywords:
                key = (literal.encode(), rule.ignore_case)
                nodes.setdefault(key, _Keyword(*key)).rules.add(index)
        roots: list[_Keyword] = []
        for node in sorted(nodes.values(), key=lambda n: (len(n.literal), n.literal)):
            probe = node.literal.lower() if not node.lower else node.literal
            parents = [p for p in nodes.values()
                       if p is not node and len(p.literal) < len(node.literal)
                       and (p.literal in node.literal if p.lower == node.lower else p.lower and p.literal in probe)]
            if parents:
                max(parents, key=lambda p: len(p.literal)).children.append(node)
            else:
                roots.append(node)
        groups: dict[tuple[bytes, bool], list[_Keyword]] = {}
        for node in roots:
            groups.setdefault((node.literal[:1], node.lower), []).append(node)
        self.probes = [
            _Probe(lower, members) if len(members) == 1 and len(members[0].literal) >= 8 else _Probe(
                lower, members, re.compile(b"|".join(re.escape(m.literal) for m in members)))
            for (_, lower), members in groups.items()
        ]
        self.any_lower = any(node.lower for node in nodes.values())

    def candidates(self, datas: Sequence[bytes]) -> list[set[int]]:
        """For each UTF-8 text, the indexes of the rules worth running on it."""
        result: list[set[int]] = [set() for _ in datas]
        if not datas:
            return result
        joined = datas[0] if len(datas) == 1 else _SEPARATOR.join(datas)
        lowered = joined.lower() if self.any_lower else b""
        starts: list[int] = []
        pos = 0
        for data in datas:
            starts.append(pos)
            pos += len(data) + 1
        starts.append(pos)  # sentinel
        for probe in self.probes:
            hay = lowered if probe.lower else joined
            at = probe.find(hay, 0)
            while at != -1:
                index = bisect.bisect_right(starts, at) - 1
                lo, hi = starts[index], starts[index + 1] - 1
                self._expand(probe.members, joined[lo:hi], lowered[lo:hi], result[index])
                at = probe.find(hay, starts[index + 1]) if index + 2 < len(starts) else -1
        return result

    @staticmethod
    def _expand(nodes: Iterable[_Keyword], data: bytes, lowered: bytes, into: set[int]) -> None:
        stack = list(nodes)
        while stack:
            node = stack.pop()
            if node.literal in (lowered if node.lower else data):
                into |= node.rules
                stack.extend(node.children)


# ------------------------------------------------------------------------------------------------ scanner


class Scanner:
    """Scans requests with a fixed rule set; owns a bounded LRU of per-piece and per-junction results.

    ``cache_entries`` bounds the number of texts remembered, ``cache_bytes`` the memory of the texts kept in
    the hot tier (see the module docstring). By default no text is kept: a cold entry is found as fast as a hot
    one, and the texts would cost ~8 MB more per worker for no measurable gain (bench/README.md)."""

    def __init__(self, rules: Sequence[Rule], virtual_key_check: VirtualKeyCheck | None = None, *,
                 cache_entries: int = 65_536, cache_bytes: int = 0) -> None:
        self._rules = tuple(rules)
        self._check = virtual_key_check
        if not sys.flags.hash_randomization:
            log.warning("PYTHONHASHSEED is fixed: the leak scanner's cache keys (str hashes) are predictable, so a "
                        "crafted text could take another text's result; leave PYTHONHASHSEED unset")
        self._prefilter = _Prefilter(self._rules)
        multiline_keywords = sorted({k for r in self._rules if r.multiline for k in r.keywords})
        self._multiline_keywords = (re.compile("|".join(map(re.escape, multiline_keywords)))
                                    if multiline_keywords else None)
        self._multiline = frozenset(i for i, r in enumerate(self._rules) if r.multiline)
        self._hot: OrderedDict[str, _Entry] = OrderedDict()
        self._hot_bytes = 0
        self._cold: OrderedDict[int, _Entry] = OrderedDict()
        # Junctions whose right-hand text already keeps another neighbour's result (a text that recurs after
        # different pieces, e.g. a tool name): (left serial, right serial) -> hits, LRU, a quarter of the entries.
        self._pairs: OrderedDict[tuple[int, int], tuple[_Hit, ...]] = OrderedDict()
        self._pairs_max = cache_entries // 4
        self._serials = itertools.count()
        self._cache_entries = cache_entries
        self._cache_bytes = cache_bytes
        self.pieces_scanned = 0
        self.pieces_cached = 0
        self.chars_scanned = 0

    @classmethod
    def load(cls, virtual_key_check: VirtualKeyCheck | None = None, *, rules: Sequence[Rule] | None = None,
             cache_entries: int = 65_536, cache_bytes: int = 0) -> Scanner:
        """A scanner over the packaged rules. Without ``virtual_key_check`` the virtual-key rule finds nothing."""
        return cls(load_rules() if rules is None else rules, virtual_key_check, cache_entries=cache_entries,
                   cache_bytes=cache_bytes)

    @property
    def rules(self) -> tuple[Rule, ...]:
        return self._rules

    @property
    def cache_size(self) -> int:
        return len(self._hot) + len(self._cold) + len(self._pairs)

    @property
    def cache_text_bytes(self) -> int:
        """Memory of the texts the hot tier keeps (at most ``cache_bytes``)."""
        return self._hot_bytes

    @staticmethod
    def blocking(findings: Iterable[Finding]) -> list[Finding]:
        """The findings that must stop the request."""
        return [f for f in findings if f.blocking]

    # -- public entry points

    def scan_request(self, body: Mapping[str, Any]) -> list[Finding]:
        """Distinct secrets in a Messages request body (already parsed), in request order."""
        texts = [text for _, text in request_pieces(body, locations=False)]
        entries = self._entries(texts)
        junctions = self._junctions(texts, entries)
        if not any(e.hits for e in entries) and not any(junctions):
            return []  # the common case: the locations are never needed
        pieces = request_pieces(body)
        assert [text for _, text in pieces] == texts
        return self._findings(pieces, [e.hits for e in entries], junctions)

    def scan_text(self, text: str, location: str = "text") -> list[Finding]:
        return self.scan_pieces([(location, text)] if text else [])

    def scan_pieces(self, pieces: Sequence[tuple[str, str]]) -> list[Finding]:
        texts = [text for _, text in pieces]
        entries = self._entries(texts)
        return self._findings(pieces, [e.hits for e in entries], self._junctions(texts, entries))

    # -- cache

    def _entries(self, texts: list[str]) -> list[_Entry]:
        """Each text's cache entry; texts seen for the first time are scanned (and remembered) here."""
        found: list[_Entry | None] = []
        missing: list[int] = []
        if self._cache_bytes:
            hot = self._hot
            for i, text in enumerate(texts):
                entry = hot.get(text)  # str hash (cached on the str), then identity or an exact comparison
                if entry is None:
                    missing.append(i)
                else:
                    hot.move_to_end(text)
                found.append(entry)
        else:  # no hot tier: the cold one, by key
            cold = self._cold
            for i, text in enumerate(texts):
                key = cold_key(text)
                entry = cold.get(key)
                if entry is None:
                    missing.append(i)
                else:
                    cold.move_to_end(key)
                found.append(entry)
        if not missing:
            self.pieces_cached += len(texts)
            return cast(list[_Entry], found)  # no None in it
        here: dict[str, _Entry] = {}  # entries found or made in this call (the LRU may drop them meanwhile)
        fresh: dict[str, int] = {}  # text -> its cold key, to scan
        for i in missing:
            text = texts[i]
            if text in here or text in fresh:
                continue
            key = cold_key(text)
            entry = self._cold.pop(key, None)
            if entry is None:
                fresh[text] = key
            else:
                here[text] = entry
                self._admit(text, entry)
        if fresh:
            scanned = self._scan_fresh_pieces(list(fresh), [text.encode("utf-8", "surrogatepass") for text in fresh])
            for (text, key), hits in zip(fresh.items(), scanned, strict=True):
                here[text] = entry = _Entry(hits, key, next(self._serials))
                self._admit(text, entry)
        self.pieces_cached += len(texts) - len(fresh)
        return [entry if entry is not None else here[texts[i]] for i, entry in enumerate(found)]

    def _admit(self, text: str, entry: _Entry) -> None:
        """Remember ``entry`` (in the hot tier if texts are kept, else the cold one); demote (bytes) and drop
        (entries) the least recently used."""
        hot, cold = self._hot, self._cold
        if self._cache_bytes:
            hot[text] = entry
            self._hot_bytes += sys.getsizeof(text)  # what a text costs the hot tier (not kept per entry: 40 B each)
            while self._hot_bytes > self._cache_bytes and hot:
                old_text, old = hot.popitem(last=False)
                self._hot_bytes -= sys.getsizeof(old_text)
                cold[old.cold_key] = old
        else:  # no texts kept (the default): straight to the cold tier
            cold[entry.cold_key] = entry
        while len(hot) + len(cold) > self._cache_entries - self._pairs_max:
            if cold:
                cold.popitem(last=False)
            else:
                old_text, _ = hot.popitem(last=False)
                self._hot_bytes -= sys.getsizeof(old_text)

    def _junctions(self, texts: list[str], entries: list[_Entry]) -> list[tuple[_Hit, ...]]:
        """Hits straddling each junction of consecutive pieces: kept with the right-hand piece's entry as long
        as the piece before it is the same text (same serial), else scanned."""
        results: list[tuple[_Hit, ...]] = []
        fresh: list[int] = []
        pairs = self._pairs
        for i in range(len(entries) - 1):
            right = entries[i + 1]
            if right.prev == entries[i].serial:
                results.append(right.junction)
                continue
            key = (entries[i].serial, right.serial)
            cached = pairs.get(key)
            if cached is None:
                fresh.append(i)
                results.append(_NO_HITS)
            else:
                pairs.move_to_end(key)
                results.append(cached)
        self.pieces_cached += len(results) - len(fresh)
        if fresh:
            scanned = self._scan_fresh_junctions(
                [(texts[i], texts[i + 1], entries[i].hits, entries[i + 1].hits) for i in fresh])
            for i, hits in zip(fresh, scanned, strict=True):
                results[i] = hits
                right = entries[i + 1]
                if right.prev < 0:
                    right.prev, right.junction = entries[i].serial, hits
                elif self._pairs_max:
                    pairs[(entries[i].serial, right.serial)] = hits
                    if len(pairs) > self._pairs_max:
                        pairs.popitem(last=False)
        return results

    # -- matching

    def _match(self, rule_ids: Iterable[int], text: str, view: int) -> list[_Hit]:
        lowered: str | None = None
        hits: list[_Hit] = []
        for index in sorted(rule_ids):
            rule = self._rules[index]
            if rule.verify == "virtual_key" and self._check is None:
                continue
            target = text
            if rule.ignore_case:
                if lowered is None:
                    lowered = ascii_lower(text)
                target = lowered
            for m in _anchored_matches(rule, target) if rule.anchored else rule.pattern.finditer(target):
                hit = self._accept(rule, m, text, view)
                if hit is not None:
                    hits.append(hit)
        hits = _drop_shadowed(hits)
        return [replace(h, excerpt=_excerpt(text, h.start, h.end, hits)) for h in hits]

    def _accept(self, rule: Rule, m: re.Match[str], text: str, view: int) -> _Hit | None:
        groups = m.re.groupindex
        start, end = m.span("secret") if "secret" in groups else m.span()
        secret = text[start:end]
        prefix_len = max(0, m.end("prefix") - start) if "prefix" in groups and m.start("prefix") >= 0 else 0
        if rule.entropy is not None and shannon_entropy(secret[prefix_len:]) < rule.entropy:
            return None
        if rule.allow is not None and rule.allow.search(secret):
            return None
        claims: VirtualKeyClaims | None = None
        if rule.verify == "virtual_key":
            claims = self._check(secret) if self._check is not None else None
            if claims is None:
                return None
        return _Hit(rule, start, end, secret, prefix_len, claims, view,
                    at_start=start == 0, at_end=end == len(text))

    def _scan_views(self, text: str, rule_ids: set[int]) -> tuple[_Hit, ...]:
        hits = self._match(rule_ids, text, 0)
        if "\\" in text:
            view = json_unescape(text)
            if view != text:
                seen = {(h.rule.id, h.secret) for h in hits}
                hits += [h for h in self._match(rule_ids, view, 1) if (h.rule.id, h.secret) not in seen]
        return tuple(hits)

    def _scan_fresh_pieces(self, texts: list[str], datas: list[bytes]) -> list[tuple[_Hit, ...]]:
        self.pieces_scanned += len(texts)
        self.chars_scanned += sum(map(len, texts))
        candidates = self._prefilter.candidates(datas)
        return [self._scan_views(t, c) if c else _NO_HITS for t, c in zip(texts, candidates, strict=True)]

    # -- junctions

    def _scan_fresh_junctions(
        self, pairs: list[tuple[str, str, tuple[_Hit, ...], tuple[_Hit, ...]]],
    ) -> list[tuple[_Hit, ...]]:
        """Secrets straddling the junction of each ``(left, right)`` pair of consecutive pieces."""
        windows: list[str] = []
        owners: list[tuple[int, int, int, bool]] = []  # (pair, junction offset in the window, view, multi-line)

        def add(p: int, tail: str, head: str, multiline: bool) -> None:
            views = [(tail, head)]
            if "\\" in tail or "\\" in head:
                views.append((json_unescape(tail), json_unescape(head)))
            for view, (t, h) in enumerate(views):
                if not multiline:  # a single-line secret is one run of token characters
                    t, h = t[len(t.rstrip(TOKEN_CHARS)):], h[:len(h) - len(h.lstrip(TOKEN_CHARS))]
                    if len(t) + len(h) < MIN_SECRET_CHARS:
                        continue
                if t and h:
                    windows.append(t + h)
                    owners.append((p, len(t), view, multiline))

        token_chars, reach, near = _TOKEN_SET, JUNCTION_REACH, self._multiline_keywords
        for p, (left, right, left_hits, _) in enumerate(pairs):
            if left[-1] in token_chars and right[0] in token_chars:
                add(p, left[-reach:], right[:reach], False)
            if near is not None:
                # A multi-line secret (PEM) crosses the junction if one runs off the end of `left`, or if its
                # opening marker (holding the keyword) ends close to the junction.
                starts = [h.start for h in left_hits if h.at_end and h.rule.multiline]
                if starts or near.search(left, len(left) - reach) or near.search(right, 0, reach // 8):
                    add(p, left[min([max(0, len(left) - reach), *starts]):], right[:MULTILINE_REACH], True)
        results: list[list[_Hit]] = [[] for _ in pairs]
        for (p, cut, view, multiline), window, rule_ids in zip(
                owners, windows, self._prefilter.candidates([w.encode("utf-8", "surrogatepass") for w in windows]),
                strict=True):
            rule_ids = rule_ids & self._multiline if multiline else rule_ids - self._multiline
            if rule_ids:
                _, _, left_hits, right_hits = pairs[p]
                results[p] += self._junction_hits(window, cut, view, rule_ids, left_hits, right_hits)
        return [tuple(r) for r in results]

    def _junction_hits(self, window: str, cut: int, view: int, rule_ids: set[int],
                       left_hits: tuple[_Hit, ...], right_hits: tuple[_Hit, ...]) -> list[_Hit]:
        out: list[_Hit] = []
        for hit in self._match(rule_ids, window, view):
            if not hit.start < cut < hit.end:
                continue
            if any(h.rule is hit.rule and h.at_start and h.view == view for h in right_hits):
                continue  # the next piece's own hit already covers it
            first, second = window[hit.start:cut], window[cut:hit.end]
            continued = next((h for h in left_hits if h.rule is hit.rule and h.at_end and h.view == view), None)
            if continued is not None:  # the secret found at the end of `left` runs on into `right`
                out.append(replace(hit, fragments=(second,), extends=continued.secret))
            else:
                out.append(replace(hit, fragments=(first, second)))
        return out

    # -- assembly

    def _findings(self, pieces: Sequence[tuple[str, str]], piece_hits: list[tuple[_Hit, ...]],
                  junction_hits: list[tuple[_Hit, ...]]) -> list[Finding]:
        found: dict[tuple[str, str], Finding] = {}
        extensions: list[_Hit] = []
        for i, (location, _) in enumerate(pieces):
            for hit in piece_hits[i]:
                found.setdefault((hit.rule.id, hit.secret), _finding(hit, location, hit.start, hit.end))
            if i < len(junction_hits):
                where = f"{location}+{pieces[i + 1][0]}"
                for hit in junction_hits[i]:
                    if hit.extends is not None:
                        extensions.append(hit)
                        continue
                    start = len(pieces[i][1]) - len(hit.fragments[0])
                    found.setdefault((hit.rule.id, hit.secret),
                                     _finding(hit, where, max(0, start), len(hit.fragments[1])))
        for hit in extensions:  # a secret found at the end of one piece may run on into the next: redact that too
            assert hit.extends is not None
            base = found.get((hit.rule.id, hit.extends))
            if base is not None:
                found[(hit.rule.id, hit.extends)] = replace(base, fragments=base.fragments + hit.fragments)
        blocked = [f.secret for f in found.values() if f.severity == "block"]
        return [f for f in found.values()  # an alert about text that holds a blocked secret adds nothing
                if f.severity == "block" or not any(b in f.secret or f.secret in b for b in blocked)]


def _anchored_matches(rule: Rule, text: str) -> Iterator[re.Match[str]]:
    """Matches of an anchored rule: tried only where one of its keywords starts, never overlapping."""
    starts: set[int] = set()
    for keyword in rule.keywords:
        at = text.find(keyword)
        while at != -1:
            starts.add(at)
            at = text.find(keyword, at + 1)
    done = 0
    for at in sorted(starts):
        if at >= done:
            m = rule.pattern.match(text, at)
            if m is not None:
                done = m.end()
                yield m


def _finding(hit: _Hit, location: str, start: int, end: int) -> Finding:
    return Finding(
        rule_id=hit.rule.id, kind=hit.rule.kind, severity=hit.rule.severity,
        redacted=redacted_form(hit.secret, hit.prefix_len), start=start, end=end, location=location,
        virtual_key=hit.claims, excerpt=hit.excerpt, secret=hit.secret, fragments=hit.fragments or (hit.secret,),
    )


def _drop_shadowed(hits: list[_Hit]) -> list[_Hit]:
    """Alert-level hits overlapping a block-level hit add nothing (``API_KEY = "sk-ant-…"``)."""
    blocks = [h for h in hits if h.rule.severity == "block"]
    if not blocks or len(blocks) == len(hits):
        return hits
    return [h for h in hits if h.rule.severity == "block"
            or not any(b.start < h.end and h.start < b.end for b in blocks)]


# ------------------------------------------------------------------------------------------------ redaction


def _json_escaped(text: str) -> str:
    return orjson.dumps(text).decode()[1:-1]


def _spellings(fragment: str) -> set[bytes]:
    """How ``fragment`` can appear in raw JSON bytes: as is, escaped once or twice, with or without ``\\/``."""
    level0 = {fragment}
    level1 = {_json_escaped(s) for s in level0}
    level1 |= {s.replace("/", "\\/") for s in level1}
    level2 = {_json_escaped(s) for s in level1}
    level2 |= {s.replace("/", "\\/") for s in level2}
    return {s.encode() for s in level0 | level1 | level2}


def redact_body(body: bytes, findings: Iterable[Finding]) -> bytes:
    """The raw request body with every found secret replaced by ``[REDACTED:<rule_id>]``.

    Works on the bytes as sent: each secret (and each part of a secret split across content blocks) is replaced
    wherever it appears, in any of its JSON-escaped spellings.
    """
    replacements: dict[bytes, bytes] = {}
    for finding in findings:
        marker = f"[REDACTED:{finding.rule_id}]".encode()
        parts = [finding.secret, *finding.fragments]
        for part in parts:
            if part and (part == finding.secret or len(part) >= MIN_FRAGMENT):
                for spelling in _spellings(part):
                    replacements.setdefault(spelling, marker)
    for spelling in sorted(replacements, key=len, reverse=True):
        body = body.replace(spelling, replacements[spelling])
    return body


def describe(findings: Sequence[Finding]) -> str:
    """``Anthropic API key`` / ``Anthropic API key and GitHub token``: the kinds found, each named once."""
    kinds = list(dict.fromkeys(f.kind for f in findings))
    return kinds[0] if len(kinds) == 1 else ", ".join(kinds[:-1]) + " and " + kinds[-1]


def block_message(findings: Sequence[Finding], contact: str) -> str:
    """What the student reads in the 403: what was found (never the secret), what happened, whom to contact."""
    blocking = Scanner.blocking(findings) or list(findings)
    message = (f"This request was blocked because it contains a secret ({describe(blocking)}); it was not sent "
               "on to Anthropic. Your gateway key has been suspended as a precaution.")
    if any(f.virtual_key is not None for f in blocking):
        message += " The gateway key found in the request has been suspended too."
    return (message + " Revoke or rotate the leaked secret, remove it from your files and conversation, then "
            f"contact {contact} to have your key reinstated.")


def iter_rule_examples(rules: Iterable[Rule]) -> Iterator[tuple[Rule, str, bool]]:
    """Every example of every rule as ``(rule, text, should_match)`` (what the rule tests run)."""
    for rule in rules:
        for text in rule.positive:
            yield rule, text, True
        for text in rule.negative:
            yield rule, text, False

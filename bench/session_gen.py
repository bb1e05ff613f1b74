"""A deterministic generator of realistic Claude Code sessions, for benchmarks and tests.

Each turn is what Claude Code 2.x sends and gets back: ``POST /v1/messages?beta=true`` with ~32 KB of
``tools``, a ~7 KB ``system`` (two text blocks with ``cache_control``), ``metadata.user_id``, ``max_tokens``
128000, ``thinking``, ``stream: true`` and the whole conversation so far: a first user message with
``<system-reminder>`` context (~10 KB), then per turn an assistant message (thinking + text + ``tool_use``)
and a user message with the ``tool_result`` (file contents, command output). The ``cache_control`` marker
sits on the last block of the last message, so it moves every turn, as it does in Claude Code. Every few
turns the student types a new prompt instead of a tool result. Bodies are compact JSON with Claude Code's
key order.

The response of turn ``n`` is the SSE stream of the assistant message that turn ``n+1`` resends.

    >>> turns = generate_session(seed=7)
    >>> len(turns), turns[0].body[:30]
    (30, b'{"model":"claude-opus-5-5","me')
"""

from __future__ import annotations

import base64
import random
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.fakeupstream import sse_frame

MODEL = "claude-opus-5-5"
CLAUDE_CODE_VERSION = "2.1.328"
BETAS = (
    "claude-code-20250219,interleaved-thinking-2025-05-14,fine-grained-tool-streaming-2025-05-14,"
    "context-management-2025-06-27,oauth-2025-04-20,effort-2025-11-24,tool-examples-2025-10-29,"
    "advanced-tool-use-2025-11-20"
)

_WORDS = str.split(
    "the a to of and in is it that for you this with on be are as can not file use if or when by will "
    "should from an tool command user code run any all must only do your have more use new make sure "
    "before after then each other which these output path line test function error value change read "
    "write edit search directory project build return call check result current instead example "
    "following always never also task need may one two first next important note without into than so up "
    "there been would could their what about such like list using used within between most some same "
    "include including provide provided message content request response data type string number object "
    "array default option parameter absolute relative pattern match matches working git commit branch "
    "status diff log history repository python module class method import package install dependency "
    "version update remove create delete student course assignment grade lab exercise solution question "
    "answer explain understand implement"
)
_IDENTS = str.split(
    "parse load save config items count total index buffer node tree graph queue stack cache result "
    "value score grade student course submission report table row column matrix vector token batch "
    "window"
)
_TOOL_NAMES = (
    "Task", "Bash", "Glob", "Grep", "ExitPlanMode", "Read", "Edit", "Write", "NotebookEdit", "WebFetch",
    "TodoWrite", "WebSearch", "BashOutput", "KillShell", "Skill", "SlashCommand", "AskUserQuestion",
)


def _sentence(rng: random.Random, low: int = 6, high: int = 22) -> str:
    words = [rng.choice(_WORDS) for _ in range(rng.randint(low, high))]
    words[0] = words[0].capitalize()
    if rng.random() < 0.2:
        words.insert(rng.randrange(len(words)), f"`{rng.choice(_IDENTS)}_{rng.choice(_IDENTS)}`")
    return " ".join(words) + rng.choice("...!:")


def _prose(rng: random.Random, size: int) -> str:
    out: list[str] = []
    length = 0
    while length < size:
        if rng.random() < 0.25:
            line = "- " + _sentence(rng, 4, 14)
        else:
            line = " ".join(_sentence(rng) for _ in range(rng.randint(1, 4)))
        out.append(line)
        length += len(line) + 1
        if rng.random() < 0.15:
            out.append("")
    return "\n".join(out)[:size]


def _code(rng: random.Random, size: int) -> str:
    lines: list[str] = []
    length = 0
    while length < size:
        name = f"{rng.choice(_IDENTS)}_{rng.choice(_IDENTS)}"
        args = ", ".join(rng.sample(_IDENTS, rng.randint(1, 3)))
        block = [f"def {name}({args}):", f'    """{_sentence(rng, 4, 10)}"""']
        for _ in range(rng.randint(2, 8)):
            a, b = rng.choice(_IDENTS), rng.choice(_IDENTS)
            block.append(rng.choice([
                f"    {a} = {b}.get({rng.randint(0, 99)})",
                f"    if {a} > {rng.randint(0, 1000)}:",
                f"        return {a} + {b}",
                f"    for {a} in {b}:",
                f"        {b}.append({a} * {rng.randint(1, 9)})",
                f"    # {_sentence(rng, 3, 9)}",
            ]))
        block.append(f"    return {rng.choice(_IDENTS)}")
        block.append("")
        lines.extend(block)
        length += sum(len(line) + 1 for line in block)
    return "\n".join(lines)[:size]


def _numbered(text: str) -> str:
    return "\n".join(f"{i:>6}\t{line}" for i, line in enumerate(text.split("\n"), start=1))


def _tool_id(rng: random.Random) -> str:
    return "toolu_01" + "".join(rng.choice("ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz123456789")
                                for _ in range(22))


def make_tools(size: int = 32_000, seed: int = 1) -> list[dict[str, Any]]:
    """Tool definitions of about ``size`` bytes of JSON (the same for every session of one client version)."""
    rng = random.Random(seed)
    tools: list[dict[str, Any]] = []
    names = _TOOL_NAMES[: max(1, min(len(_TOOL_NAMES), size // 1800))]
    per_tool = size // len(names)
    for name in names:
        props: dict[str, Any] = {}
        for _ in range(rng.randint(1, 5)):
            prop = f"{rng.choice(_IDENTS)}_{rng.choice(_IDENTS)}"
            props[prop] = {"type": rng.choice(["string", "number", "boolean"]),
                           "description": _sentence(rng, 6, 18)}
        schema = {"type": "object", "properties": props, "required": list(props)[:1],
                  "additionalProperties": False, "$schema": "http://json-schema.org/draft-07/schema#"}
        overhead = len(orjson.dumps({"name": name, "description": "", "input_schema": schema}))
        description = _prose(rng, max(100, per_tool - overhead))
        tools.append({"name": name, "description": description, "input_schema": schema})
    return tools


def make_system(size: int = 7_000, seed: int = 0, cwd: str = "/home/student/project") -> list[dict[str, Any]]:
    rng = random.Random(seed * 7919 + 1)
    env = (f"\n<env>\nWorking directory: {cwd}\nIs directory a git repo: Yes\nPlatform: linux\n"
           f"OS Version: Linux 6.8.0\nToday's date: 2026-11-{rng.randint(1, 28):02d}\n</env>\n"
           f"You are powered by the model named Opus 5.5. The exact model ID is {MODEL}.\n")
    head = "You are Claude Code, Anthropic's official CLI for Claude."
    body = _prose(random.Random(2), max(100, size - len(head) - len(env) - 150)) + env
    return [
        {"type": "text", "text": head, "cache_control": {"type": "ephemeral"}},
        {"type": "text", "text": body, "cache_control": {"type": "ephemeral"}},
    ]


@dataclass(frozen=True)
class Turn:
    body: bytes  # the request body, exactly as sent
    events: list[tuple[str, dict[str, Any]]]  # the streamed response (fakeupstream.Event shape)
    sse: bytes  # the response's raw SSE bytes
    message: dict[str, Any]  # the reassembled assistant message
    usage: dict[str, Any]


@dataclass
class SessionConfig:
    turns: int = 30
    tools_bytes: int = 32_000
    system_bytes: int = 7_000
    first_user_bytes: int = 10_000
    result_bytes: tuple[int, int] = (600, 6_000)  # size range of a tool result
    reply_bytes: tuple[int, int] = (60, 500)  # size range of the assistant's text
    prompt_every: int = 6  # the student types a new prompt every this many turns
    thinking: bool = True
    model: str = MODEL
    extra: dict[str, Any] = field(default_factory=dict)  # more top-level body fields


def _assistant(rng: random.Random, thinking: bool, final: bool, size: tuple[int, int]) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    if thinking:
        signature = base64.b64encode(rng.randbytes(rng.randint(200, 400))).decode()
        content.append({"type": "thinking", "thinking": _prose(rng, rng.randint(150, 900)),
                        "signature": signature})
    content.append({"type": "text", "text": _prose(rng, rng.randint(size[0], size[1] if not final else 3 * size[1]))})
    if not final:
        tool = rng.choice(["Read", "Bash", "Grep", "Edit", "Glob"])
        path = f"/home/student/project/src/{rng.choice(_IDENTS)}_{rng.choice(_IDENTS)}.py"
        inputs: dict[str, Any] = {
            "Read": {"file_path": path},
            "Bash": {"command": f"python -m pytest tests/test_{rng.choice(_IDENTS)}.py -q",
                     "description": "Run the tests"},
            "Grep": {"pattern": f"def {rng.choice(_IDENTS)}", "path": "/home/student/project",
                     "output_mode": "content", "-n": True},
            "Edit": {"file_path": path, "old_string": _code(rng, rng.randint(size[0], size[1])),
                     "new_string": _code(rng, rng.randint(size[0], size[1]))},
            "Glob": {"pattern": "**/*.py"},
        }
        content.append({"type": "tool_use", "id": _tool_id(rng), "name": tool, "input": inputs[tool]})
    return {"role": "assistant", "content": content}


def _tool_result(rng: random.Random, tool_use: dict[str, Any], size_range: tuple[int, int]) -> dict[str, Any]:
    size = rng.randint(*size_range)
    name = tool_use["name"]
    if name == "Read":
        text = _numbered(_code(rng, size))
    elif name == "Bash":
        text = "\n".join(f"tests/test_{rng.choice(_IDENTS)}.py::test_{rng.choice(_IDENTS)} "
                         f"{rng.choice(['PASSED', 'PASSED', 'FAILED'])}" for _ in range(max(1, size // 60)))
    elif name == "Glob":
        text = "\n".join(f"/home/student/project/src/{rng.choice(_IDENTS)}_{rng.choice(_IDENTS)}.py"
                         for _ in range(max(1, size // 50)))
    elif name == "Edit":
        text = "The file has been updated. Here's the result of running `cat -n` on a snippet:\n" + _numbered(
            _code(rng, size // 2))
    else:
        text = "\n".join(f"src/{rng.choice(_IDENTS)}.py:{rng.randint(1, 400)}:{_code(rng, 60)}"
                         for _ in range(max(1, size // 80)))
    return {"tool_use_id": tool_use["id"], "type": "tool_result", "content": text}


def _with_marker(message: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``message`` with cache_control on its last block (Claude Code moves it every turn)."""
    content = [dict(block) for block in message["content"]]
    content[-1]["cache_control"] = {"type": "ephemeral"}
    return {"role": message["role"], "content": content}


def _stream(message: dict[str, Any], rng: random.Random, model: str, input_tokens: int) -> tuple[
        list[tuple[str, dict[str, Any]]], dict[str, Any]]:
    output_tokens = max(1, len(orjson.dumps(message["content"])) // 4)
    written = rng.randint(500, 4000)
    usage: dict[str, Any] = {
        "input_tokens": rng.randint(3, 12), "cache_creation_input_tokens": written,
        "cache_read_input_tokens": input_tokens,
        "cache_creation": {"ephemeral_5m_input_tokens": written, "ephemeral_1h_input_tokens": 0},
        "output_tokens": output_tokens, "service_tier": "standard"}
    msg_id = "msg_01" + uuid.UUID(int=rng.getrandbits(128)).hex[:22]
    start: dict[str, Any] = {
        "id": msg_id, "type": "message", "role": "assistant", "model": model, "content": [],
        "stop_reason": None, "stop_sequence": None, "usage": {**usage, "output_tokens": 1}}
    events: list[tuple[str, dict[str, Any]]] = [
        ("message_start", {"type": "message_start", "message": start})]
    for index, block in enumerate(message["content"]):
        kind = block["type"]
        if kind == "thinking":
            empty: dict[str, Any] = {"type": "thinking", "thinking": "", "signature": ""}
            deltas = [{"type": "thinking_delta", "thinking": c} for c in _chunks(block["thinking"], rng)]
            deltas.append({"type": "signature_delta", "signature": block["signature"]})
        elif kind == "text":
            empty = {"type": "text", "text": ""}
            deltas = [{"type": "text_delta", "text": c} for c in _chunks(block["text"], rng)]
        else:
            empty = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
            deltas = [{"type": "input_json_delta", "partial_json": c}
                      for c in _chunks(orjson.dumps(block["input"]).decode(), rng)]
        events.append(("content_block_start", {"type": "content_block_start", "index": index,
                                               "content_block": empty}))
        if index == 0:
            events.append(("ping", {"type": "ping"}))
        events.extend(("content_block_delta", {"type": "content_block_delta", "index": index, "delta": d})
                      for d in deltas)
        events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
    stop = "tool_use" if message["content"][-1]["type"] == "tool_use" else "end_turn"
    events.append(("message_delta", {"type": "message_delta",
                                     "delta": {"stop_reason": stop, "stop_sequence": None},
                                     "usage": {"output_tokens": output_tokens}}))
    events.append(("message_stop", {"type": "message_stop"}))
    full = {**start, "content": message["content"], "stop_reason": stop, "usage": usage}
    return events, full


def _chunks(text: str, rng: random.Random) -> list[str]:
    out = []
    at = 0
    while at < len(text):
        step = rng.randint(8, 60)
        out.append(text[at : at + step])
        at += step
    return out or [""]


def generate_session(seed: int = 0, config: SessionConfig | None = None) -> list[Turn]:
    """All turns of one session; the same seed gives the same bytes."""
    cfg = config or SessionConfig()
    rng = random.Random(seed)
    session_id = str(uuid.UUID(int=rng.getrandbits(128)))
    user_hash = rng.randbytes(32).hex()
    tools = make_tools(cfg.tools_bytes)
    system = make_system(cfg.system_bytes, seed)
    reminder = (f"<system-reminder>\nAs you answer the user's questions, you can use the following context:\n"
                f"# claudeMd\nContents of /home/student/project/CLAUDE.md:\n\n"
                f"{_prose(rng, max(100, cfg.first_user_bytes - 1200))}\n</system-reminder>\n")
    first = {"role": "user", "content": [
        {"type": "text", "text": reminder},
        {"type": "text", "text": _sentence(rng, 10, 40)},
        {"type": "text", "text": "<system-reminder>\nThe TodoWrite tool hasn't been used recently.\n"
                                 "</system-reminder>"},
    ]}
    messages: list[dict[str, Any]] = [first]
    turns: list[Turn] = []
    for n in range(cfg.turns):
        wire = [*messages[:-1], _with_marker(messages[-1])]
        payload: dict[str, Any] = {
            "model": cfg.model, "messages": wire, "system": system, "tools": tools,
            "metadata": {"user_id": f"user_{user_hash}_account__session_{session_id}"},
            "max_tokens": 128000,
        }
        if cfg.thinking:
            payload["thinking"] = {"budget_tokens": 31999, "type": "enabled"}
        payload.update(cfg.extra)
        payload["stream"] = True
        body = orjson.dumps(payload)
        final = (n + 1) % cfg.prompt_every == 0 or n == cfg.turns - 1
        reply = _assistant(rng, cfg.thinking, final, cfg.reply_bytes)
        events, full = _stream(reply, rng, cfg.model, len(body) // 4)
        turns.append(Turn(body, events, b"".join(sse_frame(e, d) for e, d in events), full, full["usage"]))
        messages.append(reply)
        if final:
            messages.append({"role": "user", "content": [{"type": "text", "text": _sentence(rng, 8, 40)}]})
        else:
            messages.append({"role": "user", "content": [
                _tool_result(rng, reply["content"][-1], cfg.result_bytes)]})
    return turns


def session_bodies(seed: int = 0, config: SessionConfig | None = None) -> list[bytes]:
    return [turn.body for turn in generate_session(seed, config)]


def session_headers(seed: int = 0) -> dict[str, str]:
    """The headers Claude Code sends with every turn of the session (without its credentials)."""
    rng = random.Random(seed)
    return {
        "accept": "application/json",
        "anthropic-beta": BETAS,
        "anthropic-dangerous-direct-browser-access": "true",
        "anthropic-version": "2023-06-01",
        "content-type": "application/json",
        "user-agent": f"claude-cli/{CLAUDE_CODE_VERSION} (external, cli)",
        "x-app": "cli",
        "x-claude-code-session-id": str(uuid.UUID(int=rng.getrandbits(128))),
        "x-stainless-arch": "x64",
        "x-stainless-lang": "js",
        "x-stainless-os": "Linux",
        "x-stainless-package-version": "0.70.0",
        "x-stainless-retry-count": "0",
        "x-stainless-runtime": "node",
        "x-stainless-runtime-version": "v22.11.0",
        "x-stainless-timeout": "600",
    }


if __name__ == "__main__":
    session = generate_session()
    sizes = [len(t.body) for t in session]
    print(f"{len(sizes)} turns, first {sizes[0]} B, last {sizes[-1]} B, total {sum(sizes)} B")
    print(f"tools {len(orjson.dumps(make_tools()))} B, system {len(orjson.dumps(make_system()))} B")

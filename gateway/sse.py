"""Sans-IO server-sent events: bytes in, events out; and the usage meter that rides on every streamed reply.

Nothing here does I/O. The proxy hands each upstream chunk, unchanged, to :meth:`StreamMeter.feed` after
writing it to the client, and calls :meth:`StreamMeter.finish` when the stream ends (or dies)::

    bytes ──► SSEDecoder.feed ──► [SSEEvent] ──► StreamMeter ──► usage / model / message() / saw_error

:class:`SSEDecoder` follows the WHATWG event-stream rules (``\\n``, ``\\r\\n`` and ``\\r`` line endings, a
chunk split anywhere, several ``data:`` lines joined with ``\\n``, ``:`` comments, a missing ``event:``
meaning ``message``, a leading BOM dropped, an event without data not dispatched), with one deliberate
leniency: at end of stream :meth:`SSEDecoder.flush` dispatches a final event whose blank line never came.
For a meter, upstream billed that event all the same; a truncated JSON payload is then just counted as
malformed.

It works on whole bytes, never per byte: it searches for the blank line that ends an event with
``bytes.rfind`` and splits lines with ``bytes.split``. ``\\r`` and ``\\n`` never occur inside a multi-byte
UTF-8 sequence, so splitting bytes is safe anywhere and data stays ``bytes`` (orjson reads it directly).

Metering follows PROTOCOL.md: the ``message_start`` usage, then on each ``message_delta`` the max of the
input and cache counts and the (cumulative) ``output_tokens``. Without any ``message_delta`` the output is
estimated from the streamed characters (text, tool-input JSON and thinking; about 4 characters a token) and
marked ``estimated``; without ``message_stop`` the usage is marked ``partial``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from gateway.usage import Usage, as_count, cache_writes, usage_from_json, web_search_requests

__all__ = ["CHARS_PER_TOKEN", "SSEDecoder", "SSEEvent", "StreamMeter", "meter_json_response"]

CHARS_PER_TOKEN = 4
_loads = orjson.loads
_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True, slots=True)
class SSEEvent:
    event: str
    data: bytes


RawEvent = tuple[bytes, bytes]
"""``(event name, data)`` as bytes; an empty name means the default, ``message``. What the meter consumes."""


def event_name(raw_name: bytes) -> str:
    return raw_name.decode("utf-8", "replace") if raw_name else "message"


class SSEDecoder:
    """Incremental event-stream decoder: :meth:`feed` chunks as they arrive, :meth:`flush` at end of stream.

    :meth:`feed_raw` / :meth:`flush_raw` are the same without building :class:`SSEEvent` objects (the meter's
    hot path).
    """

    __slots__ = ("_bom_checked", "_buf", "_skip_lf")

    def __init__(self) -> None:
        self._buf = bytearray()  # bytes after the last complete event (always ``\n`` line endings)
        self._skip_lf = False  # the previous chunk ended in ``\r``: drop a ``\n`` that starts the next one
        self._bom_checked = False

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        return [SSEEvent(event_name(name), data) for name, data in self.feed_raw(chunk)]

    def flush(self) -> list[SSEEvent]:
        """End of stream: dispatch what is left (see the module docstring) and reset."""
        return [SSEEvent(event_name(name), data) for name, data in self.flush_raw()]

    def feed_raw(self, chunk: bytes) -> list[RawEvent]:
        if not chunk:
            return []
        if self._skip_lf or b"\r" in chunk:
            chunk = self._normalise(chunk)
        buf = self._buf
        if not buf and chunk.endswith(b"\n\n") and self._bom_checked:
            # Fast paths: the chunk holds whole events only, most often exactly one "event: N\ndata: D".
            nl = chunk.find(b"\n")
            if chunk.startswith(b"event: ") and chunk.startswith(b"data: ", nl + 1) and (
                chunk.find(b"\n", nl + 7) == len(chunk) - 2
            ):
                return [(chunk[7:nl], chunk[nl + 7 : -2])]
            return _parse(chunk[:-2])
        start = len(buf) - 1 if buf else 0  # a blank line may straddle the old tail and the new chunk
        buf += chunk
        if not self._bom_checked:
            if len(buf) < len(_BOM) and _BOM.startswith(buf):
                return []
            if buf.startswith(_BOM):
                del buf[: len(_BOM)]
            self._bom_checked = True
            start = 0
        end = buf.rfind(b"\n\n", start)
        if end < 0:
            return []
        region = bytes(buf[:end])
        del buf[: end + 2]
        return _parse(region)

    def flush_raw(self) -> list[RawEvent]:
        region = bytes(self._buf)
        self._buf.clear()
        self._skip_lf = False
        self._bom_checked = False
        if region.startswith(_BOM):
            region = region[len(_BOM) :]
        return _parse(region) if region else []

    def _normalise(self, chunk: bytes) -> bytes:
        if self._skip_lf:
            self._skip_lf = False
            if chunk.startswith(b"\n"):
                chunk = chunk[1:]
        if b"\r" in chunk:
            self._skip_lf = chunk.endswith(b"\r")
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        return chunk


def _parse(region: bytes) -> list[RawEvent]:
    """Events of ``region``: complete lines (``\\n`` endings), the last one followed by a blank line."""
    events: list[RawEvent] = []
    for block in region.split(b"\n\n"):
        # Fast path for the one shape Anthropic sends: "event: NAME\ndata: JSON".
        if block[:7] == b"event: ":
            nl = block.find(b"\n", 7)
            if nl > 0 and block[nl + 1 : nl + 7] == b"data: " and block.find(b"\n", nl + 7) < 0:
                events.append((block[7:nl], block[nl + 7 :]))
                continue
        _parse_lines(block, events)
    return events


def _parse_lines(block: bytes, events: list[RawEvent]) -> None:
    name = b""
    data: list[bytes] = []
    for line in block.split(b"\n"):
        if not line:  # blank line: dispatch
            if data:
                events.append((name, b"\n".join(data)))
            name, data = b"", []
            continue
        if line.startswith(b":"):
            continue  # comment
        field, colon, value = line.partition(b":")
        if colon and value.startswith(b" "):
            value = value[1:]
        if field == b"data":
            data.append(value)
        elif field == b"event":
            name = value
        # "id", "retry" and unknown fields carry nothing the gateway needs.
    if data:
        events.append((name, b"\n".join(data)))


class _Block:
    """One content block being reassembled from its start payload and deltas."""

    __slots__ = ("citations", "json_parts", "signature", "start", "text_parts", "thinking_parts")

    def __init__(self, start: dict[str, Any]) -> None:
        self.start = start
        self.text_parts: list[str] = []
        self.json_parts: list[str] = []
        self.thinking_parts: list[str] = []
        self.signature: str | None = None
        self.citations: list[Any] = []

    def generated_chars(self) -> int:
        """Characters the model generated in this block: text, tool-input JSON and thinking."""
        chars = sum(map(len, self.text_parts)) + sum(map(len, self.json_parts))
        chars += sum(map(len, self.thinking_parts))
        for field in ("text", "thinking"):  # blocks start empty, but text already there was generated too
            value = self.start.get(field)
            if isinstance(value, str):
                chars += len(value)
        return chars

    def build(self) -> dict[str, Any]:
        block = dict(self.start)
        if self.text_parts:
            block["text"] = str(block.get("text") or "") + "".join(self.text_parts)
        if self.thinking_parts:
            block["thinking"] = str(block.get("thinking") or "") + "".join(self.thinking_parts)
        if self.signature is not None:
            block["signature"] = self.signature
        if self.citations:
            previous = block.get("citations")
            block["citations"] = (list(previous) if isinstance(previous, list) else []) + self.citations
        if self.json_parts:
            raw = "".join(self.json_parts)
            if raw:
                try:
                    block["input"] = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    block.setdefault("input", {})
                    block["input_raw"] = raw
        return block


class StreamMeter:
    """Meters one streamed ``/v1/messages`` reply and reassembles the assistant message it carried."""

    __slots__ = (
        "_blocks", "_cache_read", "_complete", "_decoder", "_error", "_events", "_finished", "_input",
        "_malformed", "_output", "_saw_delta", "_saw_stop", "_start", "_stop_fields", "_usage_raw",
        "_web_searches", "_write_1h", "_write_5m",
    )

    def __init__(self) -> None:
        self._decoder = SSEDecoder()
        self._start: dict[str, Any] = {}
        self._usage_raw: dict[str, Any] = {}
        self._stop_fields: dict[str, Any] = {}
        self._blocks: dict[int, _Block] = {}
        self._input = self._write_5m = self._write_1h = self._cache_read = 0
        self._output = self._web_searches = 0
        self._events = 0
        self._malformed = 0
        self._saw_delta = False
        self._saw_stop = False
        self._error: dict[str, Any] | None = None
        self._finished = False
        self._complete = False

    # -- input ---------------------------------------------------------------------------------------------

    def feed(self, chunk: bytes) -> None:
        self._consume(self._decoder.feed_raw(chunk))

    def finish(self, *, complete: bool) -> None:
        """The stream ended: ``complete`` if the transport closed cleanly, False if cut or abandoned."""
        self._consume(self._decoder.flush_raw())
        self._finished = True
        self._complete = complete

    def _consume(self, events: list[RawEvent]) -> None:
        # The hot loop: one pass per event, text and tool-input deltas handled inline.
        blocks = self._blocks
        self._events += len(events)
        for name, data in events:
            if name == b"ping":
                continue
            try:
                payload = _loads(data)
            except orjson.JSONDecodeError:
                self._malformed += 1
                continue
            if type(payload) is not dict:
                self._malformed += 1
                continue
            if not name:  # no "event:" line: fall back on the payload's own type
                kind = payload.get("type")
                name = kind.encode() if isinstance(kind, str) else b""
            if name == b"content_block_delta":
                try:  # text and tool-input deltas to a started block, inline; anything else: _on_delta
                    delta = payload["delta"]
                    block = blocks[payload["index"]]
                    dtype = delta["type"]
                    if dtype == "text_delta":
                        text = delta["text"]
                        if type(text) is str:
                            block.text_parts.append(text)
                            continue
                    elif dtype == "input_json_delta":
                        text = delta["partial_json"]
                        if type(text) is str:
                            block.json_parts.append(text)
                            continue
                except (KeyError, TypeError, IndexError):
                    pass
                self._on_delta(payload)
            elif name == b"content_block_start":
                index, start = payload.get("index"), payload.get("content_block")
                if type(index) is int and type(start) is dict:
                    blocks[index] = _Block(start)
                else:
                    self._malformed += 1
            elif name == b"message_start":
                self._on_message_start(payload)
            elif name == b"message_delta":
                self._on_message_delta(payload)
            elif name == b"message_stop":
                self._saw_stop = True
            elif name == b"error":
                error = payload.get("error")
                self._error = error if type(error) is dict else payload
            # content_block_stop and event types unknown today carry nothing to meter.

    def _on_delta(self, payload: dict[str, Any]) -> None:
        delta = payload.get("delta")
        index = payload.get("index")
        if not isinstance(delta, dict) or not isinstance(index, int):
            self._malformed += 1
            return
        dtype = delta.get("type")
        block = self._blocks.get(index)
        if block is None:  # a delta without its content_block_start: keep what it says anyway
            block = self._blocks[index] = _Block({"type": _BLOCK_FOR_DELTA.get(str(dtype), "unknown")})
        if dtype == "text_delta":
            self._append(block.text_parts, delta.get("text"))
        elif dtype == "input_json_delta":
            self._append(block.json_parts, delta.get("partial_json"))
        elif dtype == "thinking_delta":
            self._append(block.thinking_parts, delta.get("thinking"))
        elif dtype == "signature_delta":
            signature = delta.get("signature")
            if isinstance(signature, str):
                block.signature = signature  # as in the Anthropic SDK: a signature replaces, never appends
        elif dtype == "citations_delta":
            block.citations.append(delta.get("citation"))
        # other delta types: nothing known to reassemble or count

    def _append(self, parts: list[str], text: object) -> None:
        if isinstance(text, str):
            parts.append(text)
        else:
            self._malformed += 1

    def _on_message_start(self, payload: dict[str, Any]) -> None:
        message = payload.get("message")
        if not isinstance(message, dict):
            self._malformed += 1
            return
        self._start = message
        raw = message.get("usage")
        self._usage_raw = dict(raw) if isinstance(raw, dict) else {}
        usage = usage_from_json(self._usage_raw)
        self._input, self._cache_read = usage.input_tokens, usage.cache_read
        self._write_5m, self._write_1h = usage.cache_write_5m, usage.cache_write_1h
        self._output, self._web_searches = usage.output_tokens, usage.web_searches

    def _on_message_delta(self, payload: dict[str, Any]) -> None:
        self._saw_delta = True
        delta = payload.get("delta")
        if isinstance(delta, dict):
            for key, value in delta.items():
                if value is not None or key in ("stop_reason", "stop_sequence"):
                    self._stop_fields[key] = value
        usage = payload.get("usage")
        if not isinstance(usage, dict):
            return
        for key, value in usage.items():
            if value is not None:
                self._usage_raw[key] = value
        if usage.get("input_tokens") is not None:
            self._input = max(self._input, as_count(usage["input_tokens"]))
        if usage.get("cache_read_input_tokens") is not None:
            self._cache_read = max(self._cache_read, as_count(usage["cache_read_input_tokens"]))
        write_5m, write_1h = cache_writes(usage)
        if write_5m is not None and write_1h is not None:
            if isinstance(usage.get("cache_creation"), dict):
                self._write_5m = max(self._write_5m, write_5m)
                self._write_1h = max(self._write_1h, write_1h)
            else:  # a bare total: only what exceeds the known writes is new, and counts as 5m
                self._write_5m += max(0, write_5m - self._write_5m - self._write_1h)
        if usage.get("output_tokens") is not None:
            self._output = as_count(usage["output_tokens"])
        searches = web_search_requests(usage)
        if searches is not None:
            self._web_searches = max(self._web_searches, searches)

    # -- results -------------------------------------------------------------------------------------------

    @property
    def usage(self) -> Usage:
        """The metered usage so far (final once :meth:`finish` has been called)."""
        output, estimated = self._output, False
        if not self._saw_delta:
            chars = sum(block.generated_chars() for block in self._blocks.values())
            output = max(output, -(-chars // CHARS_PER_TOKEN))
            estimated = True
        return Usage(
            input_tokens=self._input,
            cache_write_5m=self._write_5m,
            cache_write_1h=self._write_1h,
            cache_read=self._cache_read,
            output_tokens=output,
            web_searches=self._web_searches,
            estimated=estimated,
            partial=not self._saw_stop,
        )

    @property
    def model(self) -> str | None:
        model = self._start.get("model")
        return model if isinstance(model, str) else None

    @property
    def message_id(self) -> str | None:
        message_id = self._start.get("id")
        return message_id if isinstance(message_id, str) else None

    @property
    def stop_reason(self) -> str | None:
        reason = self._stop_fields.get("stop_reason")
        return reason if isinstance(reason, str) else None

    @property
    def inference_geo(self) -> str | None:
        """Where upstream says inference ran (``usage.inference_geo``), for pricing."""
        geo = self._usage_raw.get("inference_geo")
        return geo if isinstance(geo, str) else None

    @property
    def saw_error(self) -> dict[str, Any] | None:
        """The ``error`` object of an ``event: error``, if the stream carried one."""
        return self._error

    @property
    def saw_stop(self) -> bool:
        """``message_stop`` seen: the reply reached its end."""
        return self._saw_stop

    @property
    def finished(self) -> bool:
        return self._finished

    @property
    def ended_cleanly(self) -> bool | None:
        """What :meth:`finish` was told about the transport (``None`` before it was called)."""
        return self._complete if self._finished else None

    @property
    def events(self) -> int:
        return self._events

    @property
    def malformed(self) -> int:
        """Events whose data was not a JSON object (skipped)."""
        return self._malformed

    def message(self) -> dict[str, Any]:
        """The assistant message as a non-streamed reply would carry it (``usage`` as upstream sent it)."""
        message = dict(self._start)
        message.setdefault("type", "message")
        message.setdefault("role", "assistant")
        message.setdefault("id", None)
        message.setdefault("model", None)
        if self._blocks or not isinstance(message.get("content"), list):
            message["content"] = [self._blocks[index].build() for index in sorted(self._blocks)]
        message.setdefault("stop_reason", None)
        message.setdefault("stop_sequence", None)
        message.update(self._stop_fields)
        message["usage"] = dict(self._usage_raw)
        return message


_BLOCK_FOR_DELTA = {
    "text_delta": "text",
    "citations_delta": "text",
    "input_json_delta": "tool_use",
    "thinking_delta": "thinking",
    "signature_delta": "thinking",
}


def meter_json_response(body: bytes) -> tuple[Usage, str | None, dict[str, Any] | None]:
    """``(usage, model, message)`` of a non-streamed reply. Never raises: an unreadable or error body gives
    ``(Usage(), None, None)``."""
    try:
        parsed = orjson.loads(body)
    except (orjson.JSONDecodeError, TypeError):
        return Usage(), None, None
    if not isinstance(parsed, dict) or parsed.get("type") == "error":
        return Usage(), None, None
    model = parsed.get("model")
    return usage_from_json(parsed.get("usage")), model if isinstance(model, str) else None, parsed

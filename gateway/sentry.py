"""Sentry error reporting that never carries a key or a prompt.

Request bodies are never sent (``max_request_body_size="never"``), local variables are off, PII stays at the SDK's
default (off), and ``before_send`` drops credential headers and scrubs anything that looks like a key from every
string in the event.

``sentry_sdk`` (and the urllib3 it brings: ~5 MB of a worker's memory) is imported only when a DSN is set. The
rest of the gateway reports through :func:`capture_exception` and :func:`capture_message`, which do nothing
unless the SDK was imported, and so initialised, by someone.
"""

from __future__ import annotations

import sys
from typing import Any

from .logs import scrub
from .settings import Settings

_DROP_HEADERS = frozenset({"x-api-key", "authorization", "cookie", "proxy-authorization", "set-cookie"})


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items() if not (isinstance(k, str) and k.lower() in _DROP_HEADERS)}
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    return value


def before_send(event: dict[str, Any], hint: dict[str, Any]) -> dict[str, Any]:
    request = event.get("request")
    if isinstance(request, dict):
        request.pop("data", None)  # bodies are prompts: never sent
        request.pop("cookies", None)
        headers = request.get("headers")
        if isinstance(headers, dict):
            request["headers"] = {k: v for k, v in headers.items() if k.lower() not in _DROP_HEADERS}
    scrubbed: dict[str, Any] = _scrub(event)
    return scrubbed


def init_sentry(settings: Settings, **extra: Any) -> bool:
    """Initialise Sentry when a DSN is configured; returns whether it did."""
    options: dict[str, Any] = {"dsn": settings.sentry_dsn, **extra}
    if not options["dsn"]:
        return False
    import sentry_sdk
    from sentry_sdk.integrations.aiohttp import AioHttpIntegration

    sentry_sdk.init(
        integrations=[AioHttpIntegration()], max_request_body_size="never",
        include_local_variables=False, before_send=before_send,  # type: ignore[arg-type]
        traces_sample_rate=0.0, **options,
    )
    return True


def _sdk() -> Any:
    """The SDK module if anything imported it (it cannot be initialised otherwise), else None."""
    return sys.modules.get("sentry_sdk")


def capture_exception(exc: BaseException) -> None:
    sdk = _sdk()
    if sdk is not None:
        sdk.capture_exception(exc)


def capture_message(message: str, **fields: Any) -> None:
    """``sentry_sdk.capture_message`` when Sentry is initialised; nothing otherwise."""
    sdk = _sdk()
    if sdk is not None and sdk.is_initialized():
        sdk.capture_message(message, **fields)

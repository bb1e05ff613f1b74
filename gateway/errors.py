"""Every error the gateway itself answers with, and the one place that renders them.

::

    GatewayError                      -> {"type":"error","error":{"type":T,"message":M}}
    ├── InvalidRequest        400  invalid_request_error
    ├── AuthenticationFailed  401  authentication_error
    ├── PermissionDenied      403  permission_error   (suspended/revoked key, leaked secret, wrong course)
    ├── NotFound              404  not_found_error
    ├── RequestTooLarge       413  request_too_large
    ├── RateLimited           429  rate_limit_error   (weekly quota used up; carries the quota headers)
    ├── UpstreamUnreachable   502  api_error
    └── Overloaded            529  overloaded_error   (Redis down with fail mode closed)

Upstream errors are never wrapped: their status, headers and body pass through untouched.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping

import orjson
from aiohttp import web

from .sentry import capture_exception

log = logging.getLogger(__name__)


def new_request_id() -> str:
    return "req_gw_" + uuid.uuid4().hex


class GatewayError(Exception):
    status = 500
    error_type = "api_error"

    def __init__(self, message: str, *, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = dict(headers or {})


class InvalidRequest(GatewayError):
    status, error_type = 400, "invalid_request_error"


class AuthenticationFailed(GatewayError):
    status, error_type = 401, "authentication_error"


class PermissionDenied(GatewayError):
    status, error_type = 403, "permission_error"


class NotFound(GatewayError):
    status, error_type = 404, "not_found_error"


class RequestTooLarge(GatewayError):
    status, error_type = 413, "request_too_large"


class RateLimited(GatewayError):
    status, error_type = 429, "rate_limit_error"


class UpstreamUnreachable(GatewayError):
    status, error_type = 502, "api_error"


class Overloaded(GatewayError):
    status, error_type = 529, "overloaded_error"


def error_body(error_type: str, message: str, request_id: str) -> bytes:
    return orjson.dumps(
        {"type": "error", "error": {"type": error_type, "message": message}, "request_id": request_id}
    )


def sse_error_event(error_type: str, message: str) -> bytes:
    """The SSE frame sent when a stream fails after it has started."""
    payload = orjson.dumps({"type": "error", "error": {"type": error_type, "message": message}})
    return b"event: error\ndata: " + payload + b"\n\n"


def render(exc: GatewayError, request_id: str) -> web.Response:
    headers = {"request-id": request_id, "content-type": "application/json", **exc.headers}
    if exc.status == 401:
        headers.setdefault("x-should-retry", "false")
    return web.Response(status=exc.status, body=error_body(exc.error_type, exc.message, request_id), headers=headers)


REQUEST_ID_KEY = web.RequestKey("gateway_request_id", str)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Renders every :class:`GatewayError` (and aiohttp's own HTTP errors) as Anthropic-shaped JSON."""
    request_id = request.get(REQUEST_ID_KEY) or new_request_id()
    request[REQUEST_ID_KEY] = request_id
    try:
        return await handler(request)
    except GatewayError as exc:
        return render(exc, request_id)
    except web.HTTPRequestEntityTooLarge:
        return render(RequestTooLarge("Request body is larger than the gateway's limit."), request_id)
    except web.HTTPNotFound:
        return render(NotFound(f"No such endpoint: {request.method} {request.path}"), request_id)
    except web.HTTPMethodNotAllowed:
        return render(NotFound(f"No such endpoint: {request.method} {request.path}"), request_id)
    except web.HTTPException:
        raise
    except Exception as exc:  # a bug: report it, answer in the API's shape, never leak details
        log.exception("unhandled error in %s %s (%s)", request.method, request.path, request_id)
        capture_exception(exc)
        return render(GatewayError("Internal gateway error; it has been reported."), request_id)

"""Request bodies: read within the size limit, parsed as the JSON object every endpoint expects."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from .errors import InvalidRequest, RequestTooLarge


def json_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object, or 400 ``invalid_request_error`` saying what is wrong with it."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise InvalidRequest("The request body is not valid JSON.") from None
    if not isinstance(payload, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    return payload


async def read_body(request: web.Request, limit: int) -> bytes:
    """The whole body; 413 ``request_too_large`` at once when the declared length is over ``limit`` (aiohttp's
    ``client_max_size`` stops an undeclared one while it is read)."""
    declared = request.content_length
    if declared is not None and declared > limit:
        raise RequestTooLarge(f"Request body is {declared} bytes; the limit is {limit} bytes.")
    return await request.read()

"""Small HTTP helpers shared by the API and the provider hooks."""

from __future__ import annotations

import email.utils
import time
from typing import Any

import orjson
from aiohttp import web

from gateway.errors import PayloadTooLarge

MAX_BODY_KEY = web.AppKey("max_body_bytes", int)


def json_response(data: Any, *, status: int = 200,
                  headers: dict[str, str] | None = None) -> web.Response:
    """A JSON response serialized with orjson."""
    return web.Response(body=orjson.dumps(data), status=status, headers=headers,
                        content_type="application/json")


async def read_body(request: web.Request) -> bytes:
    """Read the body, refusing with 413 before reading more than ``max_body_bytes``."""
    limit = request.app[MAX_BODY_KEY]
    length = request.content_length
    if length is not None:
        if length > limit:
            raise PayloadTooLarge(f"the body is {length} bytes; the limit is {limit}")
        return await request.read()  # the declared length is within the limit
    chunks = []
    size = 0
    async for chunk in request.content.iter_chunked(65536):
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def retry_after_seconds(value: str | None) -> float | None:
    """Parse a ``Retry-After`` header: seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())

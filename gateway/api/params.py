"""Query parameters and JSON bodies, checked the same way by every handler (400 / 422)."""

from __future__ import annotations

import math
from typing import Any

import orjson
from aiohttp import web

from gateway.errors import BadRequest, MalformedPayload, ValidationFailed
from gateway.http import read_body


def int_param(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    """Read an integer query parameter within [low, high]; 400 otherwise."""
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name} must be an integer") from None
    if not low <= value <= high:
        raise BadRequest(f"{name} must be between {low} and {high}")
    return value


def number_param(request: web.Request, name: str, default: float, low: float,
                 high: float) -> float:
    """Read a number (seconds) query parameter within [low, high]; 400 otherwise."""
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise BadRequest(f"{name} must be a number") from None
    if not math.isfinite(value) or not low <= value <= high:
        raise BadRequest(f"{name} must be between {low:g} and {high:g}")
    return value


def cursor_param(raw: str | None, name: str = "after") -> int | None:
    """Parse an opaque cursor (ours are decimal seqs)."""
    if raw is None or raw == "":
        return None
    if not raw.isdigit() or len(raw) > 18:
        raise BadRequest(f"{name} is not a valid cursor")
    return int(raw)


async def json_body(request: web.Request) -> Any:
    """Read and parse a JSON body, with the size limit."""
    body = await read_body(request)
    if not body:
        return {}
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise MalformedPayload(f"the body is not valid JSON: {exc}") from exc


def agent_param(value: Any) -> dict[str, Any] | None:
    """The optional ``agent`` of a reply or a status change: ``{"id", "name"}`` or 422."""
    if value is None:
        return None
    if (not isinstance(value, dict) or set(value) - {"id", "name"}
            or not isinstance(value.get("id"), str)
            or not isinstance(value.get("name", ""), str | None)):
        raise ValidationFailed("agent must be {\"id\": \"…\", \"name\": \"…\"}")
    return {"id": value["id"], "name": value.get("name")}

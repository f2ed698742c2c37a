"""Operations: the accounts' state and the webhook dead letters."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.api.auth import require
from gateway.api.openapi import MAX_INT64
from gateway.api.params import int_param, json_body
from gateway.api.view import gw
from gateway.errors import ValidationFailed
from gateway.http import json_response, redact_urls_in


async def list_channels(request: web.Request) -> web.Response:
    """``GET /v1/channels``: every configured account, its state and counters."""
    require(request, "read")
    report = gw(request).channel_report()
    for entry in report:  # an adapter's error may quote a URL with credentials
        if entry.get("last_error"):
            entry["last_error"] = redact_urls_in(entry["last_error"])
    return json_response({"channels": report})


async def list_dead_letters(request: web.Request) -> web.Response:
    """``GET /v1/webhooks/dead-letters``."""
    require(request, "admin")
    limit = int_param(request, "limit", 100, 1, 1000)
    items = await gw(request).store.list_dead_letters(request.query.get("subscription"), limit)
    return json_response({"dead_letters": items})


async def replay_dead_letters(request: web.Request) -> web.Response:
    """``POST /v1/webhooks/dead-letters/replay`` with ``{"ids": [...]}`` or ``{}`` for all."""
    require(request, "admin")
    body = await json_body(request)
    if not isinstance(body, dict) or set(body) - {"ids", "subscription"}:
        raise ValidationFailed('the body is {"ids": [1, 2]} and/or {"subscription": "…"}')
    if "subscription" in body and not isinstance(body["subscription"], str):
        raise ValidationFailed("subscription must be a string")
    ids = body.get("ids")
    if "ids" in body:
        ids = _delivery_ids(ids)
    count = await gw(request).store.replay_dead_letters(ids, body.get("subscription"))
    for dispatcher in gw(request).webhooks.values():
        dispatcher.wake()
    return json_response({"replayed": count})


def _delivery_ids(value: Any) -> list[int]:
    """Dead-letter ids: integers (``3.0`` is one in JSON) within SQLite's 64 bits."""
    message = f"ids must be a list of integers from 1 to {MAX_INT64}"
    if not isinstance(value, list):
        raise ValidationFailed(message)
    ids = []
    for item in value:
        if isinstance(item, float) and item.is_integer():
            item = int(item)
        if not isinstance(item, int) or isinstance(item, bool) or not 1 <= item <= MAX_INT64:
            raise ValidationFailed(message)
        ids.append(item)
    return ids

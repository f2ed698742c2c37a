"""Small helpers the tests share: signed posts, feed reads."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import aiohttp
import orjson

from gateway import signing
from tests.conftest import API_SECRET, TOKEN


def bearer(token: str = TOKEN) -> dict[str, str]:
    """An Authorization header."""
    return {"Authorization": f"Bearer {token}"}


def unique(prefix: str = "x") -> str:
    """A fresh id so session-scoped daemons see new customers per test."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


async def post_inbound(http: aiohttp.ClientSession, base: str, body: dict[str, Any], *,
                       account: str = "crm", secret: str | None = API_SECRET,
                       headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """POST an API-channel message, signed with the account's secret by default."""
    raw = orjson.dumps(body)
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    if secret is not None:
        hdrs["Omnirelay-Signature"] = signing.sign(secret, raw)
    async with http.post(f"{base}/hooks/api/{account}/messages", data=raw,
                         headers=hdrs) as resp:
        return resp.status, await resp.json(content_type=None)


async def get_json(http: aiohttp.ClientSession, url: str, token: str = TOKEN,
                   **params: Any) -> tuple[int, Any]:
    """GET with a bearer token."""
    async with http.get(url, headers=bearer(token), params=params) as resp:
        return resp.status, await resp.json(content_type=None)


async def post_json(http: aiohttp.ClientSession, url: str, body: Any, token: str = TOKEN,
                    headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """POST JSON with a bearer token."""
    async with http.post(url, json=body, headers={**bearer(token), **(headers or {})}
                         ) as resp:
        return resp.status, await resp.json(content_type=None)


async def all_events(http: aiohttp.ClientSession, base: str) -> list[dict[str, Any]]:
    """Every event in the feed, following the cursor."""
    events: list[dict[str, Any]] = []
    cursor = "0"
    while True:
        status, page = await get_json(http, f"{base}/v1/events", after=cursor, limit=1000)
        assert status == 200, page
        events += page["events"]
        if not page["events"]:
            return events
        cursor = page["next"]


async def wait_until(predicate: Any, timeout: float = 15.0, interval: float = 0.05) -> Any:
    """Poll an async predicate (for state another process changes) until truthy."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(interval)

"""A local fake of the LINE platform: the Messaging API, the data API and a webhook sender.

It speaks the documented wire format (https://developers.line.biz/en/reference/messaging-api/):
bot info (``GET /v2/bot/info``), push with ``X-Line-Retry-Key`` (a key already accepted
answers 409 with ``X-Line-Accepted-Request-Id``), profiles (404 for a user who blocked the
account), message content; it checks the bearer token and LINE's own limits (5 messages a
request, 5,000 characters a text) and can be told to answer 429 (rate or monthly quota),
5xx, or to hang after accepting a push (a send whose answer never arrives). Webhooks are
signed the real way: base64 HMAC-SHA256 of the raw body with the channel secret.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import itertools
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from tests.conftest import free_port


def line_signature(secret: str, body: bytes) -> str:
    """``X-Line-Signature`` of ``body``."""
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


def utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


@dataclass
class Planned:
    """One injected answer: a status with a body and headers, or a hang after accepting."""

    status: int = 200
    body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    hang: float = 0.0  # accept the push, then answer only after this many seconds


class FakeLine:
    """The Messaging API (``api_url``) and the data API (``data_url``) on one port."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.port = free_port()
        self.pushes: list[dict[str, Any]] = []  # accepted requests: json + headers
        self.push_attempts = 0
        self.accepted_keys: dict[str, str] = {}
        self.plans: list[Planned] = []
        self.profiles: dict[str, str] = {}
        self.blocked: set[str] = set()
        self.profile_calls = 0
        self.content: dict[str, tuple[bytes, str]] = {}
        self.content_failures: dict[str, int] = {}
        self.content_calls = 0
        # GET /v2/bot/info: the account as LINE describes it, and injected answers first.
        self.bot_info = {"userId": "Ub0t00000000000000000000000000000", "basicId": "@123abcde",
                         "displayName": "Shop", "chatMode": "chat", "markAsReadMode": "manual"}
        self.info_plans: list[Planned] = []
        self.info_calls = 0
        self._ids = itertools.count(500000000000000)
        self._runner: web.AppRunner | None = None
        self._release = asyncio.Event()  # ends every hang at stop

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    data_url = api_url

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v2/bot/message/push", self.push)
        app.router.add_get("/v2/bot/info", self.info)
        app.router.add_get("/v2/bot/profile/{user}", self.profile)
        app.router.add_get("/v2/bot/group/{group}/member/{user}", self.profile)
        app.router.add_get("/v2/bot/message/{id}/content", self.get_content)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()

    def _authorized(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bearer {self.token}"

    async def push(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.json_response({"message": "Authentication failed"}, status=401)
        self.push_attempts += 1
        body = await request.json()
        key = request.headers.get("X-Line-Retry-Key")
        if key is not None and key in self.accepted_keys:
            return web.json_response(
                {"message": "The retry key is already accepted", "sentMessages": []},
                status=409, headers={"X-Line-Accepted-Request-Id": self.accepted_keys[key]})
        messages = body.get("messages") or []
        if not 1 <= len(messages) <= 5:
            return web.json_response({"message": "Size must be between 1 and 5",
                                      "details": [{"property": "messages"}]}, status=400)
        for message in messages:
            if message.get("type") == "text" and utf16_len(message["text"]) > 5000:
                return web.json_response({"message": "Length must be between 0 and 5000",
                                          "details": [{"property": "messages[0].text"}]},
                                         status=400)
        plan = self.plans.pop(0) if self.plans else Planned()
        if plan.status != 200:
            return web.json_response(plan.body or {"message": "error"}, status=plan.status,
                                     headers=plan.headers)
        request_id = f"req-{next(self._ids)}"
        if key is not None:
            self.accepted_keys[key] = request_id
        sent = [{"id": str(next(self._ids)), "quoteToken": "q"} for _ in messages]
        self.pushes.append({"json": body, "headers": dict(request.headers), "sent": sent,
                            "at": time.time()})
        if plan.hang:
            try:
                await asyncio.wait_for(self._release.wait(), plan.hang)
            except TimeoutError:
                pass
        return web.json_response({"sentMessages": sent}, headers={"X-Line-Request-Id": request_id})

    async def info(self, request: web.Request) -> web.Response:
        """Get bot info: a read, answered 401 for a wrong token."""
        self.info_calls += 1
        if not self._authorized(request):
            return web.json_response({"message": "Authentication failed. Confirm that the "
                                      "access token in the authorization header is valid."},
                                     status=401)
        if self.info_plans:
            plan = self.info_plans.pop(0)
            if plan.hang:
                try:
                    await asyncio.wait_for(self._release.wait(), plan.hang)
                except TimeoutError:
                    pass
            return web.json_response(plan.body or {"message": "error"}, status=plan.status,
                                     headers=plan.headers)
        return web.json_response(self.bot_info)

    async def profile(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.json_response({"message": "Authentication failed"}, status=401)
        self.profile_calls += 1
        user = request.match_info["user"]
        if user in self.blocked or user not in self.profiles:
            return web.json_response({"message": "Not found"}, status=404)
        return web.json_response({"displayName": self.profiles[user], "userId": user,
                                  "language": "ja"})

    async def get_content(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.json_response({"message": "Authentication failed"}, status=401)
        self.content_calls += 1
        message_id = request.match_info["id"]
        if self.content_failures.get(message_id, 0) > 0:
            self.content_failures[message_id] -= 1
            return web.json_response({"message": "Internal error"}, status=500,
                                     headers={"Retry-After": "0"})
        if message_id not in self.content:
            return web.json_response({"message": "Not found"}, status=404)
        data, content_type = self.content[message_id]
        return web.Response(body=data, content_type=content_type)


def event_base(kind: str, user: str, event_id: str, *, redelivery: bool = False,
               timestamp: int | None = None) -> dict[str, Any]:
    """The fields every webhook event has."""
    return {"type": kind, "mode": "active", "timestamp": timestamp or int(time.time() * 1000),
            "source": {"type": "user", "userId": user}, "webhookEventId": event_id,
            "deliveryContext": {"isRedelivery": redelivery}}


def text_event(user: str, message_id: str, text: str, **extra: Any) -> dict[str, Any]:
    event = event_base("message", user, f"01EV{message_id}")
    event["replyToken"] = "rt-" + message_id
    event["message"] = {"type": "text", "id": message_id, "quoteToken": "qt", "text": text,
                        **extra}
    return event


def webhook_body(events: list[dict[str, Any]], destination: str = "Ubot") -> bytes:
    return orjson.dumps({"destination": destination, "events": events})

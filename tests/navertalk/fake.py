"""A local fake of Naver TalkTalk: the send API, an image host, and the webhook's wire format.

The send API (``POST /chatbot/v1/event``, https://github.com/navertalk/chatbot-api) checks the
``Authorization`` token and answers HTTP 200 with ``{"success": …, "resultCode": …}`` as
TalkTalk does (``01`` for a bad token, ``02`` for a bad request, ``99`` and ``IMG-0x`` as
injected); it can also answer 5xx or hang. Images customers send are served from ``/img/``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from tests.conftest import free_port


@dataclass
class Planned:
    """One injected answer: an HTTP status, a resultCode, or a hang."""

    status: int = 200
    result_code: str = "00"
    message: str = ""
    hang: float = 0.0


class FakeTalkTalk:
    def __init__(self, token: str) -> None:
        self.token = token
        self.port = free_port()
        self.sent: list[dict[str, Any]] = []
        self.requests = 0  # every call of the send API, accepted or not
        self.plans: list[Planned] = []
        self.images: dict[str, bytes] = {}
        self.image_failures: dict[str, int] = {}
        self._release = asyncio.Event()
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/chatbot/v1/event", self.event)
        app.router.add_get("/img/{name}", self.image)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def event(self, request: web.Request) -> web.Response:
        self.requests += 1
        if request.headers.get("Authorization") != self.token:
            return web.json_response({"success": False, "resultCode": "01",
                                      "resultMessage": "Authorization 정보 오류"})
        try:
            body = await request.json()
        except ValueError:
            return web.json_response({"success": False, "resultCode": "02",
                                      "resultMessage": "request json 문자열 파싱 오류"})
        text = (body.get("textContent") or {}).get("text")
        if body.get("event") != "send" or not body.get("user") or (
                text is not None and len(text) > 10_000):
            return web.json_response({"success": False, "resultCode": "02",
                                      "resultMessage": "request json 문자열 파싱 오류"})
        plan = self.plans.pop(0) if self.plans else Planned()
        if plan.hang:
            try:
                await asyncio.wait_for(self._release.wait(), plan.hang)
            except TimeoutError:
                pass
        if plan.status != 200:
            return web.json_response({"error": "unavailable"}, status=plan.status)
        if plan.result_code != "00":
            return web.json_response({"success": False, "resultCode": plan.result_code,
                                      "resultMessage": plan.message})
        self.sent.append({"json": body, "headers": dict(request.headers)})
        return web.json_response({"success": True, "resultCode": "00"})

    async def image(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if self.image_failures.get(name, 0) > 0:
            self.image_failures[name] -= 1
            return web.Response(status=503, headers={"Retry-After": "0"})
        if name not in self.images:
            return web.Response(status=404)
        return web.Response(body=self.images[name], content_type="image/jpeg")

"""Web chat fixtures: one daemon, a shop page and a foreign page on 127.0.0.1, a visitor
client speaking the widget's frames, and (for the browser tests) one headless Chromium."""

from __future__ import annotations

import asyncio
import contextlib
import html
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from tests.conftest import TOKEN, Daemon, base_config, free_port

AUTH = {"Authorization": f"Bearer {TOKEN}"}
SHOP_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Shop</title></head>
<body><h1>Kim's shop</h1><p>Shoes and more.</p>
<script src="{daemon}/chat/{account}/widget.js" async{extra}></script>
</body></html>"""


@dataclass
class Site:
    """A shop's web site on its own origin, embedding the widget of ``account``."""

    daemon_url: str
    account: str
    port: int = field(default_factory=free_port)
    runner: web.AppRunner | None = None

    @property
    def origin(self) -> str:
        """The site's origin, as a browser sends it."""
        return f"http://127.0.0.1:{self.port}"

    async def page(self, request: web.Request) -> web.Response:
        """The shop page, under a strict CSP that allows only the daemon's host."""
        extra = " data-open" if request.query.get("open") else ""
        if "language" in request.query:  # the page forcing the widget's language
            extra += f' data-language="{html.escape(request.query["language"])}"'
        daemon_ws = self.daemon_url.replace("http://", "ws://")
        csp = (f"default-src 'none'; script-src {self.daemon_url}; "
               f"style-src {self.daemon_url}; img-src {self.daemon_url} data: blob:; "
               f"connect-src {daemon_ws}; base-uri 'none'")
        return web.Response(text=SHOP_PAGE.format(daemon=self.daemon_url, account=self.account,
                                                  extra=extra),
                            content_type="text/html", headers={"Content-Security-Policy": csp})

    async def start(self) -> None:
        """Serve the page on 127.0.0.1."""
        app = web.Application()
        app.router.add_get("/", self.page)
        app.router.add_get("/favicon.ico", lambda _: web.Response(status=204))
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        """Stop serving."""
        if self.runner is not None:
            await self.runner.cleanup()


@pytest.fixture(scope="session")
async def chat_daemon(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Daemon]:
    """One daemon with web chat accounts: ``shop`` (the shop site's origin allowed, tight
    limits to test), ``form`` (the pre-chat form), ``ja`` (Japanese for every visitor), ``tight``
    and ``crowded`` (a per-address limit near the per-visitor one)."""
    tmp = tmp_path_factory.mktemp("webchat")
    http_port, smtp_port = free_port(), free_port()
    shop_port, form_port, ja_port = free_port(), free_port(), free_port()
    extra = f"""
        [[channels]]
        type = "webchat"
        name = "shop"
        allowed_origins = ["http://127.0.0.1:{shop_port}"]
        title = "Kim's shop"
        max_text_chars = 500
        max_file_bytes = 100000
        visitor_messages_per_minute = 600
        [[channels]]
        type = "webchat"
        name = "form"
        allowed_origins = ["http://127.0.0.1:{form_port}"]
        pre_chat_form = true
        [[channels]]
        type = "webchat"
        name = "ja"
        allowed_origins = ["http://127.0.0.1:{ja_port}"]
        language = "ja"
        [[channels]]
        type = "webchat"
        name = "tight"
        allowed_origins = ["http://127.0.0.1:{shop_port}"]
        visitor_messages_per_minute = 20
        max_connections_per_ip = 3
        [[channels]]
        type = "webchat"
        name = "crowded"
        allowed_origins = ["http://127.0.0.1:{shop_port}"]
        visitor_messages_per_minute = 20
        ip_messages_per_minute = 40
        """
    daemon = Daemon(tmp, base_config(tmp / "data", http_port, smtp_port, extra=extra),
                    http_port)
    daemon.ports = {"shop": shop_port, "form": form_port,  # type: ignore[attr-defined]
                    "ja": ja_port}
    daemon.start()
    await daemon.wait_ready()
    yield daemon
    code = await daemon.stop()
    assert code == 0, daemon.logs()


@contextlib.asynccontextmanager
async def serving(daemon: Daemon, account: str, allowed: bool = True) -> AsyncIterator[Site]:
    """A site embedding ``account``'s widget, on the port whose origin the account allows
    (``allowed``) or on another one."""
    site = (Site(daemon.url, account, daemon.ports[account])  # type: ignore[attr-defined]
            if allowed else Site(daemon.url, account))
    await site.start()
    try:
        yield site
    finally:
        await site.stop()


@pytest.fixture(scope="session")
async def shop(chat_daemon: Daemon) -> AsyncIterator[Site]:
    """The shop's site, whose origin the ``shop`` account allows."""
    async with serving(chat_daemon, "shop") as site:
        yield site


@pytest.fixture(scope="session")
async def foreign(chat_daemon: Daemon) -> AsyncIterator[Site]:
    """Another site embedding the shop's widget: its origin is not allowed."""
    async with serving(chat_daemon, "shop", allowed=False) as site:
        yield site


@pytest.fixture(scope="session")
async def api() -> AsyncIterator[aiohttp.ClientSession]:
    """A client for the daemon's API and the visitors' sockets."""
    async with aiohttp.ClientSession() as session:
        yield session


class Visitor:
    """A browser as the server sees it: the widget's frames over one WebSocket."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.frames: list[dict[str, Any]] = []
        self.welcome: dict[str, Any] = {}
        self.history: list[dict[str, Any]] = []

    async def next(self, kind: str, timeout: float = 10.0) -> dict[str, Any]:
        """The next frame of type ``kind`` (others are kept in ``frames``)."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {kind} frame; got {self.frames[-5:]}")
            message = await self.ws.receive(timeout=remaining)
            if message.type is not aiohttp.WSMsgType.TEXT:
                raise AssertionError(f"socket ended ({message.type}) waiting for {kind}")
            frame: dict[str, Any] = orjson.loads(message.data)
            self.frames.append(frame)
            if frame["type"] == kind:
                return frame

    async def send(self, frame: dict[str, Any]) -> None:
        """Send one frame."""
        await self.ws.send_str(orjson.dumps(frame).decode())

    async def say(self, text: str, client_id: str, **more: Any) -> dict[str, Any]:
        """Send a message and return the server's confirmation of it (or its error)."""
        await self.send({"type": "message", "id": client_id, "text": text, **more})
        while True:
            frame = await self.next_any(("message", "error"))
            if frame.get("client_id") == client_id:
                return frame

    async def next_any(self, kinds: tuple[str, ...], timeout: float = 10.0) -> dict[str, Any]:
        """The next frame of any of ``kinds``."""
        deadline = time.monotonic() + timeout
        while True:
            message = await self.ws.receive(timeout=max(0.01, deadline - time.monotonic()))
            if message.type is not aiohttp.WSMsgType.TEXT:
                raise AssertionError(f"socket ended ({message.type}) waiting for {kinds}")
            frame: dict[str, Any] = orjson.loads(message.data)
            self.frames.append(frame)
            if frame["type"] in kinds:
                return frame


async def connect(session: aiohttp.ClientSession, daemon: Daemon, account: str, origin: str,
                  token: str | None = None, **hello: Any) -> Visitor:
    """Open a visitor's socket from ``origin``, say hello, read welcome and history."""
    ws = await session.ws_connect(f"{daemon.url}/chat/{account}/ws",
                                  headers={"Origin": origin})
    visitor = Visitor(ws)
    await visitor.send({"type": "hello", "token": token, **hello})
    visitor.welcome = await visitor.next("welcome")
    visitor.history = (await visitor.next("history"))["messages"]
    return visitor


async def wait_until(check: Any, timeout: float = 10.0) -> Any:
    """Poll an async ``check()`` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


async def get_json(session: aiohttp.ClientSession, url: str) -> Any:
    """GET with the admin token, 200 expected."""
    async with session.get(url, headers=AUTH) as response:
        assert response.status == 200, await response.text()
        return await response.json()


async def reply(session: aiohttp.ClientSession, daemon: Daemon, conversation_id: str,
                text: str, agent: str | None = "Mina") -> dict[str, Any]:
    """An agent's reply through the API (202)."""
    body: dict[str, Any] = {"text": text}
    if agent:
        body["agent"] = {"id": "a-1", "name": agent}
    async with session.post(f"{daemon.url}/v1/conversations/{conversation_id}/messages",
                            headers=AUTH, json=body) as response:
        assert response.status == 202, await response.text()
        result: dict[str, Any] = await response.json()
        return result


ARTIFACTS = Path(__file__).resolve().parents[2] / "build" / "test-artifacts"

"""A fake Bot API and an in-process gateway whose Telegram account talks to it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.config import parse_config
from gateway.daemon import Gateway
from tests.conftest import TOKEN
from tests.helpers import bearer
from tests.telegram.fake import TOKEN as BOT_TOKEN
from tests.telegram.fake import FakeBotApi

WEBHOOK_SECRET = "hook_secret-0123456789"


def gateway_config(data_dir: Path, fake: FakeBotApi, *, telegram: str = "") -> str:
    """A gateway with one Telegram account (``shop``) pointed at the fake."""
    return f"""
[server]
listen = "127.0.0.1:0"
public_url = "https://gateway.example"
shutdown_timeout = 5
[store]
data_dir = "{data_dir}"
synchronous = "NORMAL"
default_region = "KR"
[outbox]
base_delay = 0.05
max_delay = 2.0
[[tokens]]
name = "admin"
token = "{TOKEN}"
scopes = ["admin"]
[[channels]]
type = "telegram"
name = "shop"
token = "{BOT_TOKEN}"
api_base_url = "{fake.url}"
poll_timeout = 1
timeout = 2
{telegram}
"""


class Client:
    """The help desk's side: the gateway's HTTP API."""

    def __init__(self, http: aiohttp.ClientSession, gateway: Gateway) -> None:
        self.http = http
        self.gateway = gateway

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.gateway.bound_port}"

    async def get(self, path: str, **params: Any) -> Any:
        async with self.http.get(self.base + path, headers=bearer(),
                                 params=params) as response:
            assert response.status == 200, await response.text()
            return await response.json()

    async def post(self, path: str, body: Any) -> tuple[int, Any]:
        async with self.http.post(self.base + path, json=body, headers=bearer()) as response:
            return response.status, await response.json()

    async def events(self) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        cursor = "0"
        while True:
            page = await self.get("/v1/events", after=cursor, limit=1000)
            if not page["events"]:
                return events
            events += page["events"]
            cursor = page["next"]

    async def received(self, provider_id: str) -> list[dict[str, Any]]:
        """The ``message.received`` events of one provider message id."""
        return [e["data"]["message"] for e in await self.events()
                if e["type"] == "message.received"
                and e["data"]["message"]["provider"]["message_id"] == provider_id]

    async def message(self, provider_id: str, timeout: float = 10.0) -> dict[str, Any]:
        """The stored message (as it is now) once it arrived."""
        found = await self.until(lambda: self.received(provider_id), timeout)
        return dict(await self.get(f"/v1/messages/{found[0]['id']}"))

    async def until(self, probe: Any, timeout: float = 10.0) -> Any:
        """Poll an async probe until it answers something truthy."""
        deadline = time.monotonic() + timeout
        while True:
            value = await probe()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError("condition not met in time")
            await asyncio.sleep(0.05)


@pytest.fixture(scope="module")
async def fake() -> AsyncIterator[FakeBotApi]:
    """The fake Bot API for one test module."""
    api = FakeBotApi()
    await api.start()
    yield api
    await api.stop()


@pytest.fixture(scope="module")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture(scope="module")
async def gateway(fake: FakeBotApi, tmp_path_factory: pytest.TempPathFactory,
                  request: pytest.FixtureRequest) -> AsyncIterator[Gateway]:
    """An in-process gateway (real store, real listener) polling the fake."""
    extra = getattr(request.module, "TELEGRAM_OPTIONS", "")
    config = parse_config(gateway_config(tmp_path_factory.mktemp("tg"), fake,
                                         telegram=extra))
    gw = Gateway(config)
    await gw.start()
    yield gw
    await gw.stop()


@pytest.fixture(scope="module")
def client(http: aiohttp.ClientSession, gateway: Gateway) -> Client:
    return Client(http, gateway)

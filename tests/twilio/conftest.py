"""One in-process daemon per module with two Twilio accounts, the fake Twilio and its
storage host; each test uses numbers of its own, so the daemon is shared."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.config import parse_config
from gateway.daemon import Gateway
from tests.conftest import TOKEN
from tests.helpers import all_events, bearer, wait_until
from tests.twilio.fake import SID, FakeTwilio, StorageHost, Webhooks
from tests.twilio.fake import TOKEN as AUTH_TOKEN

PUBLIC_URL = "https://sms.shop.example/relay"  # behind a proxy, with a path prefix
SERVICE_SID = "MG" + "2" * 32


@dataclass
class Env:
    """What the tests talk to."""

    gateway: Gateway
    fake: FakeTwilio
    storage: StorageHost
    hooks: Webhooks
    http: aiohttp.ClientSession
    base: str

    async def events(self) -> list[dict[str, Any]]:
        """The whole feed."""
        return await all_events(self.http, self.base)

    async def message_of(self, sid: str) -> dict[str, Any]:
        """The stored message with this provider id (from the feed)."""
        async def find() -> dict[str, Any] | None:
            for event in reversed(await self.events()):
                message = event["data"].get("message")
                if message and message["provider"]["message_id"] == sid:
                    return await self.get_message(message["id"])
            return None
        found: dict[str, Any] = await wait_until(find, timeout=5)
        return found

    async def get_message(self, message_id: str) -> dict[str, Any]:
        """A message as the API shows it now."""
        message: dict[str, Any] = await self.gateway.store.get_message(message_id)
        return message

    async def reply(self, conversation_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """An agent's reply through the API (202 with the queued message)."""
        async with self.http.post(f"{self.base}/v1/conversations/{conversation_id}/messages",
                                  json=body, headers=bearer(TOKEN)) as response:
            assert response.status == 202, await response.text()
            message: dict[str, Any] = await response.json()
            return message

    async def settled(self, message_id: str, *statuses: str) -> dict[str, Any]:
        """Wait until the message reaches one of ``statuses`` (any but ``failed`` after
        Twilio accepted it: a reply is ``queued`` from the start)."""
        async def check() -> dict[str, Any] | None:
            message = await self.get_message(message_id)
            done = message["status"] == "failed" or message["provider"]["message_id"]
            return message if done and message["status"] in statuses else None
        found: dict[str, Any] = await wait_until(check, timeout=15)
        return found


def phone() -> str:
    """A fresh US number (555 exchange), so each test has its own customer."""
    return f"+1555{random.randrange(10**6, 10**7)}"


@pytest.fixture(scope="module")
async def env(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Env]:
    """The daemon, the fakes and a client."""
    storage = StorageHost()
    await storage.start()
    fake = FakeTwilio(storage)
    await fake.start()
    data: Path = tmp_path_factory.mktemp("twilio")
    config = parse_config(f"""
[server]
listen = "127.0.0.1:0"
public_url = "{PUBLIC_URL}"
shutdown_timeout = 5
[store]
data_dir = "{data}"
synchronous = "NORMAL"
default_region = "US"
[outbox]
base_delay = 0.1
max_delay = 0.5
[[tokens]]
name = "admin"
token = "{TOKEN}"
scopes = ["admin"]
[[channels]]
type = "twilio"
name = "us-sms"
account_sid = "{SID}"
auth_token = "{AUTH_TOKEN}"
from = "+15550001111"
api_base_url = "{fake.url}"
media_redirect_hosts = ["{storage.url}"]
timeout = 1.0
[[channels]]
type = "twilio"
name = "svc"
account_sid = "{SID}"
auth_token = "{AUTH_TOKEN}"
messaging_service_sid = "{SERVICE_SID}"
whatsapp_from = "whatsapp:+15550002222"
api_base_url = "{fake.url}"
sender_rate = 20
""", environ={})
    gateway = Gateway(config)
    await gateway.start()
    base = f"http://127.0.0.1:{gateway.bound_port}"
    async with aiohttp.ClientSession() as http:
        yield Env(gateway, fake, storage, Webhooks(http, base, PUBLIC_URL), http, base)
    await gateway.stop()
    await fake.stop()
    await storage.stop()

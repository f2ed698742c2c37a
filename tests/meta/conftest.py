"""One in-process gateway (real store, real HTTP listener on 127.0.0.1) with Meta accounts
pointed at the fake Graph API, shared by the Meta tests; payload builders and signing."""

from __future__ import annotations

import hashlib
import hmac
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from adapters.meta import MetaAdapter
from gateway.config import parse_config
from gateway.daemon import Gateway
from tests.meta.fake import (
    INSTAGRAM_ID,
    PAGE_ID,
    PAGE_TOKEN,
    PHONE_NUMBER_ID,
    WHATSAPP_TOKEN,
    FakeGraph,
)

APP_SECRET = "meta-app-secret-for-tests"
VERIFY_TOKEN = "meta-verify-token-for-tests"
TOKEN = "meta-test-admin-token-0123456789"


@dataclass
class MetaGateway:
    """The running gateway and what tests need of it."""

    gateway: Gateway
    base: str
    http: aiohttp.ClientSession
    fake: FakeGraph

    def adapter(self, account: str = "shop") -> MetaAdapter:
        adapter = self.gateway.adapters[("meta", account)]
        assert isinstance(adapter, MetaAdapter)
        return adapter

    async def hook(self, payload: Any, *, account: str = "shop", secret: str = APP_SECRET,
                   signature: str | None = None) -> tuple[int, Any]:
        """POST a webhook signed like Meta: ``sha256=`` HMAC-SHA256 of the raw body."""
        raw = payload if isinstance(payload, bytes) else orjson.dumps(payload)
        headers = {"Content-Type": "application/json"}
        if signature is None:
            signature = sign(raw, secret)
        if signature:
            headers["X-Hub-Signature-256"] = signature
        async with self.http.post(f"{self.base}/hooks/meta/{account}", data=raw,
                                  headers=headers) as response:
            return response.status, await response.json(content_type=None)

    async def api(self, method: str, path: str, body: Any = None,
                  **params: Any) -> tuple[int, Any]:
        async with self.http.request(method, f"{self.base}{path}", json=body, params=params,
                                     headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
            return resp.status, await resp.json(content_type=None)

    async def seq(self) -> int:
        return await self.gateway.store.head_seq()

    async def events(self, after: int) -> list[dict[str, Any]]:
        status, page = await self.api("GET", "/v1/events", after=str(after), limit="1000")
        assert status == 200, page
        return list(page["events"])

    async def message(self, provider_id: str, channel: str) -> dict[str, Any] | None:
        """The stored message with this provider id (any direction), through the feed."""
        for event in reversed(await self.events(0)):
            message = event["data"].get("message")
            if message and message["provider"]["message_id"] == provider_id and \
                    message["channel"] == channel:
                status, fresh = await self.api("GET", f"/v1/conversations/"
                                               f"{message['conversation_id']}/messages")
                assert status == 200
                for item in fresh["messages"]:
                    if item["id"] == message["id"]:
                        return dict(item)
        return None


def sign(raw: bytes, secret: str = APP_SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()


def uid(prefix: str = "") -> str:
    """A fresh numeric-looking id, so tests sharing the gateway see new customers."""
    return prefix + str(uuid.uuid4().int)[:16]


def now_ms(offset_seconds: float = 0.0) -> int:
    return int((time.time() + offset_seconds) * 1000)


def page_batch(*events: dict[str, Any], object_: str = "page",
               entry_id: str = PAGE_ID) -> dict[str, Any]:
    """A Messenger (or Instagram) webhook with one entry of these messaging events."""
    return {"object": object_, "entry": [{"id": entry_id, "time": now_ms(),
                                          "messaging": list(events)}]}


def messenger_text(psid: str, text: str, mid: str | None = None, *,
                   at_ms: int | None = None, recipient: str = PAGE_ID) -> dict[str, Any]:
    return {"sender": {"id": psid}, "recipient": {"id": recipient},
            "timestamp": at_ms or now_ms(),
            "message": {"mid": mid or uid("m_"), "text": text}}


def whatsapp_batch(*messages: dict[str, Any], contacts: list[dict[str, Any]] | None = None,
                   statuses: list[dict[str, Any]] | None = None,
                   phone_number_id: str = PHONE_NUMBER_ID) -> dict[str, Any]:
    value: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550783881", "phone_number_id": phone_number_id}}
    if contacts is not None:
        value["contacts"] = contacts
    if messages:
        value["messages"] = list(messages)
    if statuses is not None:
        value["statuses"] = statuses
    return {"object": "whatsapp_business_account",
            "entry": [{"id": "102290129340398", "changes": [{"field": "messages",
                                                              "value": value}]}]}


def whatsapp_message(wa_id: str, kind: str, body: dict[str, Any], *,
                     wamid: str | None = None, at: int | None = None) -> dict[str, Any]:
    return {"from": wa_id, "id": wamid or uid("wamid.HBgL"),
            "timestamp": str(at or int(time.time())), "type": kind, kind: body}


@pytest.fixture(scope="session")
async def fake_graph() -> AsyncIterator[FakeGraph]:
    fake = FakeGraph()
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture(scope="session")
async def fake_graph_elsewhere() -> AsyncIterator[FakeGraph]:
    """Another host (not the configured Graph API): nothing may reach it."""
    fake = FakeGraph()
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture(scope="session")
async def meta(tmp_path_factory: pytest.TempPathFactory,
               fake_graph: FakeGraph) -> AsyncIterator[MetaGateway]:
    """Account ``shop`` (all three networks, HUMAN_AGENT allowed) and ``strict`` (the same
    Page without HUMAN_AGENT)."""
    tmp: Path = tmp_path_factory.mktemp("meta")
    accounts = "\n".join(f"""
[[channels]]
type = "meta"
name = "{name}"
app_secret = "{APP_SECRET}"
verify_token = "{VERIFY_TOKEN}"
page_id = "{PAGE_ID}"
page_access_token = "{PAGE_TOKEN}"
instagram_account_id = "{INSTAGRAM_ID}"
whatsapp_phone_number_id = "{PHONE_NUMBER_ID}"
whatsapp_access_token = "{WHATSAPP_TOKEN}"
graph_base_url = "{fake_graph.url}"
media_hosts = ["{fake_graph.url}"]
human_agent = {human}
timeout = 5.0
""" for name, human in (("shop", "true"), ("strict", "false")))
    config = parse_config(f"""
[server]
listen = "127.0.0.1:0"
shutdown_timeout = 10
[store]
data_dir = "{tmp}"
synchronous = "NORMAL"
[outbox]
base_delay = 0.05
max_delay = 0.2
max_attempts = 3
[[tokens]]
name = "admin"
token = "{TOKEN}"
scopes = ["admin"]
{accounts}
""")
    gateway = Gateway(config)
    await gateway.start()
    async with aiohttp.ClientSession() as http:
        yield MetaGateway(gateway, f"http://127.0.0.1:{gateway.bound_port}", http, fake_graph)
    await gateway.stop()


@pytest.fixture
def graph(meta: MetaGateway) -> FakeGraph:
    """The fake, with no calls or failures left from another test."""
    meta.fake.reset()
    return meta.fake

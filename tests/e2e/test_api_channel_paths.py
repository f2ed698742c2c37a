"""The core paths a provider channel needs, exercised through the API channel of a real
daemon: message changes, echoes, receipts, customer changes and groups. Each checks the
feed for exactly the events the contract lists."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from gateway import signing
from tests.conftest import API_SECRET, READ_TOKEN, Daemon, base_config, free_port
from tests.helpers import bearer, get_json, post_inbound, post_json, unique, wait_until


class Crm:
    """A CRM's callback endpoint: records replies, answers ``{"message_id": "cb-…"}``."""

    def __init__(self) -> None:
        self.port = free_port()
        self.bodies: list[dict[str, Any]] = []
        self.runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        self.bodies.append(body)
        return web.json_response({"message_id": f"cb-{body['message']['id']}"})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/callback", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()


@pytest.fixture(scope="module")
async def crm() -> AsyncIterator[Crm]:
    """The CRM callback receiver."""
    server = Crm()
    await server.start()
    yield server
    assert server.runner is not None
    await server.runner.cleanup()


@pytest.fixture(scope="module")
async def daemon(tmp_path_factory: pytest.TempPathFactory, crm: Crm) -> AsyncIterator[Daemon]:
    """``crm`` (signed, with a callback) and ``rooms`` (groups = true) besides the
    base config's ``default`` API account, which leaves groups off."""
    tmp: Path = tmp_path_factory.mktemp("paths")
    http_port, smtp_port = free_port(), free_port()
    extra = f"""
        [[channels]]
        type = "api"
        name = "crm"
        secret = "{API_SECRET}"
        callback_url = "http://127.0.0.1:{crm.port}/callback"
        [[channels]]
        type = "api"
        name = "rooms"
        groups = true
        secret = "{API_SECRET}"
        callback_url = "http://127.0.0.1:{crm.port}/callback"
        """
    proc = Daemon(tmp, base_config(tmp / "data", http_port, smtp_port, extra=extra), http_port)
    proc.start()
    await proc.wait_ready()
    yield proc
    assert await proc.stop() == 0, proc.logs()


async def head(http: aiohttp.ClientSession, daemon: Daemon) -> str:
    """The feed's current cursor."""
    status, page = await get_json(http, f"{daemon.url}/v1/events", limit=1000)
    while page["events"]:
        status, page = await get_json(http, f"{daemon.url}/v1/events", after=page["next"],
                                      limit=1000)
    assert status == 200
    return str(page["next"])


async def events_since(http: aiohttp.ClientSession, daemon: Daemon,
                       cursor: str) -> list[dict[str, Any]]:
    """Every event after ``cursor``."""
    status, page = await get_json(http, f"{daemon.url}/v1/events", after=cursor, limit=1000)
    assert status == 200
    return list(page["events"])


async def signed(http: aiohttp.ClientSession, method: str, url: str,
                 body: Any = None) -> tuple[int, Any]:
    """A request signed with the account secret."""
    raw = b"" if body is None else orjson.dumps(body)
    headers = {"Content-Type": "application/json",
               "Omnirelay-Signature": signing.sign(API_SECRET, raw)}
    async with http.request(method, url, data=raw, headers=headers) as resp:
        return resp.status, await resp.json(content_type=None)


async def inbound(http: aiohttp.ClientSession, daemon: Daemon, user: str, **fields: Any
                  ) -> dict[str, Any]:
    """Post a customer's message to ``crm``; return the stored message."""
    body = {"message_id": unique("ext"), "from": {"id": user}, "text": "hello", **fields}
    status, answer = await post_inbound(http, daemon.url, body)
    assert status == 201, answer
    return dict(answer["message"])


async def sent_reply(http: aiohttp.ClientSession, daemon: Daemon, conversation_id: str,
                     text: str = "Your order ships today") -> dict[str, Any]:
    """An agent's reply, once the callback took it (status sent, the CRM's id)."""
    status, queued = await post_json(
        http, f"{daemon.url}/v1/conversations/{conversation_id}/messages",
        {"text": text, "agent": {"id": "a-1", "name": "Mina"}})
    assert status == 202, queued

    async def sent() -> dict[str, Any] | None:
        _, message = await get_json(http, f"{daemon.url}/v1/messages/{queued['id']}")
        return message if message["status"] == "sent" else None

    return dict(await wait_until(sent))


# ---------------------------------------------------------------- message changes


async def test_edits_reactions_and_withdrawals_change_the_message_once(
        daemon: Daemon, http: aiohttp.ClientSession) -> None:
    message = await inbound(http, daemon, unique("u"), text="I ordred the red one")
    provider_id = message["provider"]["message_id"]
    url = f"{daemon.url}/hooks/api/crm/messages/{provider_id}"
    cursor = await head(http, daemon)

    status, edited = await signed(http, "PATCH", url, {"text": "I ordered the red one"})
    assert status == 200, edited
    assert edited["changed"] == ["text", "edited_at"]
    assert edited["message"]["id"] == message["id"]
    assert edited["message"]["text"] == "I ordered the red one"
    assert edited["message"]["edited_at"]
    status, again = await signed(http, "PATCH", url, {"text": "I ordered the red one"})
    assert (status, again["changed"]) == (200, [])

    reactions = {"reactions": [{"emoji": "👍", "by": "agent-7"}]}
    status, reacted = await signed(http, "PATCH", url, reactions)
    assert status == 200 and reacted["message"]["reactions"][0]["emoji"] == "👍"
    assert (await signed(http, "PATCH", url, reactions))[1]["changed"] == []
    status, withdrawn = await signed(http, "PATCH", url, {"withdrawn": True})
    assert status == 200 and withdrawn["message"]["withdrawn"] is True

    updates = await events_since(http, daemon, cursor)
    assert [e["type"] for e in updates] == ["message.updated"] * 3
    assert [e["data"]["changed"] for e in updates] == [
        ["text", "edited_at"], ["reactions"], ["withdrawn"]]
    assert all(e["data"]["message"]["id"] == message["id"] for e in updates)
    _, stored = await get_json(http, f"{daemon.url}/v1/messages/{message['id']}")
    assert stored["text"] == "I ordered the red one" and stored["withdrawn"] is True


async def test_a_change_needs_the_accounts_credentials_and_a_known_message(
        daemon: Daemon, http: aiohttp.ClientSession) -> None:
    message = await inbound(http, daemon, unique("u"))
    url = f"{daemon.url}/hooks/api/crm/messages/{message['provider']['message_id']}"
    status, _ = await signed(http, "PATCH", f"{daemon.url}/hooks/api/crm/messages/nope",
                             {"text": "x"})
    assert status == 404
    async with http.patch(url, json={"text": "forged"}) as resp:
        assert resp.status == 401
    async with http.patch(url, json={"text": "forged"}, headers=bearer(READ_TOKEN)) as resp:
        assert resp.status == 403
    async with http.patch(url, json={"text": "by the CRM"}, headers=bearer()) as resp:
        assert resp.status == 200
    status, refused = await signed(http, "PATCH", url, {"withdrawn": False})
    assert status == 422, refused
    # Another account's message is not this account's to change.
    status, _ = await signed(
        http, "PATCH", f"{daemon.url}/hooks/api/rooms/messages/"
        f"{message['provider']['message_id']}", {"text": "x"})
    assert status == 404


# ---------------------------------------------------------------- receipts


async def test_the_callbacks_message_id_names_the_reply_for_receipts(
        daemon: Daemon, http: aiohttp.ClientSession, crm: Crm) -> None:
    message = await inbound(http, daemon, unique("u"))
    reply = await sent_reply(http, daemon, message["conversation_id"])
    assert reply["provider"]["message_id"] == f"cb-{reply['id']}"
    status_url = f"{daemon.url}/hooks/api/crm/status"
    cursor = await head(http, daemon)

    status, read = await signed(http, "POST", status_url,
                                {"message_id": f"cb-{reply['id']}", "status": "read"})
    assert status == 200, read
    assert read["message"]["status"] == "read" and read["changed"] is True
    status, late = await signed(http, "POST", status_url,
                                {"message_id": f"cb-{reply['id']}", "status": "delivered"})
    assert status == 200 and late["changed"] is False and late["message"]["status"] == "read"
    status, _ = await signed(http, "POST", status_url,
                             {"message_id": "cb-unknown", "status": "read"})
    assert status == 404
    status, _ = await signed(http, "POST", status_url,
                             {"message_id": f"cb-{reply['id']}", "status": "opened"})
    assert status == 422

    statuses = await events_since(http, daemon, cursor)
    assert [e["type"] for e in statuses] == ["message.status"]
    assert statuses[0]["data"]["message"]["status"] == "read"


async def test_a_failure_receipt_fails_the_reply_with_the_providers_error(
        daemon: Daemon, http: aiohttp.ClientSession) -> None:
    message = await inbound(http, daemon, unique("u"))
    reply = await sent_reply(http, daemon, message["conversation_id"])
    error = {"code": "blocked", "message": "the user blocked the account"}
    status, failed = await signed(http, "POST", f"{daemon.url}/hooks/api/crm/status", {
        "message_id": reply["provider"]["message_id"], "status": "failed", "error": error})
    assert status == 200, failed
    assert failed["message"]["status"] == "failed" and failed["message"]["error"] == error


# ---------------------------------------------------------------- echoes


async def test_an_echo_is_stored_as_outbound_unless_it_is_our_own_send(
        daemon: Daemon, http: aiohttp.ClientSession) -> None:
    user = unique("u")
    message = await inbound(http, daemon, user)
    cursor = await head(http, daemon)
    status, echoed = await post_inbound(http, daemon.url, {
        "message_id": unique("crm-reply"), "direction": "outbound", "to": {"id": user},
        "text": "Answered from the CRM"})
    assert status == 201, echoed
    echo = echoed["message"]
    assert echo["direction"] == "outbound" and echo["agent"] is None
    assert echo["status"] == "sent"
    assert echo["conversation_id"] == message["conversation_id"]
    assert echo["customer_id"] == message["customer_id"]
    assert echo["to"]["address"] == user and echo["from"]["address"] == "omnirelay:crm"
    received = await events_since(http, daemon, cursor)
    assert [e["type"] for e in received] == ["message.received"]
    assert received[0]["data"]["message"]["direction"] == "outbound"

    # The echo of omnirelay's own reply (its provider id) is matched and adds nothing.
    reply = await sent_reply(http, daemon, message["conversation_id"])
    cursor = await head(http, daemon)
    status, matched = await post_inbound(http, daemon.url, {
        "message_id": reply["provider"]["message_id"], "direction": "outbound",
        "to": {"id": user}, "text": reply["text"]})
    assert status == 200, matched
    assert matched["created"] is False and matched["message"]["id"] == reply["id"]
    assert await events_since(http, daemon, cursor) == []


async def test_an_echo_names_its_recipient_in_to(
        daemon: Daemon, http: aiohttp.ClientSession) -> None:
    status, refused = await post_inbound(http, daemon.url, {
        "message_id": unique("x"), "direction": "outbound", "from": {"id": "u"}, "text": "x"})
    assert status == 422, refused
    status, refused = await post_inbound(http, daemon.url, {
        "message_id": unique("x"), "to": {"id": "u"}, "text": "x"})
    assert status == 422, refused


# ---------------------------------------------------------------- customer changes


async def test_inbound_traffic_updates_the_customer_and_a_withdrawal_removes_the_identity(
        daemon: Daemon, http: aiohttp.ClientSession) -> None:
    user = unique("u")
    first = await inbound(http, daemon, user)
    cursor = await head(http, daemon)
    await inbound(http, daemon, user, **{"from": {"id": user, "email": f"{user}@shop.example"}})
    await inbound(http, daemon, user, **{"from": {"id": user, "name": "Kim Minsu"}})
    await inbound(http, daemon, user, **{"from": {"id": user, "name": "Kim Minsu"}})
    types = [e["type"] for e in await events_since(http, daemon, cursor)]
    assert types == ["customer.updated", "message.received",
                     "customer.updated", "message.received", "message.received"]

    cursor = await head(http, daemon)
    status, answer = await signed(http, "DELETE", f"{daemon.url}/hooks/api/crm/users/{user}")
    assert status == 200, answer
    assert answer["customer"]["id"] == first["customer_id"]
    assert [i["kind"] for i in answer["customer"]["identities"]] == ["email"]
    assert answer["customer"]["name"] is None  # the withdrawn id gave it
    updated = await events_since(http, daemon, cursor)
    assert [e["type"] for e in updated] == ["customer.updated"]
    status, _ = await signed(http, "DELETE", f"{daemon.url}/hooks/api/crm/users/{user}")
    assert status == 404


# ---------------------------------------------------------------- groups


async def test_a_group_is_one_conversation_with_each_poster_a_customer(
        daemon: Daemon, http: aiohttp.ClientSession, crm: Crm) -> None:
    group = {"id": unique("g"), "name": "Wholesale order 12"}
    alice, bob = unique("alice"), unique("bob")
    status, first = await post_inbound(http, daemon.url, {
        "message_id": unique("m"), "from": {"id": alice}, "text": "Is it shipped?",
        "group": group}, account="rooms")
    assert status == 201, first
    first_id = first["message"]["provider"]["message_id"]
    status, second = await post_inbound(http, daemon.url, {
        "message_id": unique("m"), "from": {"id": bob}, "text": "Same question",
        "group": group, "in_reply_to": first_id}, account="rooms")
    assert status == 201, second
    a, b = first["message"], second["message"]
    assert a["conversation_id"] == b["conversation_id"]
    assert a["customer_id"] != b["customer_id"]
    assert b["in_reply_to"] == a["id"]
    _, conversation = await get_json(http, f"{daemon.url}/v1/conversations/{a['conversation_id']}")
    assert conversation["group"] == group

    # A reply in the group conversation tells the CRM it is for the group.
    reply = await sent_reply(http, daemon, a["conversation_id"], "Shipped this morning")
    body = next(b for b in crm.bodies if b["message"]["id"] == reply["id"])
    assert body["group"] == group
    # Alice's direct message is her own conversation.
    status, direct = await post_inbound(http, daemon.url, {
        "message_id": unique("m"), "from": {"id": alice}, "text": "privately"},
        account="rooms")
    assert status == 201 and direct["message"]["conversation_id"] != a["conversation_id"]


async def test_group_posts_are_acknowledged_and_ignored_where_groups_are_off(
        daemon: Daemon, http: aiohttp.ClientSession) -> None:
    cursor = await head(http, daemon)
    status, answer = await post_inbound(http, daemon.url, {
        "message_id": unique("m"), "from": {"id": unique("u")}, "text": "hi all",
        "group": {"id": unique("g")}}, account="crm")
    assert status == 202, answer
    assert answer["message"] is None and "groups" in answer["ignored"]
    assert await events_since(http, daemon, cursor) == []
    _, report = await get_json(http, f"{daemon.url}/v1/channels")
    crm_account = next(c for c in report["channels"] if c["name"] == "crm")
    assert crm_account["counters"]["group_posts_ignored"] == 1

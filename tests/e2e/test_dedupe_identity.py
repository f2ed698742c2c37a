"""One provider message is stored once; one customer per person; merges keep resolving."""

from __future__ import annotations

import asyncio
import smtplib
import uuid
from email.message import EmailMessage

import aiohttp

from tests.conftest import Daemon
from tests.helpers import all_events, get_json, post_inbound, post_json, unique


def received_for(events: list[dict], provider_id: str) -> list[dict]:
    """message.received events of one provider message id."""
    return [e for e in events if e["type"] == "message.received"
            and e["data"]["message"]["provider"]["message_id"] == provider_id]


async def test_repeat_delivery_returns_existing_message_and_no_new_event(
        daemon: Daemon, http: aiohttp.ClientSession) -> None:
    body = {"message_id": unique("dup"), "from": {"id": unique("u")}, "text": "twice"}
    first_status, first = await post_inbound(http, daemon.url, body)
    second_status, second = await post_inbound(http, daemon.url, body)
    assert (first_status, second_status) == (201, 200)
    assert first["created"] is True
    assert second["created"] is False
    assert second["message"]["id"] == first["message"]["id"]
    assert len(received_for(await all_events(http, daemon.url), body["message_id"])) == 1


async def test_concurrent_duplicates_store_one_message(
        daemon: Daemon, http: aiohttp.ClientSession) -> None:
    body = {"message_id": unique("race"), "from": {"id": unique("u")}, "text": "at once"}
    results = await asyncio.gather(*(post_inbound(http, daemon.url, body) for _ in range(20)))
    statuses = sorted(status for status, _ in results)
    assert statuses == [200] * 19 + [201]
    assert len({r["message"]["id"] for _, r in results}) == 1
    events = await all_events(http, daemon.url)
    assert len(received_for(events, body["message_id"])) == 1
    customer_id = results[0][1]["message"]["customer_id"]
    assert len([e for e in events if e["type"] == "customer.created"
                and e["data"]["customer"]["id"] == customer_id]) == 1


async def test_same_message_id_on_another_account_is_another_message(
        daemon: Daemon, http: aiohttp.ClientSession) -> None:
    message_id = unique("shared")
    user = unique("u")
    _, a = await post_inbound(http, daemon.url, {"message_id": message_id, "from": {"id": user},
                                                 "text": "crm"})
    _, b = await post_inbound(http, daemon.url, {"message_id": message_id, "from": {"id": user},
                                                 "text": "default"}, account="default",
                              secret=None, headers={"Authorization": "Bearer "
                                                    "test-write-token-0123456789"})
    assert a["message"]["id"] != b["message"]["id"]
    assert a["message"]["customer_id"] == b["message"]["customer_id"]


def send_mail(port: int, sender: str, text: str, subject: str = "Order") -> None:
    """A real SMTP exchange with Python's smtplib."""
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = "support@shop.example"
    msg["Subject"] = subject
    msg.set_content(text)
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        smtp.send_message(msg)


async def test_email_from_an_address_known_through_the_api_links_to_that_customer(
        daemon: Daemon, http: aiohttp.ClientSession) -> None:
    address = f"{unique('kim')}@example.com"
    n = uuid.uuid4().int % 10**8
    phone = f"010-{n // 10000:04d}-{n % 10000:04d}"
    _, api = await post_inbound(http, daemon.url, {
        "message_id": unique("m"), "from": {"id": unique("crm"), "email": address.upper(),
                                            "phone": phone}, "text": "via the CRM"})
    customer_id = api["message"]["customer_id"]
    await asyncio.to_thread(send_mail, daemon.smtp_port, address, "and by mail")  # type: ignore[attr-defined]

    status, found = await get_json(http, f"{daemon.url}/v1/customers",
                                   identity=f"email:{address}")
    assert status == 200
    assert [c["id"] for c in found["customers"]] == [customer_id]
    status, customer = await get_json(http, f"{daemon.url}/v1/customers/{customer_id}")
    identities = {(i["kind"], i["address"]): i["channels"] for i in customer["identities"]}
    assert identities[("email", address)] == ["email"]
    e164 = "+82" + phone.replace("-", "")[1:]
    assert ("phone", e164) in identities  # default_region KR: 010-… → +8210…
    # Single customer view: the mail joined the customer's open conversation.
    assert len(customer["conversations"]) == 1
    status, messages = await get_json(
        http, f"{daemon.url}/v1/conversations/{customer['conversations'][0]['id']}/messages")
    assert [(m["channel"], m["text"]) for m in messages["messages"]] == [
        ("api", "via the CRM"), ("email", "and by mail")]


async def test_merge_moves_everything_and_the_merged_id_keeps_resolving(
        daemon: Daemon, http: aiohttp.ClientSession) -> None:
    _, a = await post_inbound(http, daemon.url, {"message_id": unique("m"),
                                                 "from": {"id": unique("a"), "name": "Lee"},
                                                 "text": "from A"})
    _, b = await post_inbound(http, daemon.url, {"message_id": unique("m"),
                                                 "from": {"id": unique("b")},
                                                 "text": "from B"})
    survivor, merged = a["message"]["customer_id"], b["message"]["customer_id"]
    assert survivor != merged
    status, customer = await post_json(http, f"{daemon.url}/v1/customers/{survivor}/merge",
                                       {"from": merged})
    assert status == 200, customer
    assert customer["id"] == survivor
    assert {i["address"] for i in customer["identities"]} == {
        a["message"]["from"]["address"], b["message"]["from"]["address"]}
    assert len(customer["conversations"]) == 2

    status, resolved = await get_json(http, f"{daemon.url}/v1/customers/{merged}")
    assert (status, resolved["id"]) == (200, survivor)
    status, found = await get_json(http, f"{daemon.url}/v1/customers",
                                   identity=f"external:{b['message']['from']['address']}")
    assert [c["id"] for c in found["customers"]] == [survivor]
    status, moved = await get_json(http, f"{daemon.url}/v1/messages/{b['message']['id']}")
    assert moved["customer_id"] == survivor
    # The old event still names the old id (events are never rewritten) and it resolves.
    events = await all_events(http, daemon.url)
    merged_events = [e for e in events if e["type"] == "customer.merged"
                     and e["data"]["merged_customer_id"] == merged]
    assert len(merged_events) == 1
    assert merged_events[0]["data"]["customer"]["id"] == survivor
    # A new message from B's identity goes to the survivor.
    _, again = await post_inbound(http, daemon.url, {
        "message_id": unique("m"), "from": {"id": b["message"]["from"]["address"]},
        "text": "B again"})
    assert again["message"]["customer_id"] == survivor
    status, error = await post_json(http, f"{daemon.url}/v1/customers/{survivor}/merge",
                                    {"from": merged})
    assert status == 422, error


async def test_linking_an_identity_owned_by_another_customer_is_a_conflict(
        daemon: Daemon, http: aiohttp.ClientSession) -> None:
    _, a = await post_inbound(http, daemon.url, {"message_id": unique("m"),
                                                 "from": {"id": unique("a")}, "text": "a"})
    _, b = await post_inbound(http, daemon.url, {"message_id": unique("m"),
                                                 "from": {"id": unique("b")}, "text": "b"})
    url = f"{daemon.url}/v1/customers/{a['message']['customer_id']}/identities"
    status, body = await post_json(http, url, {"kind": "external",
                                               "address": b["message"]["from"]["address"]})
    assert status == 409
    assert body["error"]["code"] == "conflict"
    status, body = await post_json(http, url, {"kind": "phone", "address": "+82 10-2222-3333"})
    assert status == 200
    assert {"kind": "phone", "address": "+821022223333", "channels": []} in body["identities"]
    status, body = await post_json(http, url, {"kind": "phone", "address": "not a number"})
    assert status == 422

"""Inbound through the API channel → feed → reply → callback, as a help desk sees it."""

from __future__ import annotations

import asyncio

import aiohttp
import orjson

from gateway import signing
from tests.conftest import API_SECRET, WEBHOOK_SECRET, Daemon, Receiver
from tests.helpers import bearer, get_json, post_inbound, post_json, unique


async def read_sse(http: aiohttp.ClientSession, url: str, count: int,
                   headers: dict[str, str]) -> list[tuple[str, dict]]:
    """Read ``count`` events from an SSE stream: (id, event)."""
    events: list[tuple[str, dict]] = []
    async with http.get(url, headers=headers) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        event_id, data = None, []
        async for raw in resp.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("id: "):
                event_id = line[4:]
            elif line.startswith("data: "):
                data.append(line[6:])
            elif line == "" and data:
                events.append((event_id, orjson.loads("\n".join(data))))
                event_id, data = None, []
                if len(events) == count:
                    return events
    return events


async def test_inbound_feed_reply_callback_end_to_end(
        daemon: Daemon, http: aiohttp.ClientSession, receiver: Receiver) -> None:
    base = daemon.url
    status, page = await get_json(http, f"{base}/v1/events", limit=1000)
    head = page["next"]
    # An SSE consumer connected before the message arrives sees it live.
    sse = asyncio.create_task(read_sse(http, f"{base}/v1/events/stream", 3, bearer()))
    await asyncio.sleep(0.2)
    # A long-poll waiting on the head wakes when the message commits.
    long_poll = asyncio.create_task(get_json(http, f"{base}/v1/events", after=head, wait=10))
    await asyncio.sleep(0.1)
    assert not long_poll.done()

    user = unique("u")
    status, body = await post_inbound(http, base, {
        "message_id": unique("ext"), "from": {"id": user, "name": "김민수",
                                              "email": f"{user}@Example.COM"},
        "text": "주문한 상품이 아직 안 왔어요"})
    assert status == 201, body
    message = body["message"]
    assert message["channel"] == "api" and message["account"] == "crm"
    assert message["text"] == "주문한 상품이 아직 안 왔어요"
    assert message["from"] == {"kind": "external", "address": user, "name": "김민수"}

    status, polled = await asyncio.wait_for(long_poll, 10)
    assert status == 200
    types = [e["type"] for e in polled["events"]]
    assert types == ["customer.created", "conversation.opened", "message.received"]
    assert polled["events"][-1]["data"]["message"]["id"] == message["id"]
    assert polled["next"] == polled["events"][-1]["seq"]

    streamed = await asyncio.wait_for(sse, 10)
    assert [e["type"] for _, e in streamed] == types
    assert [i for i, _ in streamed] == [e["seq"] for e in polled["events"]]

    # Resume from the middle with Last-Event-ID: exactly what came after.
    resumed = await read_sse(http, f"{base}/v1/events/stream", 2,
                             {**bearer(), "Last-Event-ID": streamed[0][0]})
    assert [e["id"] for _, e in resumed] == [e["id"] for _, e in streamed[1:]]

    # The customer has both identities, the e-mail lower-cased.
    status, customer = await get_json(http, f"{base}/v1/customers/{message['customer_id']}")
    assert {(i["kind"], i["address"]) for i in customer["identities"]} == {
        ("external", user), ("email", f"{user}@example.com")}

    # The agent replies; 202 with the queued message, then the CRM callback gets it signed.
    status, queued = await post_json(
        http, f"{base}/v1/conversations/{message['conversation_id']}/messages",
        {"text": "확인해 보겠습니다", "agent": {"id": "a-7", "name": "Jiwoo"}})
    assert status == 202, queued
    assert queued["status"] == "queued" and queued["direction"] == "outbound"
    assert queued["to"]["address"] == user and queued["in_reply_to"] == message["id"]

    callbacks = await receiver.wait_for(
        lambda reqs: any(r.path == "/callback" and r.json()["message"]["id"] == queued["id"]
                         for r in reqs))
    callback = next(r for r in callbacks if r.path == "/callback"
                    and r.json()["message"]["id"] == queued["id"])
    assert signing.verify(callback.headers["Omnirelay-Signature"], API_SECRET, callback.body)
    assert not signing.verify(callback.headers["Omnirelay-Signature"], "wrong", callback.body)
    assert callback.json()["message"]["text"] == "확인해 보겠습니다"
    assert callback.json()["message"]["agent"] == {"id": "a-7", "name": "Jiwoo"}

    # The reply's status becomes sent, and the feed says so.
    async def sent() -> bool:
        _, msg = await get_json(http, f"{base}/v1/messages/{queued['id']}")
        return msg["status"] == "sent"

    for _ in range(100):
        if await sent():
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("reply never marked sent")

    # Webhooks: the help desk got the same events, signed, in order for the conversation.
    hooks = await receiver.wait_for(lambda reqs: any(
        r.path == "/webhook" and r.json()["type"] == "message.status"
        and r.json()["data"]["message"]["id"] == queued["id"] for r in reqs))
    mine = [r for r in hooks if r.path == "/webhook"
            and (r.json()["data"].get("conversation", {}).get("id")
                 or r.json()["data"].get("message", {}).get("conversation_id"))
            == message["conversation_id"]]
    for hook in mine:
        assert signing.verify(hook.headers["Omnirelay-Signature"], WEBHOOK_SECRET, hook.body)
        assert hook.headers["Omnirelay-Event-Id"] == hook.json()["id"]
    seqs = [int(r.json()["seq"]) for r in mine]
    assert seqs == sorted(seqs)
    assert [r.json()["type"] for r in mine] == [
        "conversation.opened", "message.received", "message.queued", "message.status"]

"""Agents' replies: idempotency, routing, proactive messages, and their errors."""

from __future__ import annotations

import aiohttp

from tests.conftest import WRITE_TOKEN, Daemon, Receiver
from tests.helpers import get_json, post_inbound, post_json, unique, wait_until


async def new_conversation(http: aiohttp.ClientSession, daemon: Daemon) -> dict:
    """A fresh customer writes in through the CRM account."""
    status, body = await post_inbound(http, daemon.url, {
        "message_id": unique("m"), "from": {"id": unique("u")}, "text": "help"})
    assert status == 201
    return body["message"]


async def outbound_of(http: aiohttp.ClientSession, daemon: Daemon, conversation: str) -> list:
    """The conversation's outbound messages."""
    _, page = await get_json(http, f"{daemon.url}/v1/conversations/{conversation}/messages")
    return [m for m in page["messages"] if m["direction"] == "outbound"]


async def test_same_idempotency_key_gives_one_outbox_row_and_another_body_409(
        daemon: Daemon, http: aiohttp.ClientSession, receiver: Receiver) -> None:
    message = await new_conversation(http, daemon)
    url = f"{daemon.url}/v1/conversations/{message['conversation_id']}/messages"
    key = {"Idempotency-Key": unique("key")}
    first = await post_json(http, url, {"text": "once"}, token=WRITE_TOKEN, headers=key)
    second = await post_json(http, url, {"text": "once"}, token=WRITE_TOKEN, headers=key)
    assert first[0] == second[0] == 202
    assert first[1]["id"] == second[1]["id"]
    assert len(await outbound_of(http, daemon, message["conversation_id"])) == 1

    status, error = await post_json(http, url, {"text": "another body"}, token=WRITE_TOKEN,
                                    headers=key)
    assert status == 409
    assert error["error"]["code"] == "conflict"
    assert len(await outbound_of(http, daemon, message["conversation_id"])) == 1
    # The callback got the reply exactly once.
    await receiver.wait_for(lambda reqs: any(
        r.path == "/callback" and r.json()["message"]["id"] == first[1]["id"] for r in reqs))
    assert len([r for r in receiver.requests if r.path == "/callback"
                and r.json()["message"]["id"] == first[1]["id"]]) == 1


async def test_reply_without_key_twice_is_two_messages(
        daemon: Daemon, http: aiohttp.ClientSession) -> None:
    message = await new_conversation(http, daemon)
    url = f"{daemon.url}/v1/conversations/{message['conversation_id']}/messages"
    await post_json(http, url, {"text": "one"})
    await post_json(http, url, {"text": "two"})
    assert [m["text"] for m in await outbound_of(http, daemon, message["conversation_id"])] == [
        "one", "two"]


async def test_reply_to_unknown_conversation_is_404_and_stores_nothing(
        daemon: Daemon, http: aiohttp.ClientSession) -> None:
    status, body = await post_json(http, f"{daemon.url}/v1/conversations/cnv_NOPE/messages",
                                   {"text": "hello?"})
    assert status == 404
    assert body["error"]["code"] == "not_found"


async def test_reply_needs_text_attachments_or_template(
        daemon: Daemon, http: aiohttp.ClientSession) -> None:
    message = await new_conversation(http, daemon)
    url = f"{daemon.url}/v1/conversations/{message['conversation_id']}/messages"
    for body in ({}, {"text": ""}, {"txt": "typo"}, {"text": 5},
                 {"text": "x", "attachments": [{"filename": "a.txt",
                                                "content_base64": "%%%"}]}):
        status, error = await post_json(http, url, body)
        assert status == 422, (body, error)
        assert error["error"]["code"] == "validation_failed"
    assert await outbound_of(http, daemon, message["conversation_id"]) == []


async def test_reply_with_attachment_is_downloadable(
        daemon: Daemon, http: aiohttp.ClientSession, receiver: Receiver) -> None:
    message = await new_conversation(http, daemon)
    status, queued = await post_json(
        http, f"{daemon.url}/v1/conversations/{message['conversation_id']}/messages",
        {"text": "the invoice", "attachments": [{
            "filename": "영수증.pdf", "content_type": "application/pdf",
            "content_base64": "JVBERi0xLjQK"}]})
    assert status == 202
    attachment = queued["attachments"][0]
    assert attachment["size"] == 9
    assert attachment["filename"] == "영수증.pdf"
    async with http.get(f"{daemon.url}{attachment['url']}",
                        headers={"Authorization": f"Bearer {WRITE_TOKEN}"}) as resp:
        assert resp.status == 403  # write does not include read
    async with http.get(f"{daemon.url}{attachment['url']}",
                        headers={"Authorization": "Bearer test-read-token-0123456789"}) as resp:
        assert resp.status == 200
        assert await resp.read() == b"%PDF-1.4\n"
        assert resp.headers["Content-Type"] == "application/pdf"


async def test_proactive_message_needs_a_channel_and_reaches_the_customer(
        daemon: Daemon, http: aiohttp.ClientSession, receiver: Receiver) -> None:
    message = await new_conversation(http, daemon)
    url = f"{daemon.url}/v1/customers/{message['customer_id']}/messages"
    status, error = await post_json(http, url, {"text": "your order shipped"})
    assert status == 422
    status, error = await post_json(http, url, {"text": "shipped", "channel": "sms"})
    assert status == 422
    assert "sms" in error["error"]["message"]
    status, queued = await post_json(http, url, {"text": "shipped", "channel": "api",
                                                 "account": "crm"})
    assert status == 202, queued
    assert queued["to"]["address"] == message["from"]["address"]
    await receiver.wait_for(lambda reqs: any(
        r.path == "/callback" and r.json()["message"]["id"] == queued["id"] for r in reqs))


async def test_close_and_reopen_emit_events_with_the_agent(
        daemon: Daemon, http: aiohttp.ClientSession) -> None:
    message = await new_conversation(http, daemon)
    base = f"{daemon.url}/v1/conversations/{message['conversation_id']}"
    agent = {"agent": {"id": "a-1", "name": "Mina"}}
    status, closed = await post_json(http, f"{base}/close", agent)
    assert (status, closed["status"]) == (200, "closed")
    assert closed["closed_at"] is not None
    _, page = await get_json(http, f"{daemon.url}/v1/conversations", status="closed",
                             customer_id=message["customer_id"])
    assert [c["id"] for c in page["conversations"]] == [message["conversation_id"]]
    # Within the reopen window, the customer's next message reopens the same conversation.
    _, again = await post_inbound(http, daemon.url, {
        "message_id": unique("m"), "from": {"id": message["from"]["address"]},
        "text": "one more thing"})
    assert again["message"]["conversation_id"] == message["conversation_id"]
    status, conv = await get_json(http, base)
    assert conv["status"] == "open"
    status, closed = await post_json(http, f"{base}/close", agent)
    status, reopened = await post_json(http, f"{base}/reopen", {})
    assert reopened["status"] == "open"


async def test_callback_refusing_the_reply_fails_it_with_a_clear_error(
        daemon: Daemon, http: aiohttp.ClientSession, receiver: Receiver) -> None:
    message = await new_conversation(http, daemon)
    receiver.fail_paths["/callback"] = 400
    try:
        status, queued = await post_json(
            http, f"{daemon.url}/v1/conversations/{message['conversation_id']}/messages",
            {"text": "will be refused"})
        assert status == 202

        async def failed() -> dict | None:
            _, msg = await get_json(http, f"{daemon.url}/v1/messages/{queued['id']}")
            return msg if msg["status"] == "failed" else None

        msg = await wait_until(failed)
    finally:
        receiver.fail_paths.pop("/callback")
    assert msg["error"]["code"] == "callback_rejected"
    assert "400" in msg["error"]["message"]
    assert "refused by the test" in msg["error"]["message"]

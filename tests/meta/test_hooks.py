"""``/hooks/meta/{account}`` against a real store: the handshake, signatures, batches,
duplicates, each Messenger/Instagram/WhatsApp event kind, echoes, receipts, media."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.helpers import wait_until
from tests.meta.conftest import (
    APP_SECRET,
    VERIFY_TOKEN,
    MetaGateway,
    messenger_text,
    now_ms,
    page_batch,
    sign,
    uid,
    whatsapp_batch,
    whatsapp_message,
)
from tests.meta.fake import INSTAGRAM_ID, PAGE_ID, WHATSAPP_TOKEN, FakeGraph


def types(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]


# ------------------------------------------------------------------ handshake, signatures

async def test_verification_answers_exactly_the_challenge_as_plain_text(
        meta: MetaGateway) -> None:
    params = {"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN,
              "hub.challenge": "1158201444"}
    async with meta.http.get(f"{meta.base}/hooks/meta/shop", params=params) as response:
        assert response.status == 200
        assert response.content_type == "text/plain"
        assert await response.read() == b"1158201444"


async def test_verification_with_a_wrong_token_or_mode_is_403(meta: MetaGateway) -> None:
    for params in ({"hub.mode": "subscribe", "hub.verify_token": "guess",
                    "hub.challenge": "1"},
                   {"hub.mode": "unsubscribe", "hub.verify_token": VERIFY_TOKEN,
                    "hub.challenge": "1"},
                   {"hub.challenge": "1"}):
        async with meta.http.get(f"{meta.base}/hooks/meta/shop", params=params) as response:
            assert response.status == 403
            assert await response.read() != b"1"


async def test_forged_or_missing_signatures_are_403_and_store_nothing(
        meta: MetaGateway) -> None:
    before = await meta.seq()
    payload = page_batch(messenger_text(uid(), "forged"))
    for signature in ("", "sha256=" + "0" * 64, sign(b"another body"),
                      sign(b"x", secret="not-the-app-secret")):
        status, body = await meta.hook(payload, signature=signature)
        assert status == 403, body
        assert body["error"]["code"] == "invalid_signature"
    # Signed with the app secret but over other bytes than sent (a re-serialized body).
    raw = b'{"object": "page", "entry": []}'
    status, _ = await meta.hook(raw, signature=sign(raw.replace(b" ", b"")))
    assert status == 403
    assert await meta.seq() == before


async def test_a_signed_body_that_is_not_a_webhook_is_400(meta: MetaGateway) -> None:
    for raw in (b"not json", b'{"hello": 1}'):
        status, body = await meta.hook(raw, signature=sign(raw, APP_SECRET))
        assert status == 400, body


# ------------------------------------------------------------------ batches and duplicates

async def test_a_batch_stores_each_message_once_and_a_redelivery_adds_nothing(
        meta: MetaGateway) -> None:
    alice, bob = uid(), uid()
    mids = [uid("m_") for _ in range(3)]
    payload = {"object": "page", "entry": [
        {"id": PAGE_ID, "time": now_ms(), "messaging": [
            messenger_text(alice, "first", mids[0]), messenger_text(bob, "hello", mids[1])]},
        {"id": PAGE_ID, "time": now_ms(), "messaging": [
            messenger_text(alice, "second", mids[2]),
            messenger_text(alice, "first", mids[0])]},  # the same message twice in one POST
    ]}
    before = await meta.seq()
    status, body = await meta.hook(payload)
    assert status == 200 and body["stored"] == 3 and body["duplicates"] == 1
    events = await meta.events(before)
    received = [e["data"]["message"] for e in events if e["type"] == "message.received"]
    assert sorted(m["provider"]["message_id"] for m in received) == sorted(mids)
    assert {m["from"]["address"] for m in received} == {alice, bob}
    assert all(m["from"]["kind"] == "messenger" and m["direction"] == "inbound"
               for m in received)
    by_alice = [m for m in received if m["from"]["address"] == alice]
    assert by_alice[0]["conversation_id"] == by_alice[1]["conversation_id"]

    after = await meta.seq()
    status, body = await meta.hook(payload)  # Meta redelivers the whole batch
    assert status == 200 and body["stored"] == 0 and body["duplicates"] == 4
    assert await meta.seq() == after


async def test_an_unusable_event_is_skipped_and_the_rest_of_the_batch_stored(
        meta: MetaGateway) -> None:
    good = messenger_text(uid(), "still here")
    status, body = await meta.hook(page_batch(messenger_text(" ", "who?"), good))
    assert status == 200, body
    assert (body["stored"], body["skipped"]) == (1, 1)
    assert await meta.message(good["message"]["mid"], "messenger") is not None


async def test_entries_of_another_page_are_acknowledged_and_not_stored(
        meta: MetaGateway) -> None:
    before = await meta.seq()
    status, body = await meta.hook(page_batch(messenger_text(uid(), "hi", recipient="999"),
                                              entry_id="999"))
    assert status == 200 and body["skipped"] == 1 and body["stored"] == 0
    assert await meta.seq() == before


# ------------------------------------------------------------------ Messenger and Instagram

async def test_quick_replies_and_postbacks_are_the_customers_messages_with_the_label(
        meta: MetaGateway) -> None:
    psid = uid()
    quick = messenger_text(psid, "Track my order")
    quick["message"]["quick_reply"] = {"payload": "TRACK_ORDER"}
    postback = {"sender": {"id": psid}, "recipient": {"id": PAGE_ID}, "timestamp": now_ms(),
                "postback": {"title": "Talk to a person", "payload": "HUMAN",
                             "mid": uid("m_")}}
    before = await meta.seq()
    status, body = await meta.hook(page_batch(quick, postback))
    assert status == 200 and body["stored"] == 2
    messages = [e["data"]["message"] for e in await meta.events(before)
                if e["type"] == "message.received"]
    assert [m["text"] for m in messages] == ["Track my order", "Talk to a person"]
    assert all(m["direction"] == "inbound" and m["from"]["address"] == psid
               for m in messages)


async def test_instagram_story_mentions_replies_and_text(meta: MetaGateway,
                                                         graph: FakeGraph) -> None:
    igsid = uid()
    graph.cdn["story.jpg"] = (b"\xff\xd8story", "image/jpeg")
    mention = {"sender": {"id": igsid}, "recipient": {"id": INSTAGRAM_ID},
               "timestamp": now_ms(), "message": {"mid": uid("ig_"), "attachments": [
                   {"type": "story_mention", "payload": {"url": f"{graph.url}/cdn/story.jpg"}}]}}
    reply = messenger_text(igsid, "Is this in stock?", uid("ig_"), recipient=INSTAGRAM_ID)
    reply["message"]["reply_to"] = {"story": {"url": f"{graph.url}/cdn/story.jpg",
                                              "id": "17890000000000001"}}
    before = await meta.seq()
    status, body = await meta.hook(page_batch(mention, reply, object_="instagram",
                                              entry_id=INSTAGRAM_ID))
    assert status == 200 and body["stored"] == 2
    received = [e["data"]["message"] for e in await meta.events(before)
                if e["type"] == "message.received"]
    assert {m["channel"] for m in received} == {"instagram"}
    assert received[0]["from"] == {"kind": "instagram", "address": igsid, "name": None}
    assert "story" in received[0]["text"]
    assert received[1]["text"] == "Is this in stock?"

    async def fetched() -> Any:
        message = await meta.message(received[0]["provider"]["message_id"], "instagram")
        return message if message and message["attachments"] else None
    message = await wait_until(fetched)
    assert message["attachments"][0]["size"] == len(b"\xff\xd8story")
    cdn_calls = [c for c in graph.calls if c.path == "/cdn/story.jpg"]
    assert cdn_calls and all(c.authorization is None for c in cdn_calls)  # no token to a CDN


async def test_reactions_edits_and_deletions_update_the_message(meta: MetaGateway) -> None:
    psid, mid = uid(), uid("m_")
    await meta.hook(page_batch(messenger_text(psid, "I want a refund", mid)))
    base = {"sender": {"id": psid}, "recipient": {"id": PAGE_ID}}
    before = await meta.seq()
    status, body = await meta.hook(page_batch(
        {**base, "timestamp": now_ms(1), "reaction": {"mid": mid, "action": "react",
                                                      "reaction": "love", "emoji": "❤"}},
        {**base, "timestamp": now_ms(2), "message_edit": {"mid": mid, "text":
                                                          "I want an exchange", "num_edit": 1}}))
    assert status == 200 and body["changes"] == 2
    updates = [e["data"] for e in await meta.events(before) if e["type"] == "message.updated"]
    assert [u["message"]["text"] for u in updates][-1] == "I want an exchange"
    assert updates[-1]["message"]["edited_at"]
    assert updates[0]["message"]["reactions"][0]["emoji"] == "❤"

    before = await meta.seq()
    status, body = await meta.hook(page_batch(
        {**base, "timestamp": now_ms(3), "reaction": {"mid": mid, "action": "unreact"}},
        {**base, "timestamp": now_ms(4), "message": {"mid": mid, "is_deleted": True}}))
    assert status == 200 and body["changes"] == 2
    last = [e["data"]["message"] for e in await meta.events(before)
            if e["type"] == "message.updated"][-1]
    assert last["withdrawn"] is True and last["reactions"] == []
    # A change of a message omnirelay never stored is acknowledged, not an error.
    status, body = await meta.hook(page_batch(
        {**base, "timestamp": now_ms(), "message_edit": {"mid": uid("m_"), "text": "x"}}))
    assert status == 200 and body["skipped"] == 1


async def test_an_echo_typed_in_the_page_inbox_is_an_outbound_message_without_agent(
        meta: MetaGateway) -> None:
    psid = uid()
    await meta.hook(page_batch(messenger_text(psid, "Hello?")))
    echo = {"sender": {"id": PAGE_ID}, "recipient": {"id": psid}, "timestamp": now_ms(),
            "message": {"mid": uid("m_"), "is_echo": True, "app_id": 263902037430900,
                        "text": "Hi! Typed in the Page inbox."}}
    before = await meta.seq()
    status, body = await meta.hook(page_batch(echo))
    assert status == 200 and body["stored"] == 1
    (event,) = [e for e in await meta.events(before) if e["type"] == "message.received"]
    message = event["data"]["message"]
    assert message["direction"] == "outbound" and message["agent"] is None
    assert message["to"]["address"] == psid and message["status"] == "sent"
    customer_events = [e for e in await meta.events(before) if e["type"] == "customer.created"]
    assert customer_events == []  # the Page is never taken for a customer


async def test_delivery_and_read_receipts_move_our_replies(meta: MetaGateway,
                                                           graph: FakeGraph) -> None:
    psid = uid()
    status, body = await meta.hook(page_batch(messenger_text(psid, "Where is it?")))
    conversation = (await meta.events(await meta.seq() - 5))[-1]["data"]
    conversation_id = await _conversation_of(meta, psid, "messenger")
    status, reply = await meta.api("POST", f"/v1/conversations/{conversation_id}/messages",
                                   {"text": "On its way!"})
    assert status == 202, reply

    async def sent() -> Any:
        message = await _message_by_id(meta, conversation_id, reply.get("message", reply)["id"])
        return message if message["status"] == "sent" else None
    message = await wait_until(sent)
    mid = message["provider"]["message_id"]
    assert graph.sends(PAGE_ID)[-1]["message"] == {"text": "On its way!"}
    assert graph.sends(PAGE_ID)[-1]["messaging_type"] == "RESPONSE"

    base = {"sender": {"id": psid}, "recipient": {"id": PAGE_ID}}
    before = await meta.seq()
    await meta.hook(page_batch({**base, "timestamp": now_ms(), "delivery": {
        "mids": [mid], "watermark": now_ms()}}))
    await meta.hook(page_batch({**base, "timestamp": now_ms(), "read": {
        "watermark": now_ms(5)}}))
    statuses = [e["data"]["message"]["status"] for e in await meta.events(before)
                if e["type"] == "message.status"]
    assert statuses == ["delivered", "read"]
    # Its echo (Meta sends one for every Page send) adds nothing.
    before = await meta.seq()
    status, body = await meta.hook(page_batch({
        "sender": {"id": PAGE_ID}, "recipient": {"id": psid}, "timestamp": now_ms(),
        "message": {"mid": mid, "is_echo": True, "text": "On its way!"}}))
    assert status == 200 and body["stored"] == 0
    assert await meta.seq() == before
    del conversation


# ------------------------------------------------------------------ WhatsApp

async def test_whatsapp_messages_of_each_type(meta: MetaGateway, graph: FakeGraph) -> None:
    wa_id = "1" + uid()[:10]
    graph.media["9001"] = (b"%PDF-1.7 invoice", "application/pdf")
    contacts = [{"profile": {"name": "Kim"}, "wa_id": wa_id}]
    first = whatsapp_message(wa_id, "text", {"body": "Hello"})
    batch = [
        first,
        whatsapp_message(wa_id, "document", {"id": "9001", "mime_type": "application/pdf",
                                             "filename": "invoice.pdf", "caption": "My invoice"}),
        whatsapp_message(wa_id, "location", {"latitude": 37.56, "longitude": 126.97,
                                             "name": "Shop", "address": "1 Main St"}),
        whatsapp_message(wa_id, "interactive", {"type": "button_reply", "button_reply": {
            "id": "yes-1", "title": "Yes, cancel it"}}),
        whatsapp_message(wa_id, "interactive", {"type": "list_reply", "list_reply": {
            "id": "size-m", "title": "Medium", "description": "M"}}),
        whatsapp_message(wa_id, "audio", {"id": "9002", "mime_type": "audio/ogg",
                                          "voice": True}),
    ]
    batch[2]["context"] = {"from": wa_id, "id": first["id"]}
    graph.media["9002"] = (b"OggS voice", "audio/ogg")
    before = await meta.seq()
    status, body = await meta.hook(whatsapp_batch(*batch, contacts=contacts))
    assert status == 200 and body["stored"] == 6, body
    received = [e["data"]["message"] for e in await meta.events(before)
                if e["type"] == "message.received"]
    assert [m["text"] for m in received[:2]] == ["Hello", "My invoice"]
    assert "Shop" in received[2]["text"] and "37.56" in received[2]["text"]
    assert received[2]["in_reply_to"] == received[0]["id"]
    assert [m["text"] for m in received[3:5]] == ["Yes, cancel it", "Medium"]
    assert all(m["from"] == {"kind": "phone", "address": f"+{wa_id}", "name": "Kim"}
               for m in received)
    assert all(m["channel"] == "whatsapp" for m in received)
    # A reaction changes the message it reacts to.
    before = await meta.seq()
    await meta.hook(whatsapp_batch(whatsapp_message(wa_id, "reaction", {
        "message_id": first["id"], "emoji": "👍"}), contacts=contacts))
    (update,) = [e for e in await meta.events(before) if e["type"] == "message.updated"
                 and e["data"]["message"]["provider"]["message_id"] == first["id"]]
    assert update["data"]["message"]["reactions"][0]["emoji"] == "👍"

    async def fetched() -> Any:
        message = await meta.message(batch[1]["id"], "whatsapp")
        return message if message and message["attachments"] else None
    document = await wait_until(fetched)
    attachment = document["attachments"][0]
    assert (attachment["filename"], attachment["content_type"]) == ("invoice.pdf",
                                                                   "application/pdf")
    async with meta.http.get(f"{meta.base}{attachment['url']}", headers={
            "Authorization": "Bearer meta-test-admin-token-0123456789"}) as response:
        assert await response.read() == b"%PDF-1.7 invoice"
    lookups = [c for c in graph.calls if c.path.endswith("/9001") or c.path == "/media/9001"]
    assert lookups and all(c.authorization == f"Bearer {WHATSAPP_TOKEN}" for c in lookups)


async def test_a_media_lookup_pointing_off_the_graph_hosts_is_refused_without_the_token(
        meta: MetaGateway, graph: FakeGraph, fake_graph_elsewhere: FakeGraph) -> None:
    wa_id = "1" + uid()[:10]
    fake_graph_elsewhere.media["9100"] = (b"secret", "image/jpeg")
    graph.media["9100"] = (b"x", "image/jpeg")
    graph.media_urls["9100"] = f"{fake_graph_elsewhere.url}/media/9100"
    image = whatsapp_message(wa_id, "image", {"id": "9100", "mime_type": "image/jpeg"})
    status, _ = await meta.hook(whatsapp_batch(image))
    assert status == 200

    async def settled() -> Any:
        message = await meta.message(image["id"], "whatsapp")
        return message if message and message["attachments"] else None
    attachment = (await wait_until(settled))["attachments"][0]
    assert attachment["error"]["code"] == "media_host_refused"
    assert fake_graph_elsewhere.calls == []  # neither the token nor a request went there


async def test_an_expired_media_id_is_kept_as_a_failed_attachment(meta: MetaGateway,
                                                                  graph: FakeGraph) -> None:
    image = whatsapp_message("1" + uid()[:10], "image", {"id": "404404",
                                                         "mime_type": "image/jpeg"})
    status, body = await meta.hook(whatsapp_batch(image))
    assert status == 200 and body["stored"] == 1

    async def settled() -> Any:
        message = await meta.message(image["id"], "whatsapp")
        return message if message and message["attachments"] else None
    attachment = (await wait_until(settled))["attachments"][0]
    assert attachment["error"]["code"] == "media_lookup_failed"
    assert "Unsupported get request" in attachment["error"]["message"]


async def test_a_whatsapp_number_is_the_phone_identity_sms_shares(meta: MetaGateway) -> None:
    wa_id = "1" + uid()[:10]
    await meta.hook(whatsapp_batch(whatsapp_message(wa_id, "text", {"body": "hi"}),
                                   contacts=[{"profile": {"name": "Lee"}, "wa_id": wa_id,
                                              "user_id": "US.13491208655302741918" + wa_id}]))
    status, found = await meta.api("GET", "/v1/customers", identity=f"phone:+{wa_id}")
    assert status == 200, found
    customer = found["customers"][0] if "customers" in found else found
    kinds = {i["kind"] for i in customer["identities"]}
    assert kinds == {"phone", "whatsapp"}  # the BSUID beside the number is linked too


async def test_a_withheld_number_gets_a_whatsapp_identity(meta: MetaGateway) -> None:
    bsuid = "US." + uid()
    message = {"from_user_id": bsuid, "id": uid("wamid.HBgL"), "timestamp": "1760000000",
               "type": "text", "text": {"body": "from a username"}}
    before = await meta.seq()
    status, body = await meta.hook(whatsapp_batch(message, contacts=[
        {"profile": {"name": "anon", "username": "@anon"}, "user_id": bsuid}]))
    assert status == 200 and body["stored"] == 1
    (event,) = [e for e in await meta.events(before) if e["type"] == "message.received"]
    assert event["data"]["message"]["from"]["kind"] == "whatsapp"
    assert event["data"]["message"]["from"]["address"] == bsuid


async def test_whatsapp_statuses_move_a_reply_and_failed_carries_the_error(
        meta: MetaGateway, graph: FakeGraph) -> None:
    wa_id = "1" + uid()[:10]
    await meta.hook(whatsapp_batch(whatsapp_message(wa_id, "text", {"body": "status?"})))
    conversation_id = await _conversation_of(meta, f"+{wa_id}", "whatsapp")
    wamids = []
    for text in ("Checking", "Found it"):
        status, reply = await meta.api("POST", f"/v1/conversations/{conversation_id}/messages",
                                       {"text": text})
        assert status == 202
        reply_id = reply.get("message", reply)["id"]

        async def sent(reply_id: str = reply_id) -> Any:
            message = await _message_by_id(meta, conversation_id, reply_id)
            return message if message["status"] == "sent" else None
        wamids.append((await wait_until(sent))["provider"]["message_id"])
    assert graph.sends()[-1]["to"] == wa_id and graph.sends()[-1]["type"] == "text"
    before = await meta.seq()
    status, body = await meta.hook(whatsapp_batch(statuses=[
        {"id": wamids[0], "status": "delivered", "timestamp": "1760000001",
         "recipient_id": wa_id},
        {"id": wamids[0], "status": "read", "timestamp": "1760000002", "recipient_id": wa_id},
        {"id": wamids[0], "status": "delivered", "timestamp": "1760000001",
         "recipient_id": wa_id},  # late: never backwards
        {"id": wamids[1], "status": "failed", "timestamp": "1760000002", "recipient_id": wa_id,
         "errors": [{"code": 131026, "title": "Message undeliverable",
                     "message": "Message undeliverable",
                     "error_data": {"details": "Receiver is incapable of receiving"}}]}]))
    assert status == 200 and body["receipts"] == 4
    moved = [e["data"]["message"] for e in await meta.events(before)
             if e["type"] == "message.status"]
    assert [m["status"] for m in moved] == ["delivered", "read", "failed"]
    assert moved[-1]["error"]["code"] == "131026"
    assert "incapable" in moved[-1]["error"]["message"]


async def test_a_concurrent_redelivery_stores_the_message_once(meta: MetaGateway) -> None:
    payload = page_batch(messenger_text(uid(), "twice at once"))
    results = await asyncio.gather(meta.hook(payload), meta.hook(payload))
    assert sorted(body["stored"] for _, body in results) == [0, 1]


# ------------------------------------------------------------------ helpers

async def _conversation_of(meta: MetaGateway, address: str, channel: str) -> str:
    for event in reversed(await meta.events(0)):
        message = event["data"].get("message")
        if message and message["from"]["address"] == address and message["channel"] == channel:
            return str(message["conversation_id"])
    raise AssertionError(f"no message from {address}")


async def _message_by_id(meta: MetaGateway, conversation_id: str,
                         message_id: str) -> dict[str, Any]:
    status, page = await meta.api("GET", f"/v1/conversations/{conversation_id}/messages")
    assert status == 200
    return next(m for m in page["messages"] if m["id"] == message_id)

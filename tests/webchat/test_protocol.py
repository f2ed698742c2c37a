"""The widget's WebSocket protocol against a real daemon (no browser): origins, tokens,
frames, history, receipts, limits and files, as docs/webchat.md describes them."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import aiohttp
import pytest

from tests.conftest import Daemon
from tests.webchat.conftest import AUTH, Site, Visitor, connect, get_json, reply, wait_until

PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGA"
                       "hKmMIQAAAABJRU5ErkJggg==")


def cid() -> str:
    """A fresh client id, as the widget makes one."""
    return uuid.uuid4().hex


async def events_of(api: aiohttp.ClientSession, daemon: Daemon,
                    message_id: str) -> list[dict[str, Any]]:
    """Every feed event about one message."""
    found, after = [], "0"
    while True:
        page = await get_json(api, f"{daemon.url}/v1/events?after={after}&limit=1000")
        found += [e for e in page["events"]
                  if (e["data"].get("message") or {}).get("id") == message_id]
        if not page["events"]:
            return found
        after = page["next"]


async def status_of(api: aiohttp.ClientSession, daemon: Daemon, message_id: str) -> str:
    """A message's status as the API shows it."""
    message = await get_json(api, f"{daemon.url}/v1/messages/{message_id}")
    return str(message["status"])


async def test_a_page_of_another_origin_cannot_open_the_chat(
        chat_daemon: Daemon, api: aiohttp.ClientSession, foreign: Site) -> None:
    before = await shop_counters(api, chat_daemon)
    for headers in ({"Origin": foreign.origin}, {}, {"Origin": "null"}):
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await api.ws_connect(f"{chat_daemon.url}/chat/shop/ws", headers=headers)
        assert refused.value.status == 403
    after = await shop_counters(api, chat_daemon)
    assert after["refused_origin"] == before["refused_origin"] + 3
    assert after["connections"] == before["connections"]  # refused before the upgrade


async def shop_counters(api: aiohttp.ClientSession, daemon: Daemon) -> dict[str, int]:
    """The ``shop`` account's counters in /v1/channels."""
    channels = await get_json(api, f"{daemon.url}/v1/channels")
    shop = next(c for c in channels["channels"] if c["name"] == "shop")
    return dict(shop["counters"])


async def test_a_visitors_message_is_stored_confirmed_and_on_the_feed(
        chat_daemon: Daemon, api: aiohttp.ClientSession, shop: Site) -> None:
    visitor = await connect(api, chat_daemon, "shop", shop.origin,
                            page_url=f"{shop.origin}/shoes/42", language="ko-KR")
    assert visitor.welcome["visitor"].startswith("vis_") and visitor.history == []
    assert (visitor.welcome["title"], visitor.welcome["language"]) == ("Kim's shop", "auto")
    confirmed = await visitor.say("Do you have size 42?", client_id := cid())
    message = confirmed["message"]
    assert confirmed["type"] == "message" and confirmed["client_id"] == client_id
    assert message["direction"] == "inbound" and message["channel"] == "webchat"
    assert message["from"] == {"kind": "webchat", "address": visitor.welcome["visitor"],
                               "name": None}
    assert message["provider"]["message_id"] == f"{visitor.welcome['visitor']}:{client_id}"
    async def received() -> list[dict[str, Any]]:
        return [e for e in await events_of(api, chat_daemon, message["id"])
                if e["type"] == "message.received"]
    [event] = await wait_until(received)
    assert event["data"]["message"]["text"] == "Do you have size 42?"
    conversation = await get_json(api, f"{chat_daemon.url}/v1/conversations/"
                                       f"{message['conversation_id']}")
    assert conversation["context"] == {"page_url": f"{shop.origin}/shoes/42",
                                       "language": "ko-KR"}
    # The widget resends what it has not seen confirmed: stored once.
    again = await visitor.say("Do you have size 42?", client_id)
    assert again["message"]["id"] == message["id"]
    listed = await get_json(api, f"{chat_daemon.url}/v1/conversations/"
                                 f"{message['conversation_id']}/messages")
    assert [m["id"] for m in listed["messages"]] == [message["id"]]
    await visitor.ws.close()


async def test_a_reply_reaches_every_tab_live_and_the_browser_reports_delivered_and_read(
        chat_daemon: Daemon, api: aiohttp.ClientSession, shop: Site) -> None:
    tab1 = await connect(api, chat_daemon, "shop", shop.origin)
    token = tab1.welcome["token"]
    tab2 = await connect(api, chat_daemon, "shop", shop.origin, token=token)
    assert tab2.welcome["visitor"] == tab1.welcome["visitor"]
    mine = (await tab1.say("Where is my parcel?", cid()))["message"]
    assert (await tab2.next("message"))["message"]["id"] == mine["id"]  # the other tab too

    before = await shop_counters(api, chat_daemon)
    queued = await reply(api, chat_daemon, mine["conversation_id"], "It ships today.")
    pushed = [(await tab.next("message"))["message"] for tab in (tab1, tab2)]
    for message in pushed:
        assert message["id"] == queued["id"] and message["text"] == "It ships today."
        assert message["agent"] == {"id": "a-1", "name": "Mina"}
        assert message["to"]["address"] == tab1.welcome["visitor"]
    await wait_until(lambda: _is(api, chat_daemon, queued["id"], "sent"))
    # One reply, counted once (the outbox counts what an adapter sent; two tabs are one send).
    assert (await shop_counters(api, chat_daemon))["sent"] == before["sent"] + 1

    await tab1.send({"type": "ack", "ids": [queued["id"]]})
    await wait_until(lambda: _is(api, chat_daemon, queued["id"], "delivered"))
    await tab2.send({"type": "read", "ids": [queued["id"]]})
    await wait_until(lambda: _is(api, chat_daemon, queued["id"], "read"))
    await tab1.send({"type": "ack", "ids": [queued["id"]]})  # late: never backwards
    await tab1.send({"type": "ping"})
    await tab1.next("pong")  # the late ack was taken

    async def statuses() -> list[str]:
        # The feed shows an event once it is durable (synced), which can trail what the
        # API reads by a moment on a busy machine.
        return [e["data"]["message"]["status"] for e in
                await events_of(api, chat_daemon, queued["id"])
                if e["type"] == "message.status"]
    await wait_until(lambda: _has_three(statuses))
    assert await statuses() == ["sent", "delivered", "read"]
    for tab in (tab1, tab2):
        await tab.ws.close()


async def _has_three(statuses: Any) -> bool:
    return len(await statuses()) >= 3


async def _is(api: aiohttp.ClientSession, daemon: Daemon, message_id: str,
              status: str) -> bool:
    return await status_of(api, daemon, message_id) == status


async def test_a_browser_reports_only_on_replies_it_was_given(
        chat_daemon: Daemon, api: aiohttp.ClientSession, shop: Site) -> None:
    owner = await connect(api, chat_daemon, "shop", shop.origin)
    mine = (await owner.say("Hello", cid()))["message"]
    await owner.ws.close()
    queued = await reply(api, chat_daemon, mine["conversation_id"], "Hi there")
    stranger = await connect(api, chat_daemon, "shop", shop.origin)
    await stranger.send({"type": "read", "ids": [queued["id"]]})
    await stranger.send({"type": "ping"})
    await stranger.next("pong")
    await wait_until(lambda: _is(api, chat_daemon, queued["id"], "sent"))
    assert await status_of(api, chat_daemon, queued["id"]) == "sent"
    await stranger.ws.close()


async def test_history_on_reconnect_is_the_visitors_own_web_chat_only(
        chat_daemon: Daemon, api: aiohttp.ClientSession, shop: Site) -> None:
    # A customer known by e-mail from another channel, with a message of their own there.
    async with api.post(f"{chat_daemon.url}/hooks/api/default/messages", headers=AUTH,
                        json={"message_id": "crm-" + cid(), "text": "my card number is 4111",
                              "from": {"id": "lee-1", "email": "lee@example.com"}}) as resp:
        assert resp.status == 201
        known = (await resp.json())["message"]
    visitor = await connect(api, chat_daemon, "shop", shop.origin, name="Lee",
                            email="lee@example.com")
    mine = (await visitor.say("Hi, it is Lee", cid()))["message"]
    assert mine["customer_id"] == known["customer_id"]  # the e-mail linked them
    assert mine["from"]["name"] == "Lee"
    queued = await reply(api, chat_daemon, mine["conversation_id"], "Hello Lee", agent=None)
    assert (await visitor.next("message"))["message"]["id"] == queued["id"]
    await visitor.ws.close()

    back = await connect(api, chat_daemon, "shop", shop.origin,
                         token=visitor.welcome["token"])
    assert back.welcome["visitor"] == visitor.welcome["visitor"]
    assert [m["text"] for m in back.history] == ["Hi, it is Lee", "Hello Lee"]
    # Not acknowledged before the reload: the history's copy is, as the widget does.
    await wait_until(lambda: _is(api, chat_daemon, queued["id"], "sent"))
    await back.send({"type": "ack", "ids": [queued["id"]]})
    await wait_until(lambda: _is(api, chat_daemon, queued["id"], "delivered"))
    await back.ws.close()


async def test_a_forged_token_starts_a_new_visitor(
        chat_daemon: Daemon, api: aiohttp.ClientSession, shop: Site) -> None:
    first = await connect(api, chat_daemon, "shop", shop.origin)
    await first.say("private question", cid())
    await first.ws.close()
    victim = first.welcome["visitor"]
    signature = first.welcome["token"].split(".")[1]
    tampered = signature[:-1] + ("B" if signature[-1] == "A" else "A")
    for token in (f"{victim}.forged", f"{victim}.{tampered}",
                  first.welcome["token"].replace("vis_", "vis-"), "garbage", 42):
        other = await connect(api, chat_daemon, "shop", shop.origin, token=token)
        assert other.welcome["visitor"] != victim and other.history == []
        await other.ws.close()
    # The token of one account is not valid on another.
    elsewhere = await connect(api, chat_daemon, "tight", shop.origin,
                              token=first.welcome["token"])
    assert elsewhere.welcome["visitor"] != victim
    await elsewhere.ws.close()


async def test_bad_frames_are_answered_and_store_nothing(
        chat_daemon: Daemon, api: aiohttp.ClientSession, shop: Site) -> None:
    visitor = await connect(api, chat_daemon, "shop", shop.origin)
    too_long = await visitor.say("x" * 501, cid())
    assert too_long["type"] == "error" and too_long["code"] == "invalid"
    assert "500" in too_long["message"]
    empty = await visitor.say("   ", cid())
    assert empty["code"] == "invalid"
    bad_id = await visitor.say("hi", "not a valid id!")
    assert bad_id["code"] == "invalid"
    await visitor.ws.send_str("{not json")
    assert (await visitor.next("error"))["code"] == "invalid"
    await visitor.send({"type": "nonsense"})
    assert (await visitor.next("error"))["code"] == "invalid"
    # Still open, and nothing was stored for this visitor.
    assert await _customer_of(api, chat_daemon, visitor.welcome["visitor"]) is None
    assert (await visitor.say("now a real one", cid()))["type"] == "message"
    await visitor.ws.close()


async def _customer_of(api: aiohttp.ClientSession, daemon: Daemon,
                       visitor: str) -> dict[str, Any] | None:
    async with api.get(f"{daemon.url}/v1/customers", headers=AUTH,
                       params={"identity": f"webchat:{visitor}"}) as response:
        customers = (await response.json())["customers"]
        return customers[0] if customers else None


async def test_a_visitor_over_the_rate_is_told_when_to_send_again(
        chat_daemon: Daemon, api: aiohttp.ClientSession, shop: Site) -> None:
    visitor = await connect(api, chat_daemon, "tight", shop.origin)
    answers = [await visitor.say(f"message {n}", cid()) for n in range(8)]
    stored = [a for a in answers if a["type"] == "message"]
    limited = [a for a in answers if a["type"] == "error"]
    assert len(stored) == 5  # the burst: a quarter minute of 20/min, at least 5
    assert all(a["code"] == "rate_limited" and a["retry_after"] > 0 for a in limited)
    await visitor.ws.close()


async def test_a_message_one_rate_refuses_is_not_charged_to_the_other(
        chat_daemon: Daemon, api: aiohttp.ClientSession, shop: Site) -> None:
    """Three visitors on one address (``crowded``: 20/min each, burst 5; 40/min for the
    address, burst 10). Refusals by one limit spend nothing of the other: a visitor retrying
    over their own limit leaves the address's room to the others, and a visitor refused by
    the address keeps their own tokens for the retry."""
    pushy = await connect(api, chat_daemon, "crowded", shop.origin)
    other = await connect(api, chat_daemon, "crowded", shop.origin)
    late = await connect(api, chat_daemon, "crowded", shop.origin)
    try:
        answers = [await pushy.say(f"pushy {n}", cid()) for n in range(10)]
        assert [a["type"] for a in answers] == ["message"] * 5 + ["error"] * 5
        # The address has 5 of its 10 left: the 5 refusals of pushy's own limit cost none.
        assert (await other.say("not crowded out", cid()))["type"] == "message"
        answers = [await late.say(f"late {n}", cid()) for n in range(4)]
        assert [a["type"] for a in answers] == ["message"] * 4  # the address is spent now
        client_id = cid()
        refused = await late.say("refused by the address", client_id)
        assert refused["type"] == "error" and refused["code"] == "rate_limited", refused
        for _ in range(3):  # retried at once: still the address; late's last token stays
            assert (await late.say("refused by the address", client_id))["type"] == "error"
        # No event says a token came back: wait as the widget does (the address refills
        # one in 1.5 s; late's own limit would take 3 s to refill one it had spent).
        await asyncio.sleep(refused["retry_after"] + 0.2)
        stored = await late.say("refused by the address", client_id)
        assert stored["type"] == "message", stored
        assert stored["message"]["text"] == "refused by the address"
    finally:
        for visitor in (pushy, other, late):
            await visitor.ws.close()


@contextlib.asynccontextmanager
async def two_tabs(api: aiohttp.ClientSession, daemon: Daemon, account: str,
                   origin: str) -> AsyncIterator[tuple[Visitor, Visitor]]:
    """Two sockets of one visitor (two tabs), closed afterwards whatever happened."""
    first = await connect(api, daemon, account, origin)
    try:
        second = await connect(api, daemon, account, origin, token=first.welcome["token"])
        try:
            yield first, second
        finally:
            await second.ws.close()
    finally:
        await first.ws.close()


async def test_a_message_sent_again_from_another_tab_is_not_charged_to_the_rate(
        chat_daemon: Daemon, api: aiohttp.ClientSession, shop: Site) -> None:
    """Two tabs reconnecting both send what waited offline: a visitor with as many queued
    messages as the rate allows has each stored once, and no copy is refused for the rate."""
    async with two_tabs(api, chat_daemon, "tight", shop.origin) as (first, second):
        # As many as the rate allows at once: a quarter minute of 20/min, at least 5.
        batch = [(f"waited offline {n} {uuid.uuid4().hex}", cid()) for n in range(5)]
        texts = [text for text, _ in batch]
        stored = [await first.say(text, client_id) for text, client_id in batch]
        assert [frame["type"] for frame in stored] == ["message"] * 5
        for _ in batch:  # the confirmations every tab gets
            await second.next("message")
        again = [await second.say(text, client_id) for text, client_id in batch]
        assert [a["type"] for a in again] == ["message"] * 5, again  # none refused
        assert [a["message"]["id"] for a in again] == [s["message"]["id"] for s in stored]
        conversation = stored[0]["message"]["conversation_id"]
        listed = await get_json(api, f"{chat_daemon.url}/v1/conversations/{conversation}"
                                     "/messages")
        assert [m["text"] for m in listed["messages"]] == texts  # each once


async def test_the_same_message_from_two_tabs_at_once_is_stored_once_and_charged_once(
        chat_daemon: Daemon, api: aiohttp.ClientSession, shop: Site) -> None:
    """Both tabs send their queue at the same moment: a copy arriving while the other tab's
    send is being stored waits for it and gets the stored message."""
    async with two_tabs(api, chat_daemon, "tight", shop.origin) as (first, second):
        batch = [(f"sent by both tabs {n} {uuid.uuid4().hex}", cid()) for n in range(5)]
        texts, ids = [text for text, _ in batch], [client_id for _, client_id in batch]
        for tab in (first, second):
            for text, client_id in batch:
                await tab.send({"type": "message", "id": client_id, "text": text})
        for tab in (first, second):
            answers: dict[str, str] = {}
            while len(answers) < len(ids):
                frame = await tab.next_any(("message", "error"))
                assert frame["type"] == "message", frame  # never refused
                answers[frame["client_id"]] = frame["message"]["id"]
            assert sorted(answers) == sorted(ids)
        first_stored = await get_json(api, f"{chat_daemon.url}/v1/messages/{answers[ids[0]]}")
        listed = await get_json(api, f"{chat_daemon.url}/v1/conversations/"
                                     f"{first_stored['conversation_id']}/messages")
        assert [m["text"] for m in listed["messages"]] == texts  # each once, in order


async def test_after_an_erasure_a_message_sent_again_is_stored_as_new_not_answered_erased(
        chat_daemon: Daemon, api: aiohttp.ClientSession, shop: Site) -> None:
    """The customer behind a visitor is erased while their tab stays open; the tab then
    sends one of the erased messages again: nothing of the erased message comes back (the
    server has no record of it any more), the message is stored anew."""
    async with two_tabs(api, chat_daemon, "shop", shop.origin) as (first, second):
        client_id = cid()
        erased = (await first.say("my address is 1 Erased Road", client_id))["message"]
        await second.next("message")  # the other tab's confirmation: both remember it
        async with api.delete(f"{chat_daemon.url}/v1/customers/{erased['customer_id']}",
                              headers=AUTH) as response:
            assert response.status == 200, await response.text()
        async with api.get(f"{chat_daemon.url}/v1/messages/{erased['id']}",
                           headers=AUTH) as response:
            assert response.status == 404
        for tab, text in ((first, "sent again"), (second, "sent again from the other tab")):
            # Another text under the same client id: the answer shows where it came from.
            answer = await tab.say(text, client_id)
            assert answer["type"] == "message", answer
            assert answer["message"]["id"] != erased["id"]
            assert "Erased Road" not in str(answer)
        stored = await get_json(api, f"{chat_daemon.url}/v1/messages/{answer['message']['id']}")
        assert stored["text"] == "sent again"  # the first tab's copy; the second its duplicate
        assert stored["customer_id"] != erased["customer_id"]


async def test_a_file_is_stored_and_only_its_signed_link_serves_it(
        chat_daemon: Daemon, api: aiohttp.ClientSession, shop: Site) -> None:
    visitor = await connect(api, chat_daemon, "shop", shop.origin)
    upload = [{"filename": "receipt.png", "content_type": "image/png",
               "content_base64": base64.b64encode(PNG).decode()}]
    message = (await visitor.say("my receipt", cid(), attachments=upload))["message"]
    [attachment] = message["attachments"]
    assert attachment["filename"] == "receipt.png" and attachment["size"] == len(PNG)
    assert attachment["url"].startswith("/chat/shop/file?")
    async with api.get(chat_daemon.url + attachment["url"]) as response:
        assert response.status == 200 and await response.read() == PNG
        assert response.headers["X-Content-Type-Options"] == "nosniff"
    async with api.get(chat_daemon.url + attachment["url"][:-2] + "xx") as response:
        assert response.status == 403
    # The agent sees it through the API like any channel's attachment.
    stored = await get_json(api, f"{chat_daemon.url}/v1/messages/{message['id']}")
    assert stored["attachments"][0]["url"] == f"/v1/attachments/{attachment['id']}"
    big = [{"filename": "big.bin", "content_type": "application/octet-stream",
            "content_base64": base64.b64encode(b"x" * 100_001).decode()}]
    refused = await visitor.say("too big", cid(), attachments=big)
    assert refused["code"] == "invalid" and "100000" in refused["message"]
    await visitor.ws.close()



async def test_a_file_sent_again_after_a_lost_confirmation_is_stored_once(
        chat_daemon: Daemon, api: aiohttp.ClientSession, shop: Site) -> None:
    """The widget keeps a file until the server confirms it, and sends it again after a
    reload or a dropped connection: the client id makes the second upload harmless."""
    first = await connect(api, chat_daemon, "shop", shop.origin)
    client_id = cid()
    text = f"the parcel arrived damaged {client_id}"
    photo = [{"filename": "parcel.png", "content_type": "image/png",
              "content_base64": base64.b64encode(PNG).decode()}]
    await first.send({"type": "message", "id": client_id, "text": text, "attachments": photo})
    await first.ws.close()  # the connection drops before the confirmation arrives
    stored = await wait_until(lambda: _received(api, chat_daemon, text))

    again = await connect(api, chat_daemon, "shop", shop.origin, token=first.welcome["token"])
    confirmed = await again.say(text, client_id, attachments=photo)
    assert confirmed["client_id"] == client_id
    assert confirmed["message"]["id"] == stored["id"]
    listed = await get_json(api, f"{chat_daemon.url}/v1/conversations/"
                                 f"{stored['conversation_id']}/messages")
    assert [m["id"] for m in listed["messages"]] == [stored["id"]]
    [attachment] = listed["messages"][0]["attachments"]
    assert attachment["sha256"] == hashlib.sha256(PNG).hexdigest()
    await again.ws.close()


async def test_a_message_that_waited_offline_keeps_the_time_it_was_written(
        chat_daemon: Daemon, api: aiohttp.ClientSession, shop: Site) -> None:
    """The widget says how long a message waited in the browser: agents see when the
    visitor wrote it (sent_at), and when it arrived (received_at)."""
    visitor = await connect(api, chat_daemon, "shop", shop.origin)
    confirmed = await visitor.say("I'm at the door now", cid(), waited_ms=15 * 60 * 1000)
    message = confirmed["message"]
    waited = (datetime.fromisoformat(message["received_at"])
              - datetime.fromisoformat(message["sent_at"]))
    assert timedelta(minutes=15) <= waited < timedelta(minutes=15, seconds=30)
    stored = await get_json(api, f"{chat_daemon.url}/v1/messages/{message['id']}")
    assert stored["sent_at"] == message["sent_at"]
    await visitor.ws.close()


async def _received(api: aiohttp.ClientSession, daemon: Daemon,
                    text: str) -> dict[str, Any] | None:
    """The stored message with ``text``, from the feed (None while it is not there)."""
    after = "0"
    while True:
        page = await get_json(api, f"{daemon.url}/v1/events?after={after}&limit=1000")
        for event in page["events"]:
            message: dict[str, Any] = event["data"].get("message") or {}
            if event["type"] == "message.received" and message.get("text") == text:
                return message
        if not page["events"]:
            return None
        after = page["next"]

async def test_the_widget_and_its_stylesheet_are_served_for_any_page(
        chat_daemon: Daemon, api: aiohttp.ClientSession) -> None:
    async with api.get(f"{chat_daemon.url}/chat/shop/widget.js") as response:
        assert response.status == 200
        assert response.content_type == "application/javascript"
        body = await response.text()
    assert "innerHTML" not in body and "eval(" not in body and "new Function" not in body
    async with api.get(f"{chat_daemon.url}/chat/shop/widget.css") as response:
        assert response.status == 200 and response.content_type == "text/css"
    async with api.get(f"{chat_daemon.url}/chat/shop/") as response:
        assert response.status == 404  # no demo page unless demo_page = true
    async with api.get(f"{chat_daemon.url}/chat/nobody/widget.js") as response:
        assert response.status == 404


async def test_an_address_may_hold_only_so_many_chats_open(
        chat_daemon: Daemon, api: aiohttp.ClientSession, shop: Site) -> None:
    url = f"{chat_daemon.url}/chat/tight/ws"
    held = [await api.ws_connect(url, headers={"Origin": shop.origin}) for _ in range(3)]
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await api.ws_connect(url, headers={"Origin": shop.origin})
    assert refused.value.status == 429
    await held.pop().close()

    async def accepted() -> bool:
        try:
            held.append(await api.ws_connect(url, headers={"Origin": shop.origin}))
        except aiohttp.WSServerHandshakeError:
            return False
        return True
    await wait_until(accepted)  # the closed one's place is free again
    for ws in held:
        await ws.close()


async def test_a_frame_over_the_size_bound_closes_the_socket_and_stores_nothing(
        chat_daemon: Daemon, api: aiohttp.ClientSession, shop: Site) -> None:
    visitor = await connect(api, chat_daemon, "shop", shop.origin)
    await visitor.ws.send_str('{"type": "message", "id": "huge", "text": "' + "x" * 300_000
                              + '"}')
    closing = await visitor.ws.receive(timeout=10)
    assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    assert visitor.ws.close_code == 1009  # message too big
    assert await _customer_of(api, chat_daemon, visitor.welcome["visitor"]) is None

"""LINE end to end: a daemon subprocess, the fake LINE platform, webhooks signed the real way."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from tests.conftest import Daemon, base_config, free_port
from tests.helpers import all_events, get_json, post_json, unique, wait_until
from tests.line.fake import (
    FakeLine,
    Planned,
    event_base,
    line_signature,
    text_event,
    webhook_body,
)

SECRET = "line-channel-secret-0123456789abcdef"
ACCESS_TOKEN = "line-access-token-0123456789"
PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNk+A8AAQUBAScY"
                       "42YAAAAASUVORK5CYII=")


@pytest.fixture(scope="module")
async def fake() -> AsyncIterator[FakeLine]:
    server = FakeLine(ACCESS_TOKEN)
    await server.start()
    yield server
    await server.stop()


@pytest.fixture(scope="module")
async def daemon(tmp_path_factory: pytest.TempPathFactory, fake: FakeLine
                 ) -> AsyncIterator[Daemon]:
    tmp: Path = tmp_path_factory.mktemp("line")
    http_port, smtp_port = free_port(), free_port()
    extra = f"""
        [[channels]]
        type = "line"
        name = "shop-line"
        channel_secret = "{SECRET}"
        channel_access_token = "{ACCESS_TOKEN}"
        api_base_url = "{fake.api_url}"
        data_api_base_url = "{fake.data_url}"
        timeout = 2
        profile_timeout = 1
        [[channels]]
        type = "line"
        name = "audit-line"
        channel_secret = "{SECRET}"
        channel_access_token = "{ACCESS_TOKEN}"
        api_base_url = "{fake.api_url}"
        data_api_base_url = "{fake.data_url}"
        keep_unsent_text = true
        """
    proc = Daemon(tmp, base_config(tmp / "data", http_port, smtp_port, extra=extra), http_port)
    proc.start()
    await proc.wait_ready(timeout=60)
    yield proc
    await proc.stop()


@pytest.fixture(scope="module")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def post_webhook(http: aiohttp.ClientSession, daemon: Daemon, body: bytes, *,
                       signature: str | None = None, account: str = "shop-line",
                       secret: str = SECRET) -> int:
    headers = {"Content-Type": "application/json"}
    if signature != "":
        headers["X-Line-Signature"] = signature or line_signature(secret, body)
    async with http.post(f"{daemon.url}/hooks/line/{account}", data=body,
                         headers=headers) as resp:
        await resp.read()
        return resp.status


async def messages_of(http: aiohttp.ClientSession, daemon: Daemon,
                      user: str) -> list[dict[str, Any]]:
    status, customer = await get_json(http, f"{daemon.url}/v1/customers",
                                      identity=f"line:{user}")
    if status == 404:
        return []
    assert status == 200, customer
    found = _one(customer)
    if found is None:
        return []
    messages: list[dict[str, Any]] = []
    for conversation in found.get("conversations", []):
        cid = conversation["id"] if isinstance(conversation, dict) else conversation
        status, page = await get_json(http, f"{daemon.url}/v1/conversations/{cid}/messages")
        assert status == 200, page
        messages += page.get("messages", page if isinstance(page, list) else [])
    return messages


async def customer_of(http: aiohttp.ClientSession, daemon: Daemon, user: str) -> dict[str, Any]:
    status, customer = await get_json(http, f"{daemon.url}/v1/customers",
                                      identity=f"line:{user}")
    assert status == 200, customer
    found = _one(customer)
    assert found is not None
    return found


def _one(answer: dict[str, Any]) -> dict[str, Any] | None:
    """The customer of ``GET /v1/customers?identity=…`` (a list or one object)."""
    if "customers" in answer:
        return answer["customers"][0] if answer["customers"] else None
    return answer


async def test_a_signed_text_is_stored_with_the_profile_name_and_exact_text(
        http: aiohttp.ClientSession, daemon: Daemon, fake: FakeLine) -> None:
    user = unique("U")
    fake.profiles[user] = "山田 花子"
    text = "こんにちは\uff01注文の件です 🙇‍♀️ 안녕하세요 👍🏽 (love)"
    body = webhook_body([text_event(user, unique("m"), text, emojis=[
        {"index": 38, "length": 6, "productId": "5ac1bfd5040ab15980c9b435", "emojiId": "001"}])])
    assert await post_webhook(http, daemon, body) == 200
    messages = await messages_of(http, daemon, user)
    assert [m["text"] for m in messages] == [text]
    assert messages[0]["from"] == {"kind": "line", "address": user, "name": "山田 花子"}
    customer = await customer_of(http, daemon, user)
    assert customer["name"] == "山田 花子"


async def test_forged_unsigned_and_other_secret_posts_are_refused_and_store_nothing(
        http: aiohttp.ClientSession, daemon: Daemon) -> None:
    user = unique("U")
    body = webhook_body([text_event(user, unique("m"), "forged")])
    assert await post_webhook(http, daemon, body, signature="") == 401
    assert await post_webhook(http, daemon, body, signature="AAAA" + "=" * 40) == 401
    assert await post_webhook(http, daemon, body, secret="another-channel-secret") == 401
    tampered = body.replace(b"forged", b"forgeD")
    assert await post_webhook(http, daemon, tampered,
                              signature=line_signature(SECRET, body)) == 401
    assert await messages_of(http, daemon, user) == []


async def test_a_post_of_several_events_stores_each_and_a_redelivery_stores_nothing_new(
        http: aiohttp.ClientSession, daemon: Daemon, fake: FakeLine) -> None:
    user, other = unique("U"), unique("U")
    fake.blocked.add(other)  # 404 on profile: still a customer, without a name
    sticker = event_base("message", user, unique("01EV"))
    sticker["message"] = {"type": "sticker", "id": unique("m"), "quoteToken": "q",
                          "packageId": "446", "stickerId": "1988",
                          "stickerResourceType": "STATIC", "keywords": ["Happy", "Yay"]}
    location = event_base("message", user, unique("01EV"))
    location["message"] = {"type": "location", "id": unique("m"), "title": "東京タワー",
                           "address": "東京都港区芝公園4丁目2-8", "latitude": 35.65858,
                           "longitude": 139.745433}
    postback = event_base("postback", other, unique("01EV"))
    postback["postback"] = {"data": "action=buy&itemid=123"}
    follow = event_base("follow", other, unique("01EV"))
    follow["follow"] = {"isUnblocked": False}
    join = event_base("join", user, unique("01EV"))
    events = [text_event(user, unique("m"), "一つ目"), sticker, location, postback, follow,
              join]
    body = webhook_body(events)
    assert await post_webhook(http, daemon, body) == 200
    mine = await messages_of(http, daemon, user)
    assert [m["text"] for m in mine] == [
        "一つ目", "(sticker: Happy, Yay)",
        "東京タワー, 東京都港区芝公園4丁目2-8 (35.65858, 139.745433)"]
    assert mine[2]["content"]["type"] == "location"
    theirs = await messages_of(http, daemon, other)
    assert [m["text"] for m in theirs] == ["action=buy&itemid=123",
                                          "Added the account as a friend"]
    assert (await customer_of(http, daemon, other))["name"] is None
    before = len(await all_events(http, daemon.url))
    # LINE redelivers the same events (same ids) with isRedelivery = true.
    for event in events:
        event["deliveryContext"]["isRedelivery"] = True
    assert await post_webhook(http, daemon, webhook_body(events)) == 200
    assert len(await messages_of(http, daemon, user)) == 3
    assert len(await messages_of(http, daemon, other)) == 2
    assert len(await all_events(http, daemon.url)) == before


async def test_media_is_fetched_after_the_commit_and_a_failed_fetch_is_retried(
        http: aiohttp.ClientSession, daemon: Daemon, fake: FakeLine) -> None:
    user, message_id = unique("U"), unique("m")
    fake.content[message_id] = (PNG, "image/png")
    fake.content_failures[message_id] = 1  # the first download answers 500
    event = event_base("message", user, unique("01EV"))
    event["message"] = {"type": "image", "id": message_id, "quoteToken": "q",
                        "contentProvider": {"type": "line"}}
    assert await post_webhook(http, daemon, webhook_body([event])) == 200
    stored = (await messages_of(http, daemon, user))[0]
    assert stored["text"] == "(image)"

    async def fetched() -> Any:
        message = (await messages_of(http, daemon, user))[0]
        return message if message["attachments"] else None

    message = await wait_until(fetched, timeout=20)
    attachment = message["attachments"][0]
    assert attachment["content_type"] == "image/png" and attachment["size"] == len(PNG)
    async with http.get(f"{daemon.url}{attachment['url']}",
                        headers={"Authorization": "Bearer test-admin-token-0123456789"}) as r:
        assert await r.read() == PNG
    assert fake.content_failures[message_id] == 0

    async def announced() -> bool:
        # The feed shows an event once its commit is synced, a moment after readers see it.
        return any(e["type"] == "message.updated"
                   and e["data"]["message"]["id"] == message["id"]
                   and "attachments" in e["data"]["changed"]
                   for e in await all_events(http, daemon.url))

    assert await wait_until(announced, timeout=10)


async def test_unsend_withdraws_the_message_and_removes_its_text_unless_kept(
        http: aiohttp.ClientSession, daemon: Daemon) -> None:
    for account, kept in (("shop-line", False), ("audit-line", True)):
        user, message_id = unique("U"), unique("m")
        body = webhook_body([text_event(user, message_id, "間違えました")])
        assert await post_webhook(http, daemon, body, account=account) == 200
        unsend = event_base("unsend", user, unique("01EV"))
        unsend["unsend"] = {"messageId": message_id}
        assert await post_webhook(http, daemon, webhook_body([unsend]), account=account) == 200
        message = (await messages_of(http, daemon, user))[0]
        assert message["withdrawn"] is True
        assert message["text"] == ("間違えました" if kept else "")
        updates = [e for e in await all_events(http, daemon.url)
                   if e["type"] == "message.updated"
                   and e["data"]["message"]["id"] == message["id"]]
        assert len(updates) == 1 and "withdrawn" in updates[0]["data"]["changed"]
        # The same unsend again (a redelivery) changes nothing.
        assert await post_webhook(http, daemon, webhook_body([unsend]), account=account) == 200
        assert len([e for e in await all_events(http, daemon.url)
                    if e["type"] == "message.updated"
                    and e["data"]["message"]["id"] == message["id"]]) == 1


async def reply(http: aiohttp.ClientSession, daemon: Daemon, user: str,
                body: dict[str, Any]) -> dict[str, Any]:
    conversation = (await messages_of(http, daemon, user))[-1]["conversation_id"]
    status, queued = await post_json(
        http, f"{daemon.url}/v1/conversations/{conversation}/messages", body)
    assert status == 202, queued
    return dict(queued.get("message", queued))


async def status_of(http: aiohttp.ClientSession, daemon: Daemon, message_id: str) -> str:
    for event in reversed(await all_events(http, daemon.url)):
        if event["type"] == "message.status" and event["data"]["message"]["id"] == message_id:
            return str(event["data"]["message"]["status"])
    return "queued"


async def test_a_reply_is_pushed_with_a_retry_key_split_cleanly_and_the_text_intact(
        http: aiohttp.ClientSession, daemon: Daemon, fake: FakeLine) -> None:
    user = unique("U")
    body = webhook_body([text_event(user, unique("m"), "長い説明をください")])
    assert await post_webhook(http, daemon, body) == 200
    paragraph = "ご注文ありがとうございます。発送は明日です🚚。" * 120 + "\n\n"
    text = paragraph * 9  # ~26,000 UTF-16 units: six bubbles, two requests
    count_before = len(fake.pushes)
    queued = await reply(http, daemon, user, {"text": text, "agent": {"id": "a-1"}})

    async def sent() -> bool:
        return await status_of(http, daemon, queued["id"]) == "sent"

    await wait_until(sent, timeout=20)
    pushes = fake.pushes[count_before:]
    assert len(pushes) == 2
    bubbles = [m["text"] for p in pushes for m in p["json"]["messages"]]
    assert "".join(bubbles) == text
    assert all(len(b.encode("utf-16-le")) // 2 <= 5000 for b in bubbles)
    assert all(b.endswith("\n\n") for b in bubbles[:-1])  # cut between paragraphs
    assert [p["json"]["to"] for p in pushes] == [user, user]
    keys = [p["headers"]["X-Line-Retry-Key"] for p in pushes]
    assert len(set(keys)) == 2 and all(len(k) == 36 for k in keys)
    assert pushes[0]["headers"]["Authorization"] == f"Bearer {ACCESS_TOKEN}"


async def test_an_image_reply_is_pushed_by_a_signed_url_that_serves_it(
        http: aiohttp.ClientSession, daemon: Daemon, fake: FakeLine) -> None:
    user = unique("U")
    assert await post_webhook(http, daemon, webhook_body([text_event(user, unique("m"),
                                                                     "写真を")])) == 200
    count_before = len(fake.pushes)
    queued = await reply(http, daemon, user, {"text": "こちらです", "attachments": [
        {"filename": "item.png", "content_type": "image/png",
         "content_base64": base64.b64encode(PNG).decode()}]})
    await wait_until(lambda: _sent(http, daemon, queued["id"]), timeout=20)
    image = fake.pushes[count_before]["json"]["messages"][1]
    assert image["type"] == "image"
    async with http.get(image["originalContentUrl"]) as resp:
        assert resp.status == 200 and await resp.read() == PNG
    forged = image["originalContentUrl"].replace("/media/", "/media/x")
    async with http.get(forged) as resp:
        assert resp.status == 403


async def _sent(http: aiohttp.ClientSession, daemon: Daemon, message_id: str) -> bool:
    return await status_of(http, daemon, message_id) == "sent"


async def _failed(http: aiohttp.ClientSession, daemon: Daemon, message_id: str) -> Any:
    for event in reversed(await all_events(http, daemon.url)):
        if event["type"] == "message.status" and event["data"]["message"]["id"] == message_id \
                and event["data"]["message"]["status"] == "failed":
            return event["data"]["message"]["error"]
    return None


async def test_rate_limits_and_outages_are_retried_and_a_spent_quota_fails_clearly(
        http: aiohttp.ClientSession, daemon: Daemon, fake: FakeLine) -> None:
    user = unique("U")
    assert await post_webhook(http, daemon, webhook_body([text_event(user, unique("m"),
                                                                     "질문")])) == 200
    fake.plans += [Planned(429, {"message": "The API rate limit has been exceeded. Try again "
                                            "later."}, {"Retry-After": "0"}),
                   Planned(503, {"message": "Service unavailable"})]
    count_before = len(fake.pushes)
    queued = await reply(http, daemon, user, {"text": "답변 드립니다 😊"})
    await wait_until(lambda: _sent(http, daemon, queued["id"]), timeout=20)
    assert [p["json"]["messages"][0]["text"] for p in fake.pushes[count_before:]] == [
        "답변 드립니다 😊"]
    fake.plans.append(Planned(429, {"message": "You have reached your monthly limit."}))
    queued = await reply(http, daemon, user, {"text": "二通目"})
    error = await wait_until(lambda: _failed(http, daemon, queued["id"]), timeout=20)
    assert error["code"] == "quota_exhausted" and "monthly" in error["message"]
    fake.plans.append(Planned(400, {"message": "The request body has 1 error(s)",
                                    "details": [{"message": "May not be empty",
                                                 "property": "messages[0].text"}]}))
    queued = await reply(http, daemon, user, {"text": "三通目"})
    error = await wait_until(lambda: _failed(http, daemon, queued["id"]), timeout=20)
    assert error["code"] == "invalid_request" and "messages[0].text" in error["message"]


async def test_a_push_whose_answer_was_lost_in_a_crash_is_not_sent_twice(
        http: aiohttp.ClientSession, daemon: Daemon, fake: FakeLine) -> None:
    user = unique("U")
    assert await post_webhook(http, daemon, webhook_body([text_event(user, unique("m"),
                                                                     "届きますか")])) == 200
    fake.plans.append(Planned(hang=30))  # LINE accepts it; the answer never comes back
    count_before, attempts_before = len(fake.pushes), fake.push_attempts
    queued = await reply(http, daemon, user, {"text": "一度だけ届きます"})
    await wait_until(lambda: _accepted(fake, count_before), timeout=20)
    daemon.kill()  # the daemon dies while the push is in flight
    daemon.start()
    await daemon.wait_ready(timeout=60)
    await wait_until(lambda: _sent(http, daemon, queued["id"]), timeout=30)
    assert len(fake.pushes) == count_before + 1  # accepted once
    assert fake.push_attempts > attempts_before + 1  # the retry was answered 409


async def _accepted(fake: FakeLine, count: int) -> bool:
    await asyncio.sleep(0)
    return len(fake.pushes) > count


def test_the_signature_the_fake_computes_is_the_sdks() -> None:
    from linebot.v3.webhook import SignatureValidator

    body = orjson.dumps({"events": [], "destination": "U1"})
    assert SignatureValidator(SECRET).validate(body.decode(), line_signature(SECRET, body))

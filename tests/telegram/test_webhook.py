"""Webhook mode: setWebhook with a secret token at start; the hook checks it first."""

from __future__ import annotations

from typing import Any

import orjson

from gateway.daemon import Gateway
from tests.telegram.conftest import WEBHOOK_SECRET, Client
from tests.telegram.fake import FakeBotApi
from tests.telegram.updates import KIM, group_chat, text

TELEGRAM_OPTIONS = f'''mode = "webhook"
webhook_secret = "{WEBHOOK_SECRET}"
groups = true
parse_mode = "markdown"
'''
UPDATE_IDS = iter(range(90_000, 99_999))


def update(body: dict[str, Any]) -> dict[str, Any]:
    return {"update_id": next(UPDATE_IDS), **body}


async def post(client: Client, payload: Any, secret: str | None = WEBHOOK_SECRET,
               ) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    if secret is not None:
        headers["X-Telegram-Bot-Api-Secret-Token"] = secret
    data = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    async with client.http.post(f"{client.base}/hooks/telegram/shop", data=data,
                                headers=headers) as response:
        return response.status, await response.json()


async def test_start_sets_the_webhook_with_the_secret_token(
        fake: FakeBotApi, client: Client, gateway: Gateway) -> None:
    await fake.wait_for(lambda: fake.webhook)
    assert fake.webhook is not None
    assert fake.webhook["url"] == "https://gateway.example/hooks/telegram/shop"
    assert fake.webhook["secret_token"] == WEBHOOK_SECRET
    assert "message" in fake.webhook["allowed_updates"]
    assert not fake.calls_of("getUpdates")


async def test_a_forged_or_missing_secret_is_403_and_stores_nothing(
        fake: FakeBotApi, client: Client, gateway: Gateway) -> None:
    forged = update(text("forged"))
    seen = gateway.adapters[("telegram", "shop")].counters["updates"]
    for secret in (None, "", "wrong-secret", WEBHOOK_SECRET + "x"):
        status, answer = await post(client, forged, secret)
        assert status == 403, answer
        assert answer["error"]["code"] == "forbidden"
    body = forged["message"]
    assert await client.received(f"{body['chat']['id']}:{body['message_id']}") == []
    assert gateway.adapters[("telegram", "shop")].counters["updates"] == seen


async def test_an_update_is_stored_before_the_200_and_a_redelivery_once(
        fake: FakeBotApi, client: Client) -> None:
    await fake.wait_for(lambda: fake.webhook)
    delivered = update(text("via webhook"))
    status, _ = await post(client, delivered)
    assert status == 200
    body = delivered["message"]
    provider_id = f"{body['chat']['id']}:{body['message_id']}"
    [stored] = await client.received(provider_id)  # already there when 200 came back
    assert stored["text"] == "via webhook"
    status, _ = await post(client, delivered)
    assert status == 200
    assert len(await client.received(provider_id)) == 1


async def test_bad_json_with_the_right_secret_is_400(client: Client) -> None:
    status, answer = await post(client, b"{not json")
    assert status == 400 and answer["error"]["code"]


async def test_with_groups_on_a_group_post_is_the_groups_conversation(
        client: Client) -> None:
    delivered = update(text("hello everyone", chat=group_chat(-100999, "VIP buyers")))
    status, _ = await post(client, delivered)
    assert status == 200
    body = delivered["message"]
    stored = await client.message(f"{body['chat']['id']}:{body['message_id']}")
    conversation = await client.get(f"/v1/conversations/{stored['conversation_id']}")
    assert conversation["group"] == {"id": "-100999", "name": "VIP buyers"}
    assert stored["from"]["address"] == str(KIM["id"])


async def test_a_callback_query_by_webhook_is_stored_then_answered(
        fake: FakeBotApi, client: Client) -> None:
    status, _ = await post(client, update({"callback_query": {
        "id": "wh-cbq-1", "from": KIM, "chat_instance": "1", "data": "yes"}}))
    assert status == 200
    stored = await client.message("callback:wh-cbq-1")
    assert stored["text"] == "yes"
    assert [c for c in fake.calls_of("answerCallbackQuery")
            if c.params.get("callback_query_id") == "wh-cbq-1"]


async def test_with_markdown_on_a_reply_is_escaped_to_show_as_typed(
        fake: FakeBotApi, client: Client) -> None:
    delivered = update(text("what does 1.5*2 (approx) cost?"))
    assert (await post(client, delivered))[0] == 200
    body = delivered["message"]
    stored = await client.message(f"{body['chat']['id']}:{body['message_id']}")
    typed = "About 3.00 [USD] - see shop.example/faq_2 #best!"
    status, answer = await client.post(f"/v1/conversations/{stored['conversation_id']}/messages",
                                       {"text": typed})
    assert status == 202, answer

    async def sent() -> Any:
        current = await client.get(f"/v1/messages/{answer['id']}")
        return current if current["status"] in ("sent", "failed") else None

    result = await client.until(sent)
    assert result["status"] == "sent", result["error"]
    call = fake.calls_of("sendMessage")[-1]
    assert call.params["parse_mode"] == "MarkdownV2"
    assert call.params["text"].replace("\\", "") == typed

"""Long polling against the fake Bot API: every inbound kind, stored, then confirmed."""

from __future__ import annotations

from typing import Any

from gateway.daemon import Gateway
from tests.conftest import TOKEN as ADMIN_TOKEN
from tests.telegram.conftest import Client
from tests.telegram.fake import BOT_ID, TOKEN, Failure, FakeBotApi
from tests.telegram.updates import KIM, LEE, group_chat, message, photo, text


def pid(update: dict[str, Any]) -> str:
    """The provider message id of a queued message update."""
    body = update.get("message") or update["edited_message"]
    return f"{body['chat']['id']}:{body['message_id']}"


async def test_a_text_message_becomes_a_customer_message_and_its_update_is_confirmed(
        fake: FakeBotApi, client: Client, gateway: Gateway) -> None:
    update = fake.queue(text("Where is my order?"))
    stored = await client.message(pid(update))
    assert stored["channel"] == "telegram" and stored["account"] == "shop"
    assert stored["direction"] == "inbound" and stored["text"] == "Where is my order?"
    assert stored["from"] == {"kind": "telegram", "address": str(KIM["id"]),
                              "name": "Min-ji Kim"}
    customer = await client.get(f"/v1/customers/{stored['customer_id']}")
    assert {"kind": "telegram", "address": str(KIM["id"])}.items() <= \
        customer["identities"][0].items()
    # The next getUpdates confirms it (offset past it), and the checkpoint holds the offset.
    await fake.wait_for(lambda: any(int(c.params.get("offset") or 0) > update["update_id"]
                                    for c in fake.calls_of("getUpdates")))
    assert await gateway.store.get_checkpoint(f"telegram:shop:{BOT_ID}:offset") == \
        str(update["update_id"] + 1)
    raw = await client.http.get(f"{client.base}/v1/messages/{stored['id']}/raw",
                                headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert raw.status == 200 and b"Where is my order?" in await raw.read()


async def test_the_same_update_twice_is_stored_once(fake: FakeBotApi, client: Client) -> None:
    update = text("only once")
    first = fake.queue(update)
    fake.queue({**first})  # Telegram redelivering the same update id
    fake.queue({"message": first["message"]})  # and the same message under a new id
    later = fake.queue(text("after the repeats"))
    await client.message(pid(later))
    assert len(await client.received(pid(first))) == 1


async def test_a_photo_is_fetched_after_the_commit_through_getfile(
        fake: FakeBotApi, client: Client) -> None:
    jpeg = b"\xff\xd8\xff\xe0" + b"photo-bytes" * 100
    fake.add_file("PH-1", jpeg, "photos/file_1.jpg")
    update = fake.queue(photo("PH-1", caption="this one in blue"))
    stored = await client.message(pid(update))
    assert stored["text"] == "this one in blue"

    async def fetched() -> Any:
        current = await client.get(f"/v1/messages/{stored['id']}")
        return current if current["attachments"] and current["attachments"][0].get(
            "sha256") else None

    current = await client.until(fetched)
    [attachment] = current["attachments"]
    assert attachment["content_type"] == "image/jpeg" and attachment["size"] == len(jpeg)
    async with client.http.get(client.base + attachment["url"],
                               headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as response:
        assert await response.read() == jpeg
    assert "photos/file_1.jpg" in fake.downloads
    assert [c.params["file_id"] for c in fake.calls_of("getFile")].count("PH-1") == 1
    # The token went only to the Bot API; nothing the help desk sees holds it.
    events = await client.events()
    assert TOKEN not in str(events) and TOKEN.split(":")[1] not in str(current)


async def test_an_album_is_separate_messages_sharing_the_media_group(
        fake: FakeBotApi, client: Client) -> None:
    fake.add_file("AL-1", b"one", "photos/al1.jpg")
    fake.add_file("AL-2", b"two", "photos/al2.jpg")
    first = fake.queue(photo("AL-1", media_group_id="880011", caption="both"))
    second = fake.queue(photo("AL-2", media_group_id="880011"))
    a = await client.message(pid(first))
    b = await client.message(pid(second))
    assert a["id"] != b["id"] and a["conversation_id"] == b["conversation_id"]
    assert a["provider"]["thread_id"] == b["provider"]["thread_id"] == "880011"


async def test_documents_voice_video_and_stickers_arrive_with_their_files(
        fake: FakeBotApi, client: Client) -> None:
    fake.add_file("DOC-1", b"%PDF-1.4 invoice", "documents/invoice.pdf")
    fake.add_file("VOICE-1", b"OggS voice", "voice/file_3.oga")
    fake.add_file("VID-1", b"mp4 video", "videos/file_4.mp4")
    fake.add_file("STK-1", b"RIFF webp", "stickers/file_5.webp")
    updates = [
        fake.queue({"message": message(document={
            "file_id": "DOC-1", "file_unique_id": "d1", "file_name": "invoice.pdf",
            "mime_type": "application/pdf"}, caption="my invoice")}),
        fake.queue({"message": message(voice={"file_id": "VOICE-1", "file_unique_id": "v1",
                                               "duration": 2, "mime_type": "audio/ogg"})}),
        fake.queue({"message": message(video={"file_id": "VID-1", "file_unique_id": "m1",
                                               "width": 1, "height": 1, "duration": 1})}),
        fake.queue({"message": message(sticker={
            "file_id": "STK-1", "file_unique_id": "s1", "type": "regular", "width": 512,
            "height": 512, "is_animated": False, "is_video": False, "emoji": "🙏"})}),
    ]
    expected = [("my invoice", "invoice.pdf", b"%PDF-1.4 invoice"),
                ("[voice message]", "voice.ogg", b"OggS voice"),
                ("[video]", "video.mp4", b"mp4 video"),
                ("[sticker 🙏]", "sticker.webp", b"RIFF webp")]
    for update, (body, filename, data) in zip(updates, expected, strict=True):
        stored = await client.message(pid(update))
        assert stored["text"] == body

        async def fetched(message_id: str = stored["id"]) -> Any:
            current = await client.get(f"/v1/messages/{message_id}")
            done = [a for a in current["attachments"] if a.get("sha256")]
            return done or None

        [attachment] = await client.until(fetched)
        assert attachment["filename"] == filename and attachment["size"] == len(data)


async def test_a_file_getfile_refuses_shows_its_error_and_the_message_stays(
        fake: FakeBotApi, client: Client) -> None:
    update = fake.queue({"message": message(document={
        "file_id": "NO-SUCH-FILE", "file_unique_id": "x", "file_name": "gone.pdf"})})
    stored = await client.message(pid(update))

    async def failed() -> Any:
        current = await client.get(f"/v1/messages/{stored['id']}")
        errors = [a for a in current["attachments"] if a.get("error")]
        return errors or None

    [attachment] = await client.until(failed)
    assert attachment["error"]["code"] == "media_refused"
    assert "invalid file_id" in attachment["error"]["message"].lower()
    assert TOKEN not in str(attachment)


async def test_a_reply_threads_to_the_message_it_answers(
        fake: FakeBotApi, client: Client) -> None:
    original = fake.queue(text("I ordered shoes"))
    stored = await client.message(pid(original))
    answer = fake.queue(text("size 250, please",
                             reply_to_message=original["message"]))
    threaded = await client.message(pid(answer))
    assert threaded["in_reply_to"] == stored["id"]


async def test_an_edit_updates_the_stored_message(fake: FakeBotApi, client: Client) -> None:
    original = fake.queue(text("Wher is my order"))
    stored = await client.message(pid(original))
    edited = dict(original["message"], text="Where is my order #42?",
                  edit_date=original["message"]["date"] + 5)
    fake.queue({"edited_message": edited})

    async def updated() -> Any:
        return [e for e in await client.events() if e["type"] == "message.updated"
                and e["data"]["message"]["id"] == stored["id"]]

    [event] = await client.until(updated)
    assert event["data"]["message"]["text"] == "Where is my order #42?"
    assert event["data"]["message"].get("edited_at")
    assert len(await client.received(pid(original))) == 1  # not a new message


async def test_an_edit_of_a_message_never_seen_is_stored_as_it_is_now(
        fake: FakeBotApi, client: Client) -> None:
    edited = message(text="edited before we saw it", edit_date=1_800_000_000)
    fake.queue({"edited_message": edited})
    stored = await client.message(f"{edited['chat']['id']}:{edited['message_id']}")
    assert stored["text"] == "edited before we saw it"


async def test_the_senders_own_contact_links_their_phone_but_not_anothers(
        fake: FakeBotApi, client: Client) -> None:
    own = fake.queue({"message": message(LEE, contact={
        "phone_number": "821055556666", "first_name": "Joon", "user_id": LEE["id"]})})
    stored = await client.message(pid(own))
    customer = await client.get(f"/v1/customers/{stored['customer_id']}")
    kinds = {(i["kind"], i["address"]) for i in customer["identities"]}
    assert ("phone", "+821055556666") in kinds
    card = fake.queue({"message": message(LEE, contact={
        "phone_number": "+821077778888", "first_name": "Friend", "user_id": 999})})
    stored = await client.message(pid(card))
    customer = await client.get(f"/v1/customers/{stored['customer_id']}")
    kinds = {(i["kind"], i["address"]) for i in customer["identities"]}
    assert ("phone", "+821077778888") not in kinds
    assert stored["text"] == "Contact: Friend, +821077778888"


async def test_start_with_a_payload_is_recorded_in_the_conversation_context(
        fake: FakeBotApi, client: Client) -> None:
    newcomer = {"id": 777001, "is_bot": False, "first_name": "Hana"}
    update = fake.queue(text("/start ad-campaign-7", newcomer))
    stored = await client.message(pid(update))
    conversation = await client.get(f"/v1/conversations/{stored['conversation_id']}")
    assert conversation["context"] == {"start_payload": "ad-campaign-7"}


async def test_a_callback_query_is_the_tapped_label_and_is_answered(
        fake: FakeBotApi, client: Client) -> None:
    keyboard = {"inline_keyboard": [[{"text": "Track my parcel", "callback_data": "track"},
                                     {"text": "Talk to a person", "callback_data": "human"}]]}
    bot_message = {"message_id": 7001, "date": 1, "text": "How can we help?",
                   "from": {"id": BOT_ID, "is_bot": True, "first_name": "ShopBot"},
                   "chat": {"id": KIM["id"], "type": "private"}, "reply_markup": keyboard}
    fake.queue({"callback_query": {"id": "cbq-881", "from": KIM, "message": bot_message,
                                   "chat_instance": "42", "data": "human"}})
    stored = await client.message("callback:cbq-881")
    assert stored["text"] == "Talk to a person"
    assert stored["from"]["address"] == str(KIM["id"])
    await fake.wait_for(lambda: [c for c in fake.calls_of("answerCallbackQuery")
                                 if c.params.get("callback_query_id") == "cbq-881"])


async def test_group_posts_are_confirmed_and_ignored_when_groups_are_off(
        fake: FakeBotApi, client: Client, gateway: Gateway) -> None:
    post = fake.queue(text("hello group", chat=group_chat()))
    after = fake.queue(text("a private one after it"))
    await client.message(pid(after))
    assert await client.received(pid(post)) == []
    adapter = gateway.adapters[("telegram", "shop")]
    assert adapter.counters["group_posts_ignored"] >= 1


async def test_health_shows_the_poll_loop_the_last_update_and_the_last_error(
        fake: FakeBotApi, client: Client) -> None:
    update = fake.queue(text("health check"))
    await client.message(pid(update))
    [account] = [c for c in (await client.get("/v1/channels"))["channels"]
                 if c["type"] == "telegram"]
    [loop] = account["loops"]
    assert loop["name"] == "telegram:shop:polling" and loop["alive"]
    assert account["counters"]["last_update_at"] > 0
    assert account["counters"]["updates"] >= 1
    # A Bot API outage shows as the loop's last error, and polling recovers by itself.
    fake.fail["getUpdates"].append(Failure(502, "Bad Gateway"))
    await fake.wait_for(lambda: not fake.fail["getUpdates"])

    async def errored() -> Any:
        channels = (await client.get("/v1/channels"))["channels"]
        [acct] = [c for c in channels if c["type"] == "telegram"]
        return acct["loops"][0]["last_error"]

    assert "Bad Gateway" in await client.until(errored)
    later = fake.queue(text("after the outage"))
    await client.message(pid(later), timeout=15)


async def test_an_unreadable_update_is_passed_and_the_stream_goes_on(
        fake: FakeBotApi, client: Client, gateway: Gateway) -> None:
    adapter = gateway.adapters[("telegram", "shop")]
    unreadable = adapter.counters["updates_unreadable"]
    fake.queue({"message": {"message_id": 1, "date": 1, "text": "no chat"}})
    fake.queue({"message": "not an object"})
    later = fake.queue(text("still flowing"))
    await client.message(pid(later))
    assert adapter.counters["updates_unreadable"] == unreadable + 1

"""normalizer/telegram.py: each kind of update → what the gateway stores (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from normalizer.errors import InvalidInput, MalformedInput
from normalizer.model import Party
from normalizer.telegram import ParsedUpdate, file_id_of, parse_update
from tests.telegram.updates import KIM, LEE, group_chat, message, photo, text

API = "https://api.telegram.org"


def parse(update: dict[str, Any], update_id: int = 7) -> ParsedUpdate:
    return parse_update({"update_id": update_id, **update}, "shop", api_base_url=API,
                        media_source="telegram:shop")


def test_a_text_message_is_keyed_by_chat_and_message_id() -> None:
    update = text("Where is my order?", message_id=55)
    inbound = parse(update).message
    assert inbound is not None
    assert inbound.provider_message_id == f"{KIM['id']}:55"
    assert inbound.sender == Party("telegram", str(KIM["id"]), "Min-ji Kim")
    assert inbound.text == "Where is my order?"
    assert inbound.group is None and inbound.context is None and not inbound.reply_refs
    assert inbound.sent_at is not None


def test_a_photo_is_its_largest_size_fetched_later_with_no_token_in_the_reference() -> None:
    inbound = parse(photo("PHOTO-1", caption="this one, in blue")).message
    assert inbound is not None
    assert inbound.text == "this one, in blue"
    [remote] = inbound.remote_attachments
    assert file_id_of(remote.url) == "PHOTO-1"
    assert remote.url.startswith(API + "/") and "bot" not in remote.url
    assert remote.source == "telegram:shop" and remote.content_type == "image/jpeg"
    assert inbound.attachments == []


def test_a_photo_without_caption_still_reads() -> None:
    inbound = parse(photo("P2")).message
    assert inbound is not None and inbound.text == "[photo]"


def test_album_parts_share_the_media_group_as_thread() -> None:
    first = parse(photo("A1", media_group_id="13579")).message
    second = parse(photo("A2", media_group_id="13579")).message
    assert first is not None and second is not None
    assert first.provider_thread_id == second.provider_thread_id == "13579"
    assert first.provider_message_id != second.provider_message_id


@pytest.mark.parametrize(("key", "item", "expected_text", "filename", "content_type"), [
    ("document", {"file_id": "D", "file_unique_id": "d", "file_name": "invoice.pdf",
                  "mime_type": "application/pdf"}, "[document: invoice.pdf]", "invoice.pdf",
     "application/pdf"),
    ("voice", {"file_id": "V", "file_unique_id": "v", "duration": 3,
               "mime_type": "audio/ogg"}, "[voice message]", "voice.ogg", "audio/ogg"),
    ("video", {"file_id": "M", "file_unique_id": "m", "width": 1, "height": 1, "duration": 2},
     "[video]", "video.mp4", "video/mp4"),
])
def test_files_become_attachments_fetched_after_the_commit(
        key: str, item: dict[str, Any], expected_text: str, filename: str,
        content_type: str) -> None:
    inbound = parse({"message": message(**{key: item})}).message
    assert inbound is not None
    assert inbound.text == expected_text
    [remote] = inbound.remote_attachments
    assert (file_id_of(remote.url), remote.filename, remote.content_type) == (
        item["file_id"], filename, content_type)


def test_a_caption_is_the_text_of_a_document() -> None:
    inbound = parse({"message": message(caption="the receipt", document={
        "file_id": "D", "file_unique_id": "d", "file_name": "r.pdf"})}).message
    assert inbound is not None and inbound.text == "the receipt"


def test_a_sticker_reads_as_its_emoji_with_content_and_the_image() -> None:
    inbound = parse({"message": message(sticker={
        "file_id": "S", "file_unique_id": "s", "type": "regular", "width": 512,
        "height": 512, "is_animated": False, "is_video": False, "emoji": "👍",
        "set_name": "HotCherry"})}).message
    assert inbound is not None
    assert inbound.text == "[sticker 👍]"
    assert inbound.content == {"type": "sticker", "emoji": "👍", "set_name": "HotCherry",
                               "animated": False}
    assert inbound.remote_attachments[0].filename == "sticker.webp"


def test_a_reply_names_the_message_it_answers() -> None:
    original = message(text="earlier", message_id=40)
    inbound = parse(text("and this?", reply_to_message=original)).message
    assert inbound is not None and inbound.reply_refs == [f"{KIM['id']}:40"]


def test_an_edit_changes_the_stored_message() -> None:
    edited = message(text="Where is my order #123?", message_id=41, edit_date=1_800_000_000)
    parsed = parse({"edited_message": edited})
    assert parsed.message is None and parsed.edit is not None
    assert parsed.edit.provider_message_id == f"{KIM['id']}:41"
    assert parsed.edit.change.text == "Where is my order #123?"
    assert parsed.edit.change.at is not None and parsed.edit.change.at.year == 2027


def test_the_senders_own_contact_links_their_phone() -> None:
    inbound = parse({"message": message(contact={
        "phone_number": "821012345678", "first_name": "Min-ji", "user_id": KIM["id"]})}
    ).message
    assert inbound is not None
    assert inbound.linked_identities == [Party("phone", "+821012345678", "Min-ji Kim")]
    assert inbound.text == "Contact: Min-ji, +821012345678"
    assert inbound.content is not None and inbound.content["type"] == "contact"


def test_someone_elses_contact_is_content_only() -> None:
    inbound = parse({"message": message(contact={
        "phone_number": "+821099998888", "first_name": "Joon", "user_id": LEE["id"]})}
    ).message
    assert inbound is not None and inbound.linked_identities == []
    assert inbound.content is not None and inbound.content["phones"] == ["+821099998888"]
    no_user = parse({"message": message(contact={"phone_number": "+15550001111",
                                                 "first_name": "Ann"})}).message
    assert no_user is not None and no_user.linked_identities == []


def test_start_with_a_deep_link_payload_is_recorded_as_context() -> None:
    inbound = parse(text("/start promo-spring_2026")).message
    assert inbound is not None and inbound.context == {"start_payload": "promo-spring_2026"}
    plain = parse(text("/start")).message
    assert plain is not None and plain.context is None


def test_a_callback_query_is_a_message_with_the_tapped_label() -> None:
    bot_message = {"message_id": 90, "date": 1, "chat": {"id": KIM["id"], "type": "private"},
                   "from": {"id": 1, "is_bot": True, "first_name": "Bot"}, "text": "Size?",
                   "reply_markup": {"inline_keyboard": [[
                       {"text": "Small", "callback_data": "size:s"},
                       {"text": "Large", "callback_data": "size:l"}]]}}
    parsed = parse({"callback_query": {"id": "4382bfdwdsb323b2d9", "from": KIM,
                                       "message": bot_message, "chat_instance": "-1",
                                       "data": "size:l"}})
    assert parsed.callback_query_id == "4382bfdwdsb323b2d9"
    inbound = parsed.message
    assert inbound is not None
    assert inbound.text == "Large"
    assert inbound.provider_message_id == "callback:4382bfdwdsb323b2d9"
    assert inbound.reply_refs == [f"{KIM['id']}:90"]
    assert inbound.content == {"type": "button", "label": "Large", "data": "size:l"}


def test_a_callback_query_without_the_buttons_uses_its_data() -> None:
    inbound = parse({"callback_query": {"id": "q2", "from": KIM, "chat_instance": "-1",
                                        "data": "yes"}}).message
    assert inbound is not None and inbound.text == "yes"


def test_group_posts_carry_their_group() -> None:
    inbound = parse(text("hi all", chat=group_chat())).message
    assert inbound is not None and inbound.group is not None
    assert inbound.group.id == "-1001234567890" and inbound.group.name == "Shop fans"
    post = parse({"channel_post": {"message_id": 3, "date": 1, "text": "news",
                                   "chat": {"id": -100777, "type": "channel",
                                            "title": "Shop news"}}}).message
    assert post is not None and post.group is not None and post.sender.address == "-100777"


def test_location_and_unknown_kinds_still_read() -> None:
    located = parse({"message": message(location={"latitude": 37.5665,
                                                  "longitude": 126.978})}).message
    assert located is not None and located.text == "Location: (37.5665, 126.978)"
    assert located.content is not None and located.content["type"] == "location"
    poll = parse({"message": message(poll={"id": "1", "question": "?"})}).message
    assert poll is not None and poll.content == {"type": "unsupported", "provider_type": "poll"}


def test_other_update_kinds_are_ignored_with_the_reason() -> None:
    parsed = parse({"my_chat_member": {"chat": {"id": 1}}})
    assert parsed.message is None and parsed.edit is None
    assert parsed.ignored is not None and "my_chat_member" in parsed.ignored


def test_service_messages_are_ignored() -> None:
    joined = parse({"message": message(chat=group_chat(), new_chat_members=[LEE])})
    assert joined.message is None and joined.ignored == "service message (new_chat_members)"
    pinned = parse({"message": message(pinned_message={"message_id": 1, "date": 0,
                                                       "chat": {"id": 1, "type": "private"}})})
    assert pinned.message is None and pinned.ignored is not None


def test_not_an_update_is_refused() -> None:
    with pytest.raises(MalformedInput):
        parse_update([], "shop", api_base_url=API, media_source="s")
    with pytest.raises(InvalidInput):
        parse_update({"message": {}}, "shop", api_base_url=API, media_source="s")
    with pytest.raises(InvalidInput):
        parse({"message": {"message_id": 1, "date": 1}})

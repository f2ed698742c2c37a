"""Telegram Bot API ``Update`` JSON → what the gateway stores (pure: no I/O).

One update becomes one of: a new message (text, media, a contact, a location, a button
tapped), an edit of a message delivered earlier, or nothing (a kind the gateway does not
keep, said why). The provider message id is ``<chat id>:<message id>`` (a callback query,
which has no message of its own: ``callback:<query id>``); the parts of an album share
``provider_thread_id`` = the media group id. Files are not downloaded here: each becomes a
:class:`RemoteAttachment` whose reference names the ``file_id`` (no token), resolved with
``getFile`` by the adapter when the fetcher runs, after the commit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

from normalizer.errors import InvalidInput, MalformedInput
from normalizer.model import Group, InboundMessage, MessageChange, Party, RemoteAttachment

CHANNEL = "telegram"
FILE_REFERENCE_PATH = "/omnirelay-file"
"""The path of a file reference on ``api_base_url`` (``?file_id=…``): never requested as
it is, turned into ``/file/bot<token>/<file_path>`` by ``getFile`` at fetch time."""
MAX_TEXT = 4096  # what Telegram allows in one message (and so never exceeds inbound)
SERVICE_KEYS = frozenset({
    "new_chat_members", "left_chat_member", "new_chat_title", "new_chat_photo",
    "delete_chat_photo", "group_chat_created", "supergroup_chat_created",
    "channel_chat_created", "message_auto_delete_timer_changed", "migrate_to_chat_id",
    "migrate_from_chat_id", "pinned_message", "forum_topic_created", "forum_topic_edited",
    "forum_topic_closed", "forum_topic_reopened", "general_forum_topic_hidden",
    "general_forum_topic_unhidden", "video_chat_scheduled", "video_chat_started",
    "video_chat_ended", "video_chat_participants_invited", "write_access_allowed",
    "chat_background_set", "boost_added", "proximity_alert_triggered", "connected_website",
    "successful_payment", "refunded_payment"})
"""Fields of a service message (the chat changed; nobody wrote anything), per the Bot API's
Message object."""
_START = re.compile(r"^/start(?:@\w+)?(?:\s+(?P<payload>\S.*))?$", re.DOTALL)
_PRIVATE = "private"


@dataclass(frozen=True, slots=True)
class TelegramEdit:
    """An edited message: the change to apply to the stored one, and the whole message (to
    store as new when the original never reached us)."""

    provider_message_id: str
    change: MessageChange
    message: InboundMessage


@dataclass(frozen=True, slots=True)
class ParsedUpdate:
    """What one update asks of the gateway; exactly one of the three is set."""

    update_id: int
    message: InboundMessage | None = None
    edit: TelegramEdit | None = None
    ignored: str | None = None
    callback_query_id: str | None = None  # answered (answerCallbackQuery) after the commit


def file_reference(api_base_url: str, file_id: str) -> str:
    """The token-free URL a file is stored under until the fetcher resolves it."""
    return f"{api_base_url}{FILE_REFERENCE_PATH}?file_id={quote(file_id, safe='')}"


def file_id_of(reference: str) -> str | None:
    """The ``file_id`` in a :func:`file_reference`, or None for any other URL."""
    parts = urlsplit(reference)
    if parts.path != FILE_REFERENCE_PATH:
        return None
    values = parse_qs(parts.query).get("file_id")
    return values[0] if values else None


def parse_update(update: object, account: str, *, api_base_url: str,
                 media_source: str) -> ParsedUpdate:
    """Normalize one Bot API ``Update`` object; MalformedInput when it is not one."""
    if not isinstance(update, dict):
        raise MalformedInput("an update must be a JSON object")
    update_id = update.get("update_id")
    if not isinstance(update_id, int) or isinstance(update_id, bool):
        raise InvalidInput("update_id must be an integer")
    files = _Files(api_base_url, media_source)
    for key in ("message", "channel_post"):
        if isinstance(update.get(key), dict):
            service = sorted(k for k in SERVICE_KEYS if update[key].get(k))
            if service:  # a member joined, a title changed…: nothing a customer wrote
                return ParsedUpdate(update_id, ignored=f"service message ({service[0]})")
            return ParsedUpdate(update_id, message=_message(update[key], account, files))
    for key in ("edited_message", "edited_channel_post"):
        if isinstance(update.get(key), dict):
            return ParsedUpdate(update_id, edit=_edit(update[key], account, files))
    if isinstance(update.get("callback_query"), dict):
        query = update["callback_query"]
        return ParsedUpdate(update_id, message=_callback(query, account),
                            callback_query_id=_str(query.get("id")))
    kinds = sorted(k for k in update if k != "update_id")
    return ParsedUpdate(update_id, ignored=f"update kind {', '.join(kinds) or 'none'} is not "
                                           "a customer message")


# ------------------------------------------------------------------ messages


@dataclass(frozen=True, slots=True)
class _Files:
    api_base_url: str
    source: str

    def attach(self, item: dict[str, Any], filename: str,
               content_type: str | None) -> RemoteAttachment:
        file_id = item.get("file_id")
        if not isinstance(file_id, str) or not file_id:
            raise InvalidInput("a file without file_id")
        return RemoteAttachment(file_reference(self.api_base_url, file_id), self.source,
                                filename, content_type)


def _message(message: dict[str, Any], account: str, files: _Files) -> InboundMessage:
    chat = message.get("chat")
    message_id = message.get("message_id")
    if not isinstance(chat, dict) or not isinstance(chat.get("id"), int) or \
            not isinstance(message_id, int):
        raise InvalidInput("a message needs chat.id and message_id")
    chat_id = chat["id"]
    sender = _sender(message, chat)
    text, content, remote, linked = _content(message, sender, files)
    context = None
    if isinstance(message.get("text"), str):
        start = _START.match(message["text"].strip())
        if start and start.group("payload"):
            context = {"start_payload": start.group("payload").strip()}
    reply = message.get("reply_to_message")
    reply_refs = ([f"{chat_id}:{reply['message_id']}"]
                  if isinstance(reply, dict) and isinstance(reply.get("message_id"), int)
                  else [])
    group_id = message.get("media_group_id")
    return InboundMessage(
        channel=CHANNEL, account=account, provider_message_id=f"{chat_id}:{message_id}",
        sender=sender, text=text, content=content, remote_attachments=remote,
        linked_identities=linked, sent_at=_time(message.get("date")),
        reply_refs=reply_refs, context=context,
        provider_thread_id=group_id if isinstance(group_id, str) and group_id else None,
        group=_group(chat))


def _edit(message: dict[str, Any], account: str, files: _Files) -> TelegramEdit:
    inbound = _message(message, account, files)
    text = message.get("text") if isinstance(message.get("text"), str) else \
        message.get("caption")
    change = MessageChange(text=text if isinstance(text, str) and text else inbound.text,
                           at=_time(message.get("edit_date")))
    return TelegramEdit(inbound.provider_message_id, change, inbound)


def _callback(query: dict[str, Any], account: str) -> InboundMessage:
    """A tapped inline button: a message whose text is the button's label."""
    query_id = _str(query.get("id"))
    if not query_id or not isinstance(query.get("from"), dict):
        raise InvalidInput("a callback query needs id and from")
    sender = _party(query["from"])
    data = _str(query.get("data"))
    source: dict[str, Any] = query["message"] if isinstance(query.get("message"), dict) \
        else {}
    label = _button_label(source, data) or data or _str(query.get("game_short_name")) or \
        "[button]"
    chat: dict[str, Any] | None = source["chat"] if isinstance(source.get("chat"), dict) \
        else None
    reply_refs = ([f"{chat['id']}:{source['message_id']}"]
                  if chat and isinstance(source.get("message_id"), int) else [])
    return InboundMessage(
        channel=CHANNEL, account=account, provider_message_id=f"callback:{query_id}",
        sender=sender, text=label, reply_refs=reply_refs,
        content={"type": "button", "label": label, "data": data},
        group=_group(chat) if chat else None)


def _button_label(message: dict[str, Any], data: str | None) -> str | None:
    markup = message.get("reply_markup")
    if data is None or not isinstance(markup, dict):
        return None
    for row in markup.get("inline_keyboard") or []:
        for button in row if isinstance(row, list) else []:
            if isinstance(button, dict) and button.get("callback_data") == data:
                return _str(button.get("text"))
    return None


def _content(message: dict[str, Any], sender: Party, files: _Files,
             ) -> tuple[str, dict[str, Any] | None, list[RemoteAttachment], list[Party]]:
    """Text, structured content, files to fetch and identities the sender shared."""
    caption = _str(message.get("caption")) or ""
    if isinstance(message.get("text"), str):
        return message["text"], None, [], []
    if isinstance(message.get("photo"), list) and message["photo"]:
        largest = max((p for p in message["photo"] if isinstance(p, dict)),
                      key=lambda p: (p.get("width", 0) * p.get("height", 0),
                                     p.get("file_size", 0)))
        name = f"photo-{_str(largest.get('file_unique_id')) or 'telegram'}.jpg"
        return caption or "[photo]", None, [files.attach(largest, name, "image/jpeg")], []
    if isinstance(message.get("animation"), dict):  # also carries a document: take this
        animation = message["animation"]
        name = _str(animation.get("file_name")) or "animation.mp4"
        return (caption or "[animation]", None,
                [files.attach(animation, name, _str(animation.get("mime_type")))], [])
    for key, placeholder, default_name, default_type in (
            ("document", "[document]", "document", None),
            ("video", "[video]", "video.mp4", "video/mp4"),
            ("voice", "[voice message]", "voice.ogg", "audio/ogg"),
            ("audio", "[audio]", "audio.mp3", None),
            ("video_note", "[video message]", "video-note.mp4", "video/mp4")):
        item = message.get(key)
        if isinstance(item, dict):
            name = _str(item.get("file_name")) or default_name
            text = caption or (f"[document: {name}]" if key == "document" else placeholder)
            return text, None, [files.attach(item, name, _str(item.get("mime_type"))
                                             or default_type)], []
    if isinstance(message.get("sticker"), dict):
        return _sticker(message["sticker"], files)
    if isinstance(message.get("contact"), dict):
        return _contact(message["contact"], sender)
    if isinstance(message.get("venue"), dict) or isinstance(message.get("location"), dict):
        return _location(message)
    kinds = sorted(k for k in message if k not in (
        "message_id", "from", "chat", "date", "sender_chat", "reply_to_message",
        "message_thread_id", "is_topic_message", "entities", "caption_entities",
        "has_protected_content", "author_signature", "forward_origin", "edit_date",
        "media_group_id", "via_bot", "is_automatic_forward"))
    provider_type = kinds[0] if kinds else "empty"
    return (caption or f"[unsupported Telegram message: {provider_type}]",
            {"type": "unsupported", "provider_type": provider_type}, [], [])


def _sticker(sticker: dict[str, Any], files: _Files,
             ) -> tuple[str, dict[str, Any], list[RemoteAttachment], list[Party]]:
    emoji = _str(sticker.get("emoji"))
    if sticker.get("is_animated"):
        name, content_type = "sticker.tgs", "application/x-tgsticker"
    elif sticker.get("is_video"):
        name, content_type = "sticker.webm", "video/webm"
    else:
        name, content_type = "sticker.webp", "image/webp"
    content = {"type": "sticker", "emoji": emoji, "set_name": _str(sticker.get("set_name")),
               "animated": bool(sticker.get("is_animated") or sticker.get("is_video"))}
    text = f"[sticker {emoji}]" if emoji else "[sticker]"
    return text, content, [files.attach(sticker, name, content_type)], []


def _contact(contact: dict[str, Any], sender: Party,
             ) -> tuple[str, dict[str, Any], list[RemoteAttachment], list[Party]]:
    """A contact card: content; its number links the sender only when it is their own."""
    phone = _str(contact.get("phone_number")) or ""
    if phone and re.fullmatch(r"\d{6,15}", phone):
        phone = "+" + phone  # Telegram sends a user's own number without the plus
    name = " ".join(n for n in (_str(contact.get("first_name")),
                                _str(contact.get("last_name"))) if n)
    user_id = contact.get("user_id")
    own = isinstance(user_id, int) and str(user_id) == sender.address
    content = {"type": "contact", "name": name or None, "phones": [phone] if phone else [],
               "user_id": str(user_id) if isinstance(user_id, int) else None,
               "vcard": _str(contact.get("vcard"))}
    text = "Contact: " + ", ".join(p for p in (name, phone) if p) if name or phone \
        else "[contact]"
    linked = [Party("phone", phone, sender.name)] if own and phone else []
    return text, content, [], linked


def _location(message: dict[str, Any],
              ) -> tuple[str, dict[str, Any], list[RemoteAttachment], list[Party]]:
    venue: dict[str, Any] = message["venue"] if isinstance(message.get("venue"), dict) else {}
    location: dict[str, Any] = (venue["location"] if isinstance(venue.get("location"), dict)
                                else message.get("location") or {})
    lat, lon = location.get("latitude"), location.get("longitude")
    name, address = _str(venue.get("title")), _str(venue.get("address"))
    parts = [p for p in (name, address) if p]
    if isinstance(lat, int | float) and isinstance(lon, int | float):
        parts.append(f"({lat}, {lon})")
    return ("Location: " + ", ".join(parts) if parts else "[location]",
            {"type": "location", "latitude": lat, "longitude": lon, "name": name,
             "address": address}, [], [])


# ------------------------------------------------------------------ small parts


def _sender(message: dict[str, Any], chat: dict[str, Any]) -> Party:
    """The person who wrote (a channel post: the channel itself)."""
    if isinstance(message.get("from"), dict):
        return _party(message["from"])
    sender_chat: dict[str, Any] = (message["sender_chat"]
                                   if isinstance(message.get("sender_chat"), dict) else chat)
    return Party("telegram", str(sender_chat.get("id")), _str(sender_chat.get("title")))


def _party(user: dict[str, Any]) -> Party:
    user_id = user.get("id")
    if not isinstance(user_id, int):
        raise InvalidInput("from.id must be an integer")
    name = " ".join(n for n in (_str(user.get("first_name")), _str(user.get("last_name")))
                    if n) or _str(user.get("username"))
    return Party("telegram", str(user_id), name or None)


def _group(chat: dict[str, Any]) -> Group | None:
    """A group, supergroup or channel; None for a private chat."""
    if chat.get("type") == _PRIVATE:
        return None
    return Group(str(chat.get("id")), _str(chat.get("title")))


def _time(value: object) -> datetime | None:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return datetime.fromtimestamp(value, UTC)
    return None


def _str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None

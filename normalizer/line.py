"""LINE Messaging API webhook events → what each becomes (pure: no I/O, no store).

One webhook body carries several events. Each becomes one of:

- :class:`InboundMessage` — a message (text with LINE emojis and mentions, image, video,
  audio, file, location, sticker), a postback (its ``data`` is the text), a follow or an
  unfollow (the agent sees that the customer added or blocked the account);
- :class:`LineChange` — an unsend (the message is withdrawn) or an edit of a text;
- :class:`Ignored` — everything else (join/leave of groups, beacons, account links,
  memberships, …), named so the log says why.

Dedupe keys: a message's id; for an event without a message id (postback, follow,
unfollow) its ``webhookEventId``, the same on LINE's redeliveries.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from normalizer.errors import InvalidInput, MalformedInput
from normalizer.model import Group, InboundMessage, MessageChange, Party, RemoteAttachment

CHANNEL = "line"
# The content endpoint's Content-Type says what a file is (an image may be a PNG): no hint.
MEDIA_TYPES = frozenset({"image", "video", "audio", "file"})
IGNORED_TYPES = frozenset({"join", "leave", "memberJoined", "memberLeft", "beacon",
                           "accountLink", "things", "videoPlayComplete", "membership",
                           "module", "activated", "deactivated", "botSuspended",
                           "botResumed", "delivery"})


@dataclass(frozen=True, slots=True)
class LineChange:
    """A change to a stored message: ``message_id`` is LINE's id of it."""

    message_id: str
    change: MessageChange


@dataclass(frozen=True, slots=True)
class Ignored:
    """An event the gateway does not store, and why (for the log)."""

    event_type: str
    reason: str


LineOutcome = InboundMessage | LineChange | Ignored


def parse_body(payload: object) -> list[dict[str, Any]]:
    """The ``events`` of a webhook body (LINE's verification POST has none)."""
    if not isinstance(payload, dict):
        raise MalformedInput("the body must be a JSON object")
    events = payload.get("events")
    if not isinstance(events, list) or not all(isinstance(e, dict) for e in events):
        raise MalformedInput("events must be a list of objects")
    return events


def event_user_id(event: dict[str, Any]) -> str | None:
    """Who caused the event (``source.userId``), when LINE says."""
    source = event.get("source")
    if isinstance(source, dict):
        user = source.get("userId")
        if isinstance(user, str) and user:
            return user
    return None


def event_key(event: dict[str, Any]) -> str | None:
    """The event's webhookEventId (the same on a redelivery)."""
    value = event.get("webhookEventId")
    return value if isinstance(value, str) and value else None


def parse_event(event: dict[str, Any], account: str, *, names: dict[str, str | None],
                data_api_base_url: str, media_source: str,
                keep_unsent_text: bool = True) -> LineOutcome:
    """One webhook event → a message, a change, or an explicit Ignored.

    ``names`` maps user ids to the display names the adapter looked up (cached profile);
    ``data_api_base_url`` is where message content is downloaded from (after the commit).
    """
    kind = event.get("type")
    if not isinstance(kind, str):
        raise InvalidInput("event.type is required")
    if kind in IGNORED_TYPES:
        return Ignored(kind, "not a customer message")
    if kind not in ("message", "postback", "follow", "unfollow", "unsend", "messageEdited"):
        return Ignored(kind, "an event type this gateway does not know")
    mode = event.get("mode")
    if mode == "standby":  # another channel (module) owns the chat: it answers, not us
        return Ignored(kind, "mode standby: a module channel has the chat")
    user = event_user_id(event)
    if user is None:
        return Ignored(kind, "no source.userId (the user has not consented in a group)")
    at = _timestamp(event)
    if kind == "unsend":
        target = _dict(event.get("unsend")).get("messageId")
        if not isinstance(target, str) or not target:
            raise InvalidInput("unsend.messageId is required")
        change = MessageChange(text="" if not keep_unsent_text else None, withdrawn=True,
                               at=at)
        return LineChange(target, change)
    if kind == "messageEdited":
        edited = _dict(event.get("message"))
        target, text = edited.get("id"), edited.get("text")
        if not isinstance(target, str) or not isinstance(text, str):
            return Ignored(kind, "an edit of something other than a text")
        return LineChange(target, MessageChange(text=text, at=at))

    sender = Party(CHANNEL, user, names.get(user))
    group = _group(event)
    key = event_key(event)
    if kind == "message":
        return _message(event, account, sender, group, at, data_api_base_url, media_source)
    if key is None:
        raise InvalidInput(f"{kind} event without webhookEventId")
    if kind == "postback":
        postback = _dict(event.get("postback"))
        data = postback.get("data")
        text = data if isinstance(data, str) else ""
        params = postback.get("params") if isinstance(postback.get("params"), dict) else None
        if params:
            text = (text + " " + " ".join(f"{k}={v}" for k, v in sorted(params.items()))
                    ).strip()
        content: dict[str, Any] = {"type": "postback", "data": data}
        if params:
            content["params"] = params
        return InboundMessage(CHANNEL, account, f"event:{key}", sender, text, sent_at=at,
                              group=group, content=content)
    if kind == "follow":
        unblocked = bool(_dict(event.get("follow")).get("isUnblocked"))
        text = "Unblocked the account" if unblocked else "Added the account as a friend"
        return InboundMessage(CHANNEL, account, f"event:{key}", sender, text, sent_at=at,
                              group=group, content={"type": "follow", "unblocked": unblocked})
    # unfollow: the customer blocked the account; replies cannot reach them any more.
    return InboundMessage(CHANNEL, account, f"event:{key}", sender,
                          "Blocked the account (replies cannot reach them)", sent_at=at,
                          group=group, content={"type": "unfollow"})


def _message(event: dict[str, Any], account: str, sender: Party, group: Group | None,
             at: datetime | None, data_api_base_url: str,
             media_source: str) -> InboundMessage:
    message = _dict(event.get("message"))
    message_id = message.get("id")
    mtype = message.get("type")
    if not isinstance(message_id, str) or not message_id or not isinstance(mtype, str):
        raise InvalidInput("message.id and message.type are required")
    text = ""
    content: dict[str, Any] | None = None
    remote: list[RemoteAttachment] = []
    if mtype == "text":
        text = _str(message.get("text"))
        extras = {k: message[k] for k in ("emojis", "mention") if message.get(k)}
        if extras:
            content = {"type": "text", **extras}
    elif mtype in MEDIA_TYPES:
        provider = _dict(message.get("contentProvider"))
        filename = _str(message.get("fileName")) or f"line-{mtype}-{message_id}"
        content = {"type": mtype}
        duration = message.get("duration")
        if isinstance(duration, int):
            content["duration_ms"] = duration
        if mtype == "file":
            content["size"] = message.get("fileSize")
        if provider.get("type") == "external":  # the sender's own host: a link, not a fetch
            content["url"] = provider.get("originalContentUrl")
            text = f"({mtype}: {provider.get('originalContentUrl')})"
        else:
            url = f"{data_api_base_url.rstrip('/')}/v2/bot/message/{message_id}/content"
            remote.append(RemoteAttachment(url, media_source, filename, None))
            text = f"({mtype}: {filename})" if mtype == "file" else f"({mtype})"
        image_set = _dict(message.get("imageSet"))
        if image_set:
            content["image_set"] = image_set
    elif mtype == "location":
        title, address = _str(message.get("title")), _str(message.get("address"))
        lat, lon = message.get("latitude"), message.get("longitude")
        text = ", ".join(p for p in (title, address) if p)
        text = f"{text} ({lat}, {lon})".strip()
        content = {"type": "location", "latitude": lat, "longitude": lon, "name": title or None,
                   "address": address or None}
    elif mtype == "sticker":
        keywords = [k for k in message.get("keywords") or [] if isinstance(k, str)]
        sticker_text = _str(message.get("text"))
        text = sticker_text or (f"(sticker: {', '.join(keywords[:5])})" if keywords
                                else "(sticker)")
        content = {"type": "sticker", "package_id": message.get("packageId"),
                   "sticker_id": message.get("stickerId"), "keywords": keywords,
                   "resource_type": message.get("stickerResourceType")}
    else:
        text = f"(unsupported LINE message: {mtype})"
        content = {"type": "unsupported", "provider_type": mtype}
    quoted = message.get("quotedMessageId")
    return InboundMessage(
        CHANNEL, account, message_id, sender, text, sent_at=at, group=group, content=content,
        reply_refs=[quoted] if isinstance(quoted, str) and quoted else [],
        remote_attachments=remote)


def _group(event: dict[str, Any]) -> Group | None:
    source = _dict(event.get("source"))
    if source.get("type") == "group" and isinstance(source.get("groupId"), str):
        return Group(source["groupId"])
    if source.get("type") == "room" and isinstance(source.get("roomId"), str):
        return Group(source["roomId"])
    return None


def _timestamp(event: dict[str, Any]) -> datetime | None:
    value = event.get("timestamp")
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        try:
            return datetime.fromtimestamp(value / 1000, tz=UTC)
        except (OverflowError, OSError, ValueError):
            return None
    return None


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _str(value: object) -> str:
    return value if isinstance(value, str) else ""

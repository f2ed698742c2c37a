"""Meta webhooks (Messenger, Instagram, WhatsApp Cloud API) → messages, changes, receipts.

One signed POST carries a batch: ``entry[]`` of ``messaging[]`` events (Messenger's
``object: "page"``, Instagram's ``object: "instagram"``) or of ``changes[].value`` (WhatsApp's
``object: "whatsapp_business_account"``). :func:`parse_meta_webhook` turns the whole batch
into a flat list of :data:`MetaEvent` in delivery order, each carrying its own raw JSON,
so the adapter stores every message once and applies every change and receipt. Pure: no
I/O, nothing from the gateway; what the adapter knows of its account comes in
:class:`MetaAccount`.

Why some choices:

- An event the account does not own (another Page of the same app, another phone number)
  or one the gateway has no use for (typing, optins, standby) becomes :class:`MetaSkipped`
  with the reason: acknowledged, never an error, or Meta would redeliver it for days.
- A message without an id (a Messenger postback from an old API version) gets a key made of
  its sender and timestamp, so a redelivery still dedupes.
- Button answers (postback, quick reply, WhatsApp button and list replies) are the
  customer's messages whose text is the label they tapped; the payload goes in ``content``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from normalizer.errors import MalformedInput
from normalizer.identity import InvalidIdentity, normalize_phone
from normalizer.model import (
    DeliveryStatus,
    InboundMessage,
    MessageChange,
    Party,
    RemoteAttachment,
)

JSON = dict[str, Any]

MESSENGER = "messenger"
INSTAGRAM = "instagram"
WHATSAPP = "whatsapp"

_MESSENGER_MEDIA = {"image", "video", "audio", "file"}
_WHATSAPP_MEDIA = {"image", "video", "audio", "document", "sticker"}
_WHATSAPP_STATUS: dict[str, DeliveryStatus] = {
    "sent": "sent", "delivered": "delivered", "read": "read", "failed": "failed"}


@dataclass(frozen=True, slots=True)
class MetaAccount:
    """What the normalizer needs to know of the account: the ids that are its own (only
    their entries are its to store), where Graph media ids resolve, and the names of the
    media sources the adapter registered."""

    name: str
    page_id: str | None = None
    instagram_account_id: str | None = None
    whatsapp_phone_number_id: str | None = None
    graph_url: str = "https://graph.facebook.com/v21.0"  # base URL with the version
    cdn_source: str = "meta"  # Messenger/Instagram attachment URLs (signed CDN links)
    graph_source: str = "meta/graph"  # WhatsApp media ids, looked up on the Graph API


@dataclass(frozen=True, slots=True)
class MetaChange:
    """An edit, reaction or deletion of a message the account delivered earlier."""

    channel: str
    provider_message_id: str
    change: MessageChange
    raw: bytes = b""


@dataclass(frozen=True, slots=True)
class MetaReceipt:
    """A delivery, read or failure report for one of the account's sends, by its id."""

    channel: str
    provider_message_id: str
    status: DeliveryStatus
    error: tuple[str, str] | None = None  # (code, message)
    at: datetime | None = None


@dataclass(frozen=True, slots=True)
class MetaReadWatermark:
    """Messenger's read receipt: everything sent to ``reader`` up to ``watermark`` is read."""

    channel: str
    reader: Party
    watermark: datetime


@dataclass(frozen=True, slots=True)
class MetaSkipped:
    """An event acknowledged but not stored, and why (for the log)."""

    reason: str
    detail: dict[str, str] = field(default_factory=dict)


MetaEvent = InboundMessage | MetaChange | MetaReceipt | MetaReadWatermark | MetaSkipped


def parse_meta_webhook(body: object, account: MetaAccount) -> list[MetaEvent]:
    """Every event of one webhook POST, in order. MalformedInput when the body is not
    a Meta webhook at all (no ``object``/``entry``); anything inside it that the gateway
    cannot use is skipped, never an error."""
    if not isinstance(body, dict) or not isinstance(body.get("object"), str) or \
            not isinstance(body.get("entry"), list):
        raise MalformedInput('not a Meta webhook: expected {"object": …, "entry": [ … ]}')
    kind = body["object"]
    events: list[MetaEvent] = []
    for entry in body["entry"]:
        if not isinstance(entry, dict):
            events.append(MetaSkipped("entry_not_an_object"))
            continue
        if kind == "page":
            events.extend(_messaging_entry(entry, MESSENGER, account.page_id, account))
        elif kind == "instagram":
            events.extend(_messaging_entry(entry, INSTAGRAM, account.instagram_account_id,
                                           account))
        elif kind == "whatsapp_business_account":
            events.extend(_whatsapp_entry(entry, account))
        else:
            events.append(MetaSkipped("object_not_handled", {"object": kind[:64]}))
    return events


# ------------------------------------------------------------------ Messenger, Instagram

def _messaging_entry(entry: JSON, channel: str, own_id: str | None,
                     account: MetaAccount) -> Iterator[MetaEvent]:
    entry_id = str(entry.get("id", ""))
    if own_id is None or entry_id != own_id:
        yield MetaSkipped("not_this_account", {"channel": channel, "id": entry_id[:64]})
        return
    events = entry.get("messaging")
    if not isinstance(events, list):
        yield MetaSkipped("no_messaging_events", {"channel": channel})
        return
    for event in events:
        if isinstance(event, dict):
            yield from _messaging_event(event, channel, own_id, account)
        else:
            yield MetaSkipped("event_not_an_object", {"channel": channel})


def _messaging_event(event: JSON, channel: str, own_id: str,
                     account: MetaAccount) -> list[MetaEvent]:
    """One ``messaging[]`` event: usually one result, a delivery report one per message."""
    delivery = event.get("delivery")
    if isinstance(delivery, dict):
        at = _millis(event.get("timestamp"))
        mids = [m for m in delivery.get("mids") or [] if isinstance(m, str) and m]
        if not mids:  # only a watermark: Messenger no longer names the messages
            return [MetaSkipped("delivery_watermark_only", {"channel": channel})]
        return [MetaReceipt(channel, mid, "delivered", None, at) for mid in mids]
    return [_single_event(event, channel, own_id, account)]


def _single_event(event: JSON, channel: str, own_id: str,
                  account: MetaAccount) -> MetaEvent:
    sender = _id_of(event.get("sender"))
    recipient = _id_of(event.get("recipient"))
    at = _millis(event.get("timestamp"))
    raw = orjson.dumps(event)
    if sender is None:
        return MetaSkipped("no_sender", {"channel": channel})
    message = event.get("message")
    if isinstance(message, dict):
        mid = _str(message.get("mid"))
        if mid is None:
            return MetaSkipped("message_without_mid", {"channel": channel})
        if message.get("is_deleted") is True:
            return MetaChange(channel, mid, MessageChange(withdrawn=True, at=at), raw)
        if message.get("is_echo") is True or sender == own_id:
            if recipient is None:
                return MetaSkipped("echo_without_recipient", {"channel": channel})
            customer = recipient
            inbound = _messaging_message(message, mid, channel, own_id, customer, at,
                                         account)
            inbound.direction = "outbound"
            inbound.sender, inbound.recipient = Party(channel, own_id), Party(channel, customer)
            inbound.raw = raw
            return inbound
        inbound = _messaging_message(message, mid, channel, sender, own_id, at, account)
        inbound.raw = raw
        return inbound
    edit = event.get("message_edit")
    if isinstance(edit, dict) and _str(edit.get("mid")):
        text = edit.get("text")
        return MetaChange(channel, str(edit["mid"]),
                          MessageChange(text=text if isinstance(text, str) else "", at=at), raw)
    reaction = event.get("reaction")
    if isinstance(reaction, dict) and _str(reaction.get("mid")):
        emoji = _str(reaction.get("emoji")) or _str(reaction.get("reaction")) or ""
        gone = reaction.get("action") == "unreact"
        return MetaChange(channel, str(reaction["mid"]), MessageChange(
            reactions_of=(sender, () if gone or not emoji else (emoji,)), at=at), raw)
    postback = event.get("postback")
    if isinstance(postback, dict):
        return _postback(postback, event, channel, sender, own_id, at, raw, account.name)
    read = event.get("read")
    if isinstance(read, dict):
        if _str(read.get("mid")):  # Instagram names the message read
            return MetaReceipt(channel, str(read["mid"]), "read", None, at)
        watermark = _millis(read.get("watermark"))
        if watermark is None:
            return MetaSkipped("read_without_watermark", {"channel": channel})
        return MetaReadWatermark(channel, Party(channel, sender), watermark)
    return MetaSkipped("event_not_handled", {"channel": channel,
                                             "keys": ",".join(sorted(event))[:120]})


def _messaging_message(message: JSON, mid: str, channel: str, customer: str, own_id: str,
                       at: datetime | None, account: MetaAccount) -> InboundMessage:
    """A Messenger/Instagram ``message`` as sent by ``customer`` to ``own_id``."""
    text = _str(message.get("text")) or ""
    content: JSON | None = None
    context: JSON | None = None
    remote: list[RemoteAttachment] = []
    quick = message.get("quick_reply")
    if isinstance(quick, dict):
        content = {"type": "quick_reply", "payload": _str(quick.get("payload"))}
    for item in message.get("attachments") or []:
        if not isinstance(item, dict):
            continue
        kind = _str(item.get("type")) or "unknown"
        payload = _obj(item.get("payload"))
        url = _str(payload.get("url"))
        if kind == "location" and isinstance(payload.get("coordinates"), dict):
            coords = payload["coordinates"]
            content = {"type": "location", "latitude": coords.get("lat"),
                       "longitude": coords.get("long"), "name": _str(item.get("title")),
                       "address": None}
            text = text or _location_text(content)
        elif kind == "story_mention":
            content = {"type": "story_mention", "url": url}
            text = text or "(mentioned you in their story)"
            if url:
                remote.append(RemoteAttachment(url, account.cdn_source, None, None))
        elif kind in _MESSENGER_MEDIA and url:
            if payload.get("sticker_id") is not None:
                content = {"type": "sticker", "sticker_id": str(payload["sticker_id"]),
                           "url": url}
                text = text or "(sticker)"
            remote.append(RemoteAttachment(url, account.cdn_source, None, None))
        elif kind == "fallback":
            text = text or " ".join(p for p in (_str(item.get("title")), url) if p)
        elif url:  # share, ig_reel, reel, ig_post, template…: a link the agent can open
            content = content or {"type": "share", "provider_type": kind, "url": url}
            text = text or url
        else:
            content = content or {"type": "unsupported", "provider_type": kind}
    reply_to = message.get("reply_to")
    refs: list[str] = []
    if isinstance(reply_to, dict):
        if _str(reply_to.get("mid")):
            refs.append(str(reply_to["mid"]))
        story = reply_to.get("story")
        if isinstance(story, dict):  # an Instagram story reply: where the customer came from
            context = {"story": {"id": _str(story.get("id")), "url": _str(story.get("url"))}}
    if not text and not remote and content is None:
        content = {"type": "unsupported", "provider_type": "empty"}
    return InboundMessage(
        channel=channel, account=account.name, provider_message_id=mid,
        sender=Party(channel, customer), recipient=Party(channel, own_id), text=text,
        sent_at=at, reply_refs=refs, content=content, context=context,
        remote_attachments=remote, raw_content_type="application/json")


def _postback(postback: JSON, event: JSON, channel: str, sender: str, own_id: str,
              at: datetime | None, raw: bytes, account: str) -> InboundMessage:
    """A button the customer tapped: their message, with the button's title as text."""
    title = _str(postback.get("title")) or _str(postback.get("payload")) or "(button)"
    key = _str(postback.get("mid")) or f"postback:{sender}:{event.get('timestamp')}"
    context = None
    referral = postback.get("referral")
    if isinstance(referral, dict):
        context = {"referral": {k: v for k, v in referral.items()
                                if isinstance(v, str | int | float)}}
    return InboundMessage(
        channel=channel, account=account, provider_message_id=key,
        sender=Party(channel, sender), recipient=Party(channel, own_id), text=title,
        sent_at=at, content={"type": "postback", "payload": _str(postback.get("payload"))},
        context=context, raw=raw, raw_content_type="application/json")


# ------------------------------------------------------------------ WhatsApp Cloud API

def _whatsapp_entry(entry: JSON, account: MetaAccount) -> Iterator[MetaEvent]:
    for change in entry.get("changes") or []:
        if not isinstance(change, dict) or not isinstance(change.get("value"), dict):
            yield MetaSkipped("change_not_an_object", {"channel": WHATSAPP})
            continue
        value: JSON = change["value"]
        if change.get("field", "messages") != "messages":
            yield MetaSkipped("field_not_handled", {"field": str(change.get("field"))[:64]})
            continue
        metadata = _obj(value.get("metadata"))
        phone_id = str(metadata.get("phone_number_id", ""))
        if account.whatsapp_phone_number_id is None or \
                phone_id != account.whatsapp_phone_number_id:
            yield MetaSkipped("not_this_account", {"channel": WHATSAPP, "id": phone_id[:64]})
            continue
        business = Party("phone", _phone(metadata.get("display_phone_number")) or phone_id)
        contacts = _contacts(value.get("contacts"))
        for message in value.get("messages") or []:
            if isinstance(message, dict):
                yield _whatsapp_message(message, contacts, business, account)
        for status in value.get("statuses") or []:
            if isinstance(status, dict):
                yield _whatsapp_status(status)


def _contacts(items: object) -> dict[str, JSON]:
    """Contacts by every id they are known by (wa_id and the business-scoped user_id)."""
    found: dict[str, JSON] = {}
    for item in items if isinstance(items, list) else []:
        if isinstance(item, dict):
            for key in ("wa_id", "user_id"):
                if _str(item.get(key)):
                    found[str(item[key])] = item
    return found


def _whatsapp_sender(message: JSON, contacts: dict[str, JSON]) -> tuple[Party, list[Party]]:
    """The sender's identity: their phone number (shared with SMS and Twilio WhatsApp);
    when WhatsApp withholds it, the business-scoped user id. A known BSUID beside the
    number is linked too, so a later message without the number finds the same customer."""
    phone_id = _str(message.get("from"))
    user_id = _str(message.get("from_user_id"))
    contact = contacts.get(phone_id or "") or contacts.get(user_id or "") or {}
    user_id = user_id or _str(contact.get("user_id"))
    phone_id = phone_id or _str(contact.get("wa_id"))
    profile = _obj(contact.get("profile"))
    name = _str(profile.get("name"))
    phone = _phone(phone_id)
    if phone is not None:
        linked = [Party(WHATSAPP, user_id, name)] if user_id else []
        return Party("phone", phone, name), linked
    return Party(WHATSAPP, user_id or phone_id or "unknown", name), []


def _whatsapp_message(message: JSON, contacts: dict[str, JSON], business: Party,
                      account: MetaAccount) -> MetaEvent:
    wamid = _str(message.get("id"))
    raw = orjson.dumps(message)
    if wamid is None:
        return MetaSkipped("message_without_id", {"channel": WHATSAPP})
    sender, linked = _whatsapp_sender(message, contacts)
    at = _seconds(message.get("timestamp"))
    kind = _str(message.get("type")) or "unknown"
    body = _obj(message.get(kind))
    if kind == "reaction":
        target = _str(body.get("message_id"))
        if target is None:
            return MetaSkipped("reaction_without_target", {"channel": WHATSAPP})
        emoji = _str(body.get("emoji"))
        return MetaChange(WHATSAPP, target, MessageChange(
            reactions_of=(sender.address, (emoji,) if emoji else ()), at=at), raw)
    text = ""
    content: JSON | None = None
    remote: list[RemoteAttachment] = []
    if kind == "text":
        text = _str(body.get("body")) or ""
    elif kind in _WHATSAPP_MEDIA:
        media_id = _str(body.get("id"))
        text = _str(body.get("caption")) or ""
        if media_id:
            remote.append(RemoteAttachment(
                f"{account.graph_url.rstrip('/')}/{media_id}", account.graph_source,
                _str(body.get("filename")), _str(body.get("mime_type"))))
        if kind == "sticker":
            content = {"type": "sticker", "animated": bool(body.get("animated"))}
            text = text or "(sticker)"
    elif kind == "location":
        content = {"type": "location", "latitude": body.get("latitude"),
                   "longitude": body.get("longitude"), "name": _str(body.get("name")),
                   "address": _str(body.get("address"))}
        text = _location_text(content)
    elif kind == "interactive":
        reply_kind = _str(body.get("type")) or ""
        reply = _obj(body.get(reply_kind))
        text = _str(reply.get("title")) or _str(reply.get("id")) or "(button)"
        content = {"type": reply_kind or "interactive", "id": _str(reply.get("id")),
                   "title": _str(reply.get("title"))}
    elif kind == "button":  # a template's quick-reply button
        text = _str(body.get("text")) or _str(body.get("payload")) or "(button)"
        content = {"type": "button_reply", "payload": _str(body.get("payload")),
                   "title": _str(body.get("text"))}
    elif kind == "contacts":
        cards = [c for c in message.get("contacts") or [] if isinstance(c, dict)]
        content = {"type": "contact", "contacts": cards}
        text = "; ".join(_card_text(card) for card in cards) or "(contact)"
    else:  # unsupported, system, order, … : kept, readable, with what it was
        content = {"type": "unsupported", "provider_type": kind}
        errors = message.get("errors")
        detail = ""
        if isinstance(errors, list) and errors and isinstance(errors[0], dict):
            detail = f": {_str(errors[0].get('title')) or ''}".rstrip(": ")
        text = f"(unsupported WhatsApp message: {kind}{detail})"
    refs: list[str] = []
    context_ref = message.get("context")
    if isinstance(context_ref, dict) and _str(context_ref.get("id")):
        refs.append(str(context_ref["id"]))
    context = None
    referral = message.get("referral")
    if isinstance(referral, dict):  # a click-to-WhatsApp ad
        context = {"referral": {k: v for k, v in referral.items()
                                if isinstance(v, str | int | float)}}
    return InboundMessage(
        channel=WHATSAPP, account=account.name, provider_message_id=wamid, sender=sender,
        recipient=business, text=text, sent_at=at, reply_refs=refs,
        linked_identities=linked, content=content, context=context,
        remote_attachments=remote, raw=raw, raw_content_type="application/json")


def _whatsapp_status(status: JSON) -> MetaEvent:
    wamid = _str(status.get("id"))
    word = _str(status.get("status")) or ""
    mapped = _WHATSAPP_STATUS.get(word)
    if wamid is None or mapped is None:
        return MetaSkipped("status_not_handled", {"status": word[:32]})
    error = None
    if mapped == "failed":
        errors = status.get("errors")
        first = _obj(errors[0]) if isinstance(errors, list) and errors else {}
        data = _obj(first.get("error_data"))
        message = _str(data.get("details")) or _str(first.get("message")) or \
            _str(first.get("title")) or "WhatsApp reported the message failed"
        error = (str(first.get("code", "failed")), message)
    return MetaReceipt(WHATSAPP, wamid, mapped, error, _seconds(status.get("timestamp")))


# ------------------------------------------------------------------ helpers

def _id_of(value: object) -> str | None:
    return _str(value.get("id")) if isinstance(value, dict) else None


def _obj(value: object) -> JSON:
    """``value`` when it is a JSON object, else an empty one (a payload missing a part)."""
    return value if isinstance(value, dict) else {}


def _str(value: object) -> str | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value if isinstance(value, str) and value else None


def _phone(value: object) -> str | None:
    """A wa_id or display number (``16315551181``, ``+1 631-555-1181``) as E.164."""
    text = _str(value)
    if text is None:
        return None
    digits = "".join(ch for ch in text if ch.isdigit())
    if not digits:
        return None
    try:
        return normalize_phone("+" + digits)
    except InvalidIdentity:
        return None


def _millis(value: object) -> datetime | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return datetime.fromtimestamp(value / 1000, tz=UTC)
    return None


def _seconds(value: object) -> datetime | None:
    try:
        seconds = float(value) if isinstance(value, str | int | float) else 0.0
    except ValueError:
        return None
    return datetime.fromtimestamp(seconds, tz=UTC) if seconds > 0 else None


def _location_text(content: JSON) -> str:
    parts = [p for p in (content.get("name"), content.get("address")) if p]
    parts.append(f"{content.get('latitude')}, {content.get('longitude')}")
    return " — ".join(str(p) for p in parts)


def _card_text(card: JSON) -> str:
    name = _obj(card.get("name"))
    phones = [str(p.get("phone")) for p in card.get("phones") or []
              if isinstance(p, dict) and p.get("phone")]
    label = _str(name.get("formatted_name")) or "contact"
    return f"{label}: {', '.join(phones)}" if phones else label

"""Naver TalkTalk chatbot API events → what each becomes (pure: no I/O, no store).

TalkTalk posts one event per request (https://github.com/navertalk/chatbot-api):

- ``send``: the customer's message (``textContent`` — typed, a button answer whose text is
  the label and ``code`` its data, a sticker, a "product" inquiry from a Smart Store page —
  ``imageContent``, ``compositeContent``) → :class:`InboundMessage`;
- ``echo``: what the partner sent (our own sends, or an agent typing in the partner
  center) → an outbound :class:`InboundMessage` (an echo), never the customer's message;
- ``open``: the customer entered the chat room from somewhere (``inflow``, ``referer``,
  ``from``) → :class:`Opened`, kept for the conversation's ``context``;
- ``profile``: a shared profile (nickname, cellphone, address) → a message linking the
  customer's own phone and naming them; its withdrawal → :class:`ProfileWithdrawn`;
- ``pay_complete`` → :class:`PaymentEvent` (never approved by the gateway); ``leave``,
  ``friend``, ``pay_confirm``, handover events and the rest → :class:`Ignored`.

TalkTalk gives no message id and does not redeliver: the adapter gives every ``send`` a
fresh id (:func:`parse_event`'s ``message_id``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from normalizer.errors import InvalidInput, MalformedInput
from normalizer.model import InboundMessage, Party, RemoteAttachment
from normalizer.urls import origin_of

CHANNEL = "navertalk"
KIND = "navertalk"


@dataclass(frozen=True, slots=True)
class Opened:
    """The customer opened the chat room; ``context`` is what the agent sees first."""

    user: str
    context: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ProfileWithdrawn:
    """The customer withdrew consent for these profile fields (nickname/cellphone/address)."""

    user: str
    fields: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class PaymentEvent:
    """A Naver Pay event: ``pay_complete`` asks the bot to approve a payment."""

    user: str
    event: str


@dataclass(frozen=True, slots=True)
class Ignored:
    """An event the gateway does not store, and why (for the log)."""

    event: str
    reason: str


Outcome = InboundMessage | Opened | ProfileWithdrawn | PaymentEvent | Ignored


def parse_event(payload: object, account: str, *, message_id: str, received_at: datetime,
                media_source: str, partner: Party, echo_window: float,
                allowed_media: frozenset[str] = frozenset()) -> Outcome:
    """One webhook body → what it becomes.

    ``message_id`` is the id a ``send`` or ``echo`` is stored under; ``partner`` is the
    account's own identity (the sender of an echo); ``allowed_media`` are the origins the
    customer's image URLs may be fetched from (else the URL is kept in ``content`` only).
    """
    if not isinstance(payload, dict):
        raise MalformedInput("the body must be a JSON object")
    event = payload.get("event")
    if not isinstance(event, str) or not event:
        raise InvalidInput("event is required")
    options = payload.get("options") if isinstance(payload.get("options"), dict) else {}
    assert isinstance(options, dict)
    user = payload.get("user")
    if event in ("leave", "friend", "pay_confirm", "handover", "action", "persistentMenu"):
        return Ignored(event, "nothing for an agent to see")
    if not isinstance(user, str) or not user:
        if event in ("send", "echo", "open", "profile", "pay_complete"):
            raise InvalidInput("user is required")
        return Ignored(event, "an event without a user")
    if event == "open":
        return Opened(user, _open_context(options, received_at))
    if event == "pay_complete":
        return PaymentEvent(user, event)
    if event == "profile":
        return _profile(payload, options, account, user, message_id, received_at)
    if event not in ("send", "echo"):
        return Ignored(event, "an event type this gateway does not know")
    if event == "echo" and payload.get("echoedEvent") not in (None, "send"):
        return Ignored(event, f"echo of {payload.get('echoedEvent')!r}, not a message")
    text, content, remote = _content(payload, options, media_source, allowed_media)
    customer = Party(KIND, user)
    if event == "echo":
        return InboundMessage(CHANNEL, account, message_id, partner, text, recipient=customer,
                              sent_at=received_at, content=content, direction="outbound",
                              match_window=echo_window, remote_attachments=remote)
    return InboundMessage(CHANNEL, account, message_id, customer, text, recipient=partner,
                          sent_at=received_at, content=content, remote_attachments=remote)


def _open_context(options: dict[str, Any], received_at: datetime) -> dict[str, Any]:
    """What the agent needs first: where the customer came from."""
    context: dict[str, Any] = {}
    for key in ("inflow", "referer", "from"):
        value = options.get(key)
        if isinstance(value, str) and value:
            context[key] = value
    context["opened_at"] = received_at.isoformat().replace("+00:00", "Z")
    return context


def is_product_context(context: dict[str, Any]) -> bool:
    """Whether an open says something the agent needs (not a return through the chat list
    or a refresh, which would hide the product page the customer came from)."""
    return context.get("inflow") not in ("list", "none", None) or "from" in context


def _content(payload: dict[str, Any], options: dict[str, Any], media_source: str,
             allowed_media: frozenset[str]
             ) -> tuple[str, dict[str, Any] | None, list[RemoteAttachment]]:
    text_content = payload.get("textContent")
    if isinstance(text_content, dict):
        text = text_content.get("text") if isinstance(text_content.get("text"), str) else ""
        assert isinstance(text, str)
        input_type = text_content.get("inputType")
        content: dict[str, Any] | None = None
        if input_type == "button" or text_content.get("code"):
            content = {"type": "button", "label": text, "code": text_content.get("code")}
        elif input_type == "sticker":
            content = {"type": "sticker", "text": text}
        elif input_type == "vphone":  # "050719003814,2017-11-03": a safe number and its expiry
            number, _, expires = text.partition(",")
            content = {"type": "safe_number", "number": number, "expires": expires or None}
        elif input_type == "product" and isinstance(options.get("product"), dict):
            content = {"type": "product", "product": options["product"]}
        return text, content, []
    image = payload.get("imageContent")
    if isinstance(image, dict):
        url = image.get("imageUrl")
        if not isinstance(url, str) or not url:
            raise InvalidInput("imageContent.imageUrl is required")
        remote = ([RemoteAttachment(url, media_source, None, None)]
                  if origin_of(url) in allowed_media else [])
        return "(image)", {"type": "image", "url": url}, remote
    composite = payload.get("compositeContent")
    if isinstance(composite, dict):
        lines = []
        for item in composite.get("compositeList") or []:
            if isinstance(item, dict):
                lines += [str(item[k]) for k in ("title", "description") if item.get(k)]
        return "\n".join(lines), {"type": "composite", "composite": composite}, []
    return "", {"type": "unsupported", "provider_type": "empty send"}, []


def _profile(payload: dict[str, Any], options: dict[str, Any], account: str, user: str,
             message_id: str, received_at: datetime
             ) -> InboundMessage | ProfileWithdrawn | Ignored:
    result = options.get("result")
    if result == "WITHDRAW":
        fields = tuple(f for f in options.get("withdrawals") or [] if isinstance(f, str))
        return ProfileWithdrawn(user, fields)
    if result != "SUCCESS":
        return Ignored("profile", f"result {result!r}: nothing shared")
    nickname = options.get("nickname") if isinstance(options.get("nickname"), str) else None
    phone = options.get("cellphone") if isinstance(options.get("cellphone"), str) else None
    address = options.get("address") if isinstance(options.get("address"), dict) else None
    parts = []
    if nickname:
        parts.append(f"nickname: {nickname}")
    if phone:
        parts.append(f"phone: {phone}")
    if address:
        parts.append("address: " + " ".join(
            str(address[k]) for k in ("zipNo", "roadAddr", "detAddr") if address.get(k)))
    content: dict[str, Any] = {"type": "profile"}
    if nickname:
        content["nickname"] = nickname
    if phone:
        content["cellphone"] = phone
    if address:
        content["address"] = address
    return InboundMessage(
        CHANNEL, account, message_id, Party(KIND, user, nickname),
        "Shared their Naver profile: " + "; ".join(parts), sent_at=received_at,
        content=content,
        linked_identities=[Party("phone", phone)] if phone else [])

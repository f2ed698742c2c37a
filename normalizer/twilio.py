"""Twilio's form-encoded webhooks → :class:`InboundMessage`, receipts and opt-outs.

Twilio posts ``application/x-www-form-urlencoded`` fields (its "incoming message webhook"
and "status callback" requests). A ``whatsapp:`` address is the WhatsApp channel, any
plain number SMS/MMS; both are the same ``phone`` identity, so one person texting and
writing on WhatsApp is one customer. Pure functions: no I/O, nothing of the gateway.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from normalizer.errors import InvalidInput
from normalizer.identity import InvalidIdentity, normalize_phone
from normalizer.model import DeliveryStatus, InboundMessage, Party, RemoteAttachment

MAX_MEDIA = 10  # Twilio's documented limit per message
MAX_SID = 64

# Twilio's message status → the contract's delivery status (CONTRACT.md, "What each kind of
# provider payload becomes"). receiving/received are inbound states: no receipt.
STATUSES: Mapping[str, DeliveryStatus] = {
    "accepted": "queued", "scheduled": "queued", "queued": "queued",
    "sending": "sent", "sent": "sent",
    "delivered": "delivered", "partially_delivered": "delivered",
    "read": "read",
    "undelivered": "failed", "failed": "failed", "canceled": "failed",
}

# Twilio error codes with a meaning of their own: (our error code, what it means). Every
# other code is kept as Twilio's number.
ERRORS: Mapping[int, tuple[str, str]] = {
    21610: ("opted_out", "the recipient replied STOP to this sender (unsubscribed)"),
    21211: ("invalid_number", "the 'To' number is not a valid phone number"),
    21614: ("invalid_number", "the 'To' number is not a mobile number"),
    21612: ("unreachable", "Twilio cannot route to this number from this sender"),
    21408: ("region_not_enabled", "sending to this region is not enabled on the account"),
    21606: ("invalid_sender", "the 'From' number cannot send this kind of message"),
    21617: ("too_long", "the body exceeds the 1600 character limit"),
    21620: ("invalid_media", "a media URL is invalid or cannot be fetched"),
    63016: ("window_closed", "WhatsApp: outside the 24-hour window; only an approved "
                             "template may be sent"),
    63024: ("invalid_number", "WhatsApp: the recipient is not a valid WhatsApp user"),
    30003: ("unreachable", "the handset is unreachable (off or out of coverage)"),
    30004: ("blocked", "the recipient blocked this sender"),
    30005: ("invalid_number", "unknown destination handset"),
    30006: ("landline", "the number is a landline or cannot take SMS"),
    30007: ("filtered", "the carrier filtered the message (spam or compliance)"),
    30008: ("undelivered", "unknown error from the carrier"),
}
# Not mimetypes.guess_extension: its first call reads the system's mime.types files.
EXTENSIONS: Mapping[str, str] = {
    "image/jpeg": ".jpg", "image/png": ".png", "image/gif": ".gif", "image/webp": ".webp",
    "video/mp4": ".mp4", "video/3gpp": ".3gp", "audio/mpeg": ".mp3", "audio/ogg": ".ogg",
    "audio/amr": ".amr", "audio/mp4": ".m4a", "application/pdf": ".pdf",
    "text/vcard": ".vcf", "text/x-vcard": ".vcf", "text/plain": ".txt",
}

# Twilio's default opt-out keywords (Advanced Opt-Out off): the whole body, any case.
STOP_WORDS = frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE",
                        "OPTOUT"})
START_WORDS = frozenset({"START", "YES", "UNSTOP"})
OptOut = Literal["stop", "start"]


@dataclass(frozen=True, slots=True)
class StatusReport:
    """One status callback: the message, its new status and Twilio's error, if any."""

    message_sid: str
    status: DeliveryStatus | None  # None: a status that is no receipt (receiving, …)
    twilio_status: str
    error: tuple[str, str] | None = None  # (code, message)


def address_channel(value: str) -> tuple[str, str]:
    """``"whatsapp:+1555…"`` → ``("whatsapp", "+1555…")``; a plain number is SMS."""
    prefix, colon, rest = value.partition(":")
    if not colon:
        return "sms", value.strip()
    if prefix.lower() == "whatsapp":
        return "whatsapp", rest.strip()
    raise InvalidInput(f"unsupported Twilio address {prefix!r}: this channel takes SMS, MMS "
                       "and WhatsApp")


_E164 = re.compile(r"\+[1-9][0-9]{6,14}")


def _phone(value: str, field: str) -> str:
    """E.164. Twilio sends it so already: then only its shape is checked here (the gateway
    validates the sender's number again); phonenumbers' parse costs ~50 µs a call."""
    if _E164.fullmatch(value):
        return value
    try:
        return normalize_phone(value)
    except InvalidIdentity as exc:
        raise InvalidInput(f"{field} is not a phone number") from exc


def _sid(form: Mapping[str, str], *names: str) -> str:
    for name in names:
        value = form.get(name, "").strip()
        if value:
            if len(value) > MAX_SID:
                raise InvalidInput(f"{name} is longer than {MAX_SID} characters")
            return value
    raise InvalidInput(f"{names[0]} is required")


def parse_twilio_inbound(form: Mapping[str, str], account: str, *,
                         media_source: str) -> InboundMessage:
    """An incoming message webhook → the customer's message.

    ``MessageSid`` is the dedupe key (a Twilio retry of it stores nothing new). Media are
    handed over by URL (``MediaUrlN``) and fetched after the commit under ``media_source``.
    """
    sid = _sid(form, "MessageSid", "SmsMessageSid", "SmsSid")
    sender = form.get("From", "").strip()
    if not sender:
        raise InvalidInput("From is required")
    channel, number = address_channel(sender)
    if channel == "whatsapp" and not number.lstrip("+") and form.get("WaId"):
        number = "+" + form["WaId"].strip()
    phone = _phone(number, "From")
    recipient = None
    to = form.get("To", "").strip()
    if to:
        _to_channel, to_number = address_channel(to)
        recipient = Party("phone", _phone(to_number, "To"), None)
    name = form.get("ProfileName", "").strip() or None
    text = form.get("Body", "")
    content = _content(form)
    if content is not None and not text:
        text = content.pop("_text")
    elif content is not None:
        content.pop("_text")
    refs = [form["OriginalRepliedMessageSid"].strip()] \
        if form.get("OriginalRepliedMessageSid", "").strip() else []
    return InboundMessage(
        channel=channel, account=account, provider_message_id=sid,
        sender=Party("phone", phone, name), recipient=recipient, text=text,
        remote_attachments=media_attachments(form, media_source), reply_refs=refs,
        content=content, context=_context(form))


def media_attachments(form: Mapping[str, str], media_source: str) -> list[RemoteAttachment]:
    """``NumMedia`` files from ``MediaUrlN``/``MediaContentTypeN``; the file is named after
    its media SID (the URL's last segment) with the extension of its type."""
    count_text = form.get("NumMedia", "0").strip() or "0"
    if not count_text.isdigit():
        raise InvalidInput("NumMedia must be a number")
    attachments = []
    for index in range(min(int(count_text), MAX_MEDIA)):
        url = form.get(f"MediaUrl{index}", "").strip()
        if not url:
            raise InvalidInput(f"MediaUrl{index} is missing (NumMedia is {count_text})")
        content_type = form.get(f"MediaContentType{index}", "").strip() or None
        media_sid = url.rstrip("/").rsplit("/", 1)[-1] or f"media{index}"
        extension = EXTENSIONS.get((content_type or "").split(";")[0].strip().lower(), "")
        attachments.append(RemoteAttachment(url, media_source, media_sid + extension,
                                            content_type))
    return attachments


def _content(form: Mapping[str, str]) -> dict[str, Any] | None:
    """Non-text content with a readable ``_text`` (popped by the caller): a shared
    location, a tapped button, or a type omnirelay does not read."""
    latitude, longitude = form.get("Latitude", "").strip(), form.get("Longitude", "").strip()
    if latitude and longitude:
        try:
            lat, lon = float(latitude), float(longitude)
        except ValueError as exc:
            raise InvalidInput("Latitude and Longitude must be numbers") from exc
        label = form.get("Label", "").strip() or None
        address = form.get("Address", "").strip() or None
        readable = ", ".join(p for p in (label, address) if p)
        return {"type": "location", "latitude": lat, "longitude": lon, "name": label,
                "address": address,
                "_text": f"{readable} ({lat}, {lon})" if readable else f"{lat}, {lon}"}
    button = form.get("ButtonText", "").strip()
    if button:
        return {"type": "button", "text": button,
                "payload": form.get("ButtonPayload", "").strip() or None, "_text": button}
    kind = form.get("MessageType", "").strip()
    if not form.get("Body") and form.get("NumMedia", "0").strip() in ("", "0") \
            and kind not in ("", "text", "image", "video", "audio", "document", "media"):
        return {"type": "unsupported", "provider_type": kind,
                "_text": f"[{kind} message: not shown here]"}
    return None


_REFERRAL = {"ReferralSourceUrl": "source_url", "ReferralSourceType": "source_type",
             "ReferralSourceId": "source_id", "ReferralHeadline": "headline",
             "ReferralBody": "body", "ReferralCtwaClid": "ctwa_clid"}


def _context(form: Mapping[str, str]) -> dict[str, Any] | None:
    """Where the customer came from: a click-to-WhatsApp ad, else the sender's country."""
    referral = {ours: form[theirs].strip() for theirs, ours in _REFERRAL.items()
                if form.get(theirs, "").strip()}
    if referral:
        return {"referral": referral}
    country = form.get("FromCountry", "").strip()
    return {"country": country} if country else None


def opt_out_of(form: Mapping[str, str]) -> OptOut | None:
    """Whether the message opts its sender out (``stop``) or back in (``start``).

    Twilio names it in ``OptOutType`` when Advanced Opt-Out is on; otherwise its default
    keywords apply, as the whole body in any case. HELP changes nothing.
    """
    kind = form.get("OptOutType", "").strip().upper()
    if kind in ("STOP", "START"):
        return "stop" if kind == "STOP" else "start"
    word = form.get("Body", "").strip().upper()
    if word in STOP_WORDS:
        return "stop"
    if word in START_WORDS:
        return "start"
    return None


def describe_error(code: int, message: str | None = None) -> tuple[str, str]:
    """Our error code and a readable message for a Twilio error number."""
    ours, meaning = ERRORS.get(code, (str(code), ""))
    text = (message or "").strip() or meaning or "Twilio reported an error"
    return ours, f"{text} (Twilio error {code})"


def parse_twilio_status(form: Mapping[str, str]) -> StatusReport:
    """A status callback → the receipt it is (``MessageStatus`` mapped, ``ErrorCode`` kept)."""
    sid = _sid(form, "MessageSid", "SmsSid")
    twilio_status = (form.get("MessageStatus") or form.get("SmsStatus") or "").strip().lower()
    if not twilio_status:
        raise InvalidInput("MessageStatus is required")
    status = STATUSES.get(twilio_status)
    error = None
    code_text = form.get("ErrorCode", "").strip()
    if status == "failed":
        if code_text.isdigit():
            error = describe_error(int(code_text), form.get("ErrorMessage"))
        else:
            error = (twilio_status, f"Twilio reports the message {twilio_status}")
    return StatusReport(sid, status, twilio_status, error)

"""The generic API channel's inbound JSON → :class:`InboundMessage`."""

from __future__ import annotations

import base64
import binascii
import re
from datetime import datetime
from typing import Any

from gateway.attachments import (
    DEFAULT_CONTENT_TYPE,
    InvalidAttachmentMetadata,
    validate_content_type,
    validate_filename,
)
from gateway.errors import MalformedPayload, ValidationFailed
from gateway.ids import parse_iso
from normalizer.model import (
    AttachmentData,
    DeliveryStatus,
    Group,
    InboundMessage,
    MessageChange,
    Party,
    Reaction,
)

_KNOWN = {"message_id", "from", "text", "attachments", "sent_at", "subject", "html",
          "context", "in_reply_to", "direction", "to", "group"}
_KNOWN_FROM = {"id", "name", "email", "phone"}
MAX_CONTEXT_DEPTH = 32
MAX_BODY_DEPTH = 64


def decode_attachments(items: Any, *, field: str = "attachments") -> list[AttachmentData]:
    """Decode ``[{"filename", "content_type", "content_base64"}]``; raise on bad input."""
    if items is None:
        return []
    if not isinstance(items, list):
        raise ValidationFailed(f"{field} must be a list")
    decoded = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise ValidationFailed(f"{field}[{index}] must be an object")
        filename, content_type = attachment_metadata(item, f"{field}[{index}]")
        data = item.get("content_base64")
        if not isinstance(data, str):
            raise ValidationFailed(f"{field}[{index}].content_base64 is required")
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValidationFailed(f"{field}[{index}].content_base64 is not base64") from exc
        decoded.append(AttachmentData(filename, content_type, raw))
    return decoded


def attachment_metadata(item: dict[str, Any], where: str) -> tuple[str, str]:
    """The validated ``(filename, content_type)`` of one attachment object, else 422.

    Shared by the API channel and agents' replies (through :func:`decode_attachments`):
    a content type outside the MIME grammar is refused, never stored and retried later;
    a filename loses control, bidi and separator characters (gateway/attachments.py).
    """
    content_type = item.get("content_type")
    try:
        filename = validate_filename(item.get("filename"))
    except InvalidAttachmentMetadata as exc:
        raise ValidationFailed(f"{where}.filename {exc}") from exc
    try:
        content_type = (DEFAULT_CONTENT_TYPE if content_type is None or content_type == ""
                        else validate_content_type(content_type))
    except InvalidAttachmentMetadata as exc:
        raise ValidationFailed(f"{where}.content_type {exc}") from exc
    return filename, content_type


def parse_api_inbound(body: Any, account: str) -> InboundMessage:
    """Validate an API-channel inbound body (see CONTRACT.md) and normalize it.

    Unknown top-level fields are refused, so a typo (``"txt"``) is an error, not a silently
    empty message.
    """
    if not isinstance(body, dict):
        raise MalformedPayload("the body must be a JSON object")
    unknown = set(body) - _KNOWN
    if unknown:
        raise ValidationFailed(f"unknown field(s): {', '.join(sorted(unknown))}")
    if body.get("direction", "inbound") != "inbound" or "to" in body:  # an echo
        return _parse_echo(body, account)
    message_id = body.get("message_id")
    if not isinstance(message_id, str) or not message_id.strip() or len(message_id) > 255:
        raise ValidationFailed("message_id must be a non-empty string of at most 255 characters")
    sender = body.get("from")
    if not isinstance(sender, dict):
        raise ValidationFailed("from must be an object with an id")
    if set(sender) - _KNOWN_FROM:
        raise ValidationFailed(f"unknown field(s) in from: "
                               f"{', '.join(sorted(set(sender) - _KNOWN_FROM))}")
    external_id = sender.get("id")
    if not isinstance(external_id, str) or not external_id.strip():
        raise ValidationFailed("from.id must be a non-empty string")
    name = sender.get("name")
    if name is not None and not isinstance(name, str):
        raise ValidationFailed("from.name must be a string")
    linked = []
    for key in ("email", "phone"):
        value = sender.get(key)
        if value is None:
            continue
        if not isinstance(value, str):
            raise ValidationFailed(f"from.{key} must be a string")
        linked.append(Party(key, value, name))
    text = body.get("text")
    if text is not None and not isinstance(text, str):
        raise ValidationFailed("text must be a string")
    attachments = decode_attachments(body.get("attachments"))
    if not text and not attachments:
        raise ValidationFailed("a message needs text or attachments")
    sent_at = _sent_at(body.get("sent_at"))
    for key in ("subject", "html", "in_reply_to"):
        if body.get(key) is not None and not isinstance(body[key], str):
            raise ValidationFailed(f"{key} must be a string")
    context = _context(body.get("context"))
    return InboundMessage(
        channel="api", account=account, provider_message_id=message_id.strip(),
        sender=Party("external", external_id.strip(), name), text=text or "",
        subject=body.get("subject"), html=body.get("html"), attachments=attachments,
        sent_at=sent_at, linked_identities=linked, context=context,
        reply_refs=[body["in_reply_to"]] if body.get("in_reply_to") else [],
        group=_parse_group(body.get("group")),
    )


# ---------------------------------------------------------------- echoes, groups, changes


def account_party(account: str) -> Party:
    """The API account's own identity: the ``from`` of its replies and echoes."""
    return Party("external", f"omnirelay:{account}", None)


def _parse_echo(body: dict[str, Any], account: str) -> InboundMessage:
    """``"direction": "outbound"`` with ``"to"`` in place of ``from``: a reply typed in the
    other system (an echo), parsed like a message from its recipient, then turned round."""
    if body.get("direction") != "outbound":
        raise ValidationFailed('"to" is for "direction": "outbound" (an echo); '
                               'a customer\'s message names its sender in "from"')
    if "from" in body:
        raise ValidationFailed('an outbound message names its recipient in "to", not "from"')
    if not isinstance(body.get("to"), dict):
        raise ValidationFailed("to must be an object with an id")
    fields = {k: v for k, v in body.items() if k not in ("direction", "to")}
    try:
        parsed = parse_api_inbound({**fields, "from": body["to"]}, account)
    except ValidationFailed as exc:
        raise ValidationFailed(re.sub(r"\bfrom\b", "to", exc.message)) from exc
    return InboundMessage(
        channel=parsed.channel, account=account, provider_message_id=parsed.provider_message_id,
        sender=account_party(account), recipient=parsed.sender, text=parsed.text,
        subject=parsed.subject, html=parsed.html, attachments=parsed.attachments,
        sent_at=parsed.sent_at, reply_refs=parsed.reply_refs,
        linked_identities=parsed.linked_identities, context=parsed.context,
        direction="outbound", group=parsed.group)


def _parse_group(value: Any) -> Group | None:
    """``{"id": "…", "name": "…"}``: the group chat a message was posted in."""
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) - {"id", "name"}:
        raise ValidationFailed('group must be an object with "id" and optionally "name"')
    group_id, name = value.get("id"), value.get("name")
    if not isinstance(group_id, str) or not group_id.strip() or len(group_id) > 255:
        raise ValidationFailed("group.id must be a non-empty string of at most 255 characters")
    if name is not None and not isinstance(name, str):
        raise ValidationFailed("group.name must be a string")
    return Group(group_id.strip(), name)


def parse_api_change(body: Any) -> MessageChange:
    """``PATCH …/messages/{message_id}``: ``{"text"}`` (an edit), ``{"withdrawn": true}`` or
    ``{"reactions": [{"emoji", "by", "at"?}]}`` (the whole current set), or several."""
    if not isinstance(body, dict):
        raise MalformedPayload("the body must be a JSON object")
    unknown = set(body) - {"text", "withdrawn", "reactions", "edited_at"}
    if unknown:
        raise ValidationFailed(f"unknown field(s): {', '.join(sorted(unknown))}")
    if not {"text", "withdrawn", "reactions"} & set(body):
        raise ValidationFailed("a change needs text, withdrawn or reactions")
    text = body.get("text")
    if "text" in body and (not isinstance(text, str) or not text):
        raise ValidationFailed("text must be a non-empty string")
    if "withdrawn" in body and body["withdrawn"] is not True:
        raise ValidationFailed("withdrawn can only be true: a withdrawal is not undone")
    reactions = None
    if "reactions" in body:
        items = body["reactions"]
        if not isinstance(items, list) or len(items) > 1000:
            raise ValidationFailed("reactions must be a list (the whole current set)")
        reactions = tuple(_parse_reaction(item, index) for index, item in enumerate(items))
    return MessageChange(text=text, reactions=reactions, withdrawn=bool(body.get("withdrawn")),
                         at=_timestamp(body.get("edited_at"), "edited_at"))


def _parse_reaction(item: Any, index: int) -> Reaction:
    if not isinstance(item, dict) or set(item) - {"emoji", "by", "at"}:
        raise ValidationFailed(f'reactions[{index}] must be {{"emoji", "by"}} (and "at")')
    emoji, by = item.get("emoji"), item.get("by")
    if not isinstance(emoji, str) or not emoji or len(emoji) > 64:
        raise ValidationFailed(f"reactions[{index}].emoji must be a non-empty string")
    if not isinstance(by, str) or not by.strip() or len(by) > 255:
        raise ValidationFailed(f"reactions[{index}].by must be a non-empty string")
    return Reaction(emoji, by.strip(), _timestamp(item.get("at"), f"reactions[{index}].at"))


def _timestamp(value: Any, field: str) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > 64:
        raise ValidationFailed(f"{field} must be an ISO 8601 timestamp string")
    try:
        return parse_iso(value)
    except ValueError as exc:
        raise ValidationFailed(f"{field} must be an ISO 8601 timestamp") from exc


RECEIPT_STATUSES: tuple[DeliveryStatus, ...] = ("delivered", "read", "failed")


def parse_api_status(body: Any) -> tuple[str, DeliveryStatus, dict[str, str] | None,
                                         datetime | None]:
    """``POST …/status``: ``{"message_id", "status": delivered|read|failed, "error"?, "at"?}``
    → (provider message id, status, error, at)."""
    if not isinstance(body, dict):
        raise MalformedPayload("the body must be a JSON object")
    unknown = set(body) - {"message_id", "status", "error", "at"}
    if unknown:
        raise ValidationFailed(f"unknown field(s): {', '.join(sorted(unknown))}")
    message_id = body.get("message_id")
    if not isinstance(message_id, str) or not message_id.strip() or len(message_id) > 255:
        raise ValidationFailed("message_id must be a non-empty string of at most 255 characters")
    status = next((s for s in RECEIPT_STATUSES if s == body.get("status")), None)
    if status is None:
        raise ValidationFailed(f"status must be one of {', '.join(RECEIPT_STATUSES)}")
    error = body.get("error")
    if error is not None:
        if status != "failed":
            raise ValidationFailed('error goes only with "status": "failed"')
        if (not isinstance(error, dict) or set(error) - {"code", "message"}
                or not all(isinstance(error.get(k, ""), str) for k in ("code", "message"))):
            raise ValidationFailed('error must be {"code": "…", "message": "…"} (strings)')
        error = {"code": (error.get("code") or "failed")[:100],
                 "message": (error.get("message") or "")[:1000]}
    return message_id.strip(), status, error, _timestamp(body.get("at"), "at")


def _sent_at(value: Any) -> datetime | None:
    """An ISO 8601 string or nothing; its type is checked before any use (a list nested a
    thousand deep must be a 422, not a RecursionError turning into a 500)."""
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > 64:
        raise ValidationFailed("sent_at must be an ISO 8601 timestamp string")
    try:
        return parse_iso(value)
    except ValueError as exc:
        raise ValidationFailed("sent_at must be an ISO 8601 timestamp") from exc


def _context(value: Any) -> dict[str, Any] | None:
    """The integrator's free-form object, at most ``MAX_CONTEXT_DEPTH`` levels deep: it is
    stored and sent back as JSON, and orjson refuses to write deeper than 254 levels."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValidationFailed("context must be an object")
    if json_depth(value, MAX_CONTEXT_DEPTH) > MAX_CONTEXT_DEPTH:
        raise ValidationFailed(f"context may be nested at most {MAX_CONTEXT_DEPTH} levels deep")
    return value


def refuse_deep_json(body: Any, limit: int = MAX_BODY_DEPTH) -> None:
    """422 for a request body nested deeper than ``limit``, checked before any other use:
    orjson parses 1,024 levels but writes only 254, so a deeper value that reached the
    store or an idempotency digest was a 500."""
    if json_depth(body, limit) > limit:
        raise ValidationFailed(f"the body may be nested at most {limit} levels deep")


def json_depth(value: Any, limit: int) -> int:
    """How deep ``value`` nests (a scalar is 0), counted without recursion and only up to
    ``limit + 1``: hostile input a thousand levels deep costs no Python stack."""
    depth = 0
    level = [value]
    while depth <= limit:
        containers = [item for item in level if isinstance(item, dict | list)]
        if not containers:
            break
        depth += 1
        level = [child for container in containers
                 for child in (container.values() if isinstance(container, dict) else container)]
    return depth

"""The generic API channel's inbound JSON → :class:`InboundMessage`."""

from __future__ import annotations

import base64
import binascii
import re
from datetime import datetime
from typing import Any

from normalizer.attachments import (
    DEFAULT_CONTENT_TYPE,
    InvalidAttachmentMetadata,
    validate_content_type,
    validate_filename,
)
from normalizer.errors import InvalidInput, MalformedInput
from normalizer.model import (
    AttachmentData,
    DeliveryStatus,
    Group,
    InboundMessage,
    MessageChange,
    Party,
    Reaction,
    RemoteAttachment,
)
from normalizer.timestamps import parse_iso
from normalizer.urls import origin_of

_KNOWN = {"message_id", "from", "text", "attachments", "sent_at", "subject", "html",
          "context", "in_reply_to", "direction", "to", "group"}
_KNOWN_FROM = {"id", "name", "email", "phone"}
MAX_CONTEXT_DEPTH = 32
MAX_BODY_DEPTH = 64


def decode_attachments(items: object, *, field: str = "attachments") -> list[AttachmentData]:
    """Decode ``[{"filename", "content_type", "content_base64"}]``; InvalidInput on bad input."""
    if items is None:
        return []
    if not isinstance(items, list):
        raise InvalidInput(f"{field} must be a list")
    decoded = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise InvalidInput(f"{field}[{index}] must be an object")
        filename, content_type = attachment_metadata(item, f"{field}[{index}]")
        data = item.get("content_base64")
        if not isinstance(data, str):
            raise InvalidInput(f"{field}[{index}].content_base64 is required")
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidInput(f"{field}[{index}].content_base64 is not base64") from exc
        decoded.append(AttachmentData(filename, content_type, raw))
    return decoded


def attachment_metadata(item: dict[str, Any], where: str) -> tuple[str, str]:
    """The validated ``(filename, content_type)`` of one attachment object, else 422.

    Shared by the API channel and agents' replies (through :func:`decode_attachments`):
    a content type outside the MIME grammar is refused, never stored and retried later;
    a filename loses control, bidi and separator characters (normalizer/attachments.py).
    """
    content_type = item.get("content_type")
    try:
        filename = validate_filename(item.get("filename"))
    except InvalidAttachmentMetadata as exc:
        raise InvalidInput(f"{where}.filename {exc}") from exc
    try:
        content_type = (DEFAULT_CONTENT_TYPE if content_type is None or content_type == ""
                        else validate_content_type(content_type))
    except InvalidAttachmentMetadata as exc:
        raise InvalidInput(f"{where}.content_type {exc}") from exc
    return filename, content_type


def parse_api_inbound(body: object, account: str, *, media_hosts: frozenset[str] = frozenset(),
                      media_source: str = "") -> InboundMessage:
    """Validate an API-channel inbound body (see CONTRACT.md) and normalize it.

    Unknown top-level fields are refused, so a typo (``"txt"``) is an error, not a silently
    empty message.
    """
    if not isinstance(body, dict):
        raise MalformedInput("the body must be a JSON object")
    unknown = set(body) - _KNOWN
    if unknown:
        raise InvalidInput(f"unknown field(s): {', '.join(sorted(unknown))}")
    if body.get("direction", "inbound") != "inbound" or "to" in body:  # an echo
        return _parse_echo(body, account, media_hosts, media_source)
    message_id = body.get("message_id")
    if not isinstance(message_id, str) or not message_id.strip() or len(message_id) > 255:
        raise InvalidInput("message_id must be a non-empty string of at most 255 characters")
    sender = body.get("from")
    if not isinstance(sender, dict):
        raise InvalidInput("from must be an object with an id")
    if set(sender) - _KNOWN_FROM:
        raise InvalidInput(f"unknown field(s) in from: "
                               f"{', '.join(sorted(set(sender) - _KNOWN_FROM))}")
    external_id = sender.get("id")
    if not isinstance(external_id, str) or not external_id.strip():
        raise InvalidInput("from.id must be a non-empty string")
    name = sender.get("name")
    if name is not None and not isinstance(name, str):
        raise InvalidInput("from.name must be a string")
    linked = []
    for key in ("email", "phone"):
        value = sender.get(key)
        if value is None:
            continue
        if not isinstance(value, str):
            raise InvalidInput(f"from.{key} must be a string")
        linked.append(Party(key, value, name))
    text = body.get("text")
    if text is not None and not isinstance(text, str):
        raise InvalidInput("text must be a string")
    attachments, remote = inbound_attachments(body.get("attachments"), media_hosts,
                                              media_source)
    if not text and not attachments and not remote:
        raise InvalidInput("a message needs text or attachments")
    sent_at = _sent_at(body.get("sent_at"))
    for key in ("subject", "html", "in_reply_to"):
        if body.get(key) is not None and not isinstance(body[key], str):
            raise InvalidInput(f"{key} must be a string")
    context = _context(body.get("context"))
    return InboundMessage(
        channel="api", account=account, provider_message_id=message_id.strip(),
        sender=Party("external", external_id.strip(), name), text=text or "",
        subject=body.get("subject"), html=body.get("html"), attachments=attachments,
        sent_at=sent_at, linked_identities=linked, context=context,
        reply_refs=[body["in_reply_to"]] if body.get("in_reply_to") else [],
        remote_attachments=remote,
        group=_parse_group(body.get("group")),
    )


MAX_URL_CHARS = 2048


def inbound_attachments(items: object, media_hosts: frozenset[str], media_source: str,
                        ) -> tuple[list[AttachmentData], list[RemoteAttachment]]:
    """An API-channel message's attachments: inline (``content_base64``) and by ``url``.

    A URL is accepted only on an origin in the account's ``media_hosts`` (422 otherwise):
    the daemon never fetches an arbitrary address a payload names. Its file is fetched
    after the message is committed (gateway/fetcher.py).
    """
    if not isinstance(items, list) or not any(isinstance(i, dict) and "url" in i
                                              for i in items):
        return decode_attachments(items), []
    inline: list[AttachmentData] = []
    remote: list[RemoteAttachment] = []
    for index, item in enumerate(items):
        if not isinstance(item, dict) or "url" not in item:
            try:
                inline += decode_attachments([item])
            except InvalidInput as exc:  # name its place in the whole list
                raise InvalidInput(str(exc).replace(
                    "attachments[0]", f"attachments[{index}]", 1)) from None
            continue
        where = f"attachments[{index}]"
        if "content_base64" in item:
            raise InvalidInput(f"{where}: give either url or content_base64, not both")
        url = item["url"]
        if not isinstance(url, str) or len(url) > MAX_URL_CHARS:
            raise InvalidInput(f"{where}.url must be a string of at most {MAX_URL_CHARS} "
                                   "characters")
        origin = origin_of(url)
        if origin is None:
            raise InvalidInput(f"{where}.url must be an http(s) URL without user info")
        if origin not in media_hosts:
            raise InvalidInput(f"{where}.url is not on one of this account's media_hosts"
                                   " (attachments are fetched only from configured origins)")
        filename, content_type = attachment_metadata(item, where)
        remote.append(RemoteAttachment(url, media_source, filename,
                                       content_type if item.get("content_type") else None))
    return inline, remote




# ---------------------------------------------------------------- echoes, groups, changes


def account_party(account: str) -> Party:
    """The API account's own identity: the ``from`` of its replies and echoes."""
    return Party("external", f"omnirelay:{account}", None)


def _parse_echo(body: dict[str, Any], account: str, media_hosts: frozenset[str],
                media_source: str) -> InboundMessage:
    """``"direction": "outbound"`` with ``"to"`` in place of ``from``: a reply typed in the
    other system (an echo), parsed like a message from its recipient, then turned round."""
    if body.get("direction") != "outbound":
        raise InvalidInput('"to" is for "direction": "outbound" (an echo); '
                               'a customer\'s message names its sender in "from"')
    if "from" in body:
        raise InvalidInput('an outbound message names its recipient in "to", not "from"')
    if not isinstance(body.get("to"), dict):
        raise InvalidInput("to must be an object with an id")
    fields = {k: v for k, v in body.items() if k not in ("direction", "to")}
    try:
        parsed = parse_api_inbound({**fields, "from": body["to"]}, account,
                                   media_hosts=media_hosts, media_source=media_source)
    except InvalidInput as exc:
        raise InvalidInput(re.sub(r"\bfrom\b", "to", str(exc))) from exc
    return InboundMessage(
        channel=parsed.channel, account=account, provider_message_id=parsed.provider_message_id,
        sender=account_party(account), recipient=parsed.sender, text=parsed.text,
        subject=parsed.subject, html=parsed.html, attachments=parsed.attachments,
        sent_at=parsed.sent_at, reply_refs=parsed.reply_refs,
        linked_identities=parsed.linked_identities, context=parsed.context,
        remote_attachments=parsed.remote_attachments, direction="outbound", group=parsed.group)


def _parse_group(value: Any) -> Group | None:
    """``{"id": "…", "name": "…"}``: the group chat a message was posted in."""
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) - {"id", "name"}:
        raise InvalidInput('group must be an object with "id" and optionally "name"')
    group_id, name = value.get("id"), value.get("name")
    if not isinstance(group_id, str) or not group_id.strip() or len(group_id) > 255:
        raise InvalidInput("group.id must be a non-empty string of at most 255 characters")
    if name is not None and not isinstance(name, str):
        raise InvalidInput("group.name must be a string")
    return Group(group_id.strip(), name)


def parse_api_change(body: Any) -> MessageChange:
    """``PATCH …/messages/{message_id}``: ``{"text"}`` (an edit), ``{"withdrawn": true}`` or
    ``{"reactions": [{"emoji", "by", "at"?}]}`` (the whole current set), or several."""
    if not isinstance(body, dict):
        raise MalformedInput("the body must be a JSON object")
    unknown = set(body) - {"text", "withdrawn", "reactions", "edited_at"}
    if unknown:
        raise InvalidInput(f"unknown field(s): {', '.join(sorted(unknown))}")
    if not {"text", "withdrawn", "reactions"} & set(body):
        raise InvalidInput("a change needs text, withdrawn or reactions")
    text = body.get("text")
    if "text" in body and (not isinstance(text, str) or not text):
        raise InvalidInput("text must be a non-empty string")
    if "withdrawn" in body and body["withdrawn"] is not True:
        raise InvalidInput("withdrawn can only be true: a withdrawal is not undone")
    reactions = None
    if "reactions" in body:
        items = body["reactions"]
        if not isinstance(items, list) or len(items) > 1000:
            raise InvalidInput("reactions must be a list (the whole current set)")
        reactions = tuple(_parse_reaction(item, index) for index, item in enumerate(items))
    return MessageChange(text=text, reactions=reactions, withdrawn=bool(body.get("withdrawn")),
                         at=_timestamp(body.get("edited_at"), "edited_at"))


def _parse_reaction(item: Any, index: int) -> Reaction:
    if not isinstance(item, dict) or set(item) - {"emoji", "by", "at"}:
        raise InvalidInput(f'reactions[{index}] must be {{"emoji", "by"}} (and "at")')
    emoji, by = item.get("emoji"), item.get("by")
    if not isinstance(emoji, str) or not emoji or len(emoji) > 64:
        raise InvalidInput(f"reactions[{index}].emoji must be a non-empty string")
    if not isinstance(by, str) or not by.strip() or len(by) > 255:
        raise InvalidInput(f"reactions[{index}].by must be a non-empty string")
    return Reaction(emoji, by.strip(), _timestamp(item.get("at"), f"reactions[{index}].at"))


def _timestamp(value: Any, field: str) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > 64:
        raise InvalidInput(f"{field} must be an ISO 8601 timestamp string")
    try:
        return parse_iso(value)
    except ValueError as exc:
        raise InvalidInput(f"{field} must be an ISO 8601 timestamp") from exc


RECEIPT_STATUSES: tuple[DeliveryStatus, ...] = ("delivered", "read", "failed")


def parse_api_status(body: Any) -> tuple[str, DeliveryStatus, dict[str, str] | None,
                                         datetime | None]:
    """``POST …/status``: ``{"message_id", "status": delivered|read|failed, "error"?, "at"?}``
    → (provider message id, status, error, at)."""
    if not isinstance(body, dict):
        raise MalformedInput("the body must be a JSON object")
    unknown = set(body) - {"message_id", "status", "error", "at"}
    if unknown:
        raise InvalidInput(f"unknown field(s): {', '.join(sorted(unknown))}")
    message_id = body.get("message_id")
    if not isinstance(message_id, str) or not message_id.strip() or len(message_id) > 255:
        raise InvalidInput("message_id must be a non-empty string of at most 255 characters")
    status = next((s for s in RECEIPT_STATUSES if s == body.get("status")), None)
    if status is None:
        raise InvalidInput(f"status must be one of {', '.join(RECEIPT_STATUSES)}")
    error = body.get("error")
    if error is not None:
        if status != "failed":
            raise InvalidInput('error goes only with "status": "failed"')
        if (not isinstance(error, dict) or set(error) - {"code", "message"}
                or not all(isinstance(error.get(k, ""), str) for k in ("code", "message"))):
            raise InvalidInput('error must be {"code": "…", "message": "…"} (strings)')
        error = {"code": (error.get("code") or "failed")[:100],
                 "message": (error.get("message") or "")[:1000]}
    return message_id.strip(), status, error, _timestamp(body.get("at"), "at")


def _sent_at(value: object) -> datetime | None:
    """An ISO 8601 string or nothing; its type is checked before any use (a list nested a
    thousand deep must be a 422, not a RecursionError turning into a 500)."""
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > 64:
        raise InvalidInput("sent_at must be an ISO 8601 timestamp string")
    try:
        return parse_iso(value)
    except ValueError as exc:
        raise InvalidInput("sent_at must be an ISO 8601 timestamp") from exc


def _context(value: object) -> dict[str, Any] | None:
    """The integrator's free-form object, at most ``MAX_CONTEXT_DEPTH`` levels deep: it is
    stored and sent back as JSON, and orjson refuses to write deeper than 254 levels."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidInput("context must be an object")
    if json_depth(value, MAX_CONTEXT_DEPTH) > MAX_CONTEXT_DEPTH:
        raise InvalidInput(f"context may be nested at most {MAX_CONTEXT_DEPTH} levels deep")
    return value


def refuse_deep_json(body: object, limit: int = MAX_BODY_DEPTH) -> None:
    """422 for a request body nested deeper than ``limit``, checked before any other use:
    orjson parses 1,024 levels but writes only 254, so a deeper value that reached the
    store or an idempotency digest was a 500."""
    if json_depth(body, limit) > limit:
        raise InvalidInput(f"the body may be nested at most {limit} levels deep")


def json_depth(value: object, limit: int) -> int:
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

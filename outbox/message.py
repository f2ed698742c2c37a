"""The typed outbound message an adapter sends, built from a claimed outbox row."""

from __future__ import annotations

from collections.abc import Mapping

from adapters.base import Agent, OutboundMessage
from gateway.store.base import OutboxItem, StoredAttachment
from normalizer.model import Group, Party


def outbound_message(item: OutboxItem) -> OutboundMessage:
    """Turn the store's row (the message's contract JSON) into what ``send()`` receives.

    Every field is checked once here, so adapters read typed values instead of dict keys;
    a row that does not fit (a bug, never a customer's input) raises ValueError, which the
    worker retries and logs like any adapter failure.
    """
    message = item.message
    template = message.get("template")
    return OutboundMessage(
        id=_str(message, "id"),
        conversation_id=_str(message, "conversation_id"),
        customer_id=_str(message, "customer_id"),
        channel=_str(message, "channel"),
        account=_str(message, "account"),
        to=_party(message.get("to"), "to"),
        sender=_party(message.get("from"), "from"),
        text=message.get("text") or "",
        html=message.get("html"),
        subject=message.get("subject"),
        attachments=tuple(_attachment(a) for a in message.get("attachments") or ()),
        agent=_agent(message.get("agent")),
        automatic=message.get("automatic"),
        template=template.get("name") if isinstance(template, dict) else None,
        variables=dict(template.get("variables") or {}) if isinstance(template, dict) else {},
        in_reply_to=message.get("in_reply_to"),
        reply_to_provider_id=item.reply_to_provider_id,
        thread_refs=item.thread_refs,
        attempts=item.attempts,
        queued_at=item.created_at,
        group=_group(item.conversation.get("group")),
        snapshot=message,
    )


def _str(message: Mapping[str, object], key: str) -> str:
    value = message.get(key)
    if not isinstance(value, str) or not value:
        raise ValueError(f"outbound message has no {key}")
    return value


def _party(value: object, key: str) -> Party:
    if not isinstance(value, dict) or not isinstance(value.get("address"), str):
        raise ValueError(f"outbound message has no {key!r} party")
    return Party(str(value.get("kind") or ""), value["address"], value.get("name"))


def _group(value: object) -> Group | None:
    if not isinstance(value, dict) or not isinstance(value.get("id"), str):
        return None
    name = value.get("name")
    return Group(value["id"], name if isinstance(name, str) else None)


def _agent(value: object) -> Agent | None:
    if not isinstance(value, dict) or not isinstance(value.get("id"), str):
        return None
    name = value.get("name")
    return Agent(value["id"], name if isinstance(name, str) else None)


def _attachment(value: Mapping[str, object]) -> StoredAttachment:
    return StoredAttachment(id=str(value["id"]), filename=str(value.get("filename") or ""),
                            content_type=str(value.get("content_type")
                                             or "application/octet-stream"),
                            size=int(str(value.get("size") or 0)), sha256=str(value["sha256"]))

"""The e-mail corpus as the tests see it: each sample and its expected normalization."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from normalizer.model import AttachmentData, InboundMessage

CORPUS = Path(__file__).resolve().parent.parent / "corpus" / "email"


def samples() -> list[Path]:
    """Every .eml of the corpus, sorted by name."""
    return sorted(CORPUS.glob("*.eml"))


def as_expected(message: InboundMessage) -> dict[str, Any]:
    """The fields an expected.json may pin, in its shape."""
    return {
        "provider_message_id": message.provider_message_id,
        "from": {"address": message.sender.address, "name": message.sender.name},
        "to": message.recipient.address if message.recipient else None,
        "subject": message.subject,
        "text": message.text,
        "full_text": (message.content or {}).get("full_text", message.text),
        "html": message.html is not None,
        "automatic": message.automatic,
        "reply_refs": message.reply_refs,
        "reply_token": message.reply_token,
        "sent_at": message.sent_at.isoformat().replace("+00:00", "Z")
        if message.sent_at else None,
        "attachments": attachment_json(message.attachments),
        "content": message.content,
    }


def attachment_json(items: list[AttachmentData]) -> list[dict[str, Any]]:
    """Attachments without their bytes, as an expected.json pins them."""
    return [{"filename": a.filename, "content_type": a.content_type, "size": len(a.data),
             "inline": a.inline, "content_id": a.content_id} for a in items]

"""Attachments of e-mail replies: RFC 2231 names, and stored metadata checked again."""

from __future__ import annotations

import email
import email.policy
from datetime import UTC, datetime
from email.policy import SMTP as SMTP_POLICY
from typing import Any

from adapters.email.config import EmailConfig
from adapters.email.outbound import Thread, build_reply
from gateway.store.base import OutboxItem
from outbox.message import outbound_message

PDF = b"%PDF-1.4\n%%EOF\n"


def reply_with(*attachments: dict[str, Any]) -> bytes:
    """The wire bytes of a reply carrying ``attachments`` (metadata as stored)."""
    stored = [{"id": f"att_{i}", "size": len(PDF), "sha256": "0" * 64, **meta}
              for i, meta in enumerate(attachments)]
    message = outbound_message(OutboxItem(seq=1, message={
        "id": "msg_1", "conversation_id": "cnv_1", "customer_id": "cus_1", "channel": "email",
        "account": "support", "text": "Here it is.",
        "from": {"kind": "email", "address": "help@shop.example", "name": None},
        "to": {"kind": "email", "address": "kim@example.com", "name": "Kim"},
        "attachments": stored}, conversation={}, attempts=0, created_at=datetime.now(UTC)))
    msg = build_reply(EmailConfig(address="help@shop.example"), message, Thread(),
                      [(meta, PDF) for meta in message.attachments])
    return msg.as_bytes(policy=SMTP_POLICY)


def test_a_korean_filename_goes_out_as_an_rfc_2231_name_a_parser_reads_back() -> None:
    wire = reply_with({"filename": "견적서 2026.pdf", "content_type": "application/pdf"})
    assert wire.isascii()
    assert b"filename*=utf-8''%EA%B2%AC%EC%A0%81%EC%84%9C%202026.pdf" in wire
    parsed = email.message_from_bytes(wire, policy=email.policy.default)
    (attachment,) = list(parsed.iter_attachments())
    assert attachment.get_filename() == "견적서 2026.pdf"
    assert attachment.get_content_type() == "application/pdf"
    assert attachment.get_content() == PDF


def test_metadata_stored_before_the_checks_cannot_inject_headers() -> None:
    wire = reply_with(
        {"filename": "a\r\nBcc: victim@example.com\r\n\u202efdp.exe",
         "content_type": "application/pdf\r\nBcc: victim@example.com"},
        {"filename": "fwd.eml", "content_type": "message/rfc822"},
        {"filename": "notes.txt", "content_type": 'text/plain; charset="utf-8"'})
    assert b"\nBcc:" not in wire
    parsed = email.message_from_bytes(wire, policy=email.policy.default)
    assert parsed["Bcc"] is None
    first, forwarded, notes = list(parsed.iter_attachments())
    assert first.get_content_type() == "application/octet-stream"
    assert first.get_filename() == "aBcc: victim@example.comfdp.exe"
    # message/* may not be base64-encoded (RFC 2046 §5.2.1): sent as opaque bytes.
    assert forwarded.get_content_type() == "application/octet-stream"
    assert notes.get_content_type() == "text/plain"
    assert notes.get_param("charset") == "utf-8"

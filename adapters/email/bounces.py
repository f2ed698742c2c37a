"""What a bounce says about the reply it names: failed, delivered, or nothing yet.

A delivery status notification (RFC 3464) for one of our replies is a receipt, not a
customer's message: the adapter hands :func:`read_bounce`'s verdict to ``ctx.receipts``
and stores nothing (docs/email.md, "Bounces of our replies"). Pure functions over the
normalized message, so every case is tested without a server.
"""

from __future__ import annotations

import email.parser
import re
from dataclasses import dataclass

from gateway.receipts import DeliveryError
from normalizer.model import DeliveryStatus, InboundMessage

# What one bounce may write into a message's error: a diagnostic is a line or two; a
# hostile DSN must not fill the store or the agent's screen.
MAX_BOUNCE_MESSAGE = 500
# Plain-text bounces: how many lines of their text make the error message.
BOUNCE_TEXT_LINES = 5
BOUNCE_CODE = "bounced"

# RFC 3464 §2.3.3: what the reporting MTA did for a recipient. "delivered" reached the
# mailbox; "expanded" reached the address given (an alias or list) and was then sent on:
# both are delivered as far as the address we wrote to is concerned. "relayed" handed it
# to a system that reports no success, "delayed" is still trying: neither says whether
# it will arrive, so the message stays as it is.
_DELIVERED = frozenset({"delivered", "expanded"})
_PENDING = frozenset({"delayed", "relayed"})
_ACTIONS = _DELIVERED | _PENDING | {"failed"}
_DIAGNOSTIC_TYPE = re.compile(r"^[A-Za-z][A-Za-z0-9-]*\s*;\s*")  # "smtp; 550 …"
_DELAY_SUBJECT = re.compile(r"\bdelay", re.IGNORECASE)  # "Delayed Mail", "(Delay)"
_SPACE = re.compile(r"\s+")
# Where the headers of a plain-text bounce are looked for (its head only).
HEADER_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class BounceVerdict:
    """A bounce's meaning for the message it names.

    ``status`` None: the report moves nothing (delayed, relayed); ``action`` is what the
    report said, for the log.
    """

    action: str
    status: DeliveryStatus | None
    error: DeliveryError | None = None


def read_bounce(inbound: InboundMessage, *, null_sender: bool) -> BounceVerdict | None:
    """The verdict of a bounce (``automatic == "bounce"``); None for any other message.

    An RFC 3464 report is read per recipient: one delivered (or expanded) recipient makes
    the message delivered (our replies have one recipient; an alias may expand to several),
    else one failed recipient makes it failed with that recipient's status and
    diagnostic, else nothing changes. A bounce without a readable report (a plain-text
    "Undelivered Mail Returned to Sender") fails the message with the first lines of its
    text, unless its subject says the mail is only delayed; it must have come back to the
    null sender (``null_sender``, see :func:`returned_to_null_sender`): mail a person
    writes from ``postmaster@`` is "bounce" to the classifier, and it is theirs to read.
    """
    if inbound.automatic != "bounce":
        return None
    dsn = (inbound.content or {}).get("dsn")
    raw_recipients = dsn.get("recipients") if isinstance(dsn, dict) else None
    recipients = [r for r in raw_recipients or () if isinstance(r, dict)
                  and r.get("action") in _ACTIONS]
    if recipients:
        actions = [r["action"] for r in recipients]
        delivered = next((a for a in actions if a in _DELIVERED), None)
        if delivered is not None:
            return BounceVerdict(delivered, "delivered")
        failed = next((r for r in recipients if r["action"] == "failed"), None)
        if failed is not None:
            return BounceVerdict("failed", "failed",
                                 DeliveryError(BOUNCE_CODE, _dsn_message(failed)))
        return BounceVerdict(actions[0], None)
    if not null_sender:
        return None
    if _DELAY_SUBJECT.search(inbound.subject or ""):
        return BounceVerdict("delayed", None)
    return BounceVerdict("failed", "failed", DeliveryError(BOUNCE_CODE, _text_message(inbound)))


def returned_to_null_sender(raw: bytes | None, mail_from: str | None) -> bool:
    """Whether the mail came back as non-delivery reports do.

    RFC 5321 §4.5.5: a report is sent with the null reverse-path, ``MAIL FROM:<>`` (the
    SMTP envelope; a mailbox keeps it as ``Return-Path: <>``). Exim's
    ``X-Failed-Recipients`` counts too.
    """
    if mail_from is not None and mail_from.strip() in ("", "<>"):
        return True
    if raw is None:
        return False
    try:
        head = raw[:HEADER_BYTES].decode("ascii", "surrogateescape")
        headers = email.parser.HeaderParser().parsestr(head, headersonly=True)
        return_path = headers.get("Return-Path")
        failed = headers.get("X-Failed-Recipients")
    except Exception:  # an unreadable head is no evidence
        return False
    if isinstance(failed, str) and failed.strip():
        return True
    return mail_from is None and isinstance(return_path, str) and \
        return_path.strip() == "<>"


def _dsn_message(recipient: dict[str, object]) -> str:
    """``<status> <diagnostic>``: "5.1.1 550 5.1.1 <a@b>: Recipient address rejected…"."""
    status = recipient.get("status")
    diagnostic = recipient.get("diagnostic")
    parts = [status.strip() if isinstance(status, str) else "",
             _DIAGNOSTIC_TYPE.sub("", diagnostic.strip()) if isinstance(diagnostic, str)
             else ""]
    text = " ".join(p for p in parts if p)
    return _bounded(text or "the recipient's mail server returned the message "
                            "(action: failed)")


def _text_message(inbound: InboundMessage) -> str:
    """The first lines of a plain-text bounce (its full text: the reply stripper may have
    taken the quoted original, and the diagnostic with it)."""
    full_text = (inbound.content or {}).get("full_text")
    text = full_text if isinstance(full_text, str) else inbound.text or ""
    lines = [line.strip() for line in text[:MAX_BOUNCE_MESSAGE * 4].splitlines()
             if line.strip()]
    return _bounded(" ".join(lines[:BOUNCE_TEXT_LINES])
                    or inbound.subject or "the mail system returned the message")


def _bounded(text: str) -> str:
    """One line of at most :data:`MAX_BOUNCE_MESSAGE` characters."""
    text = _SPACE.sub(" ", text).strip()
    if len(text) <= MAX_BOUNCE_MESSAGE:
        return text
    return text[:MAX_BOUNCE_MESSAGE - 1].rstrip() + "…"

"""Replies as MIME mail over SMTP submission, threaded with In-Reply-To/References."""

from __future__ import annotations

import email.utils
import re
from email.message import EmailMessage
from pathlib import Path

import aiosmtplib

from adapters.base import SendResult
from adapters.email.config import EmailConfig
from gateway.errors import PermanentSendError, RetryableSendError
from gateway.store.base import OutboxItem

_RE_PREFIX = re.compile(r"^\s*((re|aw|sv|fw|fwd|답장|회신)\s*(\[\d+\])?\s*:\s*)+", re.IGNORECASE)


def reply_subject(subject: str | None) -> str:
    """``Re: <original>`` without piling up ``Re: Re: AW:`` prefixes."""
    base = _RE_PREFIX.sub("", subject or "").strip()
    return f"Re: {base}" if base else "Re: your message"


def build_reply(config: EmailConfig, item: OutboxItem, blob_dir: Path | None = None
                ) -> EmailMessage:
    """The MIME message for an outbound reply."""
    message = item.message
    domain = config.address.split("@")[-1]
    msg = EmailMessage()
    msg["From"] = email.utils.formataddr((config.display_name or "", config.address))
    to = message["to"]
    msg["To"] = email.utils.formataddr((to.get("name") or "", to["address"]))
    msg["Subject"] = message.get("subject") or reply_subject(_last_subject(item))
    msg["Date"] = email.utils.formatdate(localtime=False)
    msg["Message-ID"] = f"<{message['id']}@{domain}>"
    msg["Auto-Submitted"] = "auto-replied" if message.get("automatic") else "no"
    local, _, _dom = config.address.partition("@")
    token = message["conversation_id"].removeprefix("cnv_").lower()
    msg["Reply-To"] = f"{local}+c-{token}@{domain}"
    if item.reply_to_provider_id:
        msg["In-Reply-To"] = f"<{item.reply_to_provider_id}>"
    refs = [r for r in item.thread_refs if "@" in r and not r.startswith("sha256:")]
    if refs:
        msg["References"] = " ".join(f"<{r}>" for r in refs[-20:])
    msg.set_content(message.get("text") or "")
    if message.get("html"):
        msg.add_alternative(message["html"], subtype="html")
    for att in message.get("attachments", []):
        if blob_dir is None:
            break
        sha = att["sha256"]
        data = (blob_dir / sha[:2] / sha[2:4] / sha).read_bytes()
        maintype, _, subtype = att["content_type"].partition("/")
        msg.add_attachment(data, maintype=maintype, subtype=subtype or "octet-stream",
                           filename=att["filename"])
    return msg


def _last_subject(item: OutboxItem) -> str | None:
    return item.conversation.get("subject") or item.message.get("reply_subject")


async def send_reply(config: EmailConfig, item: OutboxItem, account: str,
                     blob_dir: Path | None = None) -> SendResult:
    """Submit the reply; 4xx and connection errors retry, 5xx fails with the server text."""
    if config.smtp is None:
        raise PermanentSendError(f"e-mail account {account!r} has no [smtp] server for replies",
                                 error_code="no_smtp_server")
    msg = build_reply(config, item, blob_dir)
    smtp = config.smtp
    try:
        await aiosmtplib.send(
            msg, hostname=smtp.host, port=smtp.port, username=smtp.username,
            password=smtp.password.reveal() if smtp.password else None,
            use_tls=smtp.security == "tls", start_tls=smtp.security == "starttls",
            timeout=smtp.timeout)
    except aiosmtplib.SMTPResponseException as exc:
        if 400 <= exc.code < 500:
            raise RetryableSendError(f"SMTP {exc.code}", provider_code=str(exc.code),
                                     provider_message=exc.message) from exc
        raise PermanentSendError(f"SMTP {exc.code}: {exc.message}",
                                 provider_code=str(exc.code), provider_message=exc.message,
                                 error_code="smtp_rejected") from exc
    except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
        raise RetryableSendError(f"SMTP server unreachable: {exc}",
                                 error_code="smtp_unavailable") from exc
    return SendResult(msg["Message-ID"].strip("<>"), "sent")

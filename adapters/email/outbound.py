"""Replies as MIME mail over SMTP submission, threaded the way mail clients expect.

Threading (RFC 5322 §3.6.4): ``In-Reply-To`` names the customer's last message and
``References`` is that message's own References plus its Message-ID, so Gmail, Outlook
and Apple Mail file the reply under the customer's thread. Our ``Message-ID`` is
``<msg_…@account-domain>``: the customer's next reply names it, and the store threads that
reply into the same conversation. ``Reply-To: support+c-<conversation>@domain`` is the
fallback for clients that drop the headers.

Errors (translated once, here): a 4xx answer and connection problems retry; a 5xx answer
fails the message with the server's own text. Rejected credentials (a password, or an
OAuth2 token refused even after one fresh one) retry as ``smtp_auth_failed``.
"""

from __future__ import annotations

import asyncio
import email.utils
import re
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from pathlib import Path
from typing import Any

import aiosmtplib

from adapters.base import OutboundMessage
from adapters.email.config import EmailConfig, ServerSettings
from gateway.errors import PermanentSendError, RetryableSendError
from gateway.oauth2 import AccessTokens, OAuth2Rejected, OAuth2Unavailable
from gateway.store.base import StoredAttachment
from gateway.tls import client_context
from normalizer.attachments import mime_parts, sanitize_filename

# Possessive blanks (\s*+): the two runs around the optional counter never trade
# characters, so "Re" and 20,000 ideographic spaces is one pass, not a quadratic search.
_RE_PREFIX = re.compile(
    r"^\s*+((re|aw|sv|vs|antw|odp|ynt|r|fw|fwd|tr|wg|답장|회신|전달|返信|回复|答复)\s*+"
    r"(\[\d+\]|\(\d+\))?\s*+[:：]\s*+)+", re.IGNORECASE)  # noqa: RUF001 - full-width colon
_MAX_REFERENCES = 20


def reply_subject(subject: str | None) -> str | None:
    """``Re: <original>`` without piling up ``Re: Re: AW:`` (or 답장:, 回复:) prefixes."""
    base = _RE_PREFIX.sub("", subject or "").strip()
    return f"Re: {base}" if base else None


@dataclass(frozen=True, slots=True)
class Thread:
    """What the reply needs to know about the message it answers."""

    subject: str | None = None
    in_reply_to: str | None = None
    references: tuple[str, ...] = ()


def thread_of(message: OutboundMessage, parent: dict[str, Any] | None,
              parent_raw: bytes | None) -> Thread:
    """In-Reply-To, References and subject for ``message`` (pure; the adapter reads the store)."""
    parent_id = message.reply_to_provider_id
    refs: list[str] = []
    if parent_raw is not None:
        refs = _header_ids(parent_raw, "References") or _header_ids(parent_raw, "In-Reply-To")
    if not refs:
        refs = [r for r in message.thread_refs if r != parent_id]
    if parent_id:
        refs = [r for r in refs if r != parent_id] + [parent_id]
    refs = [r for r in dict.fromkeys(refs) if _is_msgid(r)]
    if len(refs) > _MAX_REFERENCES:  # keep the thread's root and the newest ones
        refs = refs[:1] + refs[-(_MAX_REFERENCES - 1):]
    subject = message.subject
    if not subject and parent is not None:
        subject = reply_subject(parent.get("subject"))
    return Thread(subject, parent_id if parent_id and _is_msgid(parent_id) else None,
                  tuple(refs))


def _is_msgid(value: str) -> bool:
    return "@" in value and not value.startswith("sha256:") and not re.search(r"[\s<>]", value)


def _header_ids(raw: bytes, name: str) -> list[str]:
    head = raw.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    match = re.search(rb"(?im)^" + name.encode() + rb":((?:.*)(?:\r?\n[ \t].*)*)", head)
    if match is None:
        return []
    return re.findall(r"<([^<>\s]+)>", match.group(1).decode("ascii", "replace"))


def build_reply(config: EmailConfig, message: OutboundMessage, thread: Thread,
                attachments: Sequence[tuple[StoredAttachment, bytes]] = (),
                *, plus_addressing: bool = True) -> EmailMessage:
    """The MIME message for an outbound message (no I/O: attachment bytes are passed in)."""
    msg = EmailMessage()
    msg["From"] = email.utils.formataddr((config.display_name or "", config.address))
    msg["To"] = email.utils.formataddr((message.to.name or "", message.to.address))
    msg["Subject"] = thread.subject or (
        f"Message from {config.display_name or config.domain}")
    msg["Date"] = email.utils.format_datetime(datetime.now(UTC))
    msg["Message-ID"] = f"<{message.id}@{config.domain}>"
    token = message.conversation_id.removeprefix("cnv_").lower()
    if plus_addressing:
        local = config.address.partition("@")[0].split("+", 1)[0]
        msg["Reply-To"] = email.utils.formataddr(
            (config.display_name or "", f"{local}+c-{token}@{config.domain}"))
    msg["X-Omnirelay-Conversation"] = token
    if thread.in_reply_to:
        msg["In-Reply-To"] = f"<{thread.in_reply_to}>"
    if thread.references:
        msg["References"] = " ".join(f"<{r}>" for r in thread.references)
    if message.automatic:
        # RFC 3834: mark it, and ask Exchange not to answer it with an out-of-office.
        msg["Auto-Submitted"] = "auto-replied"
        msg["X-Auto-Response-Suppress"] = "OOF, AutoReply"
    msg.set_content(message.text)
    if message.html:
        msg.add_alternative(message.html, subtype="html")
    for meta, data in attachments:
        maintype, subtype, params = _attachment_type(meta.content_type)
        # email.message writes a non-ASCII name as RFC 2231 ``filename*=utf-8''…``.
        msg.add_attachment(data, maintype=maintype, subtype=subtype, params=params,
                           filename=sanitize_filename(meta.filename))
    return msg


def _attachment_type(content_type: str | None) -> tuple[str, str, dict[str, str]]:
    """(maintype, subtype, parameters) of a stored content type, checked again here.

    Rows stored before the API checked metadata may hold anything, and a CR/LF in a MIME
    header must never reach the relay. ``message/*`` and ``multipart/*`` go out as
    ``application/octet-stream``: their bodies may not be base64-encoded (RFC 2046 §5.1.1,
    §5.2.1) and the bytes are not re-parsed here.
    """
    maintype, subtype, params = mime_parts(content_type)
    if maintype in ("message", "multipart"):
        return "application", "octet-stream", {}
    return maintype, subtype, params


async def read_attachments(message: OutboundMessage,
                           blob_file: Callable[[str], Awaitable[Path]]
                           ) -> list[tuple[StoredAttachment, bytes]]:
    """The bytes of each attachment, each read (off the loop) as soon as the store handed
    its file out: on PostgreSQL a cached file is kept only for a while after that, so
    fetching every file first could see an early one evicted under a full cache."""
    found = []
    for att in message.attachments:
        path = await blob_file(att.sha256)
        try:
            found.append((att, await asyncio.to_thread(path.read_bytes)))
        except FileNotFoundError as exc:
            raise PermanentSendError(
                f"attachment {att.filename!r} is no longer stored (retention?)",
                error_code="attachment_missing") from exc
    return found


def smtp_tls(settings: ServerSettings) -> ssl.SSLContext | None:
    """The TLS context for the relay (None for security = none)."""
    return client_context(settings.ca_file) if settings.security in ("tls", "starttls") else None


async def submit(settings: ServerSettings, sender: str, recipients: list[str],
                 data: bytes, tokens: AccessTokens | None = None) -> None:
    """Hand ``data`` to the SMTP relay; raise Retryable/PermanentSendError on failure.

    ``tokens`` (with ``settings.oauth2``) signs in with AUTH XOAUTH2 instead of a password.
    """
    try:
        if settings.oauth2 is not None:
            assert tokens is not None, "oauth2 settings need their AccessTokens"
            await _submit_with_token(settings, tokens, sender, recipients, data)
        else:
            await aiosmtplib.send(
                data, sender=sender, recipients=recipients, hostname=settings.host,
                port=settings.port, username=settings.username,
                password=settings.password.reveal() if settings.password else None,
                use_tls=settings.security == "tls",
                start_tls=settings.security == "starttls",
                tls_context=smtp_tls(settings), timeout=settings.timeout)
    except OAuth2Rejected as exc:
        # Our credentials again: kept queued until someone consents anew.
        raise RetryableSendError(exc.message, provider_code=exc.error,
                                 provider_message=exc.description,
                                 error_code="smtp_auth_failed") from exc
    except OAuth2Unavailable as exc:
        raise RetryableSendError(exc.message, retry_after=exc.retry_after,
                                 error_code="oauth2_unavailable") from exc
    except aiosmtplib.SMTPRecipientsRefused as exc:
        refusals = exc.recipients
        if any(400 <= r.code < 500 for r in refusals):
            first = next(r for r in refusals if 400 <= r.code < 500)
            raise _retry(first.code, first.message) from exc
        first = refusals[0]
        raise _permanent(first.code, first.message) from exc
    except aiosmtplib.SMTPAuthenticationError as exc:
        # Our credentials, not the message: keep it queued until someone fixes the password.
        raise RetryableSendError(f"SMTP authentication failed ({exc.code})",
                                 provider_code=str(exc.code), provider_message=exc.message,
                                 error_code="smtp_auth_failed") from exc
    except aiosmtplib.SMTPResponseException as exc:
        if 400 <= exc.code < 500 or exc.code < 200:
            raise _retry(exc.code, exc.message) from exc
        raise _permanent(exc.code, exc.message) from exc
    except aiosmtplib.SMTPNotSupported as exc:
        raise RetryableSendError(f"SMTP server: {exc.message}",
                                 error_code="smtp_unsupported") from exc
    except (aiosmtplib.SMTPException, OSError, TimeoutError, ssl.SSLError) as exc:
        raise RetryableSendError(f"SMTP server unreachable: {str(exc) or type(exc).__name__}",
                                 error_code="smtp_unavailable") from exc


async def _submit_with_token(settings: ServerSettings, tokens: AccessTokens, sender: str,
                             recipients: list[str], data: bytes) -> None:
    """EHLO (and STARTTLS) as ``aiosmtplib.send`` does, AUTH XOAUTH2, then the mail.

    A refused token is replaced by a fresh one once, on the same connection (RFC 4954
    allows another AUTH after a failed one): it may have been revoked or have expired
    early. The token is got before connecting, so an unreachable endpoint opens nothing.
    """
    assert settings.username is not None
    token = await tokens.token()
    client = aiosmtplib.SMTP(hostname=settings.host, port=settings.port,
                             use_tls=settings.security == "tls",
                             start_tls=settings.security == "starttls",
                             tls_context=smtp_tls(settings), timeout=settings.timeout)
    async with client:
        if client.last_ehlo_response is None:
            await client.ehlo()
        if "xoauth2" not in client.server_auth_methods:
            raise aiosmtplib.SMTPNotSupported("the SMTP server does not offer AUTH XOAUTH2")
        try:
            await client.auth_xoauth2(settings.username, token)
        except aiosmtplib.SMTPAuthenticationError:
            token = await tokens.token(rejected=token)
            await client.auth_xoauth2(settings.username, token)
        await client.sendmail(sender, recipients, data)


def _retry(code: int, text: str) -> RetryableSendError:
    return RetryableSendError(f"SMTP {code}", provider_code=str(code), provider_message=text,
                              error_code="smtp_deferred")


def _permanent(code: int, text: str) -> PermanentSendError:
    return PermanentSendError(f"SMTP {code}: {text}", provider_code=str(code),
                              provider_message=text, error_code="smtp_rejected")


async def render(config: EmailConfig, message: OutboundMessage, thread: Thread,
                 blob_file: Callable[[str], Awaitable[Path]], *,
                 plus_addressing: bool) -> tuple[str, bytes]:
    """(Message-ID without brackets, wire bytes); big MIME work happens off the loop.
    ``blob_file`` is the store's: on PostgreSQL it fetches bytes this instance's cache lacks."""
    attachments = await read_attachments(message, blob_file)

    def work() -> tuple[str, bytes]:
        msg = build_reply(config, message, thread, attachments, plus_addressing=plus_addressing)
        return msg["Message-ID"].strip("<>"), msg.as_bytes(policy=SMTP_POLICY)

    if message.attachments:
        return await asyncio.to_thread(work)
    return work()

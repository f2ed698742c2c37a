"""Raw RFC 5322 mail → :class:`InboundMessage`: charsets, MIME, quoting, auto-replies.

Never raises on bad input: a malformed message still yields its text (decoded leniently)
and its raw bytes are kept, so nothing a customer sent is lost.
"""

from __future__ import annotations

import email
import email.policy
import email.utils
import hashlib
import html as html_lib
import re
from datetime import datetime
from email.message import EmailMessage, Message
from typing import Any

from normalizer.model import AttachmentData, InboundMessage, Party

_POLICY = email.policy.default.clone(raise_on_defect=False)

# Aliases Python lacks or gets wrong in the wild: Korean and Japanese mail first.
_CHARSET_ALIASES = {
    "ks_c_5601-1987": "cp949", "ks_c_5601": "cp949", "euc-kr": "cp949", "euc_kr": "cp949",
    "x-windows-949": "cp949", "ksc5601": "cp949", "unicode-1-1-utf-7": "utf-7",
    "iso-2022-jp": "iso2022_jp_ext", "shift_jis": "cp932", "shift-jis": "cp932",
    "x-sjis": "cp932", "gb2312": "gb18030", "gbk": "gb18030", "iso-8859-1": "cp1252",
    "latin1": "cp1252", "us-ascii": "utf-8", "ascii": "utf-8", "x-unknown": "utf-8",
    "unknown-8bit": "utf-8",
}


def decode_bytes(data: bytes, declared: str | None) -> str:
    """Decode ``data`` using the declared charset, checking it, else by detection.

    A part labeled ``iso-8859-1`` that is really UTF-8 (common from web forms) or
    ``us-ascii`` that is really EUC-KR decodes correctly: a declared charset is trusted
    only when it decodes without errors and is not a mislabeled 8-bit UTF-8 text.
    """
    charset = (declared or "").strip().strip('"').lower()
    charset = _CHARSET_ALIASES.get(charset, charset)
    if not data:
        return ""
    if charset and charset not in ("utf-8", "utf8"):
        # Mislabeled UTF-8 is the most common lie: prefer UTF-8 when it decodes cleanly
        # and the bytes are not plain ASCII.
        if re.search(rb"[\x80-\xff]", data) and charset.startswith(("cp125", "iso8859",
                                                                     "iso-8859")):
            try:
                return data.decode("utf-8")
            except UnicodeDecodeError:
                pass
        try:
            return data.decode(charset)
        except (LookupError, UnicodeDecodeError):
            pass
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    try:
        from charset_normalizer import from_bytes

        best = from_bytes(data).best()
        if best is not None:
            return str(best)
    except Exception:
        pass
    return data.decode("utf-8", errors="replace")


def _part_text(part: Message) -> str:
    try:
        payload = part.get_payload(decode=True)
    except Exception:
        payload = None
    if payload is None:
        raw = part.get_payload()
        payload = raw.encode("utf-8", "replace") if isinstance(raw, str) else b""
    assert isinstance(payload, bytes)
    return decode_bytes(payload, part.get_content_charset())


def _header(msg: Message, name: str) -> str | None:
    try:
        value = msg.get(name)
    except Exception:
        raw = msg.get_all(name, failobj=[])
        value = raw[0] if raw else None
    if value is None:
        return None
    text = str(value)
    if "=?" in text:
        try:
            text = str(email.header.make_header(email.header.decode_header(text)))
        except Exception:
            pass
    return re.sub(r"\s+", " ", text).strip() or None


def html_to_text(markup: str) -> str:
    """Readable plain text from HTML: blocks become lines, links keep their target."""
    text = re.sub(r"(?is)<(script|style|head)[^>]*>.*?</\1>", "", markup)
    text = re.sub(r"(?is)<br\s*/?>", "\n", text)
    text = re.sub(r"(?is)</(p|div|tr|li|h[1-6]|blockquote)>", "\n", text)
    text = re.sub(r"(?is)<li[^>]*>", "- ", text)
    text = re.sub(r'(?is)<a\s[^>]*href="(https?://[^"]+)"[^>]*>(.*?)</a>',
                  lambda m: m.group(2) if m.group(1) in m.group(2)
                  else f"{m.group(2)} ({m.group(1)})", text)
    text = re.sub(r"(?s)<[^>]+>", "", text)
    text = html_lib.unescape(text).replace("\xa0", " ")
    lines = [line.strip() for line in text.splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


_QUOTE_HEADERS = [
    re.compile(r"^On .{5,200}wrote:\s*$", re.MULTILINE),                      # Gmail, Apple
    re.compile(r"^\d{4}[.년/-]\s?\d{1,2}[.월/-]\s?\d{1,2}.{0,80}(작성|wrote).*:\s*$",
               re.MULTILINE),
    re.compile(r"^-{2,}\s*Original Message\s*-{2,}", re.MULTILINE | re.IGNORECASE),
    re.compile(r"^-{2,}\s*원본 메시지\s*-{2,}", re.MULTILINE),
    re.compile(r"^From: .+\n(Sent|Date|보낸 날짜): ", re.MULTILINE),             # Outlook
    re.compile(r"^보낸 사람: .+", re.MULTILINE),
    re.compile(r"^_{20,}\s*$", re.MULTILINE),
]
_SIGNATURE = re.compile(r"^(-- ?|Sent from my \w+.*|iPhone에서 보냄.*)$", re.MULTILINE)


def strip_reply(text: str) -> str:
    """The new part of a reply: quoted history and signature removed."""
    cut = len(text)
    for pattern in _QUOTE_HEADERS:
        match = pattern.search(text)
        if match and match.start() > 0:
            cut = min(cut, match.start())
    lines = text[:cut].splitlines()
    # Trailing ">" quoted blocks (interleaved quoting keeps its answers).
    while lines and (lines[-1].startswith(">") or not lines[-1].strip()):
        lines.pop()
    result = "\n".join(lines)
    signature = _SIGNATURE.search(result)
    if signature and signature.start() > 0:
        result = result[:signature.start()]
    result = result.strip()
    return result or text.strip()


def classify_automatic(msg: Message) -> str | None:
    """``bounce``, ``auto_reply`` or ``bulk`` for mail no person wrote (RFC 3834 et al.)."""
    content_type = msg.get_content_type()
    if content_type == "multipart/report" and (msg.get_param("report-type") or "").lower() in (
            "delivery-status", "disposition-notification"):
        return "bounce"
    sender = (_header(msg, "From") or "").lower()
    if re.search(r"mailer-daemon@|postmaster@", sender) or (msg.get("Return-Path") or "") == "<>":
        return "bounce"
    auto = (_header(msg, "Auto-Submitted") or "").lower()
    if auto and auto != "no":
        return "auto_reply"
    if msg.get("X-Autoreply") or msg.get("X-Autorespond"):
        return "auto_reply"
    precedence = (_header(msg, "Precedence") or "").lower()
    if precedence == "auto_reply":
        return "auto_reply"
    if precedence in ("bulk", "junk", "list"):
        return "bulk"
    if msg.get("List-Id") or msg.get("List-Unsubscribe"):
        return "bulk"
    return None


def _message_ids(value: str | None) -> list[str]:
    return re.findall(r"<([^<>\s]+)>", value or "")


def parse_email(raw: bytes, account: str, *, recipient: str | None = None) -> InboundMessage:
    """Parse raw mail into a normalized inbound message (never raises on bad MIME)."""
    msg: EmailMessage = email.message_from_bytes(raw, policy=_POLICY)  # type: ignore[assignment]
    message_ids = _message_ids(_header(msg, "Message-ID"))
    provider_id = message_ids[0] if message_ids else "sha256:" + hashlib.sha256(raw).hexdigest()

    from_header = _header(msg, "From") or ""
    name, address = email.utils.parseaddr(from_header)
    if not address or "@" not in address:
        fallback = _header(msg, "Sender") or _header(msg, "Return-Path") or ""
        name2, address = email.utils.parseaddr(fallback)
        name = name or name2
    address = address.lower() if "@" in address else "unknown@invalid"
    reply_to = _header(msg, "Reply-To")

    text_part = html_part = None
    attachments: list[AttachmentData] = []
    parts = list(msg.walk()) if msg.is_multipart() else [msg]
    for part in parts:
        if part.is_multipart():
            continue
        ctype = part.get_content_type()
        disposition = (part.get_content_disposition() or "").lower()
        filename = _filename(part)
        if ctype == "text/plain" and disposition != "attachment" and not filename:
            text_part = text_part or part
        elif ctype == "text/html" and disposition != "attachment" and not filename:
            html_part = html_part or part
        elif ctype in ("message/delivery-status", "message/disposition-notification"):
            continue
        else:
            try:
                data = part.get_payload(decode=True) or b""
            except Exception:
                data = b""
            if not isinstance(data, bytes):
                data = b""
            cid = (part.get("Content-ID") or "").strip("<> ") or None
            attachments.append(AttachmentData(
                filename or f"attachment-{len(attachments) + 1}{_extension(ctype)}",
                ctype, data, inline=disposition == "inline", content_id=cid))

    html_text = _part_text(html_part) if html_part is not None else None
    if text_part is not None:
        full_text = _part_text(text_part)
    elif html_text is not None:
        full_text = html_to_text(html_text)
    else:
        full_text = ""
    if not msg.is_multipart() and text_part is None and html_part is None:
        full_text = _part_text(msg)
    full_text = full_text.replace("\r\n", "\n")

    date = None
    try:
        parsed = email.utils.parsedate_to_datetime(_header(msg, "Date") or "")
        date = parsed if parsed.tzinfo else None
    except (TypeError, ValueError):
        date = None

    refs = _message_ids(_header(msg, "In-Reply-To"))
    refs += list(reversed(_message_ids(_header(msg, "References"))))
    token = _reply_token(recipient, msg)
    headers = {k: _header(msg, k) for k in ("Reply-To", "To", "Cc", "Auto-Submitted")
               if _header(msg, k)}
    if reply_to:
        headers["Reply-To"] = reply_to

    return InboundMessage(
        channel="email", account=account, provider_message_id=provider_id,
        sender=Party("email", address, name or None),
        recipient=Party("email", recipient.lower(), None) if recipient else None,
        subject=_header(msg, "Subject"), text=strip_reply(full_text) if full_text else "",
        html=html_text, attachments=attachments, sent_at=_as_utc(date),
        reply_refs=list(dict.fromkeys(refs)), automatic=classify_automatic(msg),
        headers=headers, raw=raw, raw_content_type="message/rfc822", reply_token=token,
        content={"type": "email", "full_text": full_text} if full_text else None,
    )


def _filename(part: Message) -> str | None:
    try:
        name = part.get_filename()
    except Exception:
        name = None
    if not name:
        return None
    if "=?" in name:
        try:
            name = str(email.header.make_header(email.header.decode_header(name)))
        except Exception:
            pass
    return name.replace("/", "_").replace("\\", "_").strip() or None


def _extension(content_type: str) -> str:
    import mimetypes

    return mimetypes.guess_extension(content_type) or ""


def _reply_token(recipient: str | None, msg: Message) -> str | None:
    """``support+c-<token>@shop`` plus-address, or the X-Omnirelay-Conversation header."""
    header = _header(msg, "X-Omnirelay-Conversation")
    if header:
        return header
    for addr in filter(None, [recipient, *[a for _, a in email.utils.getaddresses(
            [str(msg.get("To", "")), str(msg.get("Cc", ""))])]]):
        match = re.match(r"[^+@]+\+c-([A-Za-z0-9]+)@", addr)
        if match:
            return match.group(1)
    return None


def _as_utc(value: datetime | None) -> datetime | None:
    from datetime import UTC

    return value.astimezone(UTC) if value else None


def make_attachment_json(items: list[AttachmentData]) -> list[dict[str, Any]]:
    """Debug helper for tests: attachments without their bytes."""
    return [{"filename": a.filename, "content_type": a.content_type, "size": len(a.data)}
            for a in items]

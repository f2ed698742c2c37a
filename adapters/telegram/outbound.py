"""Sending to Telegram: splitting long text, escaping for a parse mode, typed errors."""

from __future__ import annotations

import html
import warnings
from datetime import timedelta

from telegram import error as tg_error
from telegram.helpers import escape_markdown
from telegram.warnings import PTBDeprecationWarning

from gateway.errors import PermanentSendError, RetryableSendError, SendError

MAX_TEXT_UNITS = 4096  # Telegram's limit for one message's text (UTF-16 code units)
MAX_CAPTION_UNITS = 1024
_BREAK_WINDOW = 300  # how far back from the limit a chunk may end at a line break or space


def utf16_units(text: str) -> int:
    """The length Telegram counts: characters outside the BMP (most emoji) count twice."""
    return len(text.encode("utf-16-le")) // 2


def split_text(text: str, limit: int = MAX_TEXT_UNITS) -> list[str]:
    """``text`` in pieces of at most ``limit`` UTF-16 units, each ending at a line break or
    a space near the limit where there is one, so words stay whole; joined, the pieces
    give back ``text`` exactly."""
    pieces: list[str] = []
    rest = text
    while utf16_units(rest) > limit:
        cut = _fit(rest, limit)
        window = rest[max(0, cut - _BREAK_WINDOW):cut]
        for separator in ("\n", " "):
            at = window.rfind(separator)
            if at >= 0:
                cut = cut - len(window) + at + 1
                break
        pieces.append(rest[:cut])
        rest = rest[cut:]
    if rest or not pieces:
        pieces.append(rest)
    return pieces


def _fit(text: str, limit: int) -> int:
    """The largest prefix length of ``text`` within ``limit`` UTF-16 units."""
    units = 0
    for index, char in enumerate(text):
        units += 2 if ord(char) > 0xFFFF else 1
        if units > limit:
            return index
    return len(text)


def formatted(text: str, parse_mode: str) -> tuple[str, str | None]:
    """The text to send and Telegram's ``parse_mode`` for the account's setting: agents'
    text is always shown as typed, so with a parse mode its markup characters are escaped."""
    if parse_mode == "html":
        return html.escape(text, quote=False), "HTML"
    if parse_mode == "markdown":
        return escape_markdown(text, version=2), "MarkdownV2"
    return text, None


def send_error(exc: tg_error.TelegramError, token: str) -> SendError:
    """The outbox's view of a Bot API failure (the token never appears in the message)."""
    text = redact(str(exc), token)[:300]
    if isinstance(exc, tg_error.RetryAfter):
        return RetryableSendError(f"Telegram flood control: {text}",
                                  retry_after=retry_after_of(exc), provider_code="429",
                                  error_code="rate_limited")
    if isinstance(exc, tg_error.Forbidden):
        return PermanentSendError(f"the user blocked the bot or left the chat: {text}",
                                  provider_code="403", provider_message=text,
                                  error_code="blocked")
    if isinstance(exc, tg_error.ChatMigrated):
        return PermanentSendError(f"the group moved to chat {exc.new_chat_id}",
                                  provider_code="400", error_code="chat_migrated")
    if isinstance(exc, tg_error.BadRequest):
        return PermanentSendError(f"Telegram refused the message: {text}",
                                  provider_code="400", provider_message=text,
                                  error_code="rejected")
    if isinstance(exc, tg_error.InvalidToken):  # fixed by the operator: keep the message
        return RetryableSendError(f"Telegram refused the bot token: {text}",
                                  provider_code="401", error_code="bot_unauthorized")
    # TimedOut, NetworkError (connection errors and 5xx), Conflict: try again.
    return RetryableSendError(f"Telegram unreachable: {type(exc).__name__}: {text}",
                              error_code="provider_unavailable")


def retry_after_of(exc: tg_error.RetryAfter) -> float:
    """``RetryAfter.retry_after`` in seconds: PTB 22 gives an int (with a deprecation
    warning, read here without it) or, with ``PTB_TIMEDELTA``, a timedelta."""
    with warnings.catch_warnings():  # no await inside: only this read is affected
        warnings.simplefilter("ignore", PTBDeprecationWarning)
        value = exc.retry_after
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


def redact(text: str, token: str) -> str:
    """``text`` with the bot token replaced (an HTTP library error may quote a URL)."""
    return text.replace(token, "<token>") if token else text

"""Web chat frames from the visitor's browser → validated values and :class:`InboundMessage`.

The widget speaks JSON frames over the WebSocket (docs/webchat.md). Everything here is pure:
the adapter has already checked the Origin and the visitor's token, and hands in who the
visitor is; this module decides what a frame means and refuses what it must not store.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from normalizer.api import decode_attachments
from normalizer.errors import InvalidInput, MalformedInput
from normalizer.model import InboundMessage, Party
from normalizer.urls import origin_of

MAX_NAME_CHARS = 100
MAX_EMAIL_CHARS = 254
MAX_URL_CHARS = 2048
MAX_CLIENT_ID_CHARS = 64
MAX_FILES = 5
MAX_IDS_PER_RECEIPT = 500
MAX_WAITED = timedelta(days=7)  # the widget keeps what waits offline for as long
_CLIENT_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_LANGUAGE = re.compile(r"[A-Za-z]{2,3}(-[A-Za-z0-9]{1,8}){0,3}")  # BCP 47, the usual shapes
_EMAIL = re.compile(r"[^@\s<>\"]{1,64}@[^@\s<>\"]{1,253}\.[^@\s<>\".]{1,63}")
_MESSAGE_ID = re.compile(r"msg_[0-9A-Za-z]{1,64}")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class Hello:
    """The first frame: the visitor's token (None: a new visitor) and what the pre-chat
    form and the page say about them."""

    token: str | None
    name: str | None
    email: str | None
    page_url: str | None
    referrer: str | None
    # The browser's preferred language (``navigator.languages[0]``, a BCP 47 tag such as
    # ``ko-KR``): agents see in the conversation's context which language to answer in.
    language: str | None = None


def frame_type(frame: object) -> str:
    """The ``type`` of a frame, or MalformedInput for anything that is not a typed object."""
    if not isinstance(frame, dict) or not isinstance(frame.get("type"), str):
        raise MalformedInput('a frame is a JSON object with a "type"')
    return str(frame["type"])


def parse_hello(frame: dict[str, Any]) -> Hello:
    """``{"type": "hello", "token"?, "name"?, "email"?, "page_url"?, "referrer"?,
    "language"?}``."""
    token = frame.get("token")
    if token is not None and (not isinstance(token, str) or len(token) > 200):
        token = None  # an unreadable token is a new visitor, not an error
    return Hello(token, _name(frame.get("name")), _email(frame.get("email")),
                 _page_url(frame.get("page_url")), _page_url(frame.get("referrer")),
                 _language(frame.get("language")))


def parse_visitor_message(frame: dict[str, Any], *, account: str, visitor: str,
                          hello: Hello, max_text_chars: int, max_file_bytes: int,
                          now: datetime | None = None) -> InboundMessage:
    """``{"type": "message", "id": "<client id>", "text": "…", "attachments"?: […],
    "waited_ms"?: n}`` → the customer's message.

    ``waited_ms``: how long the message waited in the browser (offline) before this send.
    Its ``sent_at`` is that much before ``now``: when the visitor wrote it, whatever the
    device's clock says (a duration, not a time). A value that is not a whole number of
    milliseconds from 0 to 7 days is ignored: the message is never refused for it.

    The client id, chosen by the widget and kept with the message while it waits offline,
    is the dedupe key (with the visitor id): a message resent after a lost connection is
    stored once. The pre-chat form's name names the sender; its e-mail address links the
    visitor to the customer who already owns it (CONTRACT: identities carried by a message).
    """
    client_id = frame.get("id")
    if not isinstance(client_id, str) or not _CLIENT_ID.fullmatch(client_id):
        raise InvalidInput("id must be 1 to 64 letters, digits, '-' or '_' (the widget's "
                           "own id of the message)")
    text = frame.get("text", "")
    if not isinstance(text, str):
        raise InvalidInput("text must be a string")
    text = _CONTROL.sub("", text).strip()
    if len(text) > max_text_chars:
        raise InvalidInput(f"text is longer than {max_text_chars} characters")
    files = frame.get("attachments")
    if files is not None and (not isinstance(files, list) or len(files) > MAX_FILES):
        raise InvalidInput(f"attachments must be a list of at most {MAX_FILES} files")
    attachments = decode_attachments(files)
    if sum(len(item.data) for item in attachments) > max_file_bytes:
        names = ", ".join(item.filename for item in attachments)
        raise InvalidInput(f"{names}: larger than {max_file_bytes} bytes in all")
    if not text and not attachments:
        raise InvalidInput("a message needs text or a file")
    linked = [Party("email", hello.email, hello.name)] if hello.email else []
    context = {key: value for key, value in (("page_url", hello.page_url),
                                             ("referrer", hello.referrer),
                                             ("language", hello.language)) if value}
    return InboundMessage(
        channel="webchat", account=account, provider_message_id=f"{visitor}:{client_id}",
        sender=Party("webchat", visitor, hello.name), text=text, attachments=attachments,
        linked_identities=linked, context=context or None,
        sent_at=_written_at(frame.get("waited_ms"), now))


def _written_at(waited_ms: object, now: datetime | None) -> datetime | None:
    """When a message that waited ``waited_ms`` in the browser was written (None: now)."""
    if not isinstance(waited_ms, int) or isinstance(waited_ms, bool) or waited_ms <= 0:
        return None
    waited = timedelta(milliseconds=waited_ms)
    if waited > MAX_WAITED:
        return None
    return (now or datetime.now(UTC)) - waited


def parse_receipt_ids(frame: dict[str, Any]) -> list[str]:
    """``{"type": "ack" | "read", "ids": ["msg_…", …]}``: the replies the browser received
    (``ack``: delivered) or showed in the open panel (``read``)."""
    ids = frame.get("ids")
    if not isinstance(ids, list) or len(ids) > MAX_IDS_PER_RECEIPT:
        raise InvalidInput(f"ids must be a list of at most {MAX_IDS_PER_RECEIPT} message ids")
    return [i for i in ids if isinstance(i, str) and _MESSAGE_ID.fullmatch(i)]


def _name(value: object) -> str | None:
    if not isinstance(value, str):
        return None
    name = " ".join(_CONTROL.sub("", value).split())
    return name[:MAX_NAME_CHARS] or None


def _email(value: object) -> str | None:
    if not isinstance(value, str):
        return None
    email = value.strip()
    if len(email) > MAX_EMAIL_CHARS or not _EMAIL.fullmatch(email):
        return None  # the form checks it too; a bad address links nothing
    return email


def _language(value: object) -> str | None:
    """A language tag as browsers report them (``ko-KR``, ``ja``, ``zh-Hant-TW``), or None."""
    if not isinstance(value, str) or not _LANGUAGE.fullmatch(value):
        return None
    return value


def _page_url(value: object) -> str | None:
    """The page the widget runs on (the conversation's ``context``): http(s) only."""
    if not isinstance(value, str) or len(value) > MAX_URL_CHARS or origin_of(value) is None:
        return None
    return value

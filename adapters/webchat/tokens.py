"""Visitor tokens: who a browser is, signed so a visitor cannot pose as another.

The widget keeps its token in ``localStorage`` (per shop origin), so reloads and new tabs
are the same visitor. A token is ``<visitor id>.<signature>``; the signature is an
HMAC-SHA256 of the account and the visitor id under the account's secret. A token that does
not verify is ignored and the browser becomes a new visitor: it can never read another
visitor's history.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets

_VISITOR = re.compile(r"vis_[A-Za-z0-9_-]{22}")


def new_visitor_id() -> str:
    """A fresh visitor id (128 random bits)."""
    return "vis_" + secrets.token_urlsafe(16)


def _signature(secret: bytes, account: str, visitor: str) -> str:
    digest = hmac.new(secret, f"webchat-visitor\n{account}\n{visitor}".encode(),
                      hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def issue(secret: bytes, account: str, visitor: str) -> str:
    """The token the widget keeps for ``visitor``."""
    return f"{visitor}.{_signature(secret, account, visitor)}"


def verify(secret: bytes, account: str, token: str | None) -> str | None:
    """The visitor id a token names, or None when it is missing, malformed or forged."""
    if not token:
        return None
    visitor, _, signature = token.partition(".")
    if not _VISITOR.fullmatch(visitor):
        return None
    if not hmac.compare_digest(signature, _signature(secret, account, visitor)):
        return None
    return visitor


def file_signature(secret: bytes, account: str, visitor: str, attachment_id: str) -> str:
    """The signature of a visitor's link to one attachment of their conversation."""
    digest = hmac.new(secret, f"webchat-file\n{account}\n{visitor}\n{attachment_id}".encode(),
                      hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

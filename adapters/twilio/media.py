"""Signed, expiring links to stored attachments, for Twilio to fetch an MMS's media.

Twilio takes media for an outbound message only by URL (``MediaUrl``), fetched without
credentials when it sends. Each link names one blob by its digest and content type and
carries an expiry, signed with a key derived from the account's Auth Token: it opens that
file until it expires and nothing else, and it holds across restarts.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import time

import orjson

from gateway.errors import Forbidden
from gateway.store.base import StoredAttachment

_SHA256 = re.compile(r"[0-9a-f]{64}")
MAX_TOKEN_CHARS = 600


class InvalidMediaLink(Forbidden):
    """The media link is forged, damaged or expired."""

    code = "invalid_media_link"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class MediaLinks:
    """Makes and checks the links of one account (``{hook base}/media/{token}``)."""

    def __init__(self, auth_token: str, base_url: str, ttl: float) -> None:
        # A key of its own, so a link never reveals anything usable against the Auth Token.
        self._key = hmac.new(auth_token.encode(), b"omnirelay twilio media links",
                             hashlib.sha256).digest()
        self.base_url = base_url.rstrip("/")
        self.ttl = ttl

    def link(self, attachment: StoredAttachment, now: float | None = None) -> str:
        """The URL Twilio fetches ``attachment`` from, valid for ``ttl`` seconds."""
        expires = int((time.time() if now is None else now) + self.ttl)
        payload = _b64(orjson.dumps([attachment.sha256, attachment.content_type, expires]))
        return f"{self.base_url}/media/{payload}.{self._sign(payload)}"

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self._key, payload.encode(), hashlib.sha256).digest())

    def verify(self, token: str, now: float | None = None) -> tuple[str, str]:
        """The (sha256, content type) a token opens; InvalidMediaLink otherwise."""
        payload, _, signature = token.partition(".")
        if len(token) > MAX_TOKEN_CHARS or not hmac.compare_digest(
                self._sign(payload), signature):
            raise InvalidMediaLink()
        try:
            sha256, content_type, expires = orjson.loads(_unb64(payload))
        except (ValueError, TypeError, binascii.Error) as exc:  # signed, so our own bug
            raise InvalidMediaLink() from exc
        if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256) or \
                not isinstance(content_type, str) or not isinstance(expires, int):
            raise InvalidMediaLink()
        if expires < (time.time() if now is None else now):
            raise InvalidMediaLink("the media link has expired")
        return sha256, content_type

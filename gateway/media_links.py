"""Signed public links to stored files, for providers that fetch a reply's media by URL.

Twilio (``MediaUrl``), LINE (``originalContentUrl``) and Naver TalkTalk (``imageUrl``) take
a reply's attachments only as URLs they download themselves, without the bearer token the
attachment API needs. An adapter therefore serves ``{hook base}/media/{token}``: the token
names one stored blob by its SHA-256, carries the content type it is served with and,
optionally, an expiry, and is signed (HMAC-SHA256) with a key derived from the account's own
secret and a purpose string. A link opens that one file, as that type, until it expires;
it cannot be stretched, retyped or used with another account's hooks, and it holds across
restarts (nothing is kept in memory).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import re
import time

import orjson
from aiohttp import web

from gateway.errors import Forbidden, NotFound
from gateway.store.base import AdapterStore
from normalizer.attachments import sanitize_content_type

_SHA256 = re.compile(r"[0-9a-f]{64}")
MAX_TOKEN_CHARS = 600
# A proxy or the provider may keep a copy this long at most (less when the link expires first).
MAX_CACHE_SECONDS = 86400


class InvalidMediaLink(Forbidden):
    """The media link is forged, damaged, signed by another account or expired."""

    code = "invalid_media_link"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class MediaLinks:
    """Makes, checks and serves one account's links (``{base_url}/media/{token}``).

    ``ttl`` is how long a link stays valid, in seconds; ``None`` makes links that never
    expire (only for callers that cannot know when the provider fetches).
    """

    def __init__(self, store: AdapterStore, *, secret: str, purpose: str, base_url: str,
                 ttl: float | None) -> None:
        # A key of its own per purpose: a link reveals nothing usable against the secret
        # (or against the same secret's links for another purpose). Adapters put the account
        # name in the purpose, so two accounts that share a secret cannot open each other's.
        self._key = hmac.new(secret.encode(), b"omnirelay media links\0" + purpose.encode(),
                             hashlib.sha256).digest()
        self.store = store
        self.base_url = base_url.rstrip("/")
        self.ttl = ttl

    def link(self, sha256: str, content_type: str, now: float | None = None) -> str:
        """The URL the provider fetches the blob ``sha256`` from, served as ``content_type``."""
        expires = None if self.ttl is None else \
            int((time.time() if now is None else now) + self.ttl)
        payload = _b64(orjson.dumps([sha256, content_type, expires]))
        return f"{self.base_url}/media/{payload}.{self._sign(payload)}"

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self._key, payload.encode(), hashlib.sha256).digest())

    def verify(self, token: str, now: float | None = None) -> tuple[str, str, int | None]:
        """The (sha256, content type, expiry) a token opens; InvalidMediaLink otherwise."""
        payload, _, signature = token.partition(".")
        if len(token) > MAX_TOKEN_CHARS or not hmac.compare_digest(
                self._sign(payload), signature):
            raise InvalidMediaLink("this media link is not signed by this account")
        try:
            sha256, content_type, expires = orjson.loads(_unb64(payload))
        except (ValueError, TypeError, binascii.Error) as exc:  # signed, so our own bug
            raise InvalidMediaLink("this media link is damaged") from exc
        if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256) or \
                not isinstance(content_type, str) or \
                not (expires is None or isinstance(expires, int)):
            raise InvalidMediaLink("this media link is damaged")
        if expires is not None and expires < (time.time() if now is None else now):
            raise InvalidMediaLink("the media link has expired")
        return sha256, content_type, expires

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Serve the blob a link names: 403 forged or expired, 404 once retention purged it.

        The signed content type (sanitized) with ``nosniff``, so the bytes are never read as
        anything else, and a private cache no longer than the link lives."""
        now = time.time()
        sha256, content_type, expires = self.verify(request.match_info.get("token", ""), now)
        path = await self.store.blob_file(sha256)
        if not await asyncio.to_thread(path.is_file):
            raise NotFound("the attachment's bytes are gone (retention)")
        max_age = MAX_CACHE_SECONDS if expires is None else \
            max(0, min(MAX_CACHE_SECONDS, int(expires - now)))
        return web.FileResponse(path, headers={
            "Content-Type": sanitize_content_type(content_type),
            "X-Content-Type-Options": "nosniff", "Cache-Control": f"private, max-age={max_age}"})

    def route(self) -> web.RouteDef:
        """The route to add to the adapter's own (under its hook base)."""
        return web.get("/media/{token}", self.handle)

"""Public, signed URLs of stored files, for messengers that fetch a reply's image by URL.

LINE (``originalContentUrl``) and TalkTalk (``imageUrl``) take images only as URLs they
download themselves; the attachment API needs a bearer token they do not have. The
adapter serves ``/hooks/<type>/<account>/media/<signature>/<sha256>``: the signature is an
HMAC of the digest under a key derived from the account's own secret, so only files this
account sent are reachable, and only by whoever was given the URL.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
from pathlib import Path

from aiohttp import web

from gateway.errors import Forbidden, NotFound
from gateway.store.base import AdapterStore

_IMAGE_MAGIC = ((b"\x89PNG", "image/png"), (b"\xff\xd8\xff", "image/jpeg"),
                (b"GIF8", "image/gif"))


class SignedMedia:
    """Makes and serves one account's signed media URLs."""

    def __init__(self, secret: str, base_url: str, store: AdapterStore) -> None:
        self._key = hashlib.sha256(b"omnirelay-media:" + secret.encode()).digest()
        self.base_url = base_url.rstrip("/")
        self.store = store

    def url(self, sha256: str) -> str:
        """Where the file with this digest can be fetched."""
        return f"{self.base_url}/media/{self.signature(sha256)}/{sha256}"

    def signature(self, sha256: str) -> str:
        digest = hmac.new(self._key, sha256.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest[:18]).decode()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Serve the file; 403 without this account's signature, 404 once it is gone."""
        sha256 = request.match_info.get("sha256", "")
        if len(sha256) != 64 or not hmac.compare_digest(
                self.signature(sha256), request.match_info.get("signature", "")):
            raise Forbidden("this media URL is not signed by this account")
        path = self.store.blob_path(sha256)
        head = await asyncio.to_thread(_read_head, path)
        if head is None:
            raise NotFound("no such media (purged)")
        content_type = next((t for magic, t in _IMAGE_MAGIC if head.startswith(magic)),
                            "application/octet-stream")
        return web.FileResponse(path, headers={"Content-Type": content_type,
                                               "Cache-Control": "private, max-age=86400",
                                               "X-Content-Type-Options": "nosniff"})


def _read_head(path: Path) -> bytes | None:
    try:
        with open(path, "rb") as handle:
            return handle.read(8)
    except FileNotFoundError:
        return None

"""The core's signed public links to stored files (gateway.media_links): what a link opens,
for how long, as which type, for whom; and how the served file answers."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import cast

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.api.middleware import api_middleware
from gateway.media_links import InvalidMediaLink, MediaLinks
from gateway.store.base import AdapterStore

Client = TestClient[web.Request, web.Application]
BASE = "https://relay.example/hooks/line/main"
SHA = "a" * 64
NOW = 1_000_000.0


class BlobDir:
    """The one thing the handler asks of a store: where a digest's bytes live."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def blob_path(self, sha256: str) -> Path:
        return self.root / sha256

    async def blob_file(self, sha256: str) -> Path:
        return self.blob_path(sha256)

    def put(self, data: bytes) -> str:
        sha256 = hashlib.sha256(data).hexdigest()
        (self.root / sha256).write_bytes(data)
        return sha256


def links(secret: str = "secret", purpose: str = "line images", ttl: float | None = 60,
          store: BlobDir | None = None) -> MediaLinks:
    return MediaLinks(cast(AdapterStore, store or BlobDir(Path("/nonexistent"))),
                      secret=secret, purpose=purpose, base_url=BASE + "/", ttl=ttl)


def token_of(url: str) -> str:
    assert url.startswith(BASE + "/media/")
    return url.rsplit("/", 1)[1]


def test_a_link_opens_its_file_as_its_type_until_it_expires() -> None:
    made = links(ttl=60)
    token = token_of(made.link(SHA, "image/png", now=NOW))
    assert made.verify(token, now=NOW + 60) == (SHA, "image/png", int(NOW + 60))
    with pytest.raises(InvalidMediaLink, match="expired"):
        made.verify(token, now=NOW + 61)


def test_a_link_without_a_ttl_never_expires() -> None:
    made = links(ttl=None)
    token = token_of(made.link(SHA, "image/jpeg", now=NOW))
    assert made.verify(token, now=NOW + 10 * 365 * 86400) == (SHA, "image/jpeg", None)


def test_another_accounts_key_or_another_purpose_does_not_open_a_link() -> None:
    token = token_of(links(secret="secret").link(SHA, "image/png", now=NOW))
    with pytest.raises(InvalidMediaLink) as refused:
        links(secret="another secret").verify(token, now=NOW)
    assert refused.value.code == "invalid_media_link" and refused.value.status == 403
    with pytest.raises(InvalidMediaLink):
        links(purpose="twilio mms").verify(token, now=NOW)


def _payload(token: str) -> list[object]:
    payload = token.partition(".")[0]
    padded = payload + "=" * (-len(payload) % 4)
    loaded: list[object] = orjson.loads(base64.urlsafe_b64decode(padded))
    return loaded


def _with_payload(token: str, values: list[object]) -> str:
    payload = base64.urlsafe_b64encode(orjson.dumps(values)).rstrip(b"=").decode()
    return f"{payload}.{token.partition('.')[2]}"


@pytest.mark.parametrize("change", [
    lambda v: [v[0], "text/html", v[2]],             # retyped: served as a page
    lambda v: [v[0], v[1], int(NOW) + 10 ** 9],      # stretched
    lambda v: [v[0], v[1], None],                    # made never-expiring
    lambda v: ["b" * 64, v[1], v[2]],                # pointed at another file
])
def test_a_tampered_link_is_refused(change: object) -> None:
    made = links()
    token = token_of(made.link(SHA, "image/png", now=NOW))
    values = _payload(token)
    tampered = _with_payload(token, change(values))  # type: ignore[operator]
    with pytest.raises(InvalidMediaLink, match="not signed"):
        made.verify(tampered, now=NOW)


@pytest.mark.parametrize("token", ["", ".", "abc", "abc.def", "x" * 5000, "..."])
def test_garbage_is_refused(token: str) -> None:
    with pytest.raises(InvalidMediaLink):
        links().verify(token, now=NOW)


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[Client, MediaLinks, BlobDir]]:
    blobs = BlobDir(tmp_path)
    made = links(ttl=600, store=blobs)
    app = web.Application(middlewares=[api_middleware])  # errors as the daemon answers them
    app.add_routes([made.route()])
    client: Client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    yield client, made, blobs
    await client.close()


async def test_the_handler_serves_the_file_with_safe_headers_and_refuses_forgeries(
        served: tuple[Client, MediaLinks, BlobDir]) -> None:
    client, made, blobs = served
    data = b"\x89PNG\r\n\x1a\n<html><script>alert(1)</script>"
    sha256 = blobs.put(data)
    token = token_of(made.link(sha256, "image/png"))
    response = await client.get(f"/media/{token}")
    assert response.status == 200 and await response.read() == data
    assert response.headers["Content-Type"] == "image/png"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    cache = response.headers["Cache-Control"]
    assert cache.startswith("private, max-age=") and 0 < int(cache.rsplit("=", 1)[1]) <= 600

    forged = await client.get(f"/media/{token[:-3]}AAA")
    assert forged.status == 403
    assert (await forged.json())["error"]["code"] == "invalid_media_link"
    expired = links(ttl=60, store=blobs).link(sha256, "image/png", now=NOW)
    refused = await client.get(f"/media/{token_of(expired)}")
    assert refused.status == 403 and "expired" in (await refused.json())["error"]["message"]


async def test_a_purged_file_is_404(
        served: tuple[Client, MediaLinks, BlobDir]) -> None:
    client, made, blobs = served
    sha256 = blobs.put(b"gone soon")
    token = token_of(made.link(sha256, "image/jpeg"))
    blobs.blob_path(sha256).unlink()
    response = await client.get(f"/media/{token}")
    assert response.status == 404

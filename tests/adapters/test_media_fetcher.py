"""The fetcher's rules for a provider source with credentials: they go only to the
provider's hosts, never after a redirect to another host; redirects only to hosts the
provider declares; a declared size over the limit is refused before the body is read."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from gateway.config import StoreConfig
from gateway.fetcher import MediaFetcher
from gateway.media import MediaSource, MediaSources
from gateway.metrics import Metrics
from gateway.store.sqlite import SQLiteStore
from normalizer.model import InboundMessage, Party, RemoteAttachment
from tests.conftest import free_port

FILE = b"\x89PNG\r\n\x1a\n" + b"pixels" * 1000
SECRET_HEADER = {"Authorization": "Bearer provider-token-0123456789"}


@dataclass
class Host:
    """A local host recording each request's path and Authorization header; each path
    answers its scripted responses once each, in order, then the file."""

    routes: dict[str, list[web.StreamResponse]] = field(default_factory=dict)
    seen: list[tuple[str, str | None]] = field(default_factory=list)
    port: int = field(default_factory=free_port)
    runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        """The host's origin."""
        return f"http://127.0.0.1:{self.port}"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Record, then answer the next scripted response (the file when none is left)."""
        self.seen.append((request.path, request.headers.get("Authorization")))
        script = self.routes.get(request.path)
        if script:
            return script.pop(0)
        return web.Response(body=FILE, content_type="image/png")

    async def start(self) -> None:
        """Listen on 127.0.0.1."""
        app = web.Application()
        app.router.add_get("/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()


@pytest.fixture
async def hosts() -> AsyncIterator[tuple[Host, Host, Host]]:
    """The provider's API host, the CDN it declares, and a host it does not declare."""
    trio = (Host(), Host(), Host())
    for host in trio:
        await host.start()
    yield trio
    for host in trio:
        assert host.runner is not None
        await host.runner.cleanup()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    """A fresh store."""
    s = SQLiteStore(StoreConfig(url=f"sqlite:///{tmp_path}/s.db", data_dir=tmp_path,
                                synchronous="NORMAL"))
    await s.open()
    yield s
    await s.close()


async def fetch(store: SQLiteStore, source: MediaSource, url: str, *,
                max_bytes: int = 1 << 20) -> dict[str, object]:
    """Ingest one message with ``url`` as its attachment, run the fetcher until the message
    is updated, and return the attachment entry."""
    sources = MediaSources()
    sources.register("prov:acct", source)
    fetcher = MediaFetcher(store, sources, Metrics(), max_bytes=max_bytes)
    result = await store.ingest(InboundMessage(
        channel="api", account="acct", provider_message_id=url, sender=Party("external", "u"),
        text="", remote_attachments=[RemoteAttachment(url, "prov:acct", "photo.png")]), [])
    async with aiohttp.ClientSession() as http:
        fetcher.start(http)
        try:
            async with asyncio.timeout(15):
                while True:
                    message = await store.get_message(result.message["id"])
                    if message["attachments"]:
                        entry: dict[str, object] = message["attachments"][0]
                        return entry
                    await asyncio.sleep(0.02)
        finally:
            await fetcher.stop()


def provider(api: Host, cdn: Host) -> MediaSource:
    """A provider whose media is on ``api`` (with credentials) and may redirect to ``cdn``."""
    async def credentials() -> Mapping[str, str]:
        return SECRET_HEADER
    return MediaSource.of([api.url], redirect_origins=[cdn.url], credentials=credentials)


async def test_credentials_go_to_the_provider_host_and_not_to_its_declared_cdn(
        store: SQLiteStore, hosts: tuple[Host, Host, Host]) -> None:
    api, cdn, _other = hosts
    api.routes["/media/1"] = [web.Response(status=302,
                                           headers={"Location": f"{cdn.url}/f/1"})]
    entry = await fetch(store, provider(api, cdn), f"{api.url}/media/1")
    assert entry["size"] == len(FILE)
    assert entry["content_type"] == "image/png"
    assert api.seen == [("/media/1", SECRET_HEADER["Authorization"])]
    assert cdn.seen == [("/f/1", None)]


async def test_a_redirect_to_an_undeclared_host_is_not_followed(
        store: SQLiteStore, hosts: tuple[Host, Host, Host]) -> None:
    api, cdn, other = hosts
    api.routes["/media/2"] = [web.Response(status=307,
                                           headers={"Location": f"{other.url}/x"})]
    entry = await fetch(store, provider(api, cdn), f"{api.url}/media/2")
    assert entry["error"]["code"] == "media_redirected"  # type: ignore[index]
    assert other.seen == []


async def test_a_url_outside_the_source_is_never_requested(
        store: SQLiteStore, hosts: tuple[Host, Host, Host]) -> None:
    api, cdn, other = hosts
    entry = await fetch(store, provider(api, cdn), f"{other.url}/media/3")
    assert entry["error"]["code"] == "media_host_refused"  # type: ignore[index]
    assert other.seen == []


async def test_a_declared_size_over_the_limit_is_refused_before_reading(
        store: SQLiteStore, hosts: tuple[Host, Host, Host]) -> None:
    api, cdn, _other = hosts
    entry = await fetch(store, provider(api, cdn), f"{api.url}/media/4", max_bytes=1000)
    assert entry["error"]["code"] == "attachment_too_large"  # type: ignore[index]
    assert "the limit is 1000" in entry["error"]["message"]  # type: ignore[index]


async def test_a_4xx_is_given_up_at_once_and_a_429_is_retried(
        store: SQLiteStore, hosts: tuple[Host, Host, Host]) -> None:
    api, cdn, _other = hosts
    api.routes["/gone"] = [web.Response(status=404, text="no such media")]
    entry = await fetch(store, provider(api, cdn), f"{api.url}/gone")
    assert entry["error"] == {"code": "media_refused",  # type: ignore[comparison-overlap]
                              "message": "HTTP 404: no such media"}
    assert [path for path, _ in api.seen] == ["/gone"]

    api.routes["/busy"] = [web.Response(status=429, headers={"Retry-After": "0"})]
    entry = await fetch(store, provider(api, cdn), f"{api.url}/busy")
    assert entry["size"] == len(FILE)
    assert [path for path, _ in api.seen].count("/busy") == 2

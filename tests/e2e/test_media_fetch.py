"""Attachments given by URL through the API channel, fetched after the commit by a real
daemon from a local media host: retried, size-limited, never redirected elsewhere, resumed
after kill -9 and stored once."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import Daemon, base_config, free_port
from tests.helpers import all_events, bearer, get_json, post_inbound, unique, wait_until

LIMIT = 1024 * 1024  # [store] max_attachment_bytes of these daemons
PDF = b"%PDF-1.7\n" + bytes(range(256)) * 300 + b"\n%%EOF\n"


@dataclass
class MediaHost:
    """A local file host: scripted answers per path, every request recorded."""

    port: int = field(default_factory=free_port)
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    failures: dict[str, list[int]] = field(default_factory=dict)  # path -> statuses first
    redirects: dict[str, str] = field(default_factory=dict)  # path -> Location
    hold: asyncio.Event = field(default_factory=asyncio.Event)  # /held answers when set
    held: asyncio.Event = field(default_factory=asyncio.Event)  # a /held request arrived
    streamed: int = 0  # bytes of /endless written before the client went away
    endless_done: asyncio.Event = field(default_factory=asyncio.Event)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        """The host's origin."""
        return f"http://127.0.0.1:{self.port}"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Answer as scripted; the default is the PDF."""
        self.requests.append((request.path, dict(request.headers)))
        self.arrived.set()
        script = self.failures.get(request.path)
        if script:
            return web.Response(status=script.pop(0), headers={"Retry-After": "0"},
                                text="busy")
        if request.path in self.redirects:
            raise web.HTTPFound(self.redirects[request.path])
        if request.path == "/held.pdf":
            self.held.set()
            await self.hold.wait()
        if request.path == "/endless.bin":
            return await self._endless(request)
        return web.Response(body=PDF, content_type="application/pdf")

    async def _endless(self, request: web.Request) -> web.StreamResponse:
        """Chunked, no Content-Length, 64 MiB: far more than the limit."""
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        chunk = b"x" * 65536
        try:
            for _ in range(1024):
                await response.write(chunk)
                self.streamed += len(chunk)
            await response.write_eof()
        except (ConnectionError, RuntimeError):
            pass
        finally:
            self.endless_done.set()
        return response

    def paths(self) -> list[str]:
        """The paths requested so far, in order."""
        return [path for path, _headers in self.requests]

    async def start(self) -> None:
        """Listen on 127.0.0.1."""
        app = web.Application()
        app.router.add_route("GET", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        """Stop listening."""
        self.hold.set()
        if self.runner is not None:
            await self.runner.cleanup()


def media_config(tmp: Path, media: MediaHost) -> tuple[str, int]:
    """A daemon with an API account ``files`` whose media_hosts is the media host."""
    port = free_port()
    extra = f"""
        [[channels]]
        type = "api"
        name = "files"
        secret = "files-secret-0123456789"
        media_hosts = ["{media.url}"]
        """
    config = base_config(tmp / "data", port, free_port(), extra=extra).replace(
        'default_region = "KR"', f'default_region = "KR"\nmax_attachment_bytes = {LIMIT}')
    return config, port


@pytest.fixture(scope="module")
async def media() -> AsyncIterator[MediaHost]:
    """The media host the module's daemon may fetch from."""
    host = MediaHost()
    await host.start()
    yield host
    await host.stop()


@pytest.fixture(scope="module")
async def other_host() -> AsyncIterator[MediaHost]:
    """A host that is not in media_hosts (a redirect target that must not be reached)."""
    host = MediaHost()
    await host.start()
    yield host
    await host.stop()


@pytest.fixture(scope="module")
async def media_daemon(tmp_path_factory: pytest.TempPathFactory,
                       media: MediaHost) -> AsyncIterator[Daemon]:
    """One daemon for the fetch tests."""
    tmp = tmp_path_factory.mktemp("media")
    config, port = media_config(tmp, media)
    daemon = Daemon(tmp, config, port)
    daemon.start()
    await daemon.wait_ready()
    yield daemon
    assert await daemon.stop() == 0, daemon.logs()


async def post_files(http: aiohttp.ClientSession, daemon: Daemon,
                     attachments: list[dict[str, Any]], **fields: Any) -> tuple[int, Any]:
    """An API-channel message of the ``files`` account with these attachments."""
    return await post_inbound(http, daemon.url, {
        "message_id": unique("m"), "from": {"id": unique("u")}, "attachments": attachments,
        **fields}, account="files", secret="files-secret-0123456789")


async def updates_of(http: aiohttp.ClientSession, daemon: Daemon,
                     message_id: str) -> list[dict[str, Any]]:
    """The ``message.updated`` events of one message."""
    return [e for e in await all_events(http, daemon.url)
            if e["type"] == "message.updated" and e["data"]["message"]["id"] == message_id]


async def wait_updated(http: aiohttp.ClientSession, daemon: Daemon,
                       message_id: str) -> dict[str, Any]:
    """The first ``message.updated`` of a message, once it exists."""
    async def updated() -> list[dict[str, Any]]:
        return await updates_of(http, daemon, message_id)
    return (await wait_until(updated, timeout=30))[0]


async def test_a_file_first_answered_503_is_fetched_after_the_commit_and_downloads_identically(
        media_daemon: Daemon, media: MediaHost, http: aiohttp.ClientSession) -> None:
    media.failures["/quote.pdf"] = [503]
    status, body = await post_files(http, media_daemon, [
        {"url": f"{media.url}/quote.pdf", "filename": "quote.pdf",
         "content_type": "application/pdf"}], text="the quote")
    assert status == 201, body
    message = body["message"]
    assert message["attachments"] == []  # acknowledged before the fetch

    update = await wait_updated(http, media_daemon, message["id"])
    assert update["data"]["changed"] == ["attachments"]
    (attachment,) = update["data"]["message"]["attachments"]
    assert attachment["filename"] == "quote.pdf"
    assert attachment["content_type"] == "application/pdf"
    assert (attachment["size"], attachment["sha256"]) == (len(PDF),
                                                          hashlib.sha256(PDF).hexdigest())
    assert media.paths().count("/quote.pdf") == 2  # the 503, then the file
    events = await all_events(http, media_daemon.url)
    kinds = [e["type"] for e in events if e["data"].get("message", {}).get("id")
             == message["id"]]
    assert kinds == ["message.received", "message.updated"]

    async with http.get(f"{media_daemon.url}{attachment['url']}", headers=bearer()) as resp:
        assert resp.status == 200
        assert await resp.read() == PDF
    _, stored = await get_json(http, f"{media_daemon.url}/v1/conversations/"
                               f"{message['conversation_id']}/messages")
    assert stored["messages"][-1]["attachments"] == [attachment]
    # Health: nothing pending for the account (the backlog is re-read as the fetcher goes
    # on), and the metrics count the attempts.
    async def files_media() -> dict[str, Any] | None:
        _, channels = await get_json(http, f"{media_daemon.url}/v1/channels")
        (files,) = [c for c in channels["channels"] if c["name"] == "files"]
        return files["media"] if files["media"]["pending"] == 0 else None
    assert await wait_until(files_media) == {"pending": 0, "last_error": None}
    async with http.get(f"{media_daemon.url}/metrics") as resp:
        text = await resp.text()
    assert 'omnirelay_media_fetches_total{outcome="retried"} 1.0' in text
    assert 'omnirelay_media_fetches_total{outcome="stored"} 1.0' in text
    assert "omnirelay_media_fetches_pending 0.0" in text


async def test_a_url_on_another_origin_is_422_and_nothing_is_stored_or_fetched(
        media_daemon: Daemon, media: MediaHost, other_host: MediaHost,
        http: aiohttp.ClientSession) -> None:
    before = len(await all_events(http, media_daemon.url))
    for url in (f"{other_host.url}/quote.pdf", "https://files.crm.example/quote.pdf",
                f"{media.url.replace('http:', 'https:')}/quote.pdf",
                f"http://user:pw@127.0.0.1:{media.port}/quote.pdf", "file:///etc/passwd"):
        status, error = await post_files(http, media_daemon, [
            {"url": url, "filename": "quote.pdf"}], text="x")
        assert status == 422, (url, error)
        assert "attachments[0].url" in error["error"]["message"]
    assert len(await all_events(http, media_daemon.url)) == before
    assert other_host.requests == []


async def test_a_redirect_to_another_host_is_not_followed_and_the_error_shows(
        media_daemon: Daemon, media: MediaHost, other_host: MediaHost,
        http: aiohttp.ClientSession) -> None:
    media.redirects["/moved.pdf"] = f"{other_host.url}/moved.pdf"
    status, body = await post_files(http, media_daemon, [
        {"url": f"{media.url}/moved.pdf", "filename": "moved.pdf"}])
    assert status == 201, body
    update = await wait_updated(http, media_daemon, body["message"]["id"])
    (entry,) = update["data"]["message"]["attachments"]
    assert entry["error"]["code"] == "media_redirected"
    assert entry["url"] is None
    assert media.paths().count("/moved.pdf") == 1  # given up, not retried
    assert other_host.requests == []


async def test_a_file_over_the_limit_is_refused_without_reading_it_all(
        media_daemon: Daemon, media: MediaHost, http: aiohttp.ClientSession) -> None:
    status, body = await post_files(http, media_daemon, [
        {"url": f"{media.url}/endless.bin", "filename": "big.bin"}], text="a big one")
    assert status == 201, body
    update = await wait_updated(http, media_daemon, body["message"]["id"])
    (entry,) = update["data"]["message"]["attachments"]
    assert entry["error"]["code"] == "attachment_too_large"
    # The fetcher stopped reading at the limit: the host could write only what the
    # socket buffers held beyond it, nowhere near the 64 MiB it had.
    await asyncio.wait_for(media.endless_done.wait(), 15)
    assert 0 < media.streamed < 16 * LIMIT
    data_dir = media_daemon.tmp / "data" / "blobs"
    assert not [p for p in data_dir.rglob("*") if p.is_file() and p.stat().st_size > LIMIT]


async def test_kill_9_while_a_fetch_is_pending_then_restart_completes_it_once(
        tmp_path: Path, http: aiohttp.ClientSession) -> None:
    media = MediaHost()
    await media.start()
    config, port = media_config(tmp_path, media)
    daemon = Daemon(tmp_path, config, port)
    daemon.start()
    try:
        await daemon.wait_ready()
        status, body = await post_files(http, daemon, [
            {"url": f"{media.url}/held.pdf", "filename": "held.pdf"}], text="held")
        assert status == 201, body
        message_id = body["message"]["id"]
        await asyncio.wait_for(media.held.wait(), 15)  # the fetch is in flight, held
        daemon.kill()
        media.hold.set()  # the host answers from now on

        daemon.start()
        await daemon.wait_ready()
        await wait_updated(http, daemon, message_id)
        _, message = await get_json(http, f"{daemon.url}/v1/conversations/"
                                    f"{body['message']['conversation_id']}/messages")
        (attachment,) = message["messages"][0]["attachments"]
        assert attachment["sha256"] == hashlib.sha256(PDF).hexdigest()
        # Stop and start once more: the stored file is never fetched again.
        assert await daemon.stop() == 0, daemon.logs()
        fetched = media.paths().count("/held.pdf")
        daemon.start()
        await daemon.wait_ready()
        _, channels = await get_json(http, f"{daemon.url}/v1/channels")
        assert [c["media"]["pending"] for c in channels["channels"]
                if c["name"] == "files"] == [0]
        assert len(await updates_of(http, daemon, message_id)) == 1
        assert media.paths().count("/held.pdf") == fetched == 2
    finally:
        await daemon.stop()
        await media.stop()


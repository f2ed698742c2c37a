"""Small helpers the tests share: signed posts, feed reads."""

from __future__ import annotations

import asyncio
import threading
import uuid
from typing import Any

import aiohttp
import orjson

from gateway import signing
from tests.conftest import API_SECRET, TOKEN


def bearer(token: str = TOKEN) -> dict[str, str]:
    """An Authorization header."""
    return {"Authorization": f"Bearer {token}"}


def unique(prefix: str = "x") -> str:
    """A fresh id so session-scoped daemons see new customers per test."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


async def post_inbound(http: aiohttp.ClientSession, base: str, body: dict[str, Any], *,
                       account: str = "crm", secret: str | None = API_SECRET,
                       headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """POST an API-channel message, signed with the account's secret by default."""
    raw = orjson.dumps(body)
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    if secret is not None:
        hdrs["Omnirelay-Signature"] = signing.sign(secret, raw)
    async with http.post(f"{base}/hooks/api/{account}/messages", data=raw,
                         headers=hdrs) as resp:
        return resp.status, await resp.json(content_type=None)


async def get_json(http: aiohttp.ClientSession, url: str, token: str = TOKEN,
                   **params: Any) -> tuple[int, Any]:
    """GET with a bearer token."""
    async with http.get(url, headers=bearer(token), params=params) as resp:
        return resp.status, await resp.json(content_type=None)


async def post_json(http: aiohttp.ClientSession, url: str, body: Any, token: str = TOKEN,
                    headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """POST JSON with a bearer token."""
    async with http.post(url, json=body, headers={**bearer(token), **(headers or {})}
                         ) as resp:
        return resp.status, await resp.json(content_type=None)


async def all_events(http: aiohttp.ClientSession, base: str) -> list[dict[str, Any]]:
    """Every event in the feed, following the cursor."""
    events: list[dict[str, Any]] = []
    cursor = "0"
    while True:
        status, page = await get_json(http, f"{base}/v1/events", after=cursor, limit=1000)
        assert status == 200, page
        events += page["events"]
        if not page["events"]:
            return events
        cursor = page["next"]


async def wait_until(predicate: Any, timeout: float = 15.0, interval: float = 0.05) -> Any:
    """Poll an async predicate (for state another process changes) until truthy."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(interval)


class TcpProxy:
    """A TCP forwarder on 127.0.0.1 to a server, on a thread of its own (it keeps
    forwarding between tests, when the tests' event loop is not running).

    ``cut()`` drops every connection through it and refuses new ones until ``restore()``:
    a network partition between the processes using it and the server.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._cut = False
        self._open: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, name="tcp-proxy", daemon=True)

    def start(self) -> int:
        """Listen; returns the port to connect to instead of the server's."""
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the proxy did not start")
        return self.port

    def cut(self) -> None:
        """Drop every connection now; refuse new ones."""
        self._call(self._drop_all)

    def restore(self) -> None:
        """Forward new connections again."""
        self._call(lambda: setattr(self, "_cut", False))

    def stop(self) -> None:
        self._call(self._drop_all)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _call(self, fn: Any) -> None:
        done = threading.Event()

        def run() -> None:
            fn()
            done.set()
        self._loop.call_soon_threadsafe(run)
        done.wait(10)

    def _drop_all(self) -> None:
        self._cut = True
        for writer in list(self._open):
            writer.transport.abort()
        self._open.clear()

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(
            asyncio.start_server(self._accept, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()
        server.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._cut:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self._open.update((writer, up_writer))
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        self._open.difference_update((writer, up_writer))

    @staticmethod
    async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            sink.transport.abort()

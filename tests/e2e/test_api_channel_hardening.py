"""The API channel against a hostile client or callback host (issue 17)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from gateway import signing
from tests.conftest import API_SECRET, TOKEN, Daemon, Receiver, base_config, free_port
from tests.e2e.test_rejections import head
from tests.helpers import bearer, get_json, post_json, unique, wait_until

TEN_MIB = 10 * 1024 * 1024


class CallbackHost:
    """A callback host that redirects (to an internal address) or answers a huge error."""

    def __init__(self, internal: str) -> None:
        self.internal = internal
        self.hits: list[str] = []
        self.runner: web.AppRunner | None = None
        self.port = free_port()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """``/r307``, ``/r302`` redirect to the internal host; ``/big`` answers 400 + 1 MB."""
        self.hits.append(request.path)
        if request.path == "/big":
            return web.Response(status=400, text="secret-internal-page " + "A" * 1_000_000)
        status = int(request.path.removeprefix("/r"))
        return web.Response(status=status, headers={"Location": f"{self.internal}/steal"})

    async def start(self) -> None:
        """Listen on 127.0.0.1."""
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        """Stop listening."""
        if self.runner is not None:
            await self.runner.cleanup()


@pytest.fixture(scope="module")
async def internal() -> AsyncIterator[Receiver]:
    """An internal service the callback host would like us to reach."""
    rec = Receiver()
    await rec.start()
    yield rec
    await rec.stop()


@pytest.fixture(scope="module")
async def callback_host(internal: Receiver) -> AsyncIterator[CallbackHost]:
    """The hostile callback host."""
    host = CallbackHost(internal.url)
    await host.start()
    yield host
    await host.stop()


@pytest.fixture(scope="module")
async def gateway(tmp_path_factory: pytest.TempPathFactory,
                  callback_host: CallbackHost) -> AsyncIterator[Daemon]:
    """A daemon whose API accounts call back to the hostile host; bodies up to 10 MiB."""
    tmp: Path = tmp_path_factory.mktemp("api-hardening")
    http_port, smtp_port = free_port(), free_port()
    extra = "".join(f"""
        [[channels]]
        type = "api"
        name = "{name}"
        secret = "{API_SECRET}"
        callback_url = "http://127.0.0.1:{callback_host.port}/{path}"
        """ for name, path in (("r307", "r307"), ("r302", "r302"), ("big", "big")))
    config = base_config(tmp / "data", http_port, smtp_port, extra=extra).replace(
        "max_body_bytes = 1048576", f"max_body_bytes = {TEN_MIB}")
    daemon = Daemon(tmp, config, http_port)
    daemon.start()
    await daemon.wait_ready()
    yield daemon
    assert await daemon.stop() == 0, daemon.logs()


async def failed_reply(http: aiohttp.ClientSession, daemon: Daemon, account: str) -> dict:
    """A customer writes in on ``account``, an agent replies; the reply once it failed."""
    status, body = await post_json(http, f"{daemon.url}/hooks/api/{account}/messages", {
        "message_id": unique("m"), "from": {"id": unique("u")}, "text": "hi"})
    assert status == 201, body
    conversation = body["message"]["conversation_id"]
    status, reply = await post_json(
        http, f"{daemon.url}/v1/conversations/{conversation}/messages", {"text": "answer"})
    assert status == 202, reply

    async def failed() -> dict | None:
        _, message = await get_json(http, f"{daemon.url}/v1/messages/{reply['id']}")
        return message if message["status"] == "failed" else None

    return await wait_until(failed)  # type: ignore[no-any-return]


@pytest.mark.parametrize("status", [307, 302])
async def test_a_redirecting_callback_is_not_followed(
        gateway: Daemon, http: aiohttp.ClientSession, callback_host: CallbackHost,
        internal: Receiver, status: int) -> None:
    message = await failed_reply(http, gateway, f"r{status}")
    assert message["error"]["code"] == "callback_redirected"
    assert "redirect" in message["error"]["message"]
    assert f"/r{status}" in callback_host.hits
    assert internal.attempts == []  # the internal target received nothing


async def test_a_callback_error_body_is_kept_only_as_a_short_excerpt(
        gateway: Daemon, http: aiohttp.ClientSession) -> None:
    message = await failed_reply(http, gateway, "big")
    error = message["error"]["message"]
    assert message["error"]["code"] == "callback_rejected"
    assert "secret-internal-page AAA" in error
    assert len(error) < 400


async def refused_while_sending(daemon: Daemon, headers: dict[str, str], *,
                                chunked: bool = False) -> bytes:
    """Start a 10 MiB POST, send 64 KiB of it, and read the answer without sending more.

    A server that reads the body before checking credentials waits for the rest and never
    answers: the deadline fails the test.
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", daemon.http_port)
    try:
        head_lines = ["POST /hooks/api/default/messages HTTP/1.1", "Host: 127.0.0.1",
                      "Content-Type: application/json",
                      "Transfer-Encoding: chunked" if chunked else f"Content-Length: {TEN_MIB}",
                      *(f"{k}: {v}" for k, v in headers.items())]
        writer.write(("\r\n".join(head_lines) + "\r\n\r\n").encode())
        piece = b"x" * 65536
        writer.write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
        await writer.drain()
        return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    finally:
        writer.close()


@pytest.mark.parametrize(("name", "headers"), [
    ("no credentials", {}),
    ("unknown token", bearer("not-a-token-at-all-0123")),
    ("stale signature", {"Omnirelay-Signature": f"t={int(time.time()) - 3600},v1=00"}),
    ("signature without timestamp", {"Omnirelay-Signature": "v1=00"}),
])
async def test_an_unauthenticated_10_mib_post_is_refused_before_its_body_is_read(
        gateway: Daemon, name: str, headers: dict[str, str]) -> None:
    answer = await refused_while_sending(gateway, headers)
    assert answer.startswith(b"HTTP/1.1 401 "), answer
    chunked = await refused_while_sending(gateway, headers, chunked=True)
    assert chunked.startswith(b"HTTP/1.1 401 "), chunked


async def test_a_valid_token_still_posts_through_the_same_path(
        gateway: Daemon, http: aiohttp.ClientSession) -> None:
    status, body = await post_json(http, f"{gateway.url}/hooks/api/default/messages", {
        "message_id": unique("m"), "from": {"id": unique("u")}, "text": "hi"}, token=TOKEN)
    assert status == 201, body


def nested(depth: int) -> bytes:
    """A JSON value ``depth`` arrays deep (orjson itself parses up to 1024)."""
    return b"[" * depth + b"]" * depth


@pytest.mark.parametrize("field", [
    "sent_at", "context", "text", "message_id", "subject", "html", "in_reply_to",
    "attachments", "from"])
async def test_json_nested_a_thousand_deep_in_any_field_is_422(
        gateway: Daemon, http: aiohttp.ClientSession, field: str) -> None:
    fields = {"message_id": b'"' + unique("m").encode() + b'"', "from": b'{"id": "u"}',
              "text": b'"hi"'}
    value = nested(1000)
    if field == "context":
        value = b'{"a": ' + nested(300) + b"}"  # deeper than orjson writes (254)
    fields[field] = value
    body = b"{" + b",".join(b'"%s": %s' % (k.encode(), v) for k, v in fields.items()) + b"}"
    before = await head(http, gateway)
    async with http.post(f"{gateway.url}/hooks/api/default/messages", data=body,
                         headers={"Content-Type": "application/json", **bearer()}) as resp:
        answer = await resp.json()
        assert resp.status == 422, answer
    assert answer["error"]["code"] == "validation_failed"
    assert field.split("_")[0] in answer["error"]["message"]
    assert await head(http, gateway) == before


async def test_a_signed_post_with_a_valid_signature_is_verified_after_the_body(
        gateway: Daemon, http: aiohttp.ClientSession) -> None:
    raw = b'{"message_id": "%s", "from": {"id": "u"}, "text": "hi"}' % unique("m").encode()
    async with http.post(f"{gateway.url}/hooks/api/big/messages", data=raw, headers={
            "Omnirelay-Signature": signing.sign(API_SECRET, raw)}) as resp:
        assert resp.status == 201
    async with http.post(f"{gateway.url}/hooks/api/big/messages", data=raw + b" ", headers={
            "Omnirelay-Signature": signing.sign(API_SECRET, raw)}) as resp:
        assert resp.status == 401


@pytest.mark.parametrize("headers", [{}, {"Idempotency-Key": "deep"}])
async def test_a_reply_nested_deeper_than_the_store_can_write_is_422(
        gateway: Daemon, http: aiohttp.ClientSession, headers: dict[str, str]) -> None:
    status, body = await post_json(http, f"{gateway.url}/hooks/api/default/messages", {
        "message_id": unique("m"), "from": {"id": unique("u")}, "text": "hi"})
    assert status == 201, body
    conversation = body["message"]["conversation_id"]
    raw = b'{"template": "t", "variables": {"a": ' + nested(300) + b"}}"
    async with http.post(f"{gateway.url}/v1/conversations/{conversation}/messages", data=raw,
                         headers={**bearer(), "Content-Type": "application/json", **headers}
                         ) as resp:
        answer = await resp.json()
        assert resp.status == 422, answer
    assert "nested" in answer["error"]["message"]

"""The HTTP surface against hostile or careless clients (issues 15 and 17)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.api.app import create_app
from gateway.config import TokenConfig
from gateway.errors import StoreError
from gateway.store.base import Route
from tests.conftest import READ_TOKEN, TOKEN, Daemon, base_config, free_port
from tests.helpers import bearer, get_json, post_inbound, post_json, unique, wait_until

# ---------------------------------------------------------------- tokens


async def test_authorization_header_that_is_not_utf8_is_401_not_500(daemon: Daemon) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", daemon.http_port)
    writer.write(b"GET /v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 b"Authorization: Bearer \xff\xfe\xc3(\r\nConnection: close\r\n\r\n")
    await writer.drain()
    answer = await reader.read()
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 401"), answer[:200]
    assert orjson.loads(body)["error"]["code"] == "unauthorized"


# ---------------------------------------------------------------- SSE streams


async def test_stream_heartbeat_is_checked_like_the_feed_parameters(
        daemon: Daemon, http: aiohttp.ClientSession) -> None:
    for value in ("x", "0.05", "0", "61", "nan", "inf", "-1"):
        async with http.get(f"{daemon.url}/v1/events/stream", params={"heartbeat": value},
                            headers=bearer()) as resp:
            assert resp.status == 400, value
            error = (await resp.json())["error"]
            assert error["code"] == "bad_request"
            assert "heartbeat" in error["message"]
    async with http.get(f"{daemon.url}/v1/events/stream", params={"hearbeat": "5"},
                        headers=bearer()) as resp:
        assert resp.status == 400  # a typo is named, not ignored


async def _open_stream(http: aiohttp.ClientSession, url: str,
                       token: str) -> aiohttp.ClientResponse:
    resp = await http.get(f"{url}/v1/events/stream", params={"heartbeat": "1"},
                          headers=bearer(token))
    if resp.status == 200:
        assert await resp.content.readline() == b"retry: 2000\n"
    return resp


async def test_open_streams_are_capped_per_token(daemon: Daemon) -> None:
    cap = 8  # the default [server] max_streams_per_token
    async with aiohttp.ClientSession() as http:
        streams = [await _open_stream(http, daemon.url, READ_TOKEN) for _ in range(cap)]
        assert all(s.status == 200 for s in streams)
        refused = await _open_stream(http, daemon.url, READ_TOKEN)
        assert refused.status == 429
        assert int(refused.headers["Retry-After"]) > 0
        assert (await refused.json())["error"]["code"] == "too_many_streams"
        refused.release()
        other = await _open_stream(http, daemon.url, TOKEN)  # another token is not held up
        assert other.status == 200
        other.close()
        # A closed stream frees its place (noticed at its next heartbeat).
        streams.pop().close()

        async def reopened() -> aiohttp.ClientResponse | None:
            resp = await _open_stream(http, daemon.url, READ_TOKEN)
            if resp.status == 200:
                return resp
            resp.release()
            await asyncio.sleep(0.2)
            return None

        for _ in range(50):
            again = await reopened()
            if again is not None:
                streams.append(again)
                break
        else:
            raise AssertionError("a closed stream never freed its place")
        for stream in streams:
            stream.close()


# ---------------------------------------------------------------- replies


async def _customer(http: aiohttp.ClientSession, daemon: Daemon) -> tuple[str, str]:
    status, created = await post_inbound(http, daemon.url, {
        "message_id": unique("m"), "from": {"id": unique("u")}, "text": "hello"})
    assert status == 201, created
    message = created["message"]
    return message["customer_id"], message["conversation_id"]


async def test_a_channel_with_several_accounts_needs_the_account(
        daemon: Daemon, http: aiohttp.ClientSession) -> None:
    customer_id, conversation_id = await _customer(http, daemon)
    for url in (f"{daemon.url}/v1/customers/{customer_id}/messages",
                f"{daemon.url}/v1/conversations/{conversation_id}/messages"):
        status, error = await post_json(http, url, {"text": "hi", "channel": "api"})
        assert status == 422, error
        assert "crm, default" in error["error"]["message"]
        assert error["error"]["details"]["accounts"] == ["crm", "default"]
    status, queued = await post_json(http, f"{daemon.url}/v1/customers/{customer_id}/messages",
                                     {"text": "hi", "channel": "api", "account": "crm"})
    assert status == 202, queued
    assert queued["account"] == "crm"


async def test_a_template_alone_is_refused_never_sent_empty(
        daemon: Daemon, http: aiohttp.ClientSession) -> None:
    _, conversation_id = await _customer(http, daemon)
    url = f"{daemon.url}/v1/conversations/{conversation_id}/messages"
    status, error = await post_json(http, url, {"template": "order_shipped",
                                                "variables": {"order": "A-1"}})
    assert status == 422, error
    assert "order_shipped" in error["error"]["message"]
    status, page = await get_json(http, url)
    assert [m["direction"] for m in page["messages"]] == ["inbound"]  # nothing queued


# ---------------------------------------------------------------- store unavailable


class _FullDiskStore:
    """Every write fails the way a full disk makes it fail."""

    async def put_blobs(self, items: list[Any]) -> list[Any]:
        if items:
            raise OSError(errno.ENOSPC, "No space left on device")
        return []

    async def enqueue_outbound(self, **_kw: Any) -> Any:
        raise StoreError("database or disk is full")

    async def add_identity(self, *_args: Any) -> Any:
        raise StoreError("database or disk is full")


@contextlib.asynccontextmanager
async def _app_over(store: object, channels: list[dict[str, Any]] | None = None
                    ) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    from gateway.config import Secret

    gateway = SimpleNamespace(
        config=SimpleNamespace(
            server=SimpleNamespace(max_body_bytes=1 << 20, trusted_proxies=(),
                                   max_streams_per_token=8),
            tokens=(TokenConfig("admin", Secret(TOKEN), frozenset({"admin"})),),
            store=SimpleNamespace(max_attachment_bytes=1 << 20, default_region="KR")),
        adapters={}, store=store, routes=lambda: [Route("api", "crm", None, ("external",))],
        channel_report=lambda: [dict(entry) for entry in channels or []])
    client = TestClient(TestServer(create_app(gateway)))  # type: ignore[arg-type]
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


async def test_every_write_on_a_full_disk_is_503_with_retry_after() -> None:
    attachment = {"filename": "a.txt", "content_base64": "aGk="}
    requests = [
        ("/v1/conversations/cnv_x/messages", {"text": "hi"}),
        ("/v1/conversations/cnv_x/messages", {"text": "hi", "attachments": [attachment]}),
        ("/v1/customers/cus_x/messages", {"text": "hi", "channel": "api"}),
        ("/v1/customers/cus_x/identities", {"kind": "email", "address": "a@b.example"}),
    ]
    async with _app_over(_FullDiskStore()) as client:
        for path, body in requests:
            resp = await client.post(path, json=body, headers=bearer())
            assert resp.status == 503, (path, await resp.text())
            assert int(resp.headers["Retry-After"]) > 0
            assert (await resp.json())["error"]["code"] == "store_unavailable"


# ---------------------------------------------------------------- webhooks, client address


async def test_webhook_urls_and_remote_answers_never_show_in_full(tmp_path: Path) -> None:
    """An unnamed webhook with credentials in its URL, answering with a redirect to an
    internal address and a long page: not followed, and neither the credentials nor the
    page reach /metrics, the log or the dead letters. Behind a trusted proxy, the log
    names the client the proxy forwarded for."""
    internal_hits: list[str] = []

    async def hook(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=307, headers={"Location": "/internal"},
                            text="<html>" + "internal stack frame " * 400 + "</html>")

    async def internal(request: web.Request) -> web.Response:
        internal_hits.append(request.method)
        return web.Response(text="internal answer")

    target = web.Application()
    target.router.add_post("/hook", hook)
    target.router.add_route("*", "/internal", internal)
    runner = web.AppRunner(target, access_log=None)
    await runner.setup()
    target_port = free_port()
    await web.TCPSite(runner, "127.0.0.1", target_port).start()

    http_port = free_port()
    secret_url = f"http://relay:pa55word@127.0.0.1:{target_port}/hook?key=qu3rykey"
    config = base_config(tmp_path / "data", http_port, free_port(), extra=f"""
        [[channels]]
        type = "api"
        name = "crm"
        secret = "crm-secret-0123456789"
        [[webhooks]]
        url = "{secret_url}"
        secret = "hook-secret-0123456789"
        max_age_seconds = 0.5
        retry_base_seconds = 0.1
        retry_max_seconds = 0.2
        """).replace('max_body_bytes = 1048576',
                     'max_body_bytes = 1048576\ntrusted_proxies = ["127.0.0.1/32"]')
    daemon = Daemon(tmp_path, config, http_port)
    daemon.start()
    try:
        await daemon.wait_ready()
        async with aiohttp.ClientSession() as http:
            await post_inbound(http, daemon.url, {"message_id": unique("m"),
                                                  "from": {"id": "w"}, "text": "hi"})

            async def dead_letters() -> list[dict[str, Any]]:
                _, page = await get_json(http, f"{daemon.url}/v1/webhooks/dead-letters")
                return page["dead_letters"]  # type: ignore[no-any-return]

            for _ in range(200):
                letters = await dead_letters()
                if letters:
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("nothing was dead-lettered")
            letter = letters[0]
            assert letter["subscription"] == f"127.0.0.1:{target_port}"
            assert letter["last_error"].startswith("HTTP 307: <html>internal stack frame")
            assert len(letter["last_error"]) < 240
            async with http.get(f"{daemon.url}/metrics") as resp:
                metrics = await resp.text()
            assert f'subscription="127.0.0.1:{target_port}"' in metrics
            # A refused hook behind the proxy: logged with the forwarded client.
            async with http.post(f"{daemon.url}/hooks/api/crm/messages", data=b"{}",
                                 headers={"X-Forwarded-For": "198.51.100.1, 203.0.113.9"}
                                 ) as resp:
                assert resp.status == 401
    finally:
        assert await daemon.stop() == 0, daemon.logs()
        await runner.cleanup()
    assert internal_hits == []  # the redirect was not followed
    logs = daemon.logs()
    for leaked in ("pa55word", "qu3rykey", "relay:"):
        assert leaked not in logs
        assert leaked not in metrics
    rejected = [orjson.loads(line) for line in logs.splitlines()
                if '"hook.rejected"' in line]
    assert rejected and rejected[-1]["client"] == "203.0.113.9"


async def test_x_forwarded_for_from_an_untrusted_peer_is_ignored(
        daemon: Daemon, http: aiohttp.ClientSession) -> None:
    def refusals() -> list[dict[str, Any]]:
        return [orjson.loads(line) for line in daemon.logs().splitlines()
                if '"hook.rejected"' in line]

    before = len(refusals())
    async with http.post(f"{daemon.url}/hooks/api/crm/messages",
                         data=orjson.dumps({"message_id": unique("spoof")}),
                         headers={"X-Forwarded-For": "203.0.113.9"}) as resp:
        assert resp.status == 401
    # Lines are written by the daemon's log-writer thread: wait for this one.
    async def new_refusals() -> list[dict[str, Any]]:
        return refusals()[before:]

    new = await wait_until(new_refusals)
    assert new[-1]["client"] == "127.0.0.1"


# ---------------------------------------------------------------- downloads


class _AttachmentStore:
    """Attachments whose metadata came in before it was checked (older rows)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.items = {
            "att_ko": SimpleNamespace(filename="보고서 \"최종\".pdf",
                                      content_type="application/pdf"),
            "att_crlf": SimpleNamespace(filename="a\r\nSet-Cookie: x.txt",
                                        content_type="text/plain\r\nX-Injected: 1"),
            "att_plain": SimpleNamespace(filename="notes.txt",
                                         content_type="text/plain; charset=utf-8"),
        }

    async def get_attachment(self, attachment_id: str) -> tuple[Any, Path]:
        return self.items[attachment_id], self.path


async def test_downloads_name_files_per_rfc_6266_and_never_drop_the_connection(
        tmp_path: Path) -> None:
    blob = tmp_path / "blob"
    blob.write_bytes(b"%PDF-1.4 hello")
    async with _app_over(_AttachmentStore(blob)) as client:
        resp = await client.get("/v1/attachments/att_ko", headers=bearer())
        assert resp.status == 200
        disposition = resp.headers["Content-Disposition"]
        assert disposition.startswith('attachment; filename="')
        assert ("filename*=UTF-8''%EB%B3%B4%EA%B3%A0%EC%84%9C%20%22%EC%B5%9C%EC%A2%85%22.pdf"
                in disposition)
        assert await resp.read() == b"%PDF-1.4 hello"

        resp = await client.get("/v1/attachments/att_crlf", headers=bearer())
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "application/octet-stream"
        assert "X-Injected" not in resp.headers and "Set-Cookie" not in resp.headers
        assert resp.headers["Content-Disposition"] == \
            'attachment; filename="aSet-Cookie: x.txt"'

        resp = await client.get("/v1/attachments/att_plain", headers=bearer())
        assert resp.headers["Content-Type"] == "text/plain; charset=utf-8"
        assert resp.headers["Content-Disposition"] == 'attachment; filename="notes.txt"'


async def test_channel_errors_show_urls_redacted() -> None:
    error = ("callback unreachable: InvalidUrlClientError: "
             "https://crm:pa55@crm.example/cb?key=k3y")
    channels = [{"name": "crm", "type": "api", "state": "degraded", "last_error": error}]
    async with _app_over(object(), channels) as client:
        resp = await client.get("/v1/channels", headers=bearer())
        [entry] = (await resp.json())["channels"]
    assert entry["last_error"] == ("callback unreachable: InvalidUrlClientError: "
                                   "https://crm.example/cb")

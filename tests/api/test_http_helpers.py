"""The shared HTTP helpers: URL redaction, remote error excerpts, the client address."""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import socket
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from aiohttp.client_reqrep import ConnectionKey

from gateway.config import parse_config
from gateway.http import (
    TRUSTED_PROXIES_KEY,
    Network,
    client_address,
    connection_failure,
    redact_url,
    redact_urls_in,
    remote_error_excerpt,
    unreachable_reason,
)
from tests.conftest import free_port


def test_redact_url_drops_user_info_query_and_fragment() -> None:
    url = "https://hook:s3cr3t@desk.example:8443/in/omnirelay?key=abc123&x=1#frag"
    assert redact_url(url) == "https://desk.example:8443/in/omnirelay"
    assert redact_url("http://[::1]:9000/a?token=t") == "http://[::1]:9000/a"
    assert redact_url("http://desk.example:notaport/") == "<invalid URL>"


def test_urls_inside_a_text_are_redacted() -> None:
    text = "Cannot connect to http://u:pw@10.0.0.5/hook?key=k (refused); see https://a.example/?t=1"
    assert redact_urls_in(text) == ("Cannot connect to http://10.0.0.5/hook (refused); "
                                    "see https://a.example/")


def test_remote_error_excerpt_is_short_one_line_and_redacted() -> None:
    body = ("<html>\r\n<title>Internal</title>\n" + "secret-stack-frame " * 500
            + "http://admin:pw@intranet/x?k=v").encode()
    excerpt = remote_error_excerpt(502, body)
    assert excerpt.startswith("HTTP 502: <html> <title>Internal</title>")
    assert len(excerpt) <= len("HTTP 502: ") + 201
    assert excerpt.endswith("…")
    assert "\n" not in excerpt and "\r" not in excerpt
    assert remote_error_excerpt(500, b"") == "HTTP 500"
    assert remote_error_excerpt(500, b"see http://u:pw@h/p?q=1") == "HTTP 500: see http://h/p"
    assert "\ufffd" in remote_error_excerpt(500, b"\xff\xfe bad bytes")


@pytest.mark.parametrize(("proxies", "forwarded", "expected"), [
    # No trusted proxy configured: the header is anyone's to send, so it is ignored.
    ((), "203.0.113.7", "127.0.0.1"),
    # The peer is trusted: the hop it names is the client.
    (("127.0.0.1/32",), "203.0.113.7", "203.0.113.7"),
    # Walked right to left: trusted hops are skipped, a spoofed left end is not believed.
    (("127.0.0.1/32", "10.0.0.0/8"), "198.51.100.1, 203.0.113.7, 10.1.2.3", "203.0.113.7"),
    # Several header lines are one chain.
    (("127.0.0.1/32", "10.0.0.0/8"), ["203.0.113.7", "10.1.2.3"], "203.0.113.7"),
    # Garbage in the chain: the last trusted hop is all we know.
    (("127.0.0.1/32", "10.0.0.0/8"), "not-an-ip, 10.1.2.3", "10.1.2.3"),
    # Every hop trusted: the left end.
    (("127.0.0.0/8", "10.0.0.0/8"), "10.9.9.9, 10.1.2.3", "10.9.9.9"),
    # A trusted network that is not the peer's: ignored.
    (("10.0.0.0/8",), "203.0.113.7", "127.0.0.1"),
    # No header from a trusted peer: the peer.
    (("127.0.0.1/32",), None, "127.0.0.1"),
])
async def test_client_address_believes_x_forwarded_for_only_from_trusted_peers(
        proxies: tuple[str, ...], forwarded: str | list[str] | None, expected: str) -> None:
    networks: tuple[Network, ...] = tuple(ipaddress.ip_network(p) for p in proxies)
    async with _echo_server(networks) as url, aiohttp.ClientSession() as http:
        headers: list[tuple[str, str]] = []
        if isinstance(forwarded, str):
            headers = [("X-Forwarded-For", forwarded)]
        elif forwarded is not None:
            headers = [("X-Forwarded-For", value) for value in forwarded]
        async with http.get(url, headers=headers) as resp:
            assert await resp.text() == expected


@contextlib.asynccontextmanager
async def _echo_server(proxies: tuple[Network, ...]) -> AsyncIterator[str]:
    """A server answering with what ``client_address`` makes of the request."""
    async def echo(request: web.Request) -> web.Response:
        return web.Response(text=client_address(request))

    app = web.Application()
    app[TRUSTED_PROXIES_KEY] = proxies
    app.router.add_get("/", echo)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        await runner.cleanup()


def test_unnamed_webhooks_are_named_by_host_never_by_url() -> None:
    config = parse_config("""
        [[webhooks]]
        url = "https://bot:hunter2@desk.example/hooks/a?key=abc"
        secret = "hook-secret-0123456789"
        [[webhooks]]
        url = "https://desk.example/hooks/b"
        secret = "hook-secret-0123456789"
        [[webhooks]]
        url = "https://crm.example:8443/in?token=zzz"
        secret = "hook-secret-0123456789"
        [[webhooks]]
        name = "named"
        url = "https://other.example/in"
        secret = "hook-secret-0123456789"
        """)
    names = [hook.name for hook in config.webhooks]
    assert names[2:] == ["crm.example:8443", "named"]
    # Two on one host: the host and a short hash of each URL, distinct and stable.
    assert names[0].startswith("desk.example-") and names[1].startswith("desk.example-")
    assert names[0] != names[1] and len(names[0]) == len("desk.example-") + 8
    for name in names:
        for secret in ("bot", "hunter2", "key", "zzz", "hooks", "token"):
            assert secret not in name


@pytest.mark.parametrize(("exc", "reason"), [
    (TimeoutError(), "timed out"),
    (ConnectionRefusedError(errno.ECONNREFUSED, "Connect call failed ('10.0.0.5', 443)"),
     "Connection refused"),
    (socket.gaierror(socket.EAI_NONAME, "Name or service not known"), "host name not found"),
    (aiohttp.ClientConnectorError(
        ConnectionKey("api.example", 443, True, True, None, None, None),
        OSError(errno.EHOSTUNREACH, "No route to host")), "No route to host"),
    (ValueError("https://api.telegram.org/bot123:SECRET/getMe"), None),
])
def test_a_connection_failure_is_told_by_the_os_reason_never_the_message(
        exc: BaseException, reason: str | None) -> None:
    assert connection_failure(exc) == reason
    assert "SECRET" not in unreachable_reason(exc)

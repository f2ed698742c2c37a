"""Small HTTP helpers shared by the API, the provider hooks and outbound HTTP.

Two rules live here so every caller gets them the same way: a URL is shown only redacted
(no user info, no query: either may hold a credential), and a remote answer's text is shown
only as a short excerpt (a remote host must not be able to fill our logs, outbox errors or
dead letters with an internal page).
"""

from __future__ import annotations

import email.utils
import ipaddress
import os
import re
import socket
import ssl
import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson
from aiohttp import web

from gateway.errors import PayloadTooLarge

MAX_BODY_KEY = web.AppKey("max_body_bytes", int)
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
TRUSTED_PROXIES_KEY = web.AppKey("trusted_proxies", tuple[Network, ...])
CLIENT_ADDRESS_KEY = web.RequestKey("client_address", str)
REMOTE_EXCERPT_CHARS = 200
_URL_IN_TEXT = re.compile(r"""[a-zA-Z][a-zA-Z0-9+.-]{0,15}://[^\s'"<>]+""")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


def redact_url(url: str) -> str:
    """``url`` without user info, query or fragment: safe for logs, metrics and answers."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "<invalid URL>"
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{port}" if port is not None else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def redact_urls_in(text: str) -> str:
    """Every URL inside ``text`` (an exception message, say) passed through :func:`redact_url`."""
    return _URL_IN_TEXT.sub(lambda match: redact_url(match.group(0)), text)


def remote_error_excerpt(status: int, body: bytes | str | None = None, *,
                         limit: int = REMOTE_EXCERPT_CHARS) -> str:
    """``HTTP 502: <first 200 characters>`` of a remote answer, one line, URLs redacted.

    Readable by any read-scope token (outbox errors) or admin (dead letters), so a remote
    host's answer is never kept verbatim: a redirect target or an internal error page
    could otherwise be read back through us.
    """
    if isinstance(body, bytes):
        text = body[: limit * 4].decode("utf-8", errors="replace")
    else:
        text = (body or "")[: limit * 4]
    text = redact_urls_in(_CONTROL.sub(" ", text)).strip()
    if len(text) > limit:
        text = text[:limit].rstrip() + "…"
    return f"HTTP {status}: {text}" if text else f"HTTP {status}"


def _parse_ip(value: str) -> IPAddress | None:
    value = value.strip()
    if value.startswith("[") and "]" in value:  # "[2001:db8::1]:443"
        value = value[1:value.index("]")]
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _trusted(address: IPAddress, proxies: tuple[Network, ...]) -> bool:
    return any(address in network for network in proxies)


def client_address(request: web.Request) -> str:
    """The client's IP address: the peer, or what trusted proxies say in X-Forwarded-For.

    The chain is walked right to left (the right end was added by the proxy nearest to
    us), skipping hops in ``[server] trusted_proxies``; the first untrusted hop is the
    client. From an untrusted peer the header is ignored: anyone can send it.
    """
    cached: str | None = request.get(CLIENT_ADDRESS_KEY)
    if cached is not None:
        return cached
    peer = request.remote or ""
    proxies = request.app.get(TRUSTED_PROXIES_KEY, ())
    result = peer
    peer_ip = _parse_ip(peer)
    forwarded = request.headers.getall("X-Forwarded-For", [])
    if proxies and forwarded and peer_ip is not None and _trusted(peer_ip, proxies):
        hops = [hop for header in forwarded for hop in header.split(",")]
        result = str(peer_ip)
        for hop in reversed(hops):
            hop_ip = _parse_ip(hop)
            if hop_ip is None:
                break  # garbage from further out: the last trusted hop is all we know
            result = str(hop_ip)
            if not _trusted(hop_ip, proxies):
                break
    request[CLIENT_ADDRESS_KEY] = result
    return result


_JSON_HEADERS = {"Content-Type": "application/json"}


def json_response(data: Any, *, status: int = 200,
                  headers: dict[str, str] | None = None) -> web.Response:
    """A JSON response serialized with orjson.

    The header is given whole, not as ``content_type=``: aiohttp then skips parsing and
    re-rendering it (about half the cost of building a response, paid by every answer).
    """
    return web.Response(body=orjson.dumps(data), status=status,
                        headers=_JSON_HEADERS if headers is None
                        else {**headers, **_JSON_HEADERS})


async def read_body(request: web.Request) -> bytes:
    """Read the body, refusing with 413 before reading more than ``max_body_bytes``."""
    limit = request.app[MAX_BODY_KEY]
    length = request.content_length
    if length is not None:
        if length > limit:
            raise PayloadTooLarge(f"the body is {length} bytes; the limit is {limit}")
        return await request.read()  # the declared length is within the limit
    chunks = []
    size = 0
    async for chunk in request.content.iter_chunked(65536):
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def retry_after_seconds(value: str | None) -> float | None:
    """Parse a ``Retry-After`` header: seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def connection_failure(exc: BaseException) -> str | None:
    """Why a connection failed, as an operator reads it ("Connection refused", "timed
    out", "host name not found", "TLS: CERTIFICATE_VERIFY_FAILED"), or None when ``exc`` is
    no connection failure. Built from the OS error only, never from a library's message,
    which may quote a URL holding a token (a Telegram bot's)."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    os_error = getattr(exc, "os_error", None)  # aiohttp's ClientConnectorError wraps one
    if isinstance(os_error, OSError):
        exc = os_error
    if isinstance(exc, ssl.SSLError):
        return f"TLS: {exc.reason or type(exc).__name__}"
    if isinstance(exc, socket.gaierror):
        return "host name not found"
    if isinstance(exc, OSError) and exc.errno is not None and exc.errno > 0:
        return os.strerror(exc.errno)
    return None


def unreachable_reason(exc: BaseException) -> str:
    """:func:`connection_failure`, else the error's type (never its message)."""
    return connection_failure(exc) or type(exc).__name__

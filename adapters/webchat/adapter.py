"""Web chat: the widget, its WebSocket, and agents' replies pushed to open browsers.

A shop adds ``<script src="https://…/chat/{account}/widget.js" async></script>`` to its
pages. The widget opens ``/chat/{account}/ws`` (the ``Origin`` must be one of the account's
``allowed_origins``), says who it is with its signed visitor token, gets the visitor's
history, and exchanges JSON frames (docs/webchat.md). A visitor's message is stored like
every channel's (normalizer, ingest) and confirmed to the browser only after the commit.
An agent's reply leaves through the outbox like any other channel's: ``send`` pushes it to
the visitor's open sockets; the browser's ``ack`` makes it ``delivered`` and its ``read``
(shown in the open panel) ``read``.

Several instances on one PostgreSQL store: a visitor's sockets are on the instances their
browsers connected to, a reply is sent by whichever instance claimed it. Every push to a
visitor (a reply, a visitor's message confirmed to their other tabs) goes to the sockets
held here at once and, through ``ctx.broadcast``, to those held by every other instance;
the browser's receipts reach the instance holding its socket, which records them in the
shared store. An instance whose database connection broke may have missed pushes: once it
listens again it gives each socket here what the visitor's history has and the socket was
not given. With one instance (SQLite) there is no broadcast and nothing else happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import secrets
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Protocol, runtime_checkable
from urllib.parse import quote

import orjson
from aiohttp import WSMsgType, web

from adapters.base import AdapterHealth, ChannelAdapter, OutboundMessage, SendResult
from adapters.webchat import tokens
from adapters.webchat.config import DEFAULT_TITLE, WebChatConfig
from adapters.webchat.limits import RateLimiter, limiter, take_all
from gateway.broadcast import Broadcast
from gateway.errors import Forbidden, NotFound, OmnirelayError
from gateway.http import client_address, json_response
from gateway.receipts import Receipt
from gateway.store.base import StoredAttachment
from normalizer.errors import InvalidInput
from normalizer.model import DeliveryStatus, Party
from normalizer.webchat import (
    Hello,
    frame_type,
    parse_hello,
    parse_receipt_ids,
    parse_visitor_message,
)

HELLO_TIMEOUT = 10.0  # seconds a new socket has to say who it is
PUSH_TIMEOUT = 5.0  # a browser that does not take a frame within this is dropped
RECEIPT_RETRIES = 10  # an ack can overtake the outbox recording the send; try again
RECEIPT_RETRY_DELAY = 0.2
HEARTBEAT = 25.0  # pings keep proxies from closing a quiet chat
REMEMBERED = 1000  # a visitor's own messages kept to answer a tab sending one again
ERASED_KEPT = 10_000  # erased customers' ids kept, so none of their messages is remembered
STATIC = resources.files("adapters.webchat") / "static"
_STATUS_RANK = {"queued": 0, "sent": 1, "delivered": 2, "read": 3}


@runtime_checkable
class HistoryStore(Protocol):
    """What the daemon's store offers beyond ``AdapterStore`` that web chat reads: the
    visitor's customer and conversations (history) and attachment files (downloads)."""

    async def find_customer(self, kind: str, address: str) -> dict[str, Any]:
        """The customer owning an identity, with conversations; NotFound otherwise."""

    async def list_messages(self, conversation_id: str, after: str | None,
                            limit: int) -> list[dict[str, Any]]:
        """A conversation's messages, oldest first."""

    async def get_attachment(self, attachment_id: str) -> tuple[StoredAttachment, Path]:
        """An attachment's metadata and the path of its bytes."""


@dataclass(eq=False, slots=True)
class Connection:
    """One open WebSocket of a visitor (a tab)."""

    ws: web.WebSocketResponse
    visitor: str
    hello: Hello
    address: str
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # Replies this socket was given, and the furthest status it reported for each: a
    # browser may report only on what it was shown, and only forwards.
    replies: dict[str, str] = field(default_factory=dict)
    # Every message this socket was given (history and pushes): what a catch-up after
    # missed pushes (``WebChatAdapter._missed``) need not send again.
    known: set[str] = field(default_factory=set)


class WebChatAdapter(ChannelAdapter):
    """The widget (``/chat/{account}/widget.js``), its WebSocket and the demo page."""

    type = "webchat"
    channels = frozenset({"webchat"})
    identity_kinds = frozenset({"webchat", "email"})
    channel_identity_kinds = {"webchat": ("webchat",)}
    config_class = WebChatConfig
    route_family = "/chat"
    config: WebChatConfig

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.counters.update({"connections": 0, "visitors_online": 0, "refused_origin": 0,
                              "rate_limited": 0, "invalid_frames": 0, "relayed": 0,
                              "relay_failed": 0, "caught_up": 0, "forgotten": 0})
        self._secret = b""
        self._sockets: dict[str, set[Connection]] = {}
        self._per_address: dict[str, int] = {}
        self._visitor_rate: RateLimiter = limiter(self.config.visitor_messages_per_minute)
        self._address_rate: RateLimiter = limiter(self.config.ip_messages_per_minute)
        self._tasks: set[asyncio.Task[None]] = set()
        # Per visitor, the last push from another instance still being handed over: the
        # next one waits for it, so a visitor sees them in the order they were published.
        self._relays: dict[str, asyncio.Task[None]] = {}
        # Per visitor with a socket here, their messages stored so far by client id (from the
        # history and the pushes), and those being stored: a tab sending one of them again
        # (every tab sends what waited offline) gets the stored one, free of the rate limit.
        self._stored: dict[str, dict[str, Mapping[str, Any]]] = {}
        self._storing: dict[tuple[str, str], asyncio.Future[None]] = {}
        # Customers erased since start (the newest ``ERASED_KEPT``): a message of theirs
        # read or pushed just before the erasure and arriving after it is not remembered.
        self._erased: dict[str, None] = {}
        self._unsubscribe: Callable[[], None] | None = None

    # ------------------------------------------------------------------ lifecycle

    async def on_start(self) -> None:
        """Take the token secret (configured, else the account's own kept in the store: the
        first one made, when several instances start at once on an empty store)."""
        if self.config.secret is not None:
            self._secret = self.config.secret.reveal().encode()
        else:
            key = f"webchat:{self.name}:token-secret"
            stored = await self.ctx.store.get_checkpoint(key)
            if stored is None:
                stored = await self.ctx.store.init_checkpoint(key, secrets.token_hex(32))
            self._secret = bytes.fromhex(stored)
        if self.ctx.broadcast is not None:
            self._unsubscribe = self.ctx.broadcast.subscribe(self._relayed, self._missed)
        if self.config.demo_page:
            self.log.info("webchat.demo_page", url=f"{self.ctx.public_url}{self.base}/")

    async def on_stop(self) -> None:
        """Close every open socket (1001) and wait for the receipts still being written."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        for conn in [c for conns in self._sockets.values() for c in conns]:
            with contextlib.suppress(Exception):
                await conn.ws.close(code=1001, message=b"server shutting down")
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    @property
    def base(self) -> str:
        """``/chat/{account}``."""
        return f"/chat/{self.name}"

    def family_routes(self) -> Sequence[web.RouteDef]:
        """The widget, its stylesheet, the WebSocket, file downloads and the demo page."""
        routes = [web.get(f"{self.base}/widget.js", self.widget_js),
                  web.get(f"{self.base}/widget.css", self.widget_css),
                  web.get(f"{self.base}/ws", self.socket),
                  web.get(f"{self.base}/file", self.file)]
        if self.config.demo_page:
            routes.append(web.get(f"{self.base}/", self.demo))
        return routes

    def sender(self, channel: str) -> Party:
        """Replies come from the account itself."""
        return Party("webchat", f"omnirelay:{self.name}", self.config.title or DEFAULT_TITLE)

    def health(self) -> AdapterHealth:
        """The base health, with the sockets open right now."""
        self.counters["visitors_online"] = len(self._sockets)
        return super().health()

    # ------------------------------------------------------------------ static parts

    async def widget_js(self, request: web.Request) -> web.StreamResponse:
        """The widget: one file, no dependencies, no eval (CSP: ``script-src`` our host)."""
        return _static("widget.js", "application/javascript")

    async def widget_css(self, request: web.Request) -> web.StreamResponse:
        """The widget's stylesheet, loaded into its shadow root (CSP: ``style-src``)."""
        return _static("widget.css", "text/css")

    async def demo(self, request: web.Request) -> web.StreamResponse:
        """A shop page with the widget, under a strict CSP, to try it (``demo_page``)."""
        page = (STATIC / "demo.html").read_text(encoding="utf-8")
        host = request.host
        for name, value in (("base", self.base), ("title", self.config.title or DEFAULT_TITLE),
                            ("origin", f"{request.scheme}://{host}")):
            page = page.replace("{{" + name + "}}", html.escape(value))
        csp = (f"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' "
               f"blob: data:; connect-src 'self' ws://{host} wss://{host}; "
               "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
        return web.Response(text=page, content_type="text/html", charset="utf-8",
                            headers={"Content-Security-Policy": csp,
                                     "X-Content-Type-Options": "nosniff",
                                     "Referrer-Policy": "no-referrer",
                                     "Cache-Control": "no-store"})

    async def file(self, request: web.Request) -> web.StreamResponse:
        """An attachment of the visitor's conversation, by the signed link they were given.

        Served as a download in a sandbox (``Content-Disposition: attachment``, CSP
        ``sandbox``, ``nosniff``) except raster images, which the widget shows inline:
        nothing a visitor or agent uploads runs as a page of ours.
        """
        attachment_id = request.query.get("id", "")
        visitor = request.query.get("v", "")
        signature = request.query.get("sig", "")
        expected = tokens.file_signature(self._secret, self.name, visitor, attachment_id)
        if not attachment_id or not secrets.compare_digest(signature, expected):
            raise Forbidden("this file link is not valid")
        store = self._history_store()
        meta, path = await store.get_attachment(attachment_id)
        content_type, filename = meta.content_type, meta.filename
        inline = content_type in ("image/png", "image/jpeg", "image/gif", "image/webp")
        disposition = "inline" if inline else "attachment"
        return web.FileResponse(path, headers={
            "Content-Type": content_type if inline else "application/octet-stream",
            "Content-Disposition": f"{disposition}; filename*=UTF-8''{quote(filename)}",
            "Content-Security-Policy": "default-src 'none'; sandbox",
            "X-Content-Type-Options": "nosniff",
            "Cross-Origin-Resource-Policy": "cross-origin",
            "Cache-Control": "private, max-age=86400"})

    # ------------------------------------------------------------------ the WebSocket

    def origin_allowed(self, request: web.Request) -> bool:
        """Whether the page opening the socket may: an allowed origin, or the demo page's."""
        origin = request.headers.get("Origin")
        if origin is None:
            return False
        origin = origin.rstrip("/").lower()
        if origin in self.config.allowed_origins:
            return True
        if self.config.demo_page:
            own = {f"{request.scheme}://{request.host}".lower(),
                   self.ctx.public_url.rstrip("/").lower()}
            return origin in own
        return False

    async def socket(self, request: web.Request) -> web.StreamResponse:
        """``/chat/{account}/ws``: check the Origin and the address's connections, then
        serve the visitor until they leave or the daemon stops."""
        if not self.origin_allowed(request):
            self.counters["refused_origin"] += 1
            raise Forbidden("this page's origin may not open the chat "
                            "(the account's allowed_origins)")
        address = client_address(request)
        if self._per_address.get(address, 0) >= self.config.max_connections_per_ip:
            self.counters["rate_limited"] += 1
            return json_response({"error": {"code": "rate_limited", "message":
                                            "too many chat connections from this address"}},
                                 status=429, headers={"Retry-After": "30"})
        # One message's files in base64, its text in UTF-8 and the JSON around them: a
        # bigger frame is refused while it is read, never held whole.
        max_frame = self.config.max_file_bytes * 4 // 3 + self.config.max_text_chars * 4
        ws = web.WebSocketResponse(heartbeat=HEARTBEAT, max_msg_size=max_frame + 65536)
        await ws.prepare(request)
        self._per_address[address] = self._per_address.get(address, 0) + 1
        self.counters["connections"] += 1
        conn: Connection | None = None
        try:
            async with self.ctx.closing_on_stop(ws):
                conn = await self._greet(ws, address)
                if conn is not None:
                    await self._serve(conn)
        finally:
            if conn is not None:
                self._forget(conn)
            left = self._per_address.get(address, 1) - 1
            if left > 0:
                self._per_address[address] = left
            else:
                self._per_address.pop(address, None)
        return ws

    async def _greet(self, ws: web.WebSocketResponse, address: str) -> Connection | None:
        """The hello frame: verify the token (a forged one is a new visitor), answer with
        the visitor's token and settings, then their history."""
        try:
            async with asyncio.timeout(HELLO_TIMEOUT):
                frame = await ws.receive()
        except TimeoutError:
            await ws.close(code=4000, message=b"no hello")
            return None
        if frame.type is not WSMsgType.TEXT:
            return None
        try:
            data = orjson.loads(frame.data)
            if frame_type(data) != "hello":
                raise InvalidInput('the first frame must be {"type": "hello"}')
            hello = parse_hello(data)
        except (orjson.JSONDecodeError, InvalidInput) as exc:
            await _send(ws, {"type": "error", "code": "invalid", "message": str(exc)})
            await ws.close(code=4000, message=b"bad hello")
            return None
        visitor = tokens.verify(self._secret, self.name, hello.token) or tokens.new_visitor_id()
        conn = Connection(ws, visitor, hello, address)
        self._sockets.setdefault(visitor, set()).add(conn)
        await self._push(conn, {
            "type": "welcome", "visitor": visitor,
            "token": tokens.issue(self._secret, self.name, visitor),
            # title null: the widget's own, in the language it speaks (language: "auto"
            # or the account's choice; a page's data-language wins over both).
            "title": self.config.title, "language": self.config.language,
            "pre_chat_form": self.config.pre_chat_form,
            "limits": {"max_text_chars": self.config.max_text_chars,
                       "max_file_bytes": self.config.max_file_bytes}})
        history = await self._history(visitor)
        for message in history:
            conn.known.add(message["id"])
            self._remember(visitor, message)
            if message["direction"] == "outbound":
                conn.replies[message["id"]] = message["status"]
        await self._push(conn, {"type": "history",
                                "messages": [self._for_visitor(m, visitor) for m in history]})
        return conn

    async def _serve(self, conn: Connection) -> None:
        """Frames until the socket closes; a bad frame is answered, never fatal."""
        async for frame in conn.ws:
            if frame.type is not WSMsgType.TEXT:
                continue
            data: object = None
            try:
                data = orjson.loads(frame.data)
                kind = frame_type(data)
                assert isinstance(data, dict)  # frame_type checked it
                if kind == "message":
                    await self._message(conn, data)
                elif kind in ("ack", "read"):
                    self._receipts(conn, parse_receipt_ids(data),
                                   "delivered" if kind == "ack" else "read")
                elif kind == "ping":
                    await self._push(conn, {"type": "pong"})
                else:
                    raise InvalidInput(f"unknown frame type {kind!r}")
            except (orjson.JSONDecodeError, InvalidInput) as exc:
                self.counters["invalid_frames"] += 1
                await self._push(conn, {"type": "error", "code": "invalid",
                                        "message": str(exc)[:300],
                                        "client_id": _client_id(data)})
            except OmnirelayError as exc:
                # Refused by the store (a file over [store] max_attachment_bytes): as
                # invalid, never resent. Unavailable (disk full, 503): the widget keeps the
                # message and sends it again.
                retry = exc.status >= 500
                await self._push(conn, {"type": "error",
                                        "code": exc.code if retry else "invalid",
                                        "message": exc.message[:300],
                                        "retry_after": 5 if retry else None,
                                        "client_id": _client_id(data)})

    async def _message(self, conn: Connection, data: dict[str, Any]) -> None:
        """Store a visitor's message, then confirm it to every tab of the visitor.

        One already stored, or being stored for another tab, is answered with the stored
        message and costs no rate: tabs reconnecting together each send what waited offline.
        """
        client_id = data.get("id") if isinstance(data.get("id"), str) else None
        if client_id is not None and await self._answered(conn, client_id):
            return
        # Both limits or neither: a message one refuses is sent again, and must not have
        # spent the other's token meanwhile.
        wait = take_all(((self._visitor_rate, conn.visitor),
                         (self._address_rate, conn.address)))
        if wait > 0:
            self.counters["rate_limited"] += 1
            await self._push(conn, {"type": "error", "code": "rate_limited",
                                    "message": "slow down: sent again shortly",
                                    "retry_after": round(wait, 1), "client_id": client_id})
            return
        inbound = parse_visitor_message(
            data, account=self.name, visitor=conn.visitor, hello=conn.hello,
            max_text_chars=self.config.max_text_chars,
            max_file_bytes=self.config.max_file_bytes)
        inbound.raw = orjson.dumps({k: v for k, v in data.items() if k != "attachments"})
        inbound.raw_content_type = "application/json"
        key = (conn.visitor, client_id or "")
        storing = self._storing[key] = asyncio.get_running_loop().create_future()
        try:
            result = await self.ingest(inbound)
            self._remember(conn.visitor, result.message)
        except OmnirelayError as exc:
            if exc.status >= 500:  # not stored (a full disk): the widget sends it again
                self._refund(conn)
            raise
        finally:
            if self._storing.get(key) is storing:
                del self._storing[key]
            storing.set_result(None)
        if not result.created:  # stored by another instance a moment ago: not charged
            self._refund(conn)
        await self._to_visitor(conn.visitor, result.message, client_id)

    def _refund(self, conn: Connection) -> None:
        """Give back what a message was charged: it did not count (a duplicate), or was not
        stored and will be sent again (charged then)."""
        self._visitor_rate.give_back(conn.visitor)
        self._address_rate.give_back(conn.address)

    async def _answered(self, conn: Connection, client_id: str) -> bool:
        """Answer a message the visitor's store already has (after the other tab's send of
        it, when one is under way) to this socket only: its other tabs had it confirmed."""
        storing = self._storing.get((conn.visitor, client_id))
        if storing is not None:
            await asyncio.wait({storing})
        message = self._stored.get(conn.visitor, {}).get(client_id)
        if message is None:
            return False  # new, or the other send failed: stored (and charged) as new
        self.counters["duplicates"] += 1
        await self._push(conn, {"type": "message", "client_id": client_id,
                                "message": self._for_visitor(message, conn.visitor)})
        return True

    def _remember(self, visitor: str, message: Mapping[str, Any]) -> None:
        """Note a stored message of the visitor by its client id, while they have a socket
        here (the newest ``REMEMBERED``; an older one sent again is stored as a duplicate,
        and its rate given back). Never one of an erased customer: read or pushed before the
        erasure, it may arrive after it (a push from another instance, a history read)."""
        provider = message.get("provider")
        provider_id = provider.get("message_id") if isinstance(provider, dict) else None
        prefix = f"{visitor}:"
        if message.get("direction") != "inbound" or not isinstance(provider_id, str) \
                or not provider_id.startswith(prefix) or visitor not in self._sockets \
                or message.get("customer_id") in self._erased:
            return
        stored = self._stored.setdefault(visitor, {})
        stored[provider_id.removeprefix(prefix)] = message
        if len(stored) > REMEMBERED:
            del stored[next(iter(stored))]

    def customers_erased(self, customer_ids: AbstractSet[str]) -> None:
        """Forget the remembered messages of the erased customers' visitors: a tab sending
        one again is then stored as new (the store has no record of it any more), never
        answered with the erased message."""
        for customer_id in customer_ids:
            self._erased[customer_id] = None
        while len(self._erased) > ERASED_KEPT:
            del self._erased[next(iter(self._erased))]
        for visitor, stored in list(self._stored.items()):
            if any(m.get("customer_id") in customer_ids for m in stored.values()):
                del self._stored[visitor]
                self.counters["forgotten"] += 1

    def _receipts(self, conn: Connection, ids: Iterable[str], status: DeliveryStatus) -> None:
        """The browser got (``delivered``) or showed (``read``) replies: each moves once,
        forwards only, and only for replies this socket was given."""
        for message_id in ids:
            current = conn.replies.get(message_id)
            if current is None or _STATUS_RANK.get(current, 9) >= _STATUS_RANK[status]:
                continue
            conn.replies[message_id] = status
            task = asyncio.ensure_future(self._receipt(message_id, status))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _receipt(self, message_id: str, status: DeliveryStatus) -> None:
        """Hand one receipt to the store. A browser can acknowledge a reply before the
        outbox has recorded its send (the provider id): then try again shortly."""
        assert self.ctx.receipts is not None
        for _ in range(RECEIPT_RETRIES):
            try:
                result = await self.ctx.receipts(Receipt("webchat", self.name, message_id,
                                                         status))
            except OmnirelayError as exc:
                self.log.warning("webchat.receipt_failed", message_id=message_id,
                                 error=exc.message)
                return
            if result is not None:
                return
            await asyncio.sleep(RECEIPT_RETRY_DELAY)

    # ------------------------------------------------------------------ outbound

    async def send(self, message: OutboundMessage) -> SendResult:
        """Push the reply to the visitor's open sockets (every instance's); it is ``sent``
        (kept for their history when none is open, wherever) and becomes ``delivered`` when
        a browser acknowledges it. The message id is the provider id the browser's receipts
        name."""
        snapshot = dict(message.snapshot) or _snapshot(message)
        await self._to_visitor(message.to.address, snapshot, None, reply=True)
        return SendResult(message.id, "sent")

    async def _to_visitor(self, visitor: str, message: Mapping[str, Any],
                          client_id: str | None, *, reply: bool = False) -> None:
        """A ``message`` frame to every open socket of a visitor: this instance's at once
        and, with several instances, the other instances' (``ctx.broadcast``)."""
        broadcast = self.ctx.broadcast
        if broadcast is None:
            await self._deliver(visitor, message, client_id, reply)
            return
        await asyncio.gather(self._deliver(visitor, message, client_id, reply),
                             self._publish(broadcast, visitor, message, client_id, reply))

    async def _deliver(self, visitor: str, message: Mapping[str, Any], client_id: str | None,
                       reply: bool) -> None:
        """The frame to the visitor's sockets held here; a reply becomes one they may
        report on (``ack``, ``read``)."""
        conns = self._sockets.get(visitor)
        if not conns:
            return
        for conn in list(conns):
            conn.known.add(str(message["id"]))
            if reply:
                conn.replies.setdefault(str(message["id"]), "sent")
        frame = {"type": "message", "message": self._for_visitor(message, visitor),
                 "client_id": client_id}
        await self._broadcast(visitor, frame)

    async def _publish(self, broadcast: Broadcast, visitor: str, message: Mapping[str, Any],
                       client_id: str | None, reply: bool) -> None:
        """Tell the other instances. The message goes whole when it fits the broadcast's
        payload, else by its id (they read it from the store: it is committed before it is
        pushed). A failure is logged: the visitor finds the message in their history."""
        note: dict[str, Any] = {"v": visitor, "c": client_id, "r": reply, "m": message}
        body = orjson.dumps(note)
        if len(body) > broadcast.limit:
            del note["m"]
            note["id"] = message["id"]
            body = orjson.dumps(note)
        try:
            await broadcast.publish(body.decode())
        except OmnirelayError as exc:
            self.counters["relay_failed"] += 1
            self.log.warning("webchat.relay_failed", message_id=message.get("id"),
                             error=exc.message)

    def _relayed(self, payload: str) -> None:
        """Another instance pushed to a visitor: hand it to their sockets held here, if
        any, after the visitor's previous push from elsewhere."""
        try:
            note = orjson.loads(payload)
            visitor = note["v"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            self.log.warning("webchat.relay_invalid", payload=payload[:200])
            return
        if not isinstance(visitor, str) or visitor not in self._sockets:
            return  # most instances: none of this visitor's sockets
        self._chain(visitor, self._relay(self._relays.get(visitor), visitor, note))

    def _missed(self) -> None:
        """Pushes from the other instances may have been lost (this instance's database
        connection broke for a while): give every visitor with a socket here what their
        history has and their sockets were not given, after the pushes already on their
        way. An erasure may have been missed too: every remembered message is forgotten (a
        tab's copy sent again is then found a duplicate by the store, or stored if erased)."""
        self._stored.clear()
        for visitor in list(self._sockets):
            self._chain(visitor, self._catch_up(self._relays.get(visitor), visitor))

    def _chain(self, visitor: str, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` as the visitor's newest hand-over (it waits for the one before)."""
        task = asyncio.ensure_future(work)
        self._relays[visitor] = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(lambda done: self._relay_done(visitor, done))

    async def _catch_up(self, previous: asyncio.Task[None] | None, visitor: str) -> None:
        """Push to the visitor's sockets here the messages of their history each lacks
        (a reply another instance sent meanwhile, a message from their tab elsewhere)."""
        if previous is not None:
            await asyncio.wait({previous})
        try:
            history = await self._history(visitor)
        except OmnirelayError as exc:  # the store is still unreachable: they reload later
            self.log.warning("webchat.catch_up_failed", error=exc.message)
            return
        for conn in list(self._sockets.get(visitor, ())):
            for message in history:
                if message["id"] in conn.known:
                    continue
                conn.known.add(message["id"])
                if message["direction"] == "outbound":
                    conn.replies.setdefault(message["id"], message["status"])
                self.counters["caught_up"] += 1
                await self._push(conn, {"type": "message", "client_id": None,
                                        "message": self._for_visitor(message, visitor)})

    async def _relay(self, previous: asyncio.Task[None] | None, visitor: str,
                     note: dict[str, Any]) -> None:
        message = note.get("m")
        if not isinstance(message, dict):
            try:
                message = await self.ctx.store.get_message(str(note.get("id")))
            except OmnirelayError as exc:
                self.log.warning("webchat.relay_failed", message_id=note.get("id"),
                                 error=exc.message)
                return
        if previous is not None:
            await asyncio.wait({previous})
        client_id = note.get("c")
        if visitor in self._sockets:
            self.counters["relayed"] += 1
        self._remember(visitor, message)  # their message from another tab: see _answered
        await self._deliver(visitor, message,
                            client_id if isinstance(client_id, str) else None,
                            note.get("r") is True)

    def _relay_done(self, visitor: str, task: asyncio.Task[None]) -> None:
        if self._relays.get(visitor) is task:
            del self._relays[visitor]

    async def _broadcast(self, visitor: str, frame: Mapping[str, Any]) -> None:
        """One frame to every open socket of a visitor (their tabs)."""
        conns = list(self._sockets.get(visitor, ()))
        if not conns:
            return
        body = orjson.dumps(frame).decode()
        await asyncio.gather(*(self._push_text(conn, body) for conn in conns))

    async def _push(self, conn: Connection, frame: Mapping[str, Any]) -> None:
        await self._push_text(conn, orjson.dumps(frame).decode())

    async def _push_text(self, conn: Connection, body: str) -> None:
        """Send, or drop a browser that does not take the frame in time."""
        if conn.ws.closed:
            return
        try:
            async with conn.lock, asyncio.timeout(PUSH_TIMEOUT):
                await conn.ws.send_str(body)
        except (TimeoutError, ConnectionError, RuntimeError):
            self._forget(conn)
            with contextlib.suppress(Exception):
                await conn.ws.close(code=1011, message=b"too slow")

    def _forget(self, conn: Connection) -> None:
        conns = self._sockets.get(conn.visitor)
        if conns is not None:
            conns.discard(conn)
            if not conns:
                del self._sockets[conn.visitor]
                self._stored.pop(conn.visitor, None)

    # ------------------------------------------------------------------ history

    def _history_store(self) -> HistoryStore:
        store = self.ctx.store
        if not isinstance(store, HistoryStore):
            raise NotFound("this store keeps no web chat history")
        return store

    async def _history(self, visitor: str) -> list[dict[str, Any]]:
        """The visitor's own web chat messages on this account, oldest first.

        Only theirs: a visitor linked by e-mail to a customer with other channels never
        sees those channels' messages, even where they share a conversation.
        """
        store = self.ctx.store
        if not isinstance(store, HistoryStore):
            return []
        try:
            customer = await store.find_customer("webchat", visitor)
        except NotFound:
            return []
        limit = self.config.history_messages
        found: list[dict[str, Any]] = []
        for conversation in reversed(customer.get("conversations", [])[-5:]):
            after: str | None = None
            mine: list[dict[str, Any]] = []
            while True:
                page = await store.list_messages(conversation["id"], after, 1000)
                mine += [m for m in page if _visitors(m, self.name, visitor)]
                if len(page) < 1000:
                    break
                after = page[-1]["id"]
            found = mine + found
            if len(found) >= limit:
                break
        found.sort(key=lambda m: str(m["id"]))
        return found[-limit:]

    def _for_visitor(self, message: Mapping[str, Any], visitor: str) -> dict[str, Any]:
        """The message as the visitor's browser gets it: attachment URLs become signed
        links of this account (``/v1/attachments`` needs an API token)."""
        view = dict(message)
        view["attachments"] = [{**att, "url": self._file_link(visitor, att["id"])}
                               for att in message.get("attachments") or ()
                               if isinstance(att, dict) and "id" in att]
        return view

    def _file_link(self, visitor: str, attachment_id: str) -> str:
        signature = tokens.file_signature(self._secret, self.name, visitor, attachment_id)
        return (f"{self.base}/file?id={quote(attachment_id)}&v={quote(visitor)}"
                f"&sig={signature}")


def _client_id(frame: object) -> str | None:
    """The widget's id of the message a frame carried, to name it in an error."""
    value = frame.get("id") if isinstance(frame, dict) else None
    return value if isinstance(value, str) and len(value) <= 64 else None


def _visitors(message: Mapping[str, Any], account: str, visitor: str) -> bool:
    """Whether a stored message is one of this visitor's web chat messages."""
    if message.get("channel") != "webchat" or message.get("account") != account:
        return False
    party = message.get("from") if message.get("direction") == "inbound" else message.get("to")
    return isinstance(party, dict) and party.get("kind") == "webchat" and \
        party.get("address") == visitor


def _snapshot(message: OutboundMessage) -> dict[str, Any]:
    """The contract JSON of an outbound message built from its typed fields (a send
    without the outbox's snapshot: tests, tools)."""
    now = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
    return {"id": message.id, "conversation_id": message.conversation_id,
            "customer_id": message.customer_id, "channel": message.channel,
            "account": message.account, "direction": "outbound",
            "from": message.sender.to_json(), "to": message.to.to_json(),
            "subject": message.subject, "text": message.text, "html": None,
            "attachments": [a.to_json() for a in message.attachments],
            "in_reply_to": message.in_reply_to,
            "provider": {"message_id": message.id, "thread_id": None}, "status": "sent",
            "error": None, "automatic": message.automatic,
            "agent": None if message.agent is None else {"id": message.agent.id,
                                                         "name": message.agent.name},
            "sent_at": now, "received_at": now}


async def _send(ws: web.WebSocketResponse, frame: Mapping[str, Any]) -> None:
    with contextlib.suppress(ConnectionError, RuntimeError):
        await ws.send_str(orjson.dumps(frame).decode())


_STATIC_CACHE: dict[str, bytes] = {}


def _static(name: str, content_type: str) -> web.Response:
    """A file of the widget, cacheable for five minutes by browsers and CDNs."""
    body = _STATIC_CACHE.get(name)
    if body is None:
        body = _STATIC_CACHE[name] = (STATIC / name).read_bytes()
    return web.Response(body=body, content_type=content_type, charset="utf-8", headers={
        "Cache-Control": "public, max-age=300",
        "X-Content-Type-Options": "nosniff",
        "Cross-Origin-Resource-Policy": "cross-origin",
        "Access-Control-Allow-Origin": "*"})

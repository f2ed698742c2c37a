"""Scriptable in-memory adapters for tests of the outbox, the daemon's supervision and
what an adapter's declarations bring (a new channel and identity kind)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from aiohttp import ClientSession, WSMsgType, web

from adapters.base import (
    AdapterConfig,
    AdapterContext,
    ChannelAdapter,
    OutboundMessage,
    SendLimits,
    SendResult,
)
from gateway.configkit import Section
from gateway.errors import NotFound, SendError
from gateway.store.base import JSON, ChangeResult, IngestResult
from normalizer.model import InboundMessage, MessageChange, Party


@dataclass(frozen=True, slots=True)
class RecordingConfig(AdapterConfig):
    """Nothing to set: the recording adapter is scripted from the test."""

    @classmethod
    def parse(cls, section: Section) -> RecordingConfig:
        """Takes no keys of its own."""
        return cls()


@dataclass
class Script:
    """What the next sends do: raise these errors in turn, then succeed."""

    errors: list[SendError] = field(default_factory=list)
    delay: float = 0.0


class MemoryStore:
    """The adapter's view of the store, in memory: checkpoints and opt-outs only."""

    def __init__(self) -> None:
        self.checkpoints: dict[str, str] = {}
        self.opt_outs: set[tuple[str, str, str, str]] = set()

    async def get_checkpoint(self, key: str) -> str | None:
        """The value under ``key``."""
        return self.checkpoints.get(key)

    async def set_checkpoint(self, key: str, value: str) -> None:
        """Keep ``value`` under ``key``."""
        self.checkpoints[key] = value

    async def init_checkpoint(self, key: str, value: str) -> str:
        """Keep ``value`` under ``key`` unless one is kept; the one kept."""
        return self.checkpoints.setdefault(key, value)

    async def blob_file(self, sha256: str) -> Path:
        """No blobs are kept in memory."""
        raise NotFound(f"no blob {sha256}")

    async def get_message(self, message_id: str) -> JSON:
        """No messages are kept in memory."""
        raise NotFound(f"no message {message_id}")

    async def get_raw(self, message_id: str) -> tuple[str, bytes] | None:
        """No raw payloads are kept in memory."""
        return None

    async def change_message(self, channel: str, account: str, provider_message_id: str,
                             change: MessageChange) -> ChangeResult:
        """No messages are kept in memory: nothing to change."""
        raise NotFound(f"no message {provider_message_id} of {channel} account {account}")

    async def take_back(self, kind: str, address: str, *, name: bool,
                        identities: Sequence[tuple[str, str]] = ()) -> JSON:
        """No customers are kept in memory."""
        raise NotFound(f"no customer has {kind} identity")

    async def remove_identity(self, kind: str, address: str) -> JSON:
        """No customers are kept in memory."""
        raise NotFound(f"no customer has {kind} identity")

    async def set_opt_out(self, kind: str, address: str, channel: str, account: str,
                          keyword: str | None) -> JSON | None:
        """Opt-outs are kept in memory (there are no customers to show them on)."""
        key = (kind, address, channel, account)
        if keyword is None:
            self.opt_outs.discard(key)
        else:
            self.opt_outs.add(key)
        return None

    async def opted_out(self, kind: str, address: str, channel: str, account: str) -> bool:
        """Whether :meth:`set_opt_out` recorded one."""
        return (kind, address, channel, account) in self.opt_outs


async def _refuse_ingest(inbound: InboundMessage) -> IngestResult:
    raise RuntimeError("this test context takes no inbound messages")


def _refuse_authorize(request: web.Request, scope: str) -> None:
    raise RuntimeError("this test context checks no tokens")


def offline_context() -> AdapterContext:
    """A context for an adapter driven by a test without a daemon (no HTTP client)."""
    # The recording adapter makes no HTTP calls; a session would need a running loop.
    return AdapterContext(ingest=_refuse_ingest, http=cast(ClientSession, None),
                          public_url="http://127.0.0.1", authorize=_refuse_authorize,
                          store=MemoryStore())


class RecordingAdapter(ChannelAdapter):
    """Records every send; ``script`` injects errors and delays."""

    type = "recording"
    channels = frozenset({"api"})
    identity_kinds = frozenset({"external"})
    channel_identity_kinds = {"api": ("external",)}
    config_class = RecordingConfig

    def __init__(self, name: str = "rec", config: RecordingConfig | None = None,
                 ctx: AdapterContext | None = None, *, limits: SendLimits | None = None) -> None:
        super().__init__(name, config or RecordingConfig(), ctx or offline_context(),
                         limits=limits)
        self.sent: list[OutboundMessage] = []
        self.attempts: list[tuple[str, float]] = []
        self.script = Script()
        self.active = 0
        self.max_active = 0
        self.on_send: Callable[[OutboundMessage], None] | None = None

    def sender(self, channel: str) -> Party:
        """The account's own identity."""
        return Party("external", f"omnirelay:{self.name}")

    async def send(self, message: OutboundMessage) -> SendResult:
        """Record, maybe wait, maybe fail as scripted."""
        loop = asyncio.get_running_loop()
        self.attempts.append((message.id, loop.time()))
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            if self.script.delay:
                await asyncio.sleep(self.script.delay)
            if self.script.errors:
                raise self.script.errors.pop(0)
            self.sent.append(message)
            if self.on_send:
                self.on_send(message)
            return SendResult(f"prov-{message.id}")
        finally:
            self.active -= 1


class SocketAdapter(RecordingAdapter):
    """Serves an echo WebSocket at ``/sockets/{account}/ws``, as web chat will serve its own.

    The handler closes its socket (1001, going away) as soon as ``ctx.stopping`` is set, so
    a daemon draining on SIGTERM is not held for ``shutdown_timeout`` by an open connection.
    """

    type = "sockets"
    route_family = "/sockets"

    def __init__(self, name: str = "rec", config: RecordingConfig | None = None,
                 ctx: AdapterContext | None = None, *, limits: SendLimits | None = None) -> None:
        super().__init__(name, config, ctx, limits=limits)
        self.connected = asyncio.Event()

    def family_routes(self) -> Sequence[web.RouteDef]:
        """The WebSocket of this account."""
        return [web.get(f"/sockets/{self.name}/ws", self.socket)]

    async def socket(self, request: web.Request) -> web.WebSocketResponse:
        """Echo text frames until the client leaves or the daemon stops."""
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.connected.set()
        async with self.ctx.closing_on_stop(ws):
            async for frame in ws:
                if frame.type is WSMsgType.TEXT:
                    await ws.send_str(frame.data)
        return ws


class PigeonAdapter(RecordingAdapter):
    """A channel no real adapter has, with an identity kind of its own (``pigeon``).

    Registered for a test, it shows what a new channel brings by declaring it: the API takes
    its kind, the OpenAPI document lists it, and replies on it go to the customer's pigeon
    identity.
    """

    type = "pigeon"
    channels = frozenset({"pigeon"})
    identity_kinds = frozenset({"pigeon"})
    channel_identity_kinds = {"pigeon": ("pigeon",)}

    def sender(self, channel: str) -> Party:
        """The account's loft."""
        return Party("pigeon", f"loft:{self.name}")

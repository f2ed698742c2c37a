"""The small contract every channel adapter follows.

An adapter connects one channel account. It hands normalized inbound messages to an
:class:`Ingest` sink and acknowledges the provider only after the sink returns (the
message is committed by then); it sends one :class:`OutboundMessage` when the outbox asks and
returns a :class:`SendResult` or raises a typed :class:`~gateway.errors.SendError`. It owns
no loop, no store and no retries: long-lived work runs under ``ctx.supervise`` (restarted
with backoff, shown in health), the outbox retries sends.

Lifecycle: the constructor does no I/O; ``start()`` connects and starts the adapter's
supervised loops; ``stop()`` cancels them, stops intake, lets in-flight work finish and
closes. Both are idempotent. ``ctx.stopping`` is set as the daemon's drain begins, so a
handler holding a connection open (a WebSocket, a long poll) closes it at once instead of
holding shutdown for ``shutdown_timeout``.

Declared on the class: ``type`` (the config ``type``), ``channels`` (the message channels
it sends and receives on), ``identity_kinds`` (the customer identities those channels
carry, including ones linked from a message's content; the registry's union is what the
API accepts), ``channel_identity_kinds`` (per channel, the identity kinds a reply or a
proactive message can be sent to: the store picks the recipient among them),
``config_class`` and, for routes outside ``/hooks/{type}/{account}``, ``route_family``
(e.g. ``"/chat"``).
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import enum
import re
import urllib.parse
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import structlog
from aiohttp import ClientSession, WSCloseCode, web

from gateway.backoff import Backoff
from gateway.broadcast import Broadcast
from gateway.media import MediaSources, source_name
from gateway.store.base import AdapterStore, IngestResult, Route, StoredAttachment
from gateway.supervisor import DEFAULT_BACKOFF, LoopBody, LoopGroup, LoopHealth, SupervisedLoop
from normalizer.model import Group, InboundMessage, Party

if TYPE_CHECKING:
    from gateway.configkit import Section
    from gateway.receipts import Receipts

JSON = dict[str, Any]
Hook = Callable[[web.Request], Awaitable[web.StreamResponse]]
RESERVED_PREFIXES = ("/v1", "/hooks", "/healthz", "/readyz", "/metrics")
"""Paths of the daemon's own; no ``route_family`` may claim them."""


class Ingest(Protocol):
    """Where adapters hand inbound messages. Returns only after the message is committed.

    Example::

        result = await self.ctx.ingest(inbound)
        if not result.created:
            log.info("duplicate")      # still acknowledge: the provider redelivered
        return web.Response(status=200)  # acknowledge only now
    """

    async def __call__(self, inbound: InboundMessage) -> IngestResult: ...


IngestAll = Callable[[list[InboundMessage]], Awaitable[list[IngestResult]]]
"""Several messages of one provider request stored in one transaction, all or none."""


class AdapterState(enum.StrEnum):
    """Where an adapter is in its lifecycle."""

    NEW = "new"
    STARTING = "starting"
    RUNNING = "running"
    DEGRADED = "degraded"
    STOPPED = "stopped"
    FAILED = "failed"


@dataclass(slots=True)
class AdapterHealth:
    """A cheap snapshot for ``/v1/channels`` and ``/readyz``."""

    state: AdapterState
    last_error: str | None = None
    counters: dict[str, int] = field(default_factory=dict)
    loops: list[LoopHealth] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class SendResult:
    """What the provider said when it accepted a message."""

    provider_message_id: str | None
    status: str = "sent"


@dataclass(frozen=True, slots=True)
class SendLimits:
    """How fast one account may send: parsed once for every account, applied by the outbox."""

    concurrency: int = 4
    rate: float | None = None  # messages per second; None: no limit


@dataclass(frozen=True, slots=True)
class Agent:
    """The help-desk agent who wrote a reply."""

    id: str
    name: str | None = None


@dataclass(frozen=True, slots=True)
class OutboundMessage:
    """One message to send, as the outbox hands it to ``ChannelAdapter.send``.

    ``id`` is also the idempotency key: a send retried after a crash carries the same one.
    ``in_reply_to`` is the id of the message being answered; ``reply_to_provider_id`` and
    ``thread_refs`` are the provider ids a channel threads with (e-mail's In-Reply-To and
    References). ``group`` is set for a reply into a group chat's conversation: it goes to
    the group, not to ``to`` alone. ``snapshot`` is the message's contract JSON, for a
    channel that forwards it as it is (the API channel's callback); read the typed fields
    for everything else.
    """

    id: str
    conversation_id: str
    customer_id: str
    channel: str
    account: str
    to: Party
    sender: Party
    text: str
    html: str | None = None
    subject: str | None = None
    attachments: tuple[StoredAttachment, ...] = ()
    agent: Agent | None = None
    automatic: str | None = None
    template: str | None = None
    variables: Mapping[str, object] = field(default_factory=dict)
    in_reply_to: str | None = None
    reply_to_provider_id: str | None = None
    thread_refs: tuple[str, ...] = ()
    attempts: int = 1
    queued_at: datetime | None = None
    group: Group | None = None
    snapshot: Mapping[str, object] = field(default_factory=dict)


class AdapterConfig(ABC):
    """Settings of one account; parsed from its ``[[channels]]`` table.

    ``example`` is the smallest valid table of this type's own keys: the adapter contract
    test starts every adapter from it and checks that leaving out each key is a clear error.
    """

    example: ClassVar[Mapping[str, object]] = {}

    @classmethod
    @abstractmethod
    def parse(cls, section: Section) -> AdapterConfig:
        """Read this adapter's keys from ``section`` (errors are recorded, not raised)."""


@dataclass
class AdapterContext:
    """What the daemon hands each adapter: one per adapter instance."""

    ingest: Ingest
    http: ClientSession
    public_url: str
    authorize: Callable[[web.Request, str], None]  # raises Unauthorized / Forbidden
    store: AdapterStore
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    # Where the adapter registers its provider's media hosts and credentials, for the
    # attachments it hands over by URL (RemoteAttachment; gateway/media.py).
    media: MediaSources = field(default_factory=MediaSources)
    loops: LoopGroup = field(default_factory=LoopGroup)
    log: structlog.typing.FilteringBoundLogger = field(
        default_factory=lambda: structlog.get_logger("adapters"))
    receipts: Receipts | None = None  # delivery and read receipts (gateway/receipts.py)
    ingest_all: IngestAll | None = None  # None: ``ChannelAdapter.ingest_all`` stores one by one
    groups: bool = False  # the account's ``groups``: store group posts, else ignore them
    # Several instances on one store (PostgreSQL): pushes to this account on the other
    # instances (a web chat reply to a socket held elsewhere; gateway/broadcast.py). None:
    # this instance is the only one.
    broadcast: Broadcast | None = None

    def supervise(self, name: str, body: LoopBody, *, backoff: Backoff = DEFAULT_BACKOFF,
                  label: str | None = None) -> SupervisedLoop:
        """Run ``body`` as a supervised loop of this adapter (see ``gateway/supervisor.py``).

        Restarted with capped backoff and jitter when it raises, shown in ``/v1/channels``,
        cancelled when the adapter stops. ``label``: its name on /metrics, needed when
        ``name`` holds personal data (a mailbox's user or host).
        """
        return self.loops.supervise(name, body, backoff=backoff, label=label)

    @contextlib.asynccontextmanager
    async def closing_on_stop(self, ws: web.WebSocketResponse) -> AsyncIterator[None]:
        """Close ``ws`` (1001, going away) the moment the daemon starts draining.

        Wrap a WebSocket handler's receive loop in it: the loop then ends promptly on
        SIGTERM instead of holding shutdown until ``shutdown_timeout``::

            async with self.ctx.closing_on_stop(ws):
                async for frame in ws:
                    ...
        """
        async def close_when_stopping() -> None:
            await self.stopping.wait()
            await ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutting down")

        watcher = asyncio.ensure_future(close_when_stopping())
        try:
            yield
        finally:
            if not self.stopping.is_set():
                watcher.cancel()
            # Draining: let the close handshake finish (ws.close has its own deadline).
            await asyncio.gather(watcher, return_exceptions=True)


class ChannelAdapter(ABC):
    """One channel account. Subclasses set the class variables below and implement send()."""

    type: ClassVar[str]
    channels: ClassVar[frozenset[str]]
    identity_kinds: ClassVar[frozenset[str]]
    # {"sms": ("phone",), "whatsapp": ("phone", "whatsapp")}: every channel of ``channels``,
    # with the kinds (a subset of ``identity_kinds``) it can deliver to.
    channel_identity_kinds: ClassVar[Mapping[str, tuple[str, ...]]]
    config_class: ClassVar[builtins.type[AdapterConfig]]  # `type` is the attribute above
    route_family: ClassVar[str | None] = None
    config: AdapterConfig  # a subclass narrows it to its own config_class

    def __init__(self, name: str, config: AdapterConfig, ctx: AdapterContext, *,
                 limits: SendLimits | None = None) -> None:
        self.name = name
        self.config = config
        self.ctx = ctx
        self.limits = limits or SendLimits()
        self.log = structlog.get_logger(f"adapters.{self.type}").bind(
            channel_type=self.type, account=name)
        self.state = AdapterState.NEW
        self.last_error: str | None = None
        self.counters: dict[str, int] = {"received": 0, "duplicates": 0, "sent": 0,
                                         "send_errors": 0, "group_posts_ignored": 0}

    async def start(self) -> None:
        """Connect and start intake. Safe to call twice."""
        if self.state in (AdapterState.RUNNING, AdapterState.STARTING):
            return
        if self.state is AdapterState.STOPPED:
            raise RuntimeError(f"adapter {self.name} was stopped; make a new one")
        self.state = AdapterState.STARTING
        try:
            await self.on_start()
        except BaseException as exc:
            self.state = AdapterState.FAILED
            self.last_error = str(exc) or type(exc).__name__
            await self.ctx.loops.stop()
            await self.on_stop()
            raise
        self.state = AdapterState.RUNNING

    async def stop(self) -> None:
        """Cancel the supervised loops, stop intake, finish in-flight work, close.

        Safe to call twice.
        """
        if self.state is AdapterState.STOPPED:
            return
        self.state = AdapterState.STOPPED
        await self.ctx.loops.stop()
        await self.on_stop()

    async def on_start(self) -> None:  # noqa: B027 - optional hook
        """Adapter-specific start (connect, verify credentials, start loops)."""

    async def on_stop(self) -> None:  # noqa: B027 - optional hook
        """Adapter-specific stop (the supervised loops are already cancelled)."""

    async def probe(self) -> str | None:
        """Check this account against its provider without receiving, sending or changing
        anything (``omnirelay check-config --online``): sign in, read who the account is.

        Called on an adapter that was made but not started. Returns what was checked, for
        the operator ("signed in to imap.example.com:993 as support@, INBOX has 12
        messages", "bot @shop_bot"), or None when the account has no remote side to check
        (the API channel). Raises :class:`~gateway.errors.AdapterAuthError` when the
        provider refuses the credentials, another :class:`~gateway.errors.AdapterError`
        (e.g. ``AdapterNotReady``) when it cannot be reached or answers unexpectedly; the
        message says what to fix and holds no secret.
        """
        return None

    def customers_erased(self, customer_ids: AbstractSet[str]) -> None:  # noqa: B027
        """These customers (merged ones included) were erased, on this instance or another:
        drop whatever of their messages the adapter holds in memory (optional hook)."""

    def routes(self) -> Sequence[web.RouteDef]:
        """HTTP routes, relative to ``/hooks/{type}/{account}``."""
        return ()

    def family_routes(self) -> Sequence[web.RouteDef]:
        """Routes outside ``/hooks``: absolute paths under the class's ``route_family``.

        E.g. web chat's ``/chat/{account}/widget.js`` and WebSocket ``/chat/{account}/ws``
        (with the account's name filled in). The app mounts them; a path another running
        account already serves is refused at start.
        """
        return ()

    def route_table(self) -> dict[str, dict[str, Hook]]:
        """``{path: {method: handler}}`` of :meth:`routes`, built once (hot path)."""
        table = self.__dict__.get("_route_table")
        if table is None:
            table = _table(self.routes())
            self.__dict__["_route_table"] = table
        return table

    def match_route(self, raw_path: str) -> tuple[dict[str, Hook], dict[str, str]] | None:
        """The handlers of the :meth:`routes` path with parameters (``/messages/{id}``)
        that ``raw_path`` (relative, still percent-encoded) matches, and the parameters'
        values, decoded as aiohttp decodes them; None when none matches.

        The app mounts exact routes for the accounts configured at start; an account a
        reload adds is served through one pattern, whose dispatch looks paths up here.
        """
        patterns = self.__dict__.get("_route_patterns")
        if patterns is None:
            patterns = [(_path_pattern(path), methods)
                        for path, methods in self.route_table().items() if "{" in path]
            self.__dict__["_route_patterns"] = patterns
        for pattern, methods in patterns:
            found = pattern.fullmatch(raw_path)
            if found is not None:
                return methods, {name: urllib.parse.unquote(value)
                                 for name, value in found.groupdict().items()}
        return None

    def family_route_table(self) -> dict[str, dict[str, Hook]]:
        """``{path: {method: handler}}`` of :meth:`family_routes`, checked to be in the family.

        Raises ValueError for a path outside ``route_family``.
        """
        table = self.__dict__.get("_family_route_table")
        if table is None:
            table = _table(self.family_routes())
            family = self.route_family
            for path in table:
                if family is None or not path.startswith(family.rstrip("/") + "/"):
                    raise ValueError(f"{self.type} route {path!r} is outside its route family "
                                     f"{family!r}")
            self.__dict__["_family_route_table"] = table
        return table

    @abstractmethod
    async def send(self, message: OutboundMessage) -> SendResult:
        """Send one outbound message or raise RetryableSendError / PermanentSendError."""

    @property
    def media_source(self) -> str:
        """The name this account's attachment downloads are registered and fetched under
        (gateway/media.py); remote attachments the account's messages name carry it."""
        return source_name(self.type, self.name)

    def media_origins(self) -> frozenset[str]:
        """Origins a payload may name attachment URLs on (the API channel's ``media_hosts``);
        the served OpenAPI document states them."""
        return frozenset()

    @abstractmethod
    def sender(self, channel: str) -> Party:
        """The account's own identity on ``channel`` (the ``from`` of its replies)."""

    def route(self, channel: str) -> Route:
        """Where this account sends on ``channel``, as the store routes replies: its sender
        identity and the identity kinds the channel reaches (the store imports no adapter,
        so what routing needs to know of the channel travels in the route)."""
        return Route(channel, self.name, self.sender(channel),
                     tuple(self.channel_identity_kinds.get(channel, ())))

    def health(self) -> AdapterHealth:
        """A cheap snapshot: state, last error, counters, supervised loops."""
        return AdapterHealth(self.state, self.last_error, dict(self.counters),
                             self.ctx.loops.health())

    async def ingest(self, inbound: InboundMessage) -> IngestResult:
        """Hand a message to the gateway and count it.

        A group post where the account does not set ``groups = true`` is not stored: it is
        counted (``group_posts_ignored``) and the result says why, so the adapter still
        acknowledges it.
        """
        if inbound.group is not None and not self.ctx.groups:
            self.counters["group_posts_ignored"] += 1
            return IngestResult({}, created=False,
                                ignored=f"group posts are off for {self.type} account "
                                        f"{self.name!r} (groups = false)")
        result = await self.ctx.ingest(inbound)
        self.counters["received" if result.created else "duplicates"] += 1
        return result


    async def ingest_all(self, inbounds: list[InboundMessage]) -> list[IngestResult]:
        """Hand over the messages of one provider request (a LINE webhook's events) to be
        committed together: all of them or, when the store fails, none, so that the
        provider's redelivery finds nothing half-stored. Group posts where ``groups`` is off
        are left out as :meth:`ingest` leaves them out. Results come in the given order."""
        kept = [m for m in inbounds if m.group is None or self.ctx.groups]
        if self.ctx.ingest_all is not None and len(kept) > 1:
            stored = iter(await self.ctx.ingest_all(kept))
            results = []
            for inbound in inbounds:
                if inbound.group is not None and not self.ctx.groups:
                    results.append(await self.ingest(inbound))  # counted, not stored
                    continue
                result = next(stored)
                self.counters["received" if result.created else "duplicates"] += 1
                results.append(result)
            return results
        return [await self.ingest(inbound) for inbound in inbounds]


def _path_pattern(path: str) -> re.Pattern[str]:
    """A route path's regular expression: ``{name}`` is one path segment, ``{name:regex}``
    what the regex matches (aiohttp's rules)."""
    parts = []
    for literal, name, regex in re.findall(r"([^{]*)(?:\{(\w+)(?::([^{}]+))?\})?", path):
        parts.append(re.escape(literal))
        if name:
            parts.append(f"(?P<{name}>{regex or '[^{}/]+'})")
    return re.compile("".join(parts))


def _table(routes: Sequence[web.RouteDef]) -> dict[str, dict[str, Hook]]:
    table: dict[str, dict[str, Hook]] = {}
    for route in routes:
        table.setdefault(route.path, {})[route.method] = route.handler
    return table

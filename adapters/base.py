"""The small contract every channel adapter follows.

An adapter connects one channel account. It hands normalized inbound messages to an
:class:`Ingest` sink and acknowledges the provider only after the sink returns (the
message is committed by then); it sends one outbound message when the outbox asks and
returns a :class:`SendResult` or raises a typed :class:`~gateway.errors.SendError`. It owns
no loop, no store and no retries: the daemon supervises it, the outbox retries.

Lifecycle: the constructor does no I/O; ``start()`` connects and starts the adapter's own
tasks; ``stop()`` stops intake, lets in-flight work finish and closes. Both are idempotent.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import structlog
from aiohttp import ClientSession, web

from gateway.store.base import IngestResult, OutboxItem
from normalizer.model import InboundMessage, Party

if TYPE_CHECKING:
    from gateway.config import Section
    from gateway.receipts import Receipts


class Ingest(Protocol):
    """Where adapters hand inbound messages. Returns only after the message is committed.

    Example::

        result = await self.ctx.ingest(inbound)
        if not result.created:
            log.info("duplicate")      # still acknowledge: the provider redelivered
        return web.Response(status=200)  # acknowledge only now
    """

    async def __call__(self, inbound: InboundMessage) -> IngestResult: ...


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


@dataclass(frozen=True, slots=True)
class SendResult:
    """What the provider said when it accepted a message."""

    provider_message_id: str | None
    status: str = "sent"


class AdapterConfig(ABC):
    """Settings of one account; parsed from its ``[[channels]]`` table."""

    @classmethod
    @abstractmethod
    def parse(cls, section: Section) -> AdapterConfig:
        """Read this adapter's keys from ``section`` (errors are recorded, not raised)."""


@dataclass
class AdapterContext:
    """What the daemon hands each adapter."""

    ingest: Ingest
    http: ClientSession
    public_url: str
    authorize: Callable[[web.Request, str], None]  # raises Unauthorized / Forbidden
    store: Any = None  # checkpoints (get_checkpoint/set_checkpoint) and blob_dir
    log: Any = field(default_factory=lambda: structlog.get_logger("adapters"))
    receipts: Receipts | None = None  # delivery and read receipts (gateway/receipts.py)
    groups: bool = False  # the account's ``groups``: store group posts, else ignore them


class ChannelAdapter(ABC):
    """One channel account. Subclasses set ``type``, ``channels`` and ``config_class``."""

    type: ClassVar[str]
    channels: ClassVar[frozenset[str]]
    config_class: ClassVar[type[AdapterConfig]]

    def __init__(self, name: str, config: Any, ctx: AdapterContext) -> None:
        self.name = name
        self.config = config
        self.ctx = ctx
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
            await self.on_stop()
            raise
        self.state = AdapterState.RUNNING

    async def stop(self) -> None:
        """Stop intake, finish in-flight work, close. Safe to call twice."""
        if self.state is AdapterState.STOPPED:
            return
        self.state = AdapterState.STOPPED
        await self.on_stop()

    async def on_start(self) -> None:  # noqa: B027 - optional hook
        """Adapter-specific start (connect, verify credentials, start tasks)."""

    async def on_stop(self) -> None:  # noqa: B027 - optional hook
        """Adapter-specific stop."""

    def routes(self) -> Sequence[web.RouteDef]:
        """HTTP routes, relative to ``/hooks/{type}/{account}``."""
        return ()

    def route_table(self) -> dict[str, dict[str, Hook]]:
        """``{path: {method: handler}}`` of :meth:`routes`, built once (hot path)."""
        table = self.__dict__.get("_route_table")
        if table is None:
            table = {}
            for route in self.routes():
                table.setdefault(route.path, {})[route.method] = route.handler
            self.__dict__["_route_table"] = table
        return table

    @abstractmethod
    async def send(self, item: OutboxItem) -> SendResult:
        """Send one outbound message or raise RetryableSendError / PermanentSendError."""

    @abstractmethod
    def sender(self, channel: str) -> Party:
        """The account's own identity on ``channel`` (the ``from`` of its replies)."""

    def health(self) -> AdapterHealth:
        """A cheap snapshot: state, last error, counters."""
        return AdapterHealth(self.state, self.last_error, dict(self.counters))

    def same_config(self, other: Any) -> bool:
        """Whether a reload may keep this adapter running for ``other`` settings."""
        return bool(self.config == other)

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


Hook = Callable[[web.Request], Awaitable[web.StreamResponse]]

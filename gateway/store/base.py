"""The store interface every backend implements, and the values it passes around.

Objects handed to the API (messages, conversations, customers, events) are the JSON
shapes of CONTRACT.md, so the API serializes them without another mapping layer.
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from normalizer.model import InboundMessage, Party

if TYPE_CHECKING:
    from gateway.store.changes import ChangeResult
    from normalizer.model import DeliveryStatus, MessageChange

JSON = dict[str, Any]


@dataclass(frozen=True, slots=True)
class StoredAttachment:
    """An attachment whose bytes are already in the blob store."""

    id: str
    filename: str
    content_type: str
    size: int
    sha256: str
    inline: bool = False
    content_id: str | None = None

    def to_json(self) -> JSON:
        """Return the contract's attachment object."""
        return {"id": self.id, "filename": self.filename, "content_type": self.content_type,
                "size": self.size, "sha256": self.sha256, "url": f"/v1/attachments/{self.id}"}


@dataclass(frozen=True, slots=True)
class IngestResult:
    """What storing one inbound message did. ``created`` is False for a repeat delivery."""

    message: JSON
    created: bool
    message_json: bytes | None = None  # ``message`` already encoded, when the store has it
    ignored: str | None = None  # why nothing was stored (a group post where groups are off)


@dataclass(frozen=True, slots=True)
class OutboundRequest:
    """An agent's reply or a proactive message, validated, attachments already stored."""

    text: str
    attachments: tuple[StoredAttachment, ...] = ()
    agent: JSON | None = None
    html: str | None = None
    subject: str | None = None
    template: str | None = None
    variables: JSON | None = None
    channel: str | None = None
    account: str | None = None
    automatic: str | None = None


@dataclass(frozen=True, slots=True)
class Route:
    """Which accounts serve a channel, and the sender identity of each account."""

    channel: str
    account: str
    sender: Party


@dataclass(frozen=True, slots=True)
class OutboxItem:
    """One claimed outbound message, with what the adapter needs to send it."""

    seq: int
    message: JSON
    conversation: JSON
    attempts: int
    created_at: datetime
    thread_refs: tuple[str, ...] = ()  # provider ids of the conversation's earlier messages
    reply_to_provider_id: str | None = None


@dataclass(frozen=True, slots=True)
class Delivery:
    """One claimed webhook delivery."""

    id: int
    subscription: str
    seq: int
    ordering_key: str
    attempts: int
    body: bytes
    event_id: str
    created_at: datetime


@dataclass(slots=True)
class Page:
    """A page of events: their JSON bodies and the cursor after them."""

    bodies: list[bytes] = field(default_factory=list)
    next: int = 0
    seqs: list[int] = field(default_factory=list)


class Store(Protocol):
    """What the gateway needs from persistence. Every write commits before it returns."""

    async def open(self) -> None:
        """Open the store, applying pending migrations."""

    async def close(self) -> None:
        """Finish queued writes and close."""

    async def ping(self) -> None:
        """Raise StoreError when the store cannot be reached."""

    def ingest(self, inbound: InboundMessage,
               attachments: list[StoredAttachment]) -> Awaitable[IngestResult]:
        """Store one inbound message once; resolve customer and conversation; emit events.

        Awaiting the result returns after the commit."""

    async def enqueue_outbound(self, *, conversation_id: str | None, customer_id: str | None,
                               request: OutboundRequest, routes: list[Route],
                               idempotency: tuple[str, str, str] | None) -> tuple[int, JSON]:
        """Queue an outbound message and its outbox row in one transaction."""

    async def change_message(self, channel: str, account: str, provider_message_id: str,
                             change: MessageChange) -> ChangeResult:
        """Apply an edit, reactions or a withdrawal to a delivered message (``message.updated``
        when anything moved); raise NotFound for an unknown provider id."""

    async def apply_receipt(self, channel: str, account: str, provider_message_id: str,
                            status: DeliveryStatus, error: JSON | None = None,
                            at: datetime | None = None) -> ChangeResult | None:
        """Move an outbound message's status forwards (``message.status``); None if unknown."""

    async def apply_read_watermark(self, channel: str, account: str, recipient: Party,
                                   watermark: datetime) -> int:
        """Mark replies to ``recipient`` sent up to ``watermark`` read; return how many."""

    async def remove_identity(self, kind: str, address: str) -> JSON:
        """Take an identity a provider withdrew from its customer (``customer.updated``)."""

    async def events_after(self, after: int, limit: int) -> Page:
        """Return events with seq > after, oldest first."""

    async def head_seq(self) -> int:
        """Return the newest event's seq (0 when empty)."""

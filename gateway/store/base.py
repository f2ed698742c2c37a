"""The store interface every backend implements, and the values it passes around.

Objects handed to the API (messages, conversations, customers, events) are the JSON
shapes of CONTRACT.md, so the API serializes them without another mapping layer.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from normalizer.model import DeliveryStatus, InboundMessage, MessageChange, Party

if TYPE_CHECKING:
    from gateway.stats.query import StatsQuery

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
class PendingFetch:
    """One claimed attachment fetch (gateway/fetcher.py); ``attempts`` counts this one."""

    id: int
    message_id: str
    source: str
    url: str
    filename: str | None
    content_type: str | None
    attempts: int
    created_at: float


@dataclass(frozen=True, slots=True)
class FetchBacklog:
    """The fetches of one media source not yet done: how many, and the latest error."""

    pending: int = 0
    last_error: str | None = None


@dataclass(frozen=True, slots=True)
class IngestResult:
    """What storing one inbound message did. ``created`` is False for a repeat delivery."""

    message: JSON
    created: bool
    message_json: bytes | None = None  # ``message`` already encoded, when the store has it
    ignored: str | None = None  # why nothing was stored (a group post where groups are off)


@dataclass(frozen=True, slots=True)
class ChangeResult:
    """A message after a change or a receipt, and which of its fields moved (none: a
    repeat, which emits nothing)."""

    message: JSON
    changed: tuple[str, ...] = ()


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
    """An account that sends on a channel: its sender identity, and the identity kinds the
    channel reaches (a customer's newest identity of one of them is the recipient when the
    request names none). The daemon builds it from the adapter's declarations."""

    channel: str
    account: str
    sender: Party
    kinds: tuple[str, ...]


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


# ---------------------------------------------------------------- the interface, by role
# Each caller types against the role it uses; ``Store`` is all of them, what a backend
# implements (SQLiteStore; a PostgreSQL store later). Every write commits before it returns.


class FeedStore(Protocol):
    """The event feed: long-polls, SSE streams, the daemon's head."""

    async def events_after(self, after: int, limit: int) -> Page:
        """Return up to ``limit`` events with seq > ``after``, oldest first."""

    async def head_seq(self) -> int:
        """Return the newest durable event's seq (0 when empty)."""


class BlobStore(Protocol):
    """Attachment bytes, content-addressed, written before the message naming them."""

    async def put_blobs(self, items: list[tuple[str, str, bytes, bool, str | None]]
                        ) -> list[StoredAttachment]:
        """Store (filename, content type, bytes, inline, content id) items."""

    def blob_path(self, sha256: str) -> Path:
        """Where the bytes with this digest live as a file (on PostgreSQL: this instance's
        cache of them, which may not hold them yet; read through :meth:`blob_file`)."""

    async def blob_file(self, sha256: str) -> Path:
        """The local file of the bytes with this digest, to read or serve. PostgreSQL
        fetches bytes missing from this instance's cache first. A path that does not exist
        means the bytes are gone (retention, erasure)."""


class BlobCacheStats(Protocol):
    """A local cache of attachment bytes as the metrics see it (PostgreSQL's; SQLite has
    none: its files are the bytes themselves)."""

    @property
    def size_bytes(self) -> int:
        """The bytes the cached files take."""

    @property
    def evicted_files(self) -> int:
        """Files removed so far to keep the cache to its budget."""


class IngestStore(BlobStore, Protocol):
    """The inbound path (gateway/ingest.py)."""

    def ingest(self, inbound: InboundMessage,
               attachments: list[StoredAttachment]) -> Awaitable[IngestResult]:
        """Store one inbound message once; resolve customer and conversation; emit events.

        Awaiting the result returns after the commit. A backend may also offer
        ``ingest_all(items)``: several messages in one transaction, all or none (SQLite does;
        gateway/ingest.py falls back to one commit each without it)."""


class MediaStore(BlobStore, Protocol):
    """The attachment fetcher (gateway/fetcher.py): pending fetches and staged files.

    A fetch row is written with its message (``ingest``) and removed in the transaction
    that adds the attachment or records its failure, each emitting ``message.updated``.
    """

    async def claim_fetches(self, limit: int) -> list[PendingFetch]:
        """Claim due fetches (state inflight, attempts + 1), oldest due first."""

    async def fetch_done(self, fetch_id: int, attachment: StoredAttachment) -> JSON | None:
        """Add the fetched attachment to its message once; None when already done."""

    async def fetch_retry(self, fetch_id: int, delay: float, error: str) -> None:
        """Put a fetch back for another attempt after ``delay`` seconds."""

    async def fetch_failed(self, fetch_id: int, filename: str, content_type: str,
                           error: JSON) -> JSON | None:
        """Give a fetch up: its message shows the attachment with ``error``."""

    async def recover_fetches(self) -> int:
        """After a crash or a restart of the fetcher: in-flight fetches go back to pending."""

    async def next_fetch_due(self) -> float | None:
        """When the earliest pending fetch becomes due (unix time)."""

    async def fetch_backlog(self) -> dict[str, FetchBacklog]:
        """Fetches not yet done, by media source."""

    def staging_path(self, name: str) -> Path:
        """Where a download is written before :meth:`put_blob_file` (same file system)."""

    async def put_blob_file(self, staged: Path, sha256: str) -> None:
        """Move a staged download (whose digest is ``sha256``) into the blob store, synced."""


class CheckpointStore(Protocol):
    """Adapter checkpoints (an IMAP mailbox's last UID, a polling offset)."""

    async def get_checkpoint(self, key: str) -> str | None:
        """Return a checkpoint, or None."""

    async def set_checkpoint(self, key: str, value: str) -> None:
        """Store a checkpoint."""

    async def init_checkpoint(self, key: str, value: str) -> str:
        """Store ``value`` unless ``key`` has a checkpoint; return the one kept (several
        instances making a secret at once all get the first one committed)."""


class ChangeStore(Protocol):
    """What a provider reports after a message arrived: an edit, reactions, a withdrawal;
    an identity the provider withdrew (a TalkTalk profile, a user deleted upstream)."""

    async def change_message(self, channel: str, account: str, provider_message_id: str,
                             change: MessageChange) -> ChangeResult:
        """Apply an edit, reactions or a withdrawal to a stored message (``message.updated``
        when anything moved); NotFound for a provider id the account never delivered."""

    async def take_back(self, kind: str, address: str, *, name: bool,
                        identities: Sequence[tuple[str, str]] = ()) -> JSON:
        """Take back what an identity gave its customer, in one ``customer.updated`` (none
        when nothing moved: a repeated withdrawal is silent): the customer's name when
        ``name`` and this identity gave it, and the ``identities`` it linked (each with a
        name it gave; one gone already or now someone else's is skipped). Nothing else names
        the customer in its place. NotFound when no customer has the identity."""

    async def remove_identity(self, kind: str, address: str) -> JSON:
        """Take an identity from its customer (``customer.updated``), and the name it gave:
        :meth:`take_back` of the identity itself. NotFound when no customer has it."""

    async def set_opt_out(self, kind: str, address: str, channel: str, account: str,
                          keyword: str | None) -> JSON | None:
        """Record on the identity that it opted out of (``keyword``: what it sent, e.g.
        ``STOP``) or back into (None) what ``account`` sends on ``channel``
        (``customer.updated`` when that changes); None when no customer has it."""

    async def opted_out(self, kind: str, address: str, channel: str, account: str) -> bool:
        """Whether the identity opted out of what ``account`` sends on ``channel``."""


class AdapterStore(CheckpointStore, ChangeStore, Protocol):
    """What an adapter uses: checkpoints, the message a reply answers, attachment files,
    and the changes its provider reports (receipts go through ``ctx.receipts``)."""

    async def get_message(self, message_id: str) -> JSON:
        """Return one message or raise NotFound."""

    async def get_raw(self, message_id: str) -> tuple[str, bytes] | None:
        """Return (content type, bytes) of a message's raw payload, if still kept."""

    async def blob_file(self, sha256: str) -> Path:
        """The local file of the bytes with this digest (see :meth:`BlobStore.blob_file`)."""


class ReceiptStore(Protocol):
    """Provider receipts on outbound messages, found by the provider's message id
    (through the typed sink in gateway/receipts.py)."""

    async def apply_receipt(self, channel: str, account: str, provider_message_id: str,
                            status: DeliveryStatus, error: JSON | None = None,
                            at: datetime | None = None) -> ChangeResult | None:
        """Move an outbound message's status forwards (``message.status``; never back, see
        :func:`gateway.store.rules.receipt_moves`); None when no message has that id."""

    async def apply_read_watermark(self, channel: str, account: str, recipient: Party,
                                   watermark: datetime) -> int:
        """Mark the account's replies to ``recipient`` sent up to ``watermark`` read (a
        Messenger/Instagram watermark); return how many moved."""


class OutboxStore(Protocol):
    """The outbox worker (outbox/worker.py)."""

    async def claim_outbox(self, limit: int) -> list[OutboxItem]:
        """Claim due outbox rows, at most one per conversation (keeps reply order)."""

    async def outbox_sent(self, message_id: str, provider_message_id: str | None,
                          status: str = "sent") -> None:
        """Mark an outbound message sent."""

    async def outbox_retry(self, message_id: str, delay: float, error: JSON) -> None:
        """Put a message back for another attempt after ``delay`` seconds."""

    async def outbox_failed(self, message_id: str, error: JSON) -> None:
        """Fail an outbound message for good."""

    async def recover_inflight(self) -> int:
        """After a crash: rows that were being sent go back to pending."""

    async def next_outbox_due(self) -> float | None:
        """When the earliest pending outbox row becomes due (unix time)."""

    async def outbox_depth(self) -> dict[str, int]:
        """Count outbox rows by state (pending, inflight)."""


class WebhookStore(Protocol):
    """Webhook dispatchers (gateway/webhooks.py) and the dead-letter API."""

    async def fan_out(self, subscription: str, wants: Callable[[str], bool],
                      limit: int = 1000) -> int:
        """Turn new events into delivery rows for one subscription; return rows added."""

    async def claim_deliveries(self, subscription: str, limit: int) -> list[Delivery]:
        """Claim due deliveries, only the oldest open one per ordering key."""

    async def delivery_done(self, delivery_id: int) -> None:
        """Forget a delivered row."""

    async def delivery_retry(self, delivery_id: int, delay: float, error: str,
                             dead: bool) -> None:
        """Schedule another attempt, or dead-letter the delivery."""

    async def recover_deliveries(self) -> None:
        """After a crash: in-flight deliveries go back to pending."""

    async def next_delivery_due(self, subscription: str) -> float | None:
        """When the subscription's earliest pending delivery is due."""

    async def list_dead_letters(self, subscription: str | None, limit: int) -> list[JSON]:
        """Return dead-lettered deliveries with their events."""

    async def replay_dead_letters(self, ids: list[int] | None,
                                  subscription: str | None) -> int:
        """Put dead-lettered deliveries back for delivery now; return how many."""


class ConversationStore(Protocol):
    """The API's conversations, messages, replies and attachments."""

    async def get_message(self, message_id: str) -> JSON:
        """Return one message or raise NotFound."""

    async def list_messages(self, conversation_id: str, after: str | None,
                            limit: int) -> list[JSON]:
        """Return a conversation's messages, oldest first."""

    async def get_conversation(self, conversation_id: str) -> JSON:
        """Return one conversation or raise NotFound."""

    async def list_conversations(self, *, status: str | None, customer_id: str | None,
                                 after: str | None, limit: int,
                                 **filters: str | None) -> list[JSON]:
        """List conversations by id (creation order), filtered (``filters``: channel,
        account, tag, queue, assignee, updated_since)."""

    async def patch_conversation(self, conversation_id: str, fields: JSON,
                                 agent: JSON | None) -> JSON:
        """Set tags, priority, queue, assignee (one conversation.updated if any moved)."""

    async def stats(self, query: StatsQuery) -> JSON:
        """The support metrics of a period (docs/stats.md), from the aggregates."""

    async def set_conversation_status(self, conversation_id: str, status: str,
                                      agent: JSON | None) -> JSON:
        """Close or reopen a conversation (no-op when unchanged)."""

    async def enqueue_outbound(self, *, conversation_id: str | None, customer_id: str | None,
                               request: OutboundRequest, routes: list[Route],
                               idempotency: tuple[str, str, str] | None) -> tuple[int, JSON]:
        """Queue an outbound message and its outbox row in one transaction; return
        (HTTP status, the message)."""

    async def get_attachment(self, attachment_id: str) -> tuple[StoredAttachment, Path]:
        """Return an attachment's metadata and the local file of its bytes (as
        :meth:`BlobStore.blob_file`: it does not exist once retention purged them)."""

    async def get_raw(self, message_id: str) -> tuple[str, bytes] | None:
        """Return (content type, bytes) of a message's raw payload, if still kept."""


class CustomerStore(Protocol):
    """The API's customers."""

    async def get_customer(self, customer_id: str) -> JSON:
        """Return a customer (a merged-away id resolves to the survivor)."""

    async def find_customer(self, kind: str, address: str) -> JSON:
        """Return the customer owning an identity, or raise NotFound."""

    async def add_identity(self, customer_id: str, kind: str, address: str) -> JSON:
        """Link an identity to a customer; Conflict when another customer owns it."""

    async def merge_customers(self, survivor_id: str, merged_id: str) -> JSON:
        """Merge ``merged_id`` into ``survivor_id``; the merged id keeps resolving."""

    async def erase_customer(self, customer_id: str) -> JSON:
        """Delete everything of a customer; return what was erased."""


class AdminStore(Protocol):
    """The daemon's and the CLI's: lifecycle, health, retention, erasure, backup."""

    async def open(self) -> None:
        """Open the store, applying pending migrations."""

    async def close(self) -> None:
        """Finish queued writes, leave the database file self-contained, and close."""

    async def ping(self) -> None:
        """Raise StoreError when the store cannot read or its last commit failed."""

    async def purge_older_than(self, days: int) -> dict[str, int]:
        """Retention: drop raw payloads and attachment bytes older than ``days``."""

    async def erase_customer(self, customer_id: str) -> JSON:
        """Delete everything of a customer; return what was erased."""

    async def backup(self, target: Path) -> None:
        """Write a consistent online copy of the database to ``target``."""


class Store(FeedStore, IngestStore, AdapterStore, ReceiptStore, OutboxStore, WebhookStore,
            ConversationStore, CustomerStore, AdminStore, MediaStore, Protocol):
    """Everything the gateway needs from persistence: every role above."""

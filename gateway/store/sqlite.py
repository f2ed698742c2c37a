"""The embedded default store: SQLite behind the commit engine.

``SQLiteStore`` is a thin facade: each method queues a write job (``gateway/store/jobs/``)
to the commit engine (``gateway/store/engine.py``) or runs a read (``queries.py``) on a
reader thread; the newest durable events come from the feed's tail (``feed.py``).
docs/architecture.md tells the whole story.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from gateway.automation.jobs import Automation
from gateway.config import StoreConfig
from gateway.errors import StoreError
from gateway.ids import iso, new_id, utcnow
from gateway.stats.query import StatsQuery, compute_stats
from gateway.store import compact, queries
from gateway.store.base import (
    JSON,
    BlobCacheStats,
    ChangeResult,
    Delivery,
    FetchBacklog,
    IngestResult,
    OutboundRequest,
    OutboxItem,
    Page,
    PendingFetch,
    Route,
    StoredAttachment,
)
from gateway.store.engine import CommitEngine, Job
from gateway.store.feed import EmittedEvents, FeedTail, read_events
from gateway.store.jobs.changes import _change_message
from gateway.store.jobs.customers import (
    _add_identity,
    _init_checkpoint,
    _merge_customers,
    _set_checkpoint,
    _set_conversation_status,
    _set_opt_out,
    _take_back,
)
from gateway.store.jobs.fields import _patch_conversation
from gateway.store.jobs.ingest import _ingest, _ingest_all, prefetch_senders
from gateway.store.jobs.media import (
    _claim_fetches,
    _fetch_done,
    _fetch_failed,
    _fetch_retry,
    _recover_fetches,
)
from gateway.store.jobs.outbound import (
    _apply_read_watermark,
    _apply_receipt,
    _claim_outbox,
    _enqueue_outbound,
    _outbox_failed,
    _outbox_retry,
    _outbox_sent,
    _recover_inflight,
)
from gateway.store.jobs.retention import _erase_customer, _purge, _reclaim_free_pages
from gateway.store.jobs.stats import HoursOf, Sample, drop_samples, take_samples
from gateway.store.jobs.tx import BatchRows, JobBatch, WriterCache
from gateway.store.jobs.webhooks import (
    _claim_deliveries,
    _delivery_done,
    _delivery_retry,
    _fan_out,
    _recover_deliveries,
    _replay,
)
from gateway.store.migrate import apply_migrations, migration_scripts
from gateway.store.records import _message_json
from normalizer.model import DeliveryStatus, InboundMessage, MessageChange, Party

__all__ = ["SQLiteStore", "_message_json", "apply_migrations", "migration_scripts",
           "stored_attachment", "write_atomically"]

T = TypeVar("T")


def write_atomically(path: Path, data: bytes, *, sync: bool) -> None:
    """``data`` at ``path``, all or nothing: a temporary file beside it, renamed into place
    (``sync``: on disk first). Raises OSError and leaves no partial file."""
    tmp = path.with_name(f".{path.name}.{threading.get_ident()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as fh:
            fh.write(data)
            if sync:
                fh.flush()
                os.fsync(fh.fileno())
        tmp.replace(path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise


def stored_attachment(item: tuple[str, str, bytes, bool, str | None],
                      digest: str) -> StoredAttachment:
    """A ``put_blobs`` item (filename, content type, bytes, inline, content id) as stored
    under ``digest``, with a new attachment id."""
    filename, content_type, data, inline, content_id = item
    return StoredAttachment(new_id("att"), filename, content_type, len(data), digest, inline,
                            content_id)


class SQLiteJobs:
    """The job layer the engine runs: the writer's cache and the batch's deferred rows."""

    # Jobs run without a per-job savepoint (see CommitEngine._execute): they fail only on
    # a broken database, which fails the whole batch anyway.
    unguarded = frozenset({_ingest})

    def __init__(self, on_samples: Callable[[list[Sample]], None] | None = None) -> None:
        self.cache = WriterCache()
        self.engine: CommitEngine | None = None
        self.on_samples = on_samples  # the support metrics' durations, once committed
        self.hours: HoursOf | None = None  # the accounts' business hours, for the metrics

    def prepare(self, conn: sqlite3.Connection) -> int:
        """Apply pending migrations; return the newest event's seq."""
        apply_migrations(conn)
        conn.execute("INSERT OR IGNORE INTO codec_dictionaries (id, data) VALUES (?, ?)",
                     compact.builtin_dictionary())
        for row in conn.execute("SELECT id, data FROM codec_dictionaries"):
            compact.register(row[0], bytes(row[1]))
        seq: int = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0]
        return seq

    def begin(self, conn: sqlite3.Connection, batch: list[Job], emitted: EmittedEvents,
              optimistic: bool) -> JobBatch:
        """A batch: one clock reading; when optimistic, its ingest rows deferred and its
        provider ids looked up at once."""
        assert self.engine is not None
        now = utcnow()
        now_iso = iso(now)
        assert now_iso is not None
        rows = BatchRows() if optimistic else None
        if rows is not None:
            inbounds = [a[0] for fn, a, _f, _l in batch if fn is _ingest]
            rows.prefetch(conn, [(i.channel, i.account, i.provider_message_id)
                                 for i in inbounds])
            prefetch_senders(conn, self.cache, rows, inbounds, now)
        return JobBatch(conn, self.engine, self.cache, rows, emitted, now, now_iso,
                        self.hours)

    def forget(self) -> None:
        """After a rollback the cache may name rows that are gone."""
        self.cache.clear()
        drop_samples()

    def committed(self) -> None:
        """Keep the cache bounded; hand over the durations the batch measured."""
        self.cache.trim()
        samples = take_samples()
        if samples and self.on_samples is not None:
            self.on_samples(samples)


class SQLiteStore:
    """The embedded default store. See the module docstring for the design."""

    def __init__(self, config: StoreConfig, *, on_commit: Callable[[int], None] | None = None,
                 on_batch: Callable[[int], None] | None = None,
                 on_fatal: Callable[[str], None] | None = None, readers: int = 4,
                 on_samples: Callable[[list[Sample]], None] | None = None) -> None:
        self.config = config
        self.path = config.sqlite_path
        self.blob_dir = config.data_dir / "blobs"
        # No cache to bound: these files are the attachment bytes (PostgreSQL's are copies).
        self.blob_cache: BlobCacheStats | None = None
        self.layer = SQLiteJobs(on_samples)
        self.engine = CommitEngine(self.path, self.layer, synchronous=config.synchronous,
                                   batch_max=config.batch_max, on_commit=on_commit,
                                   on_batch=on_batch, on_fatal=on_fatal, readers=readers)
        self.layer.engine = self.engine
        # Routing rules and CSAT answers run in the ingest job (gateway/automation/jobs.py);
        # the daemon sets this from [automation].
        self.automation: Automation | None = None

    @property
    def business_hours(self) -> HoursOf | None:
        """Each account's business hours, which the metrics' writes measure the business
        clock with (docs/stats.md); the daemon sets it from [automation]."""
        return self.layer.hours

    @business_hours.setter
    def business_hours(self, hours: HoursOf | None) -> None:
        self.layer.hours = hours

    @property
    def tail(self) -> FeedTail:
        """The feed's newest durable events, in memory."""
        return self.engine.tail

    async def open(self) -> None:
        """Create the data dir, start the writer, apply migrations."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.blob_dir.mkdir(parents=True, exist_ok=True)
        await self.engine.open()

    async def close(self) -> None:
        """Let queued writes commit (and reach the disk), then stop the threads."""
        await self.engine.close()

    async def write(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(tx, *args)`` in the writer's next batch; return after its commit."""
        return await self.engine.write(fn, *args)

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(conn, *args)`` on a reader thread."""
        return await self.engine.read(fn, *args)

    async def ping(self) -> None:
        """Raise StoreError unless a read and the last commit succeeded."""
        await self.engine.ping()

    # ---------------------------------------------------------------- blobs

    def blob_path(self, sha256: str) -> Path:
        """Where the bytes with this digest live (content-addressed)."""
        return self.blob_dir / sha256[:2] / sha256[2:4] / sha256

    async def blob_file(self, sha256: str) -> Path:
        """The file of the bytes: on SQLite every blob is a file here already."""
        return self.blob_path(sha256)

    def _put_blob(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        path = self.blob_path(digest)
        if path.exists():
            return digest
        try:
            write_atomically(path, data, sync=self.config.synchronous in ("FULL", "EXTRA"))
        except OSError as exc:
            # A full disk (ENOSPC, EFBIG) is the store being unavailable (503, the sender
            # retries), not a bug; no partial file is left behind.
            raise StoreError(f"cannot store an attachment: {exc.strerror or exc}") from exc
        return digest

    async def put_blobs(self, items: list[tuple[str, str, bytes, bool, str | None]]
                        ) -> list[StoredAttachment]:
        """Store attachment bytes (off the loop) before the message that names them commits."""
        if not items:
            return []

        def work() -> list[StoredAttachment]:
            return [stored_attachment(item, self._put_blob(item[2])) for item in items]

        return await asyncio.to_thread(work)

    def staging_path(self, name: str) -> Path:
        """Where a download is written before it becomes a blob (same file system, so the
        final rename is atomic); ``.staging`` holds nothing else."""
        return self.blob_dir / ".staging" / name

    async def put_blob_file(self, staged: Path, sha256: str) -> None:
        """Sync a staged download and move it to its content address (off the loop)."""
        def work() -> None:
            path = self.blob_path(sha256)
            try:
                if path.exists():  # the same bytes are stored already
                    staged.unlink(missing_ok=True)
                    return
                path.parent.mkdir(parents=True, exist_ok=True)
                if self.config.synchronous in ("FULL", "EXTRA"):
                    with open(staged, "rb") as fh:
                        os.fsync(fh.fileno())
                staged.replace(path)
            except OSError as exc:
                staged.unlink(missing_ok=True)
                raise StoreError(f"cannot store an attachment: {exc.strerror or exc}") from exc

        await asyncio.to_thread(work)

    def _delete_unreferenced_blobs(self, digests: list[str]) -> None:
        conn = self.engine.connect(readonly=True)
        try:
            for digest in digests:
                if conn.execute("SELECT 1 FROM attachments WHERE sha256 = ?",
                                (digest,)).fetchone() is None:
                    self.blob_path(digest).unlink(missing_ok=True)
        finally:
            conn.close()

    # ---------------------------------------------------------------- ingest

    def ingest(self, inbound: InboundMessage,
               attachments: list[StoredAttachment]) -> Awaitable[IngestResult]:
        """Store one inbound message once (see :func:`_ingest`); await the commit."""
        return self.engine.write(_ingest, inbound, attachments, self.config.reopen_window_days,
                                 self.automation)

    def ingest_all(self, items: list[tuple[InboundMessage, list[StoredAttachment]]]
                   ) -> Awaitable[list[IngestResult]]:
        """Store several messages in one transaction, all or none (see :func:`_ingest_all`)."""
        return self.engine.write(_ingest_all, items, self.config.reopen_window_days,
                                 self.automation)

    # ---------------------------------------------------------------- provider reports

    async def change_message(self, channel: str, account: str, provider_message_id: str,
                             change: MessageChange) -> ChangeResult:
        """Apply an edit, reactions or a withdrawal (``message.updated``); NotFound if unknown."""
        return await self.engine.write(_change_message, channel, account, provider_message_id,
                                       change)

    async def apply_receipt(self, channel: str, account: str, provider_message_id: str,
                            status: DeliveryStatus, error: JSON | None = None,
                            at: datetime | None = None) -> ChangeResult | None:
        """Move an outbound message's status forwards by its provider id (``message.status``);
        None when no message has that id."""
        return await self.engine.write(_apply_receipt, channel, account, provider_message_id,
                                       status, error, at)

    async def apply_read_watermark(self, channel: str, account: str, recipient: Party,
                                   watermark: datetime) -> int:
        """Mark the account's replies to ``recipient`` sent up to ``watermark`` read."""
        return await self.engine.write(_apply_read_watermark, channel, account, recipient,
                                       watermark)

    async def take_back(self, kind: str, address: str, *, name: bool,
                        identities: Sequence[tuple[str, str]] = ()) -> JSON:
        """Take back the name an identity gave and the identities it linked (one
        ``customer.updated``, none when nothing moved); NotFound when nobody has it."""
        return await self.engine.write(_take_back, kind, address, name, tuple(identities))

    async def remove_identity(self, kind: str, address: str) -> JSON:
        """Take a withdrawn identity, and the name it gave, from its customer."""
        return await self.engine.write(_take_back, kind, address, False, ((kind, address),))

    async def set_opt_out(self, kind: str, address: str, channel: str, account: str,
                          keyword: str | None) -> JSON | None:
        """Record an opt-out (or its end) on the identity (``customer.updated``)."""
        return await self.engine.write(_set_opt_out, kind, address, channel, account, keyword)

    async def opted_out(self, kind: str, address: str, channel: str, account: str) -> bool:
        """Whether the identity opted out of ``account`` on ``channel``."""
        return await self.engine.read(queries.opted_out, kind, address, channel, account)

    # ---------------------------------------------------------------- reads

    async def events_after(self, after: int, limit: int) -> Page:
        """Return up to ``limit`` event bodies with seq > ``after``."""
        page = self.engine.tail.after(after, limit)
        if page is not None:
            return page
        return await self.engine.read(read_events, after, self.engine.committed_seq, limit)

    async def head_seq(self) -> int:
        """Return the newest committed seq."""
        return self.engine.committed_seq

    async def get_message(self, message_id: str) -> JSON:
        """Return one message or raise NotFound."""
        return await self.engine.read(queries.get_message, message_id)

    async def list_messages(self, conversation_id: str, after: str | None,
                            limit: int) -> list[JSON]:
        """Return a conversation's messages, oldest first."""
        return await self.engine.read(queries.list_messages, conversation_id, after, limit)

    async def get_conversation(self, conversation_id: str) -> JSON:
        """Return one conversation or raise NotFound."""
        return await self.engine.read(queries.get_conversation, conversation_id)

    async def list_conversations(self, *, status: str | None, customer_id: str | None,
                                 after: str | None, limit: int,
                                 **filters: str | None) -> list[JSON]:
        """List conversations by id (creation order), filtered (``filters``: channel,
        account, tag, queue, assignee, updated_since)."""
        def query(conn: sqlite3.Connection) -> list[JSON]:
            return queries.list_conversations(conn, status, customer_id, after, limit,
                                              **filters)
        return await self.engine.read(query)

    async def patch_conversation(self, conversation_id: str, fields: JSON,
                                 agent: JSON | None) -> JSON:
        """Set tags, priority, queue, assignee (one conversation.updated if any moved)."""
        return await self.engine.write(_patch_conversation, conversation_id, fields, agent)

    async def stats(self, query: StatsQuery) -> JSON:
        """The support metrics of a period (docs/stats.md), from the aggregates."""
        return await self.engine.read(compute_stats, query)

    async def get_customer(self, customer_id: str) -> JSON:
        """Return a customer (a merged-away id resolves to the survivor)."""
        return await self.engine.read(queries.get_customer, customer_id)

    async def find_customer(self, kind: str, address: str) -> JSON:
        """Return the customer owning an identity, or raise NotFound."""
        return await self.engine.read(queries.find_customer, kind, address)

    async def get_attachment(self, attachment_id: str) -> tuple[StoredAttachment, Path]:
        """Return an attachment's metadata and the local file of its bytes."""
        att = await self.engine.read(queries.get_attachment, attachment_id)
        return att, await self.blob_file(att.sha256)

    async def get_raw(self, message_id: str) -> tuple[str, bytes] | None:
        """Return the raw provider payload of a message, if still kept."""
        return await self.engine.read(queries.get_raw, message_id)

    # ---------------------------------------------------------------- conversations, customers

    async def set_conversation_status(self, conversation_id: str, status: str,
                                      agent: JSON | None) -> JSON:
        """Close or reopen a conversation, emitting the event (no-op when unchanged)."""
        return await self.engine.write(_set_conversation_status, conversation_id, status, agent)

    async def add_identity(self, customer_id: str, kind: str, address: str) -> JSON:
        """Link an identity to a customer; 409 when another customer owns it."""
        return await self.engine.write(_add_identity, customer_id, kind, address)

    async def merge_customers(self, survivor_id: str, merged_id: str) -> JSON:
        """Merge ``merged_id`` into ``survivor_id``; the merged id keeps resolving."""
        return await self.engine.write(_merge_customers, survivor_id, merged_id)

    async def erase_customer(self, customer_id: str) -> JSON:
        """Delete everything of a customer (support data is personal data)."""
        result = await self.engine.write(_erase_customer, customer_id)
        await asyncio.to_thread(self._delete_unreferenced_blobs, result.pop("_blobs"))
        await self.reclaim_space()
        # Erased rows' old page images must not linger in the WAL file (secure_delete
        # zeroes them in the database itself).
        await asyncio.to_thread(self.engine.truncate_wal)
        return result

    async def purge_older_than(self, days: int) -> dict[str, int]:
        """Retention: drop raw payloads and attachment bytes older than ``days``."""
        cutoff = iso(utcnow() - timedelta(days=days))
        result = await self.engine.write(_purge, cutoff)
        await asyncio.to_thread(self._delete_unreferenced_blobs, result.pop("_blobs"))
        await self.reclaim_space()
        return result

    async def reclaim_space(self, step: int = 2048) -> None:
        """Shrink the file by its free pages (after a purge or an erasure), ``step`` pages
        per write batch so that ingest goes on meanwhile; the checkpointer then truncates
        the file."""
        remaining = await self.engine.write(_reclaim_free_pages, step)
        for _ in range(100_000):  # bounded: each pass frees up to ``step`` pages
            if remaining == 0:
                break
            before = remaining
            remaining = await self.engine.write(_reclaim_free_pages, step)
            if remaining >= before:  # nothing more to give back
                break

    # ---------------------------------------------------------------- outbound

    async def enqueue_outbound(self, *, conversation_id: str | None, customer_id: str | None,
                               request: OutboundRequest, routes: list[Route],
                               idempotency: tuple[str, str, str] | None) -> tuple[int, JSON]:
        """Queue an outbound message; returns (HTTP status, response body)."""
        return await self.engine.write(_enqueue_outbound, conversation_id, customer_id,
                                       request, routes, idempotency)

    async def claim_outbox(self, limit: int) -> list[OutboxItem]:
        """Claim due outbox rows, at most one per conversation (keeps reply order)."""
        return await self.engine.write(_claim_outbox, limit, time.time())

    async def outbox_sent(self, message_id: str, provider_message_id: str | None,
                          status: str = "sent") -> None:
        """Mark an outbound message sent."""
        await self.engine.write(_outbox_sent, message_id, provider_message_id, status)

    async def outbox_retry(self, message_id: str, delay: float, error: JSON) -> None:
        """Put a message back for another attempt after ``delay`` seconds."""
        await self.engine.write(_outbox_retry, message_id, time.time() + delay, error)

    async def outbox_failed(self, message_id: str, error: JSON) -> None:
        """Fail an outbound message for good."""
        await self.engine.write(_outbox_failed, message_id, error)

    async def recover_inflight(self) -> int:
        """After a crash: rows that were being sent go back to pending."""
        return await self.engine.write(_recover_inflight)

    async def next_outbox_due(self) -> float | None:
        """When the earliest pending outbox row becomes due (unix time)."""
        return await self.engine.read(queries.next_outbox_due)

    async def outbox_depth(self) -> dict[str, int]:
        """Count outbox rows by state (for metrics and STATUS=)."""
        return await self.engine.read(queries.outbox_depth)

    # ---------------------------------------------------------------- webhooks

    async def fan_out(self, subscription: str, wants: Callable[[str], bool],
                      limit: int = 1000) -> int:
        """Turn new events into delivery rows for one subscription; return rows added."""
        return await self.engine.write(_fan_out, subscription, wants, limit, time.time())

    async def claim_deliveries(self, subscription: str, limit: int) -> list[Delivery]:
        """Claim due deliveries, only the oldest open one per ordering key."""
        return await self.engine.write(_claim_deliveries, subscription, limit, time.time())

    async def delivery_done(self, delivery_id: int) -> None:
        """Forget a delivered row."""
        await self.engine.write(_delivery_done, delivery_id)

    async def delivery_retry(self, delivery_id: int, delay: float, error: str,
                             dead: bool) -> None:
        """Schedule another attempt, or dead-letter the delivery."""
        await self.engine.write(_delivery_retry, delivery_id, time.time() + delay, error, dead)

    async def recover_deliveries(self) -> None:
        """After a crash: in-flight deliveries go back to pending."""
        await self.engine.write(_recover_deliveries)

    async def list_dead_letters(self, subscription: str | None, limit: int) -> list[JSON]:
        """Return dead-lettered deliveries with their events."""
        return await self.engine.read(queries.list_dead_letters, subscription, limit)

    async def replay_dead_letters(self, ids: list[int] | None,
                                  subscription: str | None) -> int:
        """Put dead-lettered deliveries back for delivery now."""
        return await self.engine.write(_replay, ids, subscription, time.time())

    async def next_delivery_due(self, subscription: str) -> float | None:
        """When the subscription's earliest pending delivery is due."""
        return await self.engine.read(queries.next_delivery_due, subscription)

    # ---------------------------------------------------------------- fetched attachments

    async def claim_fetches(self, limit: int) -> list[PendingFetch]:
        """Claim due fetches (state inflight, attempts + 1), oldest due first."""
        return await self.engine.write(_claim_fetches, limit, time.time())

    async def fetch_done(self, fetch_id: int, attachment: StoredAttachment) -> JSON | None:
        """Add the fetched attachment to its message once; None when already done."""
        return await self.engine.write(_fetch_done, fetch_id, attachment)

    async def fetch_retry(self, fetch_id: int, delay: float, error: str) -> None:
        """Put a fetch back for another attempt after ``delay`` seconds."""
        await self.engine.write(_fetch_retry, fetch_id, time.time() + delay, error)

    async def fetch_failed(self, fetch_id: int, filename: str, content_type: str,
                           error: JSON) -> JSON | None:
        """Give a fetch up: its message shows the attachment with ``error``."""
        return await self.engine.write(_fetch_failed, fetch_id, filename, content_type, error)

    async def recover_fetches(self) -> int:
        """After a crash or a restart of the fetcher: in-flight fetches go back to pending."""
        return await self.engine.write(_recover_fetches)

    async def next_fetch_due(self) -> float | None:
        """When the earliest pending fetch becomes due (unix time)."""
        return await self.engine.read(queries.next_fetch_due)

    async def fetch_backlog(self) -> dict[str, FetchBacklog]:
        """Fetches not yet done, by media source."""
        return await self.engine.read(queries.fetch_backlog)

    # ---------------------------------------------------------------- checkpoints

    async def get_checkpoint(self, key: str) -> str | None:
        """Return an adapter checkpoint."""
        return await self.engine.read(queries.get_checkpoint, key)

    async def set_checkpoint(self, key: str, value: str) -> None:
        """Store an adapter checkpoint."""
        await self.engine.write(_set_checkpoint, key, value)

    async def init_checkpoint(self, key: str, value: str) -> str:
        """Store a checkpoint unless there is one; the one kept."""
        kept: str = await self.engine.write(_init_checkpoint, key, value)
        return kept

    # ---------------------------------------------------------------- backup

    async def backup(self, target: Path) -> None:
        """Write a consistent online copy of the database to ``target``."""
        def work() -> None:
            src = self.engine.connect(readonly=True)
            dst = sqlite3.connect(target)
            try:
                src.backup(dst)
            finally:
                dst.close()
                src.close()
        await asyncio.to_thread(work)

"""The PostgreSQL store: several gateway instances on one database.

``PostgresStore`` serves every role of :class:`gateway.store.base.Store` with the same
write jobs and reads as the SQLite store (run through :mod:`.conn`, so the rules exist
once), on its own engine (:mod:`.engine`: cross-instance seqs, LISTEN/NOTIFY, advisory
locks), with the claims that several instances share (:mod:`.jobs`: SKIP LOCKED leases)
and the pushes they pass each other (:mod:`.broadcast`: a web chat reply to a socket held
by another instance). Attachment bytes are in the database (:mod:`.blobs`); each
instance's ``<data_dir>/blobs`` is a cache of them, held to a disk budget (:mod:`.cache`).
docs/postgresql.md tells the whole story.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, cast

import structlog

from gateway.automation.jobs import Automation
from gateway.broadcast import ERASED_TOPIC, Broadcast, erased_payloads
from gateway.config import StoreConfig
from gateway.errors import StoreError
from gateway.ids import iso, utcnow
from gateway.store.base import (
    JSON,
    Delivery,
    OutboxItem,
    Page,
    PendingFetch,
    StoredAttachment,
)
from gateway.store.feed import FeedTail, read_events
from gateway.store.jobs.customers import _init_checkpoint, _set_checkpoint
from gateway.store.jobs.ingest import _ingest, _ingest_all, prefetch_senders
from gateway.store.jobs.media import _fetch_retry
from gateway.store.jobs.outbound import _outbox_retry
from gateway.store.jobs.retention import _erase_customer, _purge
from gateway.store.jobs.stats import HoursOf, Sample
from gateway.store.jobs.tx import BatchRows, WriterCache
from gateway.store.jobs.webhooks import _delivery_done, _delivery_retry, _replay
from gateway.store.postgres import blobs
from gateway.store.postgres import broadcast as push
from gateway.store.postgres import jobs as pg
from gateway.store.postgres.cache import BlobCache
from gateway.store.postgres.conn import Connection
from gateway.store.postgres.engine import PgEngine
from gateway.store.postgres.singleton import run_owned
from gateway.store.sqlite import SQLiteStore, stored_attachment, write_atomically
from normalizer.model import InboundMessage

__all__ = ["PostgresStore"]

log = structlog.get_logger(__name__)


def ingest_lock_keys(args: tuple[Any, ...]) -> list[str]:
    """What an ingest job decides under a lock: its dedupe key, its sender's identities
    (and an echo's recipient), its group. Two instances storing the same message, or two
    messages of one new customer, take turns; unrelated messages do not wait."""
    inbound: InboundMessage = args[0]
    keys = [f"m\x1f{inbound.channel}\x1f{inbound.account}\x1f{inbound.provider_message_id}"]
    for party in (inbound.sender, inbound.recipient, *inbound.linked_identities):
        if party is not None and party.address:
            keys.append(f"i\x1f{party.kind}\x1f{party.address}")
    if inbound.group is not None:
        keys.append(f"g\x1f{inbound.channel}\x1f{inbound.account}\x1f{inbound.group.id}")
    return keys


def ingest_all_lock_keys(args: tuple[Any, ...]) -> list[str]:
    """An all-or-none batch of messages (a LINE webhook's events): every message's keys."""
    items: list[tuple[InboundMessage, Any]] = args[0]
    return [key for inbound, _attachments in items for key in ingest_lock_keys((inbound,))]


def ingest_dedupe_key(args: tuple[Any, ...]) -> tuple[str, str, str]:
    """An ingest job's (channel, account, provider id): the batch looks them up at once."""
    inbound: InboundMessage = args[0]
    return inbound.channel, inbound.account, inbound.provider_message_id


def prefetch_ingest(conn: Connection, cache: WriterCache, rows: BatchRows,
                    args: list[tuple[Any, ...]], now: datetime) -> None:
    """The ingest jobs' senders, conversations and metrics rows, read once for the batch
    (a round trip is most of a job's cost here: docs/benchmarks.md)."""
    prefetch_senders(cast(Any, conn), cache, rows, [a[0] for a in args], now)


# Jobs that never emit an event: their batches do not take the feed_head lock.
QUIET_JOBS: frozenset[Callable[..., Any]] = frozenset({
    pg.claim_outbox, pg.recover_inflight, _outbox_retry, pg.fan_out, pg.claim_deliveries,
    _delivery_done, _delivery_retry, pg.recover_deliveries, _replay, pg.claim_fetches,
    _fetch_retry, pg.recover_fetches, _set_checkpoint, _init_checkpoint})


class PostgresStore(SQLiteStore):
    """The store on PostgreSQL. It keeps the SQLite store's facade (each method queues the
    same job or runs the same read) and replaces the engine and the shared claims."""

    blob_cache: BlobCache  # data_dir/blobs holds copies: kept to [store] blob_cache_max_bytes

    def __init__(self, config: StoreConfig, *, on_commit: Callable[[int], None] | None = None,
                 on_batch: Callable[[int], None] | None = None,
                 on_fatal: Callable[[str], None] | None = None, readers: int = 4,
                 on_samples: Callable[[list[Sample]], None] | None = None) -> None:
        # Not SQLiteStore.__init__: no SQLite engine. Blobs are rows of the database;
        # data_dir/blobs is this instance's cache of them (see .blobs).
        self.config = config
        self.url = config.url
        self.path = config.data_dir / "postgresql"  # nothing is written there
        self.blob_dir = config.data_dir / "blobs"
        self.blob_cache = BlobCache(self.blob_path, config.blob_cache_max_bytes)
        self.pg = PgEngine(config.url, batch_max=config.batch_max, quiet=QUIET_JOBS,
                           lock_keys={_ingest: ingest_lock_keys,
                                      _ingest_all: ingest_all_lock_keys},
                           deferred={_ingest: ingest_dedupe_key},
                           prefetch=prefetch_ingest, on_commit=on_commit,
                           on_batch=on_batch, on_fatal=on_fatal, readers=readers,
                           on_samples=on_samples)
        self.engine = self.pg  # type: ignore[assignment]  # the facade's write()/read()
        self.broadcasts = push.PgBroadcasts(self.pg.read)
        self.pg.listens[push.CHANNEL] = self.broadcasts.received
        self.pg.on_relisten = self.broadcasts.resumed
        self._tail = FeedTail(0)
        self.automation: Automation | None = None
        self.lease = config.claim_lease_seconds  # a claim is a lease (see .jobs)
        self._blobs_gone = self.broadcasts.topic(blobs.GONE_TOPIC)
        self._unsubscribe: Callable[[], None] | None = None
        self._sweep: asyncio.Task[None] | None = None
        self._recheck: asyncio.Task[None] | None = None
        self._fills: dict[str, asyncio.Future[int | None]] = {}  # fetches under way
        # Digests deleted while fetches were under way, each with the count of deletions
        # noted when it was (cleared when no fetch is under way).
        self._deleted: dict[str, int] = {}
        self._deletions = 0

    @property
    def business_hours(self) -> HoursOf | None:
        """Each account's business hours for the metrics (as on SQLite)."""
        return self.pg.hours

    @business_hours.setter
    def business_hours(self, hours: HoursOf | None) -> None:
        self.pg.hours = hours

    @property
    def tail(self) -> FeedTail:
        """Unused on PostgreSQL (every instance reads the feed from the table)."""
        return self._tail

    async def open(self) -> None:
        """Create the blob cache, connect, migrate (once across instances), start; hear
        the other instances' deletions, and drop what was deleted while this one was down
        (in the background)."""
        self.blob_dir.mkdir(parents=True, exist_ok=True)
        await self.pg.open()
        self._unsubscribe = self._blobs_gone.subscribe(self._heard_gone, self._missed_gone)
        self._sweep = asyncio.create_task(self._sweep_cache(), name="blob-cache-sweep")

    async def close(self) -> None:
        """Let queued writes commit, then close the connections."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        for task in (self._sweep, self._recheck):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._sweep = self._recheck = None
        await self.blob_cache.close()
        await self.pg.close()

    async def ping(self) -> None:
        """Raise StoreError unless a read and the last commit succeeded."""
        await self.pg.ping()

    # ---------------------------------------------------------------- feed

    async def events_after(self, after: int, limit: int) -> Page:
        """Up to ``limit`` events with seq > ``after``, up to the committed head (which
        every instance learns from LISTEN/NOTIFY at once)."""
        head = self.pg.committed_seq
        if after >= head:
            return Page([], after, [])
        return await self.pg.read(read_events, after, head, limit)

    async def head_seq(self) -> int:
        """The newest committed seq (this instance's commits and every other's)."""
        return self.pg.committed_seq

    # ---------------------------------------------------------------- blobs

    async def put_blobs(self, items: list[tuple[str, str, bytes, bool, str | None]]
                        ) -> list[StoredAttachment]:
        """Store attachment bytes in the ``blobs`` table, committed before the message that
        names them (once per digest), and in this instance's cache."""
        if not items:
            return []
        stored = await asyncio.to_thread(_digested, items)
        await self.pg.read(blobs.insert, [(att.sha256, data) for att, data in
                                          zip(stored, (i[2] for i in items), strict=True)])
        async with self.blob_cache.held(att.sha256 for att in stored):
            cached = await asyncio.to_thread(self._cache_all, stored, [i[2] for i in items])
        for digest, size in cached:
            self.blob_cache.added(digest, size)
        return stored

    def _cache_all(self, stored: list[StoredAttachment], datas: list[bytes]
                   ) -> list[tuple[str, int]]:
        """Keep a copy here too (the instance that stored them often sends them next): no
        fsync, and a full disk only costs a fetch later (the database holds the bytes).
        The (digest, size) of the files now in the cache."""
        cached = []
        for att, data in zip(stored, datas, strict=True):
            path = self.blob_path(att.sha256)
            try:
                if not path.exists():
                    write_atomically(path, data, sync=False)
            except OSError as exc:
                log.warning("store.blob_cache_failed", sha256=att.sha256, error=str(exc))
                continue
            cached.append((att.sha256, len(data)))
        return cached

    async def put_blob_file(self, staged: Path, sha256: str) -> None:
        """Stream a staged download into the ``blobs`` table (not read whole into memory),
        then move it into this instance's cache."""
        try:
            await self.pg.read(blobs.copy_in, sha256, staged)
        except BaseException:
            await asyncio.to_thread(staged.unlink, missing_ok=True)
            raise
        async with self.blob_cache.held([sha256]):
            size = await asyncio.to_thread(self._cache_staged, staged, sha256)
        if size is not None:
            self.blob_cache.added(sha256, size)

    def _cache_staged(self, staged: Path, sha256: str) -> int | None:
        """The stored download becomes the cached file (no fsync: the database holds the
        bytes), or goes (the same bytes are cached already, or the disk is full). The
        cached file's size; None when there is none."""
        path = self.blob_path(sha256)
        try:
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                staged.replace(path)
            return path.stat().st_size
        except OSError as exc:
            log.warning("store.blob_cache_failed", sha256=sha256, error=str(exc))
            return None
        finally:
            staged.unlink(missing_ok=True)

    async def blob_file(self, sha256: str) -> Path:
        """This instance's cached file of the bytes, fetched from the database when missing
        (in chunks to a temporary file, renamed into place: off the event loop, never a
        partial file). A path that does not exist: no row holds the bytes (purged).

        The file is held from the look-up on and pinned for a while after (:mod:`.cache`):
        keeping the cache to its budget never removes it before the caller opened it."""
        path = self.blob_path(sha256)
        async with self.blob_cache.held([sha256]):
            size = await asyncio.to_thread(blobs.file_size, path)
            fetched = size is None
            if fetched:
                size = await self._fill(sha256, path)
        if size is not None:
            self.blob_cache.used(sha256, size, fetched=fetched)
        return path

    async def _fill(self, sha256: str, path: Path) -> int | None:
        """Fetch the bytes into the cache. Readers of the same missing file at once (an
        image several agents open together) share one fetch; one who gives up (a closed
        download) does not cancel it for the others."""
        fill = self._fills.get(sha256)
        if fill is None:
            fill = asyncio.ensure_future(self._fill_checked(sha256, path))
            self._fills[sha256] = fill
            fill.add_done_callback(lambda _done: self._filled(sha256))
        return await asyncio.shield(fill)

    async def _fill_checked(self, sha256: str, path: Path) -> int | None:
        """One fetch. Bytes deleted while it ran (an erasure here or on another instance,
        whose removal found no file yet) do not stay behind in the cache."""
        started = self._deletions
        size = await self.pg.read(blobs.fill_cache, sha256, path)
        if size is not None and self._deleted.get(sha256, started) > started:
            await asyncio.to_thread(self._uncache, [sha256])
            return None
        return size

    def _filled(self, sha256: str) -> None:
        self._fills.pop(sha256, None)
        if not self._fills:
            self._deleted.clear()

    def _note_deleted(self, digests: Iterable[str]) -> None:
        """Remember recent deletions for the fetches under way (see ``_fill_checked``)."""
        if not self._fills:
            return
        self._deletions += 1
        for digest in digests:
            self._deleted[digest] = self._deletions

    # ---------------------------------------------------------------- removal

    async def _unreferenced_blobs(self, digests: list[str]) -> None:
        """Delete the rows of bytes that no attachment names any more, this instance's
        cached files of them, and (NOTIFY) every other instance's."""
        if not digests:
            return
        gone = await self.pg.read(blobs.delete_unreferenced, digests)
        self.blob_cache.forget(gone)
        self._note_deleted(gone)
        await asyncio.to_thread(self._uncache, gone)
        for payload in blobs.gone_payloads(gone, self._blobs_gone.limit):
            try:
                await self._blobs_gone.publish(payload)
            except StoreError as exc:  # the others' next start sweeps their caches
                log.warning("store.blob_notify_failed", error=exc.message)

    def _uncache(self, digests: Iterable[str]) -> None:
        for digest in digests:
            self.blob_path(digest).unlink(missing_ok=True)

    def _heard_gone(self, payload: str) -> None:
        """Another instance deleted these bytes: drop the cached files (off the loop)."""
        digests = [d for d in payload.split(",") if blobs.is_digest(d)]
        self.blob_cache.forget(digests)
        self._note_deleted(digests)
        asyncio.get_running_loop().run_in_executor(None, self._uncache, digests)

    def _missed_gone(self) -> None:
        """The listener was down: deletions announced meanwhile went unheard. Look the
        cached files up again (in the background)."""
        if self._recheck is None or self._recheck.done():
            self._recheck = asyncio.create_task(self._drop_deleted(), name="blob-cache-recheck")

    async def _drop_deleted(self) -> None:
        """Remove the cached copies of bytes the table no longer holds (an erasure or a
        purge on another instance while this one did not hear). Only files the cache
        counts as copies: a file it does not count may hold the only copy of its bytes."""
        try:
            copies = self.blob_cache.copies()
            deleted: list[str] = []
            for start in range(0, len(copies), blobs.SWEEP_CHUNK):
                chunk = copies[start:start + blobs.SWEEP_CHUNK]
                held = await self.pg.read(blobs.present, chunk)
                deleted += [d for d in chunk if d not in held]
        except StoreError as exc:  # still unreachable: the next start's sweep does it
            log.warning("store.blob_sweep_failed", error=exc.message)
            return
        self.blob_cache.forget(deleted)
        self._note_deleted(deleted)
        await asyncio.to_thread(self._uncache, deleted)
        if deleted:
            log.info("store.blob_cache_swept", copied_in=0, removed=len(deleted))

    async def _sweep_cache(self) -> None:
        """At start, the cached files the table has no row for: bytes deleted while this
        instance was down (it missed the notification) go; bytes an attachment still
        names were stored before migration 0011 (a shared directory) and are copied in.
        The files with a row are counted, in the order they were last read, and the cache
        is brought within its budget."""
        copied = removed = 0
        files: list[blobs.CachedFile] = []
        copies: set[str] = set()  # files whose bytes the table holds: safe to evict
        gone: set[str] = set()
        try:
            files = await asyncio.to_thread(blobs.cached_files, self.blob_dir)
            cached = [f.sha256 for f in files]
            for start in range(0, len(cached), blobs.SWEEP_CHUNK):
                chunk = cached[start:start + blobs.SWEEP_CHUNK]
                held = await self.pg.read(blobs.present, chunk)
                copies |= held
                rowless = [d for d in chunk if d not in held]
                if not rowless:
                    continue
                kept = await self.pg.read(blobs.named, rowless)
                for digest in kept:
                    try:
                        await self.pg.read(blobs.copy_in, digest, self.blob_path(digest))
                    except StoreError as exc:  # that file only (removed meanwhile?)
                        log.warning("store.blob_copy_failed", sha256=digest,
                                    error=exc.message)
                    else:
                        copies.add(digest)
                dropped = [d for d in rowless if d not in kept]
                await asyncio.to_thread(self._uncache, dropped)
                gone.update(dropped)
                copied += len(kept)
                removed += len(rowless) - len(kept)
        except StoreError as exc:
            log.warning("store.blob_sweep_failed", error=exc.message)
        # What is neither a copy nor gone may be the only copy of its bytes: never evicted.
        looked_up = copies | gone
        self.blob_cache.seed([(f.sha256, f.size) for f in files if f.sha256 in copies],
                             [f.sha256 for f in files if f.sha256 not in looked_up])
        if copied or removed:
            log.info("store.blob_cache_swept", copied_in=copied, removed=removed)
        log.info("store.blob_cache_counted", files=len(self.blob_cache),
                 cache_bytes=self.blob_cache.size_bytes, max_bytes=self.blob_cache.max_bytes)

    async def erase_customer(self, customer_id: str) -> JSON:
        """Delete everything of a customer (PostgreSQL's VACUUM reclaims the rows)."""
        result: JSON = await self.pg.write(_erase_customer, customer_id)
        await self._unreferenced_blobs(result.pop("_blobs"))
        await self._announce_erasure(result["_erased_ids"])
        return result

    async def _announce_erasure(self, customer_ids: list[str]) -> None:
        """Tell every other instance (NOTIFY): they drop what they hold of the customers in
        memory. Missed by an instance not listening then: its subscribers' ``missed``."""
        topic = self.broadcasts.topic(ERASED_TOPIC)
        for payload in erased_payloads(customer_ids, topic.limit):
            try:
                await topic.publish(payload)
            except StoreError as exc:
                log.warning("store.erasure_notify_failed", error=exc.message)

    async def purge_older_than(self, days: int) -> dict[str, int]:
        """Retention: drop raw payloads and attachment bytes older than ``days``."""
        result: dict[str, Any] = await self.pg.write(_purge, iso(utcnow() - timedelta(days=days)))
        await self._unreferenced_blobs(result.pop("_blobs"))
        return result

    async def reclaim_space(self, step: int = 2048) -> None:
        """Nothing to do: autovacuum reuses the space."""

    # ---------------------------------------------------------------- shared claims

    async def claim_outbox(self, limit: int) -> list[OutboxItem]:
        """Claim due outbox rows (SKIP LOCKED, as a lease), one per conversation."""
        return await self.pg.write(pg.claim_outbox, limit, time.time(), self.lease)

    async def recover_inflight(self) -> int:
        """Rows whose lease ran out go back to pending (not another instance's sends)."""
        return await self.pg.write(pg.recover_inflight)

    async def next_outbox_due(self) -> float | None:
        """When the earliest outbox row is due, leases counted."""
        return await self.pg.read(pg.next_outbox_due)

    async def fan_out(self, subscription: str, wants: Callable[[str], bool],
                      limit: int = 1000) -> int:
        """Turn new events into delivery rows (the cursor row locked)."""
        return await self.pg.write(pg.fan_out, subscription, wants, limit, time.time())

    async def claim_deliveries(self, subscription: str, limit: int) -> list[Delivery]:
        """Claim due deliveries (SKIP LOCKED, as a lease), the oldest per ordering key."""
        return await self.pg.write(pg.claim_deliveries, subscription, limit, time.time(),
                                   self.lease)

    async def recover_deliveries(self) -> None:
        """Deliveries whose lease ran out go back to pending."""
        await self.pg.write(pg.recover_deliveries)

    async def next_delivery_due(self, subscription: str) -> float | None:
        """When the subscription's earliest delivery is due, leases counted."""
        return await self.pg.read(pg.next_delivery_due, subscription)

    async def claim_fetches(self, limit: int) -> list[PendingFetch]:
        """Claim due fetches (SKIP LOCKED, as a lease)."""
        return await self.pg.write(pg.claim_fetches, limit, time.time(), self.lease)

    async def recover_fetches(self) -> int:
        """Fetches whose lease ran out go back to pending."""
        return await self.pg.write(pg.recover_fetches)

    async def next_fetch_due(self) -> float | None:
        """When the earliest fetch is due, leases counted."""
        return await self.pg.read(pg.next_fetch_due)

    # ---------------------------------------------------------------- pushes

    def broadcast(self, topic: str) -> Broadcast:
        """Pushes of ``topic`` to the other instances (NOTIFY; see :mod:`.broadcast`)."""
        return self.broadcasts.topic(topic)

    # ---------------------------------------------------------------- singleton work

    async def run_owned(self, name: str, body: Callable[[], Awaitable[None]]) -> None:
        """Run a named loop's body only while this instance owns it (an advisory lock; see
        :mod:`.singleton`): several instances, one IMAP session per mailbox."""
        await run_owned(self.url, name, body)

    # ---------------------------------------------------------------- backup

    async def backup(self, target: Path) -> None:
        """A consistent online copy with pg_dump (custom format; pg_restore reads it)."""
        pg_dump = shutil.which("pg_dump") or _debian_bin("pg_dump")
        if pg_dump is None:
            raise StoreError("pg_dump not found: install postgresql-client")
        def work() -> None:
            done = subprocess.run([pg_dump, "--format=custom", f"--file={target}",
                                   f"--dbname={self.url}"], capture_output=True, text=True,
                                  check=False)
            if done.returncode != 0:
                raise StoreError(f"pg_dump failed: {done.stderr.strip()[:300]}")
        await asyncio.to_thread(work)


def _digested(items: list[tuple[str, str, bytes, bool, str | None]]
              ) -> list[StoredAttachment]:
    """The items as attachments, their digests computed (a thread: big bytes)."""
    return [stored_attachment(item, hashlib.sha256(item[2]).hexdigest()) for item in items]


def _debian_bin(name: str) -> str | None:
    """Debian keeps the server's tools under /usr/lib/postgresql/<version>/bin."""
    root = Path("/usr/lib/postgresql")
    if not root.is_dir():
        return None
    for version in sorted(root.iterdir(), reverse=True):
        path = version / "bin" / name
        if os.access(path, os.X_OK):
            return str(path)
    return None

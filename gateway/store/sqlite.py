"""SQLite store: WAL, one writer thread with group commit, a syncer, a checkpointer, readers.

Why this shape: SQLite allows one writer at a time, and each commit costs an fsync. All
writes are therefore closures queued to a single writer thread, which runs everything
queued so far inside one transaction and commits once. Because a single thread does all
writing, dedupe and customer resolution need no further locking: the same message delivered
twice at the same moment is simply found the second time.

With ``synchronous = FULL`` (the default) the writer does not wait for the disk: the syncer
thread fsyncs the WAL after commits and only then resolves the callers' futures and
advances the feed, so nothing is acknowledged or shown before it is durable, while the
writer already runs the next batch. The checkpointer thread folds the WAL back into the
database in the background. A caller that must acknowledge a provider awaits its future.

Reads run on a small thread pool with their own connections (WAL lets them proceed while
the writer commits); the newest durable events are also served from memory (FeedTail). The
event loop never touches SQLite. docs/architecture.md tells the whole story.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import contextlib
import functools
import hashlib
import itertools
import os
import queue
import sqlite3
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import orjson
import structlog

from gateway.config import StoreConfig
from gateway.errors import Conflict, NotFound, StoreError, ValidationFailed
from gateway.ids import iso, new_id, parse_iso, utcnow
from gateway.store.base import (
    JSON,
    Delivery,
    IngestResult,
    OutboundRequest,
    OutboxItem,
    Page,
    Route,
    StoredAttachment,
)
from normalizer.model import InboundMessage, Party

if TYPE_CHECKING:
    from gateway.store.changes import ChangeResult
    from normalizer.model import DeliveryStatus, MessageChange

log = structlog.get_logger(__name__)
T = TypeVar("T")

# Which identity kinds a channel can reach a customer on (replies, proactive messages).
CHANNEL_IDENTITY_KINDS: dict[str, tuple[str, ...]] = {
    "email": ("email",),
    "sms": ("phone",),
    "whatsapp": ("phone", "whatsapp"),
    "messenger": ("messenger",),
    "instagram": ("instagram",),
    "telegram": ("telegram",),
    "line": ("line",),
    "navertalk": ("navertalk",),
    "webchat": ("webchat",),
    "api": ("external",),
}


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def _loads(value: str | bytes | None) -> Any:
    return None if value is None else orjson.loads(value)


@dataclass(slots=True)
class Tx:
    """What a write job sees: the connection, one clock reading, the events it emitted."""

    conn: sqlite3.Connection
    store: SQLiteStore
    now: datetime
    now_iso: str  # ``now`` in the contract's format, formatted once per batch
    cache: WriterCache
    rows: BatchRows | None = None  # set: inserts are deferred to the batch's flush
    emitted: EmittedEvents | None = None  # the batch's events, for the feed's tail

    def one(self, sql: str, params: Iterable[Any] = ()) -> sqlite3.Row | None:
        """Run a query and return its first row."""
        return self.conn.execute(sql, tuple(params)).fetchone()

    def emit(self, event_type: str, data: JSON, *, conversation_id: str | None = None,
             customer_id: str | None = None) -> int:
        """Append an event to the feed inside the job's transaction."""
        seq = self.store._next_seq()
        event_id = new_id("evt")
        body = orjson.dumps({"id": event_id, "seq": str(seq), "type": event_type,
                             "created_at": self.now_iso, "data": data})
        row = (seq, event_id, event_type, self.now_iso, conversation_id, customer_id, body)
        if self.emitted is not None:
            self.emitted.append((seq, body))
        if self.rows is not None:
            self.rows.events.append(row)
        else:
            self.conn.execute(_INSERT_EVENT + _VALUES[7], row)
        return seq


class EmittedEvents(list[tuple[int, bytes]]):
    """(seq, body) of the events a batch committed; ``rewritten`` when a job of the batch
    changed stored events (erasure), so the feed's tail must be read from the table again."""

    rewritten: bool = False


class FeedTail:
    """The newest durable events in memory, so that a consumer reading near the head (the
    usual case: a help desk long-polling the feed) is served without a database read.

    Holds every durable event with ``lo < seq``, batch by batch, at most about
    ``max_bytes`` of bodies (older batches are dropped whole, so their memory goes at
    once); older cursors go to the table. Appended to by whichever thread declares batches
    durable, read on the event loop: a lock keeps the two apart.
    """

    def __init__(self, lo: int, max_bytes: int = 4 * 1024 * 1024) -> None:
        self.lo = lo
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        # Per batch: seqs, one bytes object with every body, each body's end offset. One
        # allocation a batch instead of one an event: thousands of small blocks kept
        # among short-lived ones fragmented the heap (RSS grew eight times the bodies).
        self._batches: collections.deque[tuple[list[int], bytes, list[int]]] = (
            collections.deque())
        self._bytes = 0

    def drop(self, head: int) -> None:
        """Forget everything up to ``head``: readers of those events go to the table."""
        with self._lock:
            self._batches.clear()
            self._bytes = 0
            self.lo = max(self.lo, head)

    def extend(self, events: EmittedEvents, head: int) -> None:
        """Add a durable batch's events (``head``: the newest seq now durable)."""
        if events.rewritten:
            self.drop(head)
            return
        with self._lock:
            if events:
                ends = list(itertools.accumulate(len(body) for _seq, body in events))
                self._batches.append(([seq for seq, _ in events],
                                      b"".join(body for _seq, body in events), ends))
                self._bytes += ends[-1]
            while self._bytes > self.max_bytes and self._batches:
                seqs, blob, _ends = self._batches.popleft()
                self._bytes -= len(blob)
                self.lo = seqs[-1]

    def after(self, after: int, limit: int) -> Page | None:
        """Up to ``limit`` events after ``after``; None when the tail does not reach back."""
        with self._lock:
            if after < self.lo:
                return None
            index = len(self._batches)
            while index > 0 and self._batches[index - 1][0][0] > after:
                index -= 1  # consumers read near the head: few steps back
            page = Page([], after, [])
            for seqs, blob, ends in itertools.islice(self._batches, max(0, index - 1), None):
                first = bisect.bisect_right(seqs, after)
                last = min(len(seqs), first + limit - len(page.seqs))
                page.seqs += seqs[first:last]
                page.bodies += [blob[ends[i - 1] if i else 0:ends[i]] for i in range(first, last)]
                if len(page.seqs) >= limit:
                    break
            if page.seqs:
                page.next = page.seqs[-1]
            return page


_INSERT_EVENT = ("INSERT INTO events (seq, id, type, created_at, conversation_id, customer_id,"
                 " body) VALUES ")
_INSERT_MESSAGE = ("INSERT INTO messages (id, conversation_id, customer_id, channel, account, "
                   "direction, provider_message_id, status, created_at, data) VALUES ")
_INSERT_RAW = "INSERT INTO raw_payloads (message_id, content_type, body, created_at) VALUES "
_VALUES = {width: "(" + ", ".join("?" * width) + ")" for width in (4, 7, 10)}
_CHUNK = 64  # rows per multi-row statement: one prepared statement per size up to this


@dataclass(slots=True)
class BatchRows:
    """Rows that a batch's ingest jobs wrote, inserted together before anything reads them.

    One multi-row INSERT per table instead of four statements per message. Each statement
    releases the GIL, and under load getting it back means waiting for the event loop's
    turn: a batch's wall time grew with its statement count, not its CPU. ``by_key`` and
    ``by_ref`` answer dedupe and threading lookups for rows not yet inserted; ``stored``
    holds what one query per batch found of the batch's keys already in the table.
    """

    messages: list[tuple[Any, ...]] = field(default_factory=list)
    raw: list[tuple[Any, ...]] = field(default_factory=list)
    events: list[tuple[Any, ...]] = field(default_factory=list)
    touched: set[str] = field(default_factory=set)  # conversations whose last_message_at = now
    by_key: dict[tuple[str, str, str | None], JSON] = field(default_factory=dict)
    by_ref: dict[tuple[str, str | None], JSON] = field(default_factory=dict)
    # None: not looked up (or stale: another kind of job ran since), ask the table.
    stored: dict[tuple[str, str, str | None], str] | None = None

    def prefetch(self, conn: sqlite3.Connection, keys: Iterable[tuple[str, str, str]]) -> None:
        """Find which of these (channel, account, provider id) are stored, in few queries."""
        stored: dict[tuple[str, str, str | None], str] = {}
        self.stored = stored
        by_channel: dict[str, list[str]] = {}
        for channel, _account, provider_id in keys:
            by_channel.setdefault(channel, []).append(provider_id)
        for channel, ids in by_channel.items():
            unique = sorted(set(ids))
            for start in range(0, len(unique), _CHUNK):
                chunk = unique[start:start + _CHUNK]
                for row in conn.execute(
                        "SELECT account, provider_message_id, data FROM messages WHERE "
                        "channel = ? AND provider_message_id IN (" + ", ".join("?" * len(chunk))
                        + ")", (channel, *chunk)):
                    stored[(channel, row[0], row[1])] = row[2]

    def flush(self, conn: sqlite3.Connection, now_iso: str) -> None:
        """Insert everything collected so far, then start empty (and forget the lookup:
        the job that runs next may change the table)."""
        _insert_chunked(conn, _INSERT_MESSAGE, 10, self.messages)
        _insert_chunked(conn, _INSERT_RAW, 4, self.raw)
        _insert_chunked(conn, _INSERT_EVENT, 7, self.events)
        touched = sorted(self.touched)
        for start in range(0, len(touched), _CHUNK):
            chunk = touched[start:start + _CHUNK]
            conn.execute("UPDATE conversations SET last_message_at = ? WHERE id IN ("
                         + ", ".join("?" * len(chunk)) + ")", (now_iso, *chunk))
        self.messages.clear()
        self.raw.clear()
        self.events.clear()
        self.touched.clear()
        self.by_key.clear()
        self.by_ref.clear()
        self.stored = None


def _insert_chunked(conn: sqlite3.Connection, head: str, width: int,
                    rows: list[tuple[Any, ...]]) -> None:
    """Multi-row INSERTs of up to ``_CHUNK`` rows (each size's statement stays prepared)."""
    for start in range(0, len(rows), _CHUNK):
        chunk = rows[start:start + _CHUNK]
        conn.execute(_multi_row_sql(head, width, len(chunk)),
                     list(itertools.chain.from_iterable(chunk)))


@functools.lru_cache(maxsize=512)
def _multi_row_sql(head: str, width: int, rows: int) -> str:
    return head + ", ".join([_VALUES[width]] * rows)


_STOP = object()


def _take_queued(source: queue.SimpleQueue[Any], limit: int) -> tuple[list[Any], bool]:
    """Wait for one item, then take what else is queued (at most ``limit`` in all).

    Returns the items and whether the stop marker came (nothing after it is taken).
    """
    first = source.get()
    if first is _STOP:
        return [], True
    items = [first]
    while len(items) < limit:
        try:
            item = source.get_nowait()
        except queue.Empty:
            break
        if item is _STOP:
            return items, True
        items.append(item)
    return items, False


_CHECKPOINT_PAGES = 8000  # WAL frames (4 KiB pages) before the writer resets the WAL
_CHECKPOINT_EVERY = 50  # batches between background checkpoint passes


class WriterCache:
    """What the writer thread learnt from rows it read or wrote, to skip re-reading them.

    Valid because the writer is the only thread that writes: every job function that
    changes identities, customers or conversations keeps it current or clears it, and any
    rollback clears it. Bounded: a map that grows past ``limit`` entries starts again.
    """

    def __init__(self, limit: int = 50_000) -> None:
        self.limit = limit
        # (kind, address) -> [surviving customer id, the identity's channels]
        self.identities: dict[tuple[str, str], tuple[str, list[str]]] = {}
        # customer id -> (name, the "kind:address" that gave it) (H8: name changes)
        self.names: dict[str, tuple[str | None, str | None]] = {}
        self.latest: dict[str, JSON] = {}  # customer id -> their latest conversation

    def clear(self) -> None:
        """Forget everything (after a rollback, a merge, an erasure)."""
        self.identities.clear()
        self.names.clear()
        self.latest.clear()

    def trim(self) -> None:
        """Keep memory bounded."""
        for store in (self.identities, self.names, self.latest):
            if len(store) > self.limit:
                store.clear()


class SQLiteStore:
    """The embedded default store. See the module docstring for the design."""

    def __init__(self, config: StoreConfig, *, on_commit: Callable[[int], None] | None = None,
                 on_batch: Callable[[int], None] | None = None,
                 on_fatal: Callable[[str], None] | None = None, readers: int = 4) -> None:
        self.config = config
        # Called once, from a store thread, when the store stops taking writes for good.
        self.on_fatal = on_fatal
        self.fatal: str | None = None
        self.path = config.sqlite_path
        self.blob_dir = config.data_dir / "blobs"
        self.on_commit = on_commit
        self.on_batch = on_batch  # called on the writer thread with each batch's job count
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        # FULL/EXTRA: the writer commits without waiting for the disk; the syncer thread
        # fsyncs the WAL and only then answers the batch's callers (see _syncer_main).
        self._pipelined = config.synchronous in ("FULL", "EXTRA")
        self._synced: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._syncer: threading.Thread | None = None
        self._checkpointer: threading.Thread | None = None
        self._checkpoint_wanted = threading.Event()
        self._catch_up = False  # set by the checkpointer: the WAL needs resetting
        self._stopping = False
        self._readers = ThreadPoolExecutor(max_workers=readers, thread_name_prefix="store-read")
        self._local = threading.local()
        self._seq = 0
        self._committed_seq = 0
        self.tail = FeedTail(0)
        self._batch_events = EmittedEvents()
        self._commit_ok = True  # the writer's last COMMIT
        self._sync_ok = True  # the syncer's last fsync
        # Backpressure: at most this many writes wait for the writer; more callers wait
        # here, so memory stays bounded however fast requests arrive.
        self.cache = WriterCache()
        self._max_pending = max(64, config.batch_max * 16)
        self._pending = 0
        self._room = asyncio.Event()
        self.last_error: str | None = None
        self.batches = 0
        self.jobs = 0
        self.reruns = 0  # batches run again job by job after an optimistic run failed

    # ---------------------------------------------------------------- plumbing

    def _connect(self, *, readonly: bool = False) -> sqlite3.Connection:
        # Room for the batch statements of every size (see BatchRows) besides the rest.
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                               timeout=30.0, cached_statements=512)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA busy_timeout = 30000")
        conn.execute("PRAGMA foreign_keys = OFF")
        if readonly:
            conn.execute("PRAGMA query_only = ON")
        else:
            conn.execute("PRAGMA journal_mode = WAL")
            if self._pipelined:
                # Durability is the syncer's job (an fsync of the WAL before any caller
                # hears of its commit) and checkpoints are the checkpointer's, so a commit
                # never waits for the disk here.
                conn.execute("PRAGMA synchronous = OFF")
                conn.execute("PRAGMA wal_autocheckpoint = 0")
            else:
                conn.execute(f"PRAGMA synchronous = {self.config.synchronous}")
                conn.execute("PRAGMA wal_autocheckpoint = 4000")  # SQLite checkpoints
            # Deleted rows (an erased customer) are overwritten, not just unlinked.
            conn.execute("PRAGMA secure_delete = ON")
        conn.execute("PRAGMA cache_size = -16000")
        conn.execute("PRAGMA temp_store = MEMORY")  # savepoint journals: no temp-file writes
        return conn

    async def open(self) -> None:
        """Create the data dir, start the writer, apply migrations."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.blob_dir.mkdir(parents=True, exist_ok=True)
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()
        self._writer = threading.Thread(target=self._writer_main, args=(loop, ready),
                                        name="store-writer", daemon=True)
        self._writer.start()
        if self._pipelined:
            self._syncer = threading.Thread(target=self._syncer_main, name="store-sync",
                                            daemon=True)
            self._syncer.start()
        await ready
        if self._pipelined:
            self._checkpointer = threading.Thread(target=self._checkpointer_main,
                                                  name="store-checkpoint", daemon=True)
            self._checkpointer.start()

    async def close(self) -> None:
        """Let queued writes commit (and reach the disk), then stop the threads."""
        if self._writer is not None:
            self._queue.put(_STOP)
            await asyncio.to_thread(self._writer.join)  # it stops the syncer after itself
            self._writer = None
        self._stopping = True
        self._checkpoint_wanted.set()
        for thread in (self._syncer, self._checkpointer):
            if thread is not None:
                await asyncio.to_thread(thread.join)
        self._syncer = self._checkpointer = None
        self._readers.shutdown(wait=True)

    def _writer_main(self, loop: asyncio.AbstractEventLoop, ready: asyncio.Future[None]) -> None:
        try:
            conn = self._connect()
            apply_migrations(conn)
            self._seq = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0]
            self._committed_seq = self._seq
            self.tail = FeedTail(self._seq)
        except Exception as exc:
            loop.call_soon_threadsafe(_set_exception, ready, StoreError(f"cannot open: {exc}"))
            return
        loop.call_soon_threadsafe(_set_result, ready, None)
        stopping = False
        while not stopping:
            batch, stopping = _take_queued(self._queue, self.config.batch_max)
            if not batch:
                continue
            if self.fatal is not None:
                self._refuse(batch)
                continue
            if self._catch_up:
                self._finish_checkpoint(conn)
            self._run_batch(conn, batch)
        if self._pipelined:
            self._synced.put(_STOP)
        conn.close()

    # ---------------------------------------------------------------- durability

    def _refuse(self, batch: list[Any]) -> None:
        """Fail a batch unrun: the store has stopped (see _syncer_main)."""
        error = StoreError(self.fatal or "the store has stopped")
        self._hand_over(batch, [(False, error)] * len(batch), None, EmittedEvents())

    def _syncer_main(self) -> None:
        """fsync the WAL after commits, then answer the callers of every commit it covers.

        One fsync covers every commit written before it started, so while it runs the
        writer goes on with the next batch, and the next fsync covers all of those.
        """
        wal_fd: int | None = None
        stopping = False
        while not stopping:
            done, stopping = _take_queued(self._synced, sys.maxsize)
            if not done:
                continue
            error: str | None = None
            try:
                if wal_fd is None:
                    wal_fd = os.open(f"{self.path}-wal", os.O_RDONLY)
                os.fdatasync(wal_fd)
                self._sync_ok = True
            except OSError as exc:
                # Fail-stop, as PostgreSQL does: after a failed fsync the kernel may have
                # dropped the dirty pages, yet SQLite counts the commit as done, so a retry
                # would be "found" as a duplicate that is not on disk. Nothing more is
                # written; a restart recovers from what the disk really holds.
                error = (f"fsync of the write-ahead log failed ({exc}); the store has "
                         f"stopped taking writes: restart the service")
                self._sync_ok = False
                self.last_error = error
                if self.fatal is None:
                    self.fatal = error
                    log.critical("store.sync_failed", error=str(exc),
                                 hint="restart: recovery keeps what reached the disk")
                    if self.on_fatal is not None:
                        self.on_fatal(error)
            for seq, settle, events in done:
                if error is not None:
                    failure = StoreError(error)
                    settle = {loop: [(f, False, failure) for f, _ok, _v in results]
                              for loop, results in settle.items()}
                    if seq is not None:  # its events are not in the tail: read the table
                        self.tail.drop(seq)
                    seq = None
                self._deliver(settle, seq, events)
        if wal_fd is not None:
            os.close(wal_fd)

    def _checkpointer_main(self) -> None:
        """Copy the WAL back into the database in the background (PASSIVE: the writer
        goes on meanwhile), fsyncing both files itself; ask the writer for a short
        catch-up when the WAL keeps growing, because only a checkpoint that reaches the
        WAL's end lets the next commit start the WAL over."""
        conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        conn.execute("PRAGMA synchronous = FULL")
        try:
            while not self._stopping:
                self._checkpoint_wanted.wait(1.0)
                self._checkpoint_wanted.clear()
                if self._stopping:
                    break
                try:
                    _busy, frames, copied = conn.execute(
                        "PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                except sqlite3.Error as exc:
                    log.warning("store.checkpoint_failed", error=str(exc))
                    continue
                # Most of it copied: the writer's share is small. Far too long (readers
                # held it back): the writer catches up anyway, to keep the WAL bounded.
                if frames >= _CHECKPOINT_PAGES and (copied >= frames - _CHECKPOINT_PAGES // 4
                                                    or frames >= 4 * _CHECKPOINT_PAGES):
                    self._catch_up = True
        finally:
            conn.close()

    def _finish_checkpoint(self, conn: sqlite3.Connection) -> None:
        """On the writer, between batches: checkpoint the WAL's last frames (the
        checkpointer copied the rest) so that the next commit starts the WAL over."""
        self._catch_up = False
        try:
            conn.execute("PRAGMA synchronous = FULL")  # this checkpoint must sync the file
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error as exc:
            log.warning("store.checkpoint_failed", error=str(exc))
        finally:
            conn.execute("PRAGMA synchronous = OFF")

    def _run_batch(self, conn: sqlite3.Connection, batch: list[Any]) -> None:
        seq_before = self._seq
        try:
            outcomes = self._execute(conn, batch, optimistic=True)
            if outcomes is None:
                # A job without a savepoint failed: undo the batch, run it again with one
                # savepoint per job so that only the failing job is undone.
                self._seq = seq_before
                self.reruns += 1
                outcomes = self._execute(conn, batch, optimistic=False)
            assert outcomes is not None
            conn.execute("COMMIT")
            if self.on_batch is not None:
                self.on_batch(len(batch))
            self.cache.trim()
            self._commit_ok = True
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            self.cache.clear()
            self._seq = seq_before
            self._commit_ok = False
            self.last_error = str(exc)
            log.error("store.commit_failed", error=str(exc), jobs=len(batch))
            self._batch_events = EmittedEvents()
            error = StoreError(f"the store could not commit: {exc}")
            outcomes = [(False, error) for _ in batch]
        self.batches += 1
        self.jobs += len(batch)
        self._hand_over(batch, outcomes, self._seq if self._seq > seq_before else None,
                        self._batch_events)
        if self._pipelined and self.batches % _CHECKPOINT_EVERY == 0:
            self._checkpoint_wanted.set()

    def _hand_over(self, batch: list[Any], outcomes: list[tuple[bool, Any]], seq: int | None,
                   events: EmittedEvents) -> None:
        """Group a finished batch's outcomes by event loop (one wake-up each, not one per
        caller) and deliver them once durable: through the syncer, or at once."""
        settle: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool, Any]]] = {}
        for (ok, value), (_fn, _args, future, loop) in zip(outcomes, batch, strict=True):
            if not ok and isinstance(value, sqlite3.Error):
                value = StoreError(str(value))
            settle.setdefault(loop, []).append((future, ok, value))
        if self._pipelined:
            self._synced.put((seq, settle, events))
        else:
            self._deliver(settle, seq, events)

    def _deliver(self, settle: dict[asyncio.AbstractEventLoop,
                                    list[tuple[asyncio.Future[Any], bool, Any]]],
                 seq: int | None, events: EmittedEvents) -> None:
        """The batch is as durable as configured: show it in the feed, answer its callers."""
        if seq is not None:
            self.tail.extend(events, seq)
            self._committed_seq = seq
        for loop, results in settle.items():
            loop.call_soon_threadsafe(self._settle, results, seq)

    def _settle(self, results: list[tuple[asyncio.Future[Any], bool, Any]],
                seq: int | None) -> None:
        """On the event loop: announce the commit, then resume the batch's callers (so a
        caller that reads the feed head right after its write sees its own events)."""
        if seq is not None and self.on_commit is not None:
            self.on_commit(seq)
        for future, ok, value in results:
            if future.done():
                continue
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)

    def _execute(self, conn: sqlite3.Connection, batch: list[Any], *,
                 optimistic: bool) -> list[tuple[bool, Any]] | None:
        """Run a batch inside one open transaction; return each job's outcome.

        Savepoints cost two statements per job, so jobs that almost never fail (ingest) run
        without one when ``optimistic``; if such a job does fail, the transaction is rolled
        back and None is returned so the caller can run the batch again the careful way.
        """
        outcomes: list[tuple[bool, Any]] = []
        now = utcnow()
        now_iso = iso(now)
        assert now_iso is not None
        cache = self.cache
        rows = BatchRows() if optimistic else None
        emitted = self._batch_events = EmittedEvents()
        conn.execute("BEGIN IMMEDIATE")
        if rows is not None:
            rows.prefetch(conn, [(a[0].channel, a[0].account, a[0].provider_message_id)
                                 for fn, a, _f, _l in batch if fn is _ingest])
        for fn, args, _future, _loop in batch:
            if optimistic and fn in _NO_SAVEPOINT:
                try:
                    outcomes.append((True, fn(Tx(conn, self, now, now_iso, cache, rows, emitted),
                                              *args)))
                except Exception:
                    conn.execute("ROLLBACK")
                    self.cache.clear()
                    return None
                continue
            tx = Tx(conn, self, now, now_iso, cache, None, emitted)
            emitted_before = len(emitted)
            if rows is not None:
                try:
                    rows.flush(conn, now_iso)  # what this job may read must be in the tables
                except sqlite3.Error:
                    conn.execute("ROLLBACK")
                    self.cache.clear()
                    return None
            conn.execute("SAVEPOINT job")
            try:
                result = fn(tx, *args)
            except Exception as exc:
                conn.execute("ROLLBACK TO job")
                conn.execute("RELEASE job")
                self.cache.clear()
                del emitted[emitted_before:]  # undone with the job
                outcomes.append((False, exc))
            else:
                conn.execute("RELEASE job")
                outcomes.append((True, result))
        if rows is not None:
            try:
                rows.flush(conn, now_iso)
            except sqlite3.Error:
                conn.execute("ROLLBACK")
                self.cache.clear()
                return None
        return outcomes

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    async def write(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(tx, *args)`` in the writer's next batch; return after its commit."""
        if self._writer is None:
            raise StoreError("the store is closed")
        loop = asyncio.get_running_loop()
        while self._pending >= self._max_pending:
            self._room.clear()
            await self._room.wait()
        self._pending += 1
        try:
            future: asyncio.Future[T] = loop.create_future()
            self._queue.put((fn, args, future, loop))
            return await future
        finally:
            self._pending -= 1
            if self._pending < self._max_pending:
                self._room.set()

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(conn, *args)`` on a reader thread."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._readers, self._read_job, fn, args)
        except sqlite3.Error as exc:
            raise StoreError(str(exc)) from exc

    def _read_job(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect(readonly=True)
            self._local.conn = conn
        return fn(conn, *args)

    async def ping(self) -> None:
        """Raise StoreError unless a read and the last commit succeeded."""
        await self.read(lambda conn: conn.execute("SELECT 1").fetchone())
        if self.fatal is not None:
            raise StoreError(self.fatal)
        if not (self._commit_ok and self._sync_ok):
            raise StoreError(self.last_error or "the last commit failed")

    # ---------------------------------------------------------------- blobs

    def blob_path(self, sha256: str) -> Path:
        """Where the bytes with this digest live (content-addressed)."""
        return self.blob_dir / sha256[:2] / sha256[2:4] / sha256

    def _put_blob(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        path = self.blob_path(digest)
        if path.exists():
            return digest
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{digest}.{threading.get_ident()}.tmp")
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            if self.config.synchronous in ("FULL", "EXTRA"):
                os.fsync(fh.fileno())
        tmp.replace(path)
        return digest

    async def put_blobs(self, items: list[tuple[str, str, bytes, bool, str | None]]
                        ) -> list[StoredAttachment]:
        """Store attachment bytes (off the loop) before the message that names them commits."""
        if not items:
            return []

        def work() -> list[StoredAttachment]:
            stored = []
            for filename, content_type, data, inline, content_id in items:
                digest = self._put_blob(data)
                stored.append(StoredAttachment(new_id("att"), filename, content_type,
                                               len(data), digest, inline, content_id))
            return stored

        return await asyncio.to_thread(work)

    # ---------------------------------------------------------------- ingest

    def ingest(self, inbound: InboundMessage,
               attachments: list[StoredAttachment]) -> Awaitable[IngestResult]:
        """Store one inbound message once (see :func:`_ingest`); await the commit."""
        return self.write(_ingest, inbound, attachments, self.config.reopen_window_days)

    async def update_status(self, channel: str, account: str, provider_message_id: str,
                            status: str, error: JSON | None = None) -> JSON | None:
        """Apply a provider's delivery/read receipt to an outbound message."""
        return await self.write(_update_status_by_provider, channel, account,
                                provider_message_id, status, error)

    # ---------------------------------------------------------------- H8: provider reports
    # The write jobs live in gateway/store/changes.py (imported late: it builds on this one).

    async def change_message(self, channel: str, account: str, provider_message_id: str,
                             change: MessageChange) -> ChangeResult:
        """Apply an edit, reactions or a withdrawal (``message.updated``); NotFound if unknown."""
        from gateway.store.changes import change_message
        return await self.write(change_message, channel, account, provider_message_id, change)

    async def apply_receipt(self, channel: str, account: str, provider_message_id: str,
                            status: DeliveryStatus, error: JSON | None = None,
                            at: datetime | None = None) -> ChangeResult | None:
        """Move an outbound message's status forwards by its provider id (``message.status``);
        None when no message has that id."""
        from gateway.store.changes import apply_receipt
        return await self.write(apply_receipt, channel, account, provider_message_id, status,
                                error, at)

    async def apply_read_watermark(self, channel: str, account: str, recipient: Party,
                                   watermark: datetime) -> int:
        """Mark the account's replies to ``recipient`` sent up to ``watermark`` read (one
        ``message.status`` each); returns how many moved."""
        from gateway.store.changes import apply_read_watermark
        return await self.write(apply_read_watermark, channel, account, recipient, watermark)

    async def remove_identity(self, kind: str, address: str) -> JSON:
        """Take a withdrawn identity from its customer (``customer.updated``)."""
        from gateway.store.changes import remove_identity
        return await self.write(remove_identity, kind, address)

    # ---------------------------------------------------------------- reads

    async def events_after(self, after: int, limit: int) -> Page:
        """Return up to ``limit`` event bodies with seq > ``after``."""
        page = self.tail.after(after, limit)
        if page is not None:
            return page

        def q(conn: sqlite3.Connection) -> Page:
            # Only what reached the disk: a consumer never sees an event a crash could undo.
            rows = conn.execute("SELECT seq, body FROM events WHERE seq > ? AND seq <= ? "
                                "ORDER BY seq LIMIT ?", (after, self._committed_seq, limit)
                                ).fetchall()
            return Page([bytes(r["body"]) for r in rows], rows[-1]["seq"] if rows else after,
                        [r["seq"] for r in rows])

        return await self.read(q)

    async def head_seq(self) -> int:
        """Return the newest committed seq."""
        return self._committed_seq

    async def get_message(self, message_id: str) -> JSON:
        """Return one message or raise NotFound."""
        def q(conn: sqlite3.Connection) -> JSON:
            row = conn.execute("SELECT data FROM messages WHERE id = ?", (message_id,)).fetchone()
            if row is None:
                raise NotFound(f"message {message_id} not found")
            return _loads(row["data"])
        return await self.read(q)

    async def list_messages(self, conversation_id: str, after: str | None,
                            limit: int) -> list[JSON]:
        """Return a conversation's messages, oldest first."""
        def q(conn: sqlite3.Connection) -> list[JSON]:
            if conn.execute("SELECT 1 FROM conversations WHERE id = ?",
                            (conversation_id,)).fetchone() is None:
                raise NotFound(f"conversation {conversation_id} not found")
            rows = conn.execute(
                "SELECT data FROM messages WHERE conversation_id = ? AND id > ? "
                "ORDER BY id LIMIT ?", (conversation_id, after or "", limit)).fetchall()
            return [_loads(r["data"]) for r in rows]
        return await self.read(q)

    async def get_conversation(self, conversation_id: str) -> JSON:
        """Return one conversation or raise NotFound."""
        def q(conn: sqlite3.Connection) -> JSON:
            row = conn.execute("SELECT * FROM conversations WHERE id = ?",
                               (conversation_id,)).fetchone()
            if row is None:
                raise NotFound(f"conversation {conversation_id} not found")
            return _conversation_json(row)
        return await self.read(q)

    async def list_conversations(self, *, status: str | None, customer_id: str | None,
                                 after: str | None, limit: int) -> list[JSON]:
        """List conversations by id (creation order), filtered."""
        def q(conn: sqlite3.Connection) -> list[JSON]:
            sql = "SELECT * FROM conversations WHERE id > ?"
            params: list[Any] = [after or ""]
            if status:
                sql += " AND status = ?"
                params.append(status)
            if customer_id:
                cid = _resolve_customer_id(conn, customer_id)
                sql += " AND customer_id = ?"
                params.append(cid)
            sql += " ORDER BY id LIMIT ?"
            params.append(limit)
            return [_conversation_json(r) for r in conn.execute(sql, params).fetchall()]
        return await self.read(q)

    async def get_customer(self, customer_id: str) -> JSON:
        """Return a customer (a merged-away id resolves to the survivor)."""
        def q(conn: sqlite3.Connection) -> JSON:
            cid = _resolve_customer_id(conn, customer_id)
            customer = _customer_json(conn, cid, with_conversations=True)
            if customer is None:
                raise NotFound(f"customer {customer_id} not found")
            return customer
        return await self.read(q)

    async def find_customer(self, kind: str, address: str) -> JSON:
        """Return the customer owning an identity, or raise NotFound."""
        def q(conn: sqlite3.Connection) -> JSON:
            row = conn.execute("SELECT customer_id FROM identities WHERE kind = ? AND address = ?",
                               (kind, address)).fetchone()
            if row is None:
                raise NotFound(f"no customer has identity {kind}:{address}")
            customer = _customer_json(conn, _resolve_customer_id(conn, row["customer_id"]),
                                      with_conversations=True)
            assert customer is not None
            return customer
        return await self.read(q)

    async def get_attachment(self, attachment_id: str) -> tuple[StoredAttachment, Path]:
        """Return an attachment's metadata and the path of its bytes."""
        def q(conn: sqlite3.Connection) -> StoredAttachment:
            row = conn.execute("SELECT * FROM attachments WHERE id = ?",
                               (attachment_id,)).fetchone()
            if row is None:
                raise NotFound(f"attachment {attachment_id} not found")
            return StoredAttachment(row["id"], row["filename"], row["content_type"],
                                    row["size"], row["sha256"])
        att = await self.read(q)
        return att, self.blob_path(att.sha256)

    async def get_raw(self, message_id: str) -> tuple[str, bytes] | None:
        """Return the raw provider payload of a message, if still kept."""
        def q(conn: sqlite3.Connection) -> tuple[str, bytes] | None:
            row = conn.execute("SELECT content_type, body FROM raw_payloads WHERE message_id = ?",
                               (message_id,)).fetchone()
            return None if row is None else (row["content_type"], bytes(row["body"]))
        return await self.read(q)

    async def find_message_by_provider_id(self, channel: str, account: str,
                                          provider_message_id: str) -> JSON | None:
        """Return the message stored under a provider id, if any."""
        def q(conn: sqlite3.Connection) -> JSON | None:
            row = conn.execute(
                "SELECT data FROM messages WHERE channel = ? AND account = ? "
                "AND provider_message_id = ?", (channel, account, provider_message_id)).fetchone()
            return None if row is None else _loads(row["data"])
        return await self.read(q)

    # ---------------------------------------------------------------- conversations, customers

    async def set_conversation_status(self, conversation_id: str, status: str,
                                      agent: JSON | None) -> JSON:
        """Close or reopen a conversation, emitting the event (no-op when unchanged)."""
        return await self.write(_set_conversation_status, conversation_id, status, agent)

    async def add_identity(self, customer_id: str, kind: str, address: str) -> JSON:
        """Link an identity to a customer; 409 when another customer owns it."""
        return await self.write(_add_identity, customer_id, kind, address)

    async def merge_customers(self, survivor_id: str, merged_id: str) -> JSON:
        """Merge ``merged_id`` into ``survivor_id``; the merged id keeps resolving."""
        return await self.write(_merge_customers, survivor_id, merged_id)

    async def erase_customer(self, customer_id: str) -> JSON:
        """Delete everything of a customer (support data is personal data)."""
        result = await self.write(_erase_customer, customer_id)
        await asyncio.to_thread(self._delete_unreferenced_blobs, result.pop("_blobs"))
        await asyncio.to_thread(self._checkpoint)
        return result

    def _checkpoint(self) -> None:
        """Fold the WAL into the database and truncate it, so erased rows' old page images
        do not linger in the WAL file (secure_delete zeroes them in the database itself)."""
        conn = sqlite3.connect(self.path, timeout=5.0)
        try:
            busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            if busy:
                log.warning("store.checkpoint_busy", hint="readers held the WAL; it is "
                            "truncated at the next idle checkpoint")
        except sqlite3.Error as exc:
            log.warning("store.checkpoint_failed", error=str(exc))
        finally:
            conn.close()

    def _delete_unreferenced_blobs(self, digests: list[str]) -> None:
        conn = self._connect(readonly=True)
        try:
            for digest in digests:
                if conn.execute("SELECT 1 FROM attachments WHERE sha256 = ?",
                                (digest,)).fetchone() is None:
                    self.blob_path(digest).unlink(missing_ok=True)
        finally:
            conn.close()

    async def purge_older_than(self, days: int) -> dict[str, int]:
        """Retention: drop raw payloads and attachment bytes older than ``days``."""
        cutoff = iso(utcnow() - timedelta(days=days))
        result = await self.write(_purge, cutoff)
        await asyncio.to_thread(self._delete_unreferenced_blobs, result.pop("_blobs"))
        return result

    # ---------------------------------------------------------------- outbound

    async def enqueue_outbound(self, *, conversation_id: str | None, customer_id: str | None,
                               request: OutboundRequest, routes: list[Route],
                               idempotency: tuple[str, str, str] | None) -> tuple[int, JSON]:
        """Queue an outbound message; returns (HTTP status, response body)."""
        return await self.write(_enqueue_outbound, conversation_id, customer_id, request,
                                routes, idempotency)

    async def claim_outbox(self, limit: int) -> list[OutboxItem]:
        """Claim due outbox rows, at most one per conversation (keeps reply order)."""
        return await self.write(_claim_outbox, limit, time.time())

    async def outbox_sent(self, message_id: str, provider_message_id: str | None,
                          status: str = "sent") -> None:
        """Mark an outbound message sent."""
        await self.write(_outbox_sent, message_id, provider_message_id, status)

    async def outbox_retry(self, message_id: str, delay: float, error: JSON) -> None:
        """Put a message back for another attempt after ``delay`` seconds."""
        await self.write(_outbox_retry, message_id, time.time() + delay, error)

    async def outbox_failed(self, message_id: str, error: JSON) -> None:
        """Fail an outbound message for good."""
        await self.write(_outbox_failed, message_id, error)

    async def recover_inflight(self) -> int:
        """After a crash: rows that were being sent go back to pending."""
        return await self.write(lambda tx: tx.conn.execute(
            "UPDATE outbox SET state = 'pending' WHERE state = 'inflight'").rowcount)

    async def next_outbox_due(self) -> float | None:
        """When the earliest pending outbox row becomes due (unix time)."""
        def q(conn: sqlite3.Connection) -> float | None:
            row = conn.execute("SELECT MIN(next_attempt_at) FROM outbox "
                               "WHERE state = 'pending'").fetchone()
            return row[0]
        return await self.read(q)

    async def outbox_depth(self) -> dict[str, int]:
        """Count outbox rows by state (for metrics and STATUS=)."""
        def q(conn: sqlite3.Connection) -> dict[str, int]:
            rows = conn.execute("SELECT state, COUNT(*) FROM outbox "
                                "WHERE state IN ('pending', 'inflight') GROUP BY state")
            return {r[0]: r[1] for r in rows}
        return await self.read(q)

    # ---------------------------------------------------------------- webhooks

    async def fan_out(self, subscription: str, wants: Callable[[str], bool],
                      limit: int = 1000) -> int:
        """Turn new events into delivery rows for one subscription; return rows added."""
        return await self.write(_fan_out, subscription, wants, limit, time.time())

    async def claim_deliveries(self, subscription: str, limit: int) -> list[Delivery]:
        """Claim due deliveries, only the oldest open one per ordering key."""
        return await self.write(_claim_deliveries, subscription, limit, time.time())

    async def delivery_done(self, delivery_id: int) -> None:
        """Forget a delivered row."""
        await self.write(lambda tx: tx.conn.execute(
            "DELETE FROM webhook_deliveries WHERE id = ?", (delivery_id,)))

    async def delivery_retry(self, delivery_id: int, delay: float, error: str,
                             dead: bool) -> None:
        """Schedule another attempt, or dead-letter the delivery."""
        await self.write(_delivery_retry, delivery_id, time.time() + delay, error, dead)

    async def recover_deliveries(self) -> None:
        """After a crash: in-flight deliveries go back to pending."""
        await self.write(lambda tx: tx.conn.execute(
            "UPDATE webhook_deliveries SET state = 'pending' WHERE state = 'inflight'"))

    async def list_dead_letters(self, subscription: str | None, limit: int) -> list[JSON]:
        """Return dead-lettered deliveries with their events."""
        def q(conn: sqlite3.Connection) -> list[JSON]:
            sql = ("SELECT d.*, e.body FROM webhook_deliveries d JOIN events e ON e.seq = d.seq "
                   "WHERE d.state = 'dead'")
            params: list[Any] = []
            if subscription:
                sql += " AND d.subscription = ?"
                params.append(subscription)
            sql += " ORDER BY d.id LIMIT ?"
            params.append(limit)
            return [{"id": r["id"], "subscription": r["subscription"], "attempts": r["attempts"],
                     "last_error": r["last_error"], "event": _loads(r["body"])}
                    for r in conn.execute(sql, params)]
        return await self.read(q)

    async def replay_dead_letters(self, ids: list[int] | None,
                                  subscription: str | None) -> int:
        """Put dead-lettered deliveries back for delivery now."""
        return await self.write(_replay, ids, subscription, time.time())

    async def next_delivery_due(self, subscription: str) -> float | None:
        """When the subscription's earliest pending delivery is due."""
        def q(conn: sqlite3.Connection) -> float | None:
            return conn.execute("SELECT MIN(next_attempt_at) FROM webhook_deliveries "
                                "WHERE subscription = ? AND state = 'pending'",
                                (subscription,)).fetchone()[0]
        return await self.read(q)

    # ---------------------------------------------------------------- checkpoints

    async def get_checkpoint(self, key: str) -> str | None:
        """Return an adapter checkpoint."""
        def q(conn: sqlite3.Connection) -> str | None:
            row = conn.execute("SELECT value FROM checkpoints WHERE key = ?", (key,)).fetchone()
            return None if row is None else row["value"]
        return await self.read(q)

    async def set_checkpoint(self, key: str, value: str) -> None:
        """Store an adapter checkpoint."""
        await self.write(lambda tx: tx.conn.execute(
            "INSERT INTO checkpoints (key, value, updated_at) VALUES (?, ?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value, "
            "updated_at = excluded.updated_at", (key, value, tx.now_iso)))

    # ---------------------------------------------------------------- backup

    async def backup(self, target: Path) -> None:
        """Write a consistent online copy of the database to ``target``."""
        def work() -> None:
            src = self._connect(readonly=True)
            dst = sqlite3.connect(target)
            try:
                src.backup(dst)
            finally:
                dst.close()
                src.close()
        await asyncio.to_thread(work)


def _set_result(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)


def _set_exception(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


# ==================================================================== migrations

def migration_scripts() -> list[tuple[int, str]]:
    """Return (version, SQL) of every packaged migration, in order."""
    folder = resources.files("gateway.store") / "migrations"
    scripts = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            scripts.append((int(entry.name.split("_", 1)[0]), entry.read_text("utf-8")))
    return sorted(scripts)


def apply_migrations(conn: sqlite3.Connection) -> list[int]:
    """Apply pending migrations, each in its own transaction; return the versions applied."""
    conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations "
                 "(version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)")
    done = {r[0] for r in conn.execute("SELECT version FROM schema_migrations")}
    applied = []
    for version, sql in migration_scripts():
        if version in done:
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _split_sql(sql):
                conn.execute(statement)
            conn.execute("INSERT INTO schema_migrations VALUES (?, ?)", (version, iso(utcnow())))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        applied.append(version)
    return applied


def _split_sql(sql: str) -> list[str]:
    lines = [line for line in sql.splitlines() if not line.strip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


# ==================================================================== row → JSON

def _conversation_json(row: sqlite3.Row) -> JSON:
    return {
        "id": row["id"], "customer_id": row["customer_id"], "channel": row["channel"],
        "account": row["account"], "status": row["status"], "opened_at": row["opened_at"],
        "closed_at": row["closed_at"], "last_message_at": row["last_message_at"],
        "tags": _loads(row["tags"]), "priority": row["priority"], "queue": row["queue"],
        "context": _loads(row["context"]),
        "group": ({"id": row["group_id"], "name": row["group_name"]}  # H8: group chats
                  if row["group_id"] is not None else None),
    }


def _customer_json(conn: sqlite3.Connection, customer_id: str, *,
                   with_conversations: bool = False) -> JSON | None:
    row = conn.execute("SELECT * FROM customers WHERE id = ?", (customer_id,)).fetchone()
    if row is None:
        return None
    identities = [
        {"kind": r["kind"], "address": r["address"], "channels": _loads(r["channels"])}
        for r in conn.execute("SELECT kind, address, channels FROM identities "
                              "WHERE customer_id = ? ORDER BY created_at, kind, address",
                              (customer_id,))
    ]
    customer: JSON = {"id": row["id"], "name": row["name"], "merged_into": row["merged_into"],
                      "identities": identities, "created_at": row["created_at"]}
    if with_conversations:
        customer["conversations"] = [
            _conversation_json(r) for r in conn.execute(
                "SELECT * FROM conversations WHERE customer_id = ? ORDER BY id", (customer_id,))
        ]
    return customer


def _resolve_customer_id(conn: sqlite3.Connection, customer_id: str) -> str:
    """Follow ``merged_into`` to the surviving customer."""
    seen = set()
    current = customer_id
    while current not in seen:
        seen.add(current)
        row = conn.execute("SELECT merged_into FROM customers WHERE id = ?",
                           (current,)).fetchone()
        if row is None:
            raise NotFound(f"customer {customer_id} not found")
        if row["merged_into"] is None:
            return current
        current = row["merged_into"]
    return current


# ==================================================================== write jobs
# Each runs on the writer thread inside a SAVEPOINT: raise to undo the job.


def _message_json(*, message_id: str, conversation_id: str, customer_id: str, channel: str,
                  account: str, direction: str, sender: Party | JSON | None,
                  recipient: Party | JSON | None, subject: str | None, text: str,
                  html: str | None, attachments: Iterable[StoredAttachment],
                  in_reply_to: str | None, provider_message_id: str | None,
                  thread_id: str | None, status: str, agent: JSON | None,
                  automatic: str | None, sent_at: str | None, received_at: str,
                  content: JSON | None = None) -> JSON:
    def party(p: Party | JSON | None) -> JSON | None:
        return p.to_json() if isinstance(p, Party) else p

    message: JSON = {
        "id": message_id, "conversation_id": conversation_id, "customer_id": customer_id,
        "channel": channel, "account": account, "direction": direction,
        "from": party(sender), "to": party(recipient), "subject": subject, "text": text,
        "html": html, "attachments": [a.to_json() for a in attachments],
        "in_reply_to": in_reply_to,
        "provider": {"message_id": provider_message_id, "thread_id": thread_id},
        "status": status, "error": None, "agent": agent, "automatic": automatic,
        "sent_at": sent_at, "received_at": received_at,
    }
    if content is not None:
        message["content"] = content
    return message


def _owner(tx: Tx, party: Party) -> tuple[str, list[str]] | None:
    """The surviving customer owning an identity, and the identity's channels."""
    key = (party.kind, party.address)
    entry = tx.cache.identities.get(key)
    if entry is None:
        row = tx.one("SELECT customer_id, channels FROM identities WHERE kind = ? "
                     "AND address = ?", key)
        if row is None:
            return None
        entry = (_resolve_customer_id(tx.conn, row["customer_id"]), _loads(row["channels"]))
        tx.cache.identities[key] = entry
    return entry


def _resolve_sender(tx: Tx, inbound: InboundMessage) -> tuple[str, JSON | None]:
    """Return (customer id, the new customer's JSON or None) for the sender.

    Further identities the message carries are linked to the customer.
    """
    primary = inbound.sender
    others = [p for p in inbound.linked_identities
              if (p.kind, p.address) != (primary.kind, primary.address)]
    owner = _owner(tx, primary)
    customer_id = owner[0] if owner is not None else None
    if customer_id is None:
        for other in others:
            found = _owner(tx, other)
            if found is not None:
                customer_id = found[0]
                break
    if customer_id is None:
        customer_id = new_id("cus")
        source = f"{primary.kind}:{primary.address}" if primary.name else None  # H8
        tx.conn.execute("INSERT INTO customers (id, name, name_source, created_at, updated_at) "
                        "VALUES (?, ?, ?, ?, ?)", (customer_id, primary.name, source,
                                                   tx.now_iso, tx.now_iso))
        _link(tx, customer_id, primary, inbound.channel)
        for other in others:
            _link(tx, customer_id, other, None)
        tx.cache.names[customer_id] = (primary.name, source)
        identities = sorted(
            ({"kind": p.kind, "address": p.address,
              "channels": [inbound.channel] if p is primary else []}
             for p in [primary, *others] if tx.cache.identities.get(
                 (p.kind, p.address), ("",))[0] == customer_id),
            key=lambda i: (i["kind"], i["address"]))
        return customer_id, {"id": customer_id, "name": primary.name, "merged_into": None,
                             "identities": identities, "created_at": tx.now_iso}
    # H8: a name set or changed, or an identity linked, is announced (customer.updated).
    changed = bool(primary.name) and _take_name(tx, customer_id, primary)
    changed = _link(tx, customer_id, primary, inbound.channel) or changed
    for other in others:
        changed = _link(tx, customer_id, other, None) or changed
    if changed:
        tx.emit("customer.updated", {"customer": _customer_json(tx.conn, customer_id)},
                customer_id=customer_id)
    return customer_id, None


def _take_name(tx: Tx, customer_id: str, sender: Party) -> bool:
    """H8: the sender's name becomes the customer's when they have none, or when this same
    identity gave the current one (a renamed profile); another identity's name does not
    replace it, so names do not flap between channels. Returns whether it changed."""
    cached = tx.cache.names.get(customer_id)
    if cached is None:
        row = tx.one("SELECT name, name_source FROM customers WHERE id = ?", (customer_id,))
        cached = (row["name"], row["name_source"]) if row is not None else (None, None)
        tx.cache.names[customer_id] = cached
    name, source = cached
    if name == sender.name:  # the usual case: nothing to build or write
        return False
    identity = f"{sender.kind}:{sender.address}"
    if name is not None and source not in (None, identity):
        return False
    tx.conn.execute("UPDATE customers SET name = ?, name_source = ?, updated_at = ? "
                    "WHERE id = ?", (sender.name, identity, tx.now_iso, customer_id))
    tx.cache.names[customer_id] = (sender.name, identity)
    return True


def _link(tx: Tx, customer_id: str, party: Party, channel: str | None) -> bool:
    """Give ``party`` to the customer unless someone owns it; note the channel it used.

    Returns whether the identity was new (H8: the caller announces it)."""
    entry = _owner(tx, party)
    if entry is None:
        channels = [channel] if channel else []
        tx.conn.execute("INSERT INTO identities (kind, address, customer_id, channels, "
                        "created_at) VALUES (?, ?, ?, ?, ?)",
                        (party.kind, party.address, customer_id, _dumps(channels), tx.now_iso))
        tx.cache.identities[(party.kind, party.address)] = (customer_id, channels)
        return True
    owner, channels = entry
    if channel and owner == customer_id and channel not in channels:
        channels.append(channel)  # the cached list, kept in step with the row
        tx.conn.execute("UPDATE identities SET channels = ? WHERE kind = ? AND address = ?",
                        (_dumps(channels), party.kind, party.address))
    return False


def _ingest(tx: Tx, inbound: InboundMessage, attachments: list[StoredAttachment],
            reopen_window_days: float) -> IngestResult:
    key = (inbound.channel, inbound.account, inbound.provider_message_id)
    if tx.rows is not None and key in tx.rows.by_key:  # the same message earlier in the batch
        return IngestResult(tx.rows.by_key[key], created=False)
    if tx.rows is not None and tx.rows.stored is not None:  # the batch looked its keys up
        if key in tx.rows.stored:
            return IngestResult(_loads(tx.rows.stored[key]), created=False)
    else:
        existing = tx.one("SELECT data FROM messages WHERE channel = ? AND account = ? "
                          "AND provider_message_id = ?", key)
        if existing is not None:
            return IngestResult(_loads(existing["data"]), created=False)
    if inbound.direction == "outbound":  # H8: an echo (gateway/store/changes.py)
        from gateway.store.changes import store_echo
        return store_echo(tx, inbound, attachments, reopen_window_days)

    customer_id, new_customer = _resolve_sender(tx, inbound)
    if new_customer is not None:
        tx.emit("customer.created", {"customer": new_customer}, customer_id=customer_id)

    conversation: JSON | None = None
    in_reply_to: str | None = None
    if inbound.group is not None:  # H8: the group is the conversation (changes.py)
        from gateway.store.changes import group_conversation
        conversation, in_reply_to = group_conversation(tx, inbound, customer_id,
                                                       reopen_window_days)
    for ref in inbound.reply_refs if inbound.group is None else ():
        row = tx.one("SELECT id, conversation_id FROM messages WHERE provider_message_id = ? "
                     "AND channel = ? ORDER BY id LIMIT 1", (ref, inbound.channel))
        if row is None and tx.rows is not None:  # stored earlier in this batch
            row = tx.rows.by_ref.get((inbound.channel, ref))
        if row is not None:
            in_reply_to = row["id"]
            conversation = _conversation_by_id(tx, row["conversation_id"])
            break
    if conversation is None and inbound.reply_token:
        # The token is the conversation id's random part (support+c-<token>@shop).
        conversation = _conversation_by_id(tx, "cnv_" + inbound.reply_token.upper())
    if conversation is not None and inbound.group is None and (  # H8: not into a group
            conversation["customer_id"] != customer_id or conversation.get("group")):
        # A thread reference into another customer's conversation (a forwarded mail,
        # a colleague replying) must not leak it: fall back to the sender's own.
        conversation = None
        in_reply_to = None
    if conversation is None and new_customer is None:
        latest = _latest_conversation(tx, customer_id)
        window_start = tx.now - timedelta(days=reopen_window_days)
        if latest is not None and (
                latest["status"] == "open"
                or (latest["closed_at"] and parse_iso(latest["closed_at"]) >= window_start)):
            conversation = latest

    sent_at = iso(inbound.sent_at) if inbound.sent_at else tx.now_iso
    if conversation is None:
        conversation_id = new_id("cnv")
        conversation = {
            "id": conversation_id, "customer_id": customer_id, "channel": inbound.channel,
            "account": inbound.account, "status": "open", "opened_at": tx.now_iso,
            "closed_at": None, "last_message_at": tx.now_iso, "tags": [],
            "priority": "normal", "queue": None, "context": inbound.context or {},
            "group": None}  # H8
        tx.conn.execute(
            "INSERT INTO conversations (id, customer_id, channel, account, status, opened_at, "
            "last_message_at, context) VALUES (?, ?, ?, ?, 'open', ?, ?, ?)",
            (conversation_id, customer_id, inbound.channel, inbound.account, tx.now_iso,
             tx.now_iso, _dumps(conversation["context"])))
        tx.emit("conversation.opened", {"conversation": conversation},
                conversation_id=conversation_id, customer_id=customer_id)
    else:
        conversation_id = conversation["id"]
        if conversation["status"] == "closed":
            tx.conn.execute("UPDATE conversations SET status = 'open', closed_at = NULL "
                            "WHERE id = ?", (conversation_id,))
            conversation["status"], conversation["closed_at"] = "open", None
            tx.emit("conversation.reopened", {"conversation": conversation, "agent": None},
                    conversation_id=conversation_id, customer_id=customer_id)
        if inbound.context:
            tx.conn.execute("UPDATE conversations SET context = ? WHERE id = ?",
                            (_dumps(inbound.context), conversation_id))
            conversation["context"] = inbound.context
        if tx.rows is not None:
            tx.rows.touched.add(conversation_id)
        else:
            tx.conn.execute("UPDATE conversations SET last_message_at = ? WHERE id = ?",
                            (tx.now_iso, conversation_id))
        conversation["last_message_at"] = tx.now_iso
    if inbound.group is None:  # H8: a group conversation is nobody's latest 1:1
        tx.cache.latest[customer_id] = conversation

    message_id = new_id("msg")
    message = _message_json(
        message_id=message_id, conversation_id=conversation_id, customer_id=customer_id,
        channel=inbound.channel, account=inbound.account, direction="inbound",
        sender=inbound.sender, recipient=inbound.recipient, subject=inbound.subject,
        text=inbound.text, html=inbound.html, attachments=attachments, in_reply_to=in_reply_to,
        provider_message_id=inbound.provider_message_id,
        thread_id=inbound.provider_thread_id, status="received", agent=None,
        automatic=inbound.automatic, sent_at=sent_at, received_at=tx.now_iso,
        content=inbound.content)
    encoded = orjson.dumps(message)  # once: the row, the event and the caller's answer
    _insert_message(tx, message, attachments, encoded)
    if inbound.raw is not None:
        raw = (message_id, inbound.raw_content_type, inbound.raw, tx.now_iso)
        if tx.rows is not None:
            tx.rows.raw.append(raw)
        else:
            tx.conn.execute(_INSERT_RAW + _VALUES[4], raw)
    if tx.rows is not None:
        tx.rows.by_key[key] = message
        tx.rows.by_ref.setdefault((inbound.channel, inbound.provider_message_id), message)
    tx.emit("message.received", {"message": orjson.Fragment(encoded),
                                 "conversation": conversation},
            conversation_id=conversation_id, customer_id=customer_id)
    return IngestResult(message, created=True, message_json=encoded)


def _conversation_by_id(tx: Tx, conversation_id: str) -> JSON | None:
    """A conversation as JSON (the cached copy when it is its customer's latest)."""
    row = tx.one("SELECT * FROM conversations WHERE id = ?", (conversation_id,))
    if row is None:
        return None
    cached = tx.cache.latest.get(row["customer_id"])
    if cached is not None and cached["id"] == conversation_id:
        return cached
    return _conversation_json(row)


def _latest_conversation(tx: Tx, customer_id: str) -> JSON | None:
    """The customer's most recently active conversation."""
    cached = tx.cache.latest.get(customer_id)
    if cached is not None:
        return cached
    row = tx.one("SELECT * FROM conversations WHERE customer_id = ? AND group_id IS NULL "  # H8
                 "ORDER BY last_message_at DESC, id DESC LIMIT 1", (customer_id,))
    return None if row is None else _conversation_json(row)


# Jobs run without a per-job savepoint (see SQLiteStore._execute): they fail only on a
# broken database, which fails the whole batch anyway.
_NO_SAVEPOINT = frozenset({_ingest})


def _insert_message(tx: Tx, message: JSON, attachments: Iterable[StoredAttachment],
                    encoded: bytes | None = None) -> None:
    row = (message["id"], message["conversation_id"], message["customer_id"],
           message["channel"], message["account"], message["direction"],
           message["provider"]["message_id"], message["status"], message["received_at"],
           (encoded or orjson.dumps(message)).decode())
    if tx.rows is not None:
        tx.rows.messages.append(row)
    else:
        tx.conn.execute(_INSERT_MESSAGE + _VALUES[10], row)
    for att in attachments:
        tx.conn.execute(
            "INSERT INTO attachments (id, message_id, filename, content_type, size, sha256, "
            "created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (att.id, message["id"], att.filename, att.content_type, att.size, att.sha256,
             tx.now_iso))


def _save_message(tx: Tx, message: JSON) -> None:
    tx.conn.execute("UPDATE messages SET status = ?, provider_message_id = ?, data = ? "
                    "WHERE id = ?", (message["status"], message["provider"]["message_id"],
                                     _dumps(message), message["id"]))


def _update_status_by_provider(tx: Tx, channel: str, account: str, provider_message_id: str,
                               status: str, error: JSON | None) -> JSON | None:
    row = tx.one("SELECT data FROM messages WHERE channel = ? AND account = ? "
                 "AND provider_message_id = ?", (channel, account, provider_message_id))
    if row is None:
        return None
    message = _loads(row["data"])
    order = ["queued", "sent", "delivered", "read"]
    current = message["status"]
    if status == current or (status in order and current in order
                             and order.index(status) < order.index(current)):
        return message  # receipts arrive out of order; never step back
    message["status"] = status
    message["error"] = error if status == "failed" else None
    _save_message(tx, message)
    tx.emit("message.status", {"message": message}, conversation_id=message["conversation_id"],
            customer_id=message["customer_id"])
    return message


def _set_conversation_status(tx: Tx, conversation_id: str, status: str,
                             agent: JSON | None) -> JSON:
    row = tx.one("SELECT * FROM conversations WHERE id = ?", (conversation_id,))
    if row is None:
        raise NotFound(f"conversation {conversation_id} not found")
    if row["status"] == status:
        return _conversation_json(row)
    closed_at = tx.now_iso if status == "closed" else None
    tx.conn.execute("UPDATE conversations SET status = ?, closed_at = ? WHERE id = ?",
                    (status, closed_at, conversation_id))
    tx.cache.latest.pop(row["customer_id"], None)
    conversation = _conversation_json(tx.one(  # type: ignore[arg-type]
        "SELECT * FROM conversations WHERE id = ?", (conversation_id,)))
    event = "conversation.closed" if status == "closed" else "conversation.reopened"
    tx.emit(event, {"conversation": conversation, "agent": agent},
            conversation_id=conversation_id, customer_id=conversation["customer_id"])
    return conversation


def _add_identity(tx: Tx, customer_id: str, kind: str, address: str) -> JSON:
    cid = _resolve_customer_id(tx.conn, customer_id)
    row = tx.one("SELECT customer_id FROM identities WHERE kind = ? AND address = ?",
                 (kind, address))
    if row is not None:
        owner = _resolve_customer_id(tx.conn, row["customer_id"])
        if owner != cid:
            raise Conflict(f"identity {kind}:{address} belongs to customer {owner}; "
                           "merge the customers instead", owner=owner)
        return _customer_json(tx.conn, cid)  # type: ignore[return-value]
    _link(tx, cid, Party(kind, address), None)
    tx.conn.execute("UPDATE customers SET updated_at = ? WHERE id = ?", (tx.now_iso, cid))
    customer = _customer_json(tx.conn, cid)
    tx.emit("customer.updated", {"customer": customer}, customer_id=cid)
    return customer  # type: ignore[return-value]


def _merge_customers(tx: Tx, survivor_id: str, merged_id: str) -> JSON:
    survivor = _resolve_customer_id(tx.conn, survivor_id)
    merged = _resolve_customer_id(tx.conn, merged_id)
    if survivor == merged:
        raise ValidationFailed("a customer cannot be merged into itself")
    merged_before = _customer_json(tx.conn, merged)
    tx.cache.clear()  # identities and conversations change owner
    # Messages are reached through their conversations (indexed), before those move.
    tx.conn.execute("UPDATE messages SET customer_id = ?, data = json_set(data, "
                    "'$.customer_id', ?) WHERE conversation_id IN "
                    "(SELECT id FROM conversations WHERE customer_id = ?)",
                    (survivor, survivor, merged))
    for table in ("identities", "conversations"):
        tx.conn.execute(f"UPDATE {table} SET customer_id = ? WHERE customer_id = ?",
                        (survivor, merged))
    tx.conn.execute("UPDATE customers SET merged_into = ?, updated_at = ? WHERE id = ?",
                    (survivor, tx.now_iso, merged))
    # Older merges pointing at the merged customer now point straight at the survivor.
    tx.conn.execute("UPDATE customers SET merged_into = ? WHERE merged_into = ?",
                    (survivor, merged))
    tx.conn.execute("UPDATE customers SET name = COALESCE(name, ?), updated_at = ? WHERE id = ?",
                    (merged_before["name"] if merged_before else None, tx.now_iso, survivor))
    customer = _customer_json(tx.conn, survivor, with_conversations=True)
    tx.emit("customer.merged", {"customer": customer, "merged_customer_id": merged},
            customer_id=survivor)
    return customer  # type: ignore[return-value]


def _erase_customer(tx: Tx, customer_id: str) -> JSON:
    cid = _resolve_customer_id(tx.conn, customer_id)
    tx.cache.clear()
    if tx.emitted is not None:
        tx.emitted.rewritten = True  # stored event bodies change: the feed's tail is stale
    ids = [cid] + [r[0] for r in tx.conn.execute(
        "SELECT id FROM customers WHERE merged_into = ?", (cid,))]
    marks = ",".join("?" * len(ids))
    conversations = [r[0] for r in tx.conn.execute(
        f"SELECT id FROM conversations WHERE customer_id IN ({marks})", ids)]
    messages = [r[0] for r in tx.conn.execute(
        f"SELECT m.id FROM messages m JOIN conversations c ON c.id = m.conversation_id "
        f"WHERE c.customer_id IN ({marks})", ids)]
    blobs: list[str] = []
    for chunk_start in range(0, len(messages), 500):
        chunk = messages[chunk_start:chunk_start + 500]
        m = ",".join("?" * len(chunk))
        blobs += [r[0] for r in tx.conn.execute(
            f"SELECT sha256 FROM attachments WHERE message_id IN ({m})", chunk)]
        tx.conn.execute(f"DELETE FROM attachments WHERE message_id IN ({m})", chunk)
        tx.conn.execute(f"DELETE FROM raw_payloads WHERE message_id IN ({m})", chunk)
        tx.conn.execute(f"DELETE FROM outbox WHERE message_id IN ({m})", chunk)
        # A kept Idempotency-Key response is the reply itself: recipient, name, text.
        tx.conn.execute(f"DELETE FROM idempotency_keys WHERE json_extract(response, '$.id') "
                        f"IN ({m})", chunk)
    tx.conn.execute(f"DELETE FROM messages WHERE conversation_id IN (SELECT id FROM "
                    f"conversations WHERE customer_id IN ({marks}))", ids)
    # Events keep their seq (cursors stay valid) but lose everything personal. One scan of
    # the events table (no per-customer index: it would cost every commit a random page).
    c = ",".join("?" * len(conversations))
    tx.conn.execute(  # bodies are BLOBs: the feed serves them as bytes
        f"UPDATE events SET body = CAST(json_object('id', id, 'seq', CAST(seq AS TEXT), "
        f"'type', type, 'created_at', created_at, 'data', json_object('erased', json('true'))) "
        f"AS BLOB) WHERE customer_id IN ({marks})"
        + (f" OR conversation_id IN ({c})" if conversations else ""), [*ids, *conversations])
    if conversations:
        tx.conn.execute(f"DELETE FROM conversations WHERE id IN ({c})", conversations)
    tx.conn.execute(f"DELETE FROM identities WHERE customer_id IN ({marks})", ids)
    tx.conn.execute(f"DELETE FROM customers WHERE id IN ({marks})", ids)
    tx.emit("customer.erased", {"customer_id": cid, "erased_ids": ids})
    return {"customer_id": cid, "conversations": len(conversations), "messages": len(messages),
            "_blobs": sorted(set(blobs))}


def _purge(tx: Tx, cutoff: str) -> JSON:
    raw = tx.conn.execute("DELETE FROM raw_payloads WHERE created_at < ?", (cutoff,)).rowcount
    rows = tx.conn.execute("SELECT id, message_id, sha256 FROM attachments "
                           "WHERE created_at < ?", (cutoff,)).fetchall()
    for row in rows:
        msg = tx.one("SELECT data FROM messages WHERE id = ?", (row["message_id"],))
        if msg is not None:
            data = _loads(msg["data"])
            for att in data["attachments"]:
                if att["id"] == row["id"]:
                    att["purged"] = True
            tx.conn.execute("UPDATE messages SET data = ? WHERE id = ?",
                            (_dumps(data), row["message_id"]))
    tx.conn.execute("DELETE FROM attachments WHERE created_at < ?", (cutoff,))
    return {"raw_payloads": raw, "attachments": len(rows),
            "_blobs": sorted({r["sha256"] for r in rows})}


def _enqueue_outbound(tx: Tx, conversation_id: str | None, customer_id: str | None,
                      request: OutboundRequest, routes: list[Route],
                      idempotency: tuple[str, str, str] | None) -> tuple[int, JSON]:
    if idempotency is not None:
        scope, key, request_hash = idempotency
        row = tx.one("SELECT request_hash, response FROM idempotency_keys "
                     "WHERE scope = ? AND key = ?", (scope, key))
        if row is not None:
            if row["request_hash"] != request_hash:
                raise Conflict("Idempotency-Key was already used with another request body")
            return 202, _loads(row["response"])

    in_reply_to: str | None = None
    if conversation_id is not None:
        conv = tx.one("SELECT * FROM conversations WHERE id = ?", (conversation_id,))
        if conv is None:
            raise NotFound(f"conversation {conversation_id} not found")
        cid = _resolve_customer_id(tx.conn, conv["customer_id"])
    else:
        assert customer_id is not None
        cid = _resolve_customer_id(tx.conn, customer_id)
        conv = None

    channel = account = None
    recipient: JSON | None = None
    if request.channel is None and conv is not None:
        last = tx.one("SELECT id, channel, account, data FROM messages WHERE conversation_id = ? "
                      "AND direction = 'inbound' ORDER BY id DESC LIMIT 1", (conv["id"],))
        if last is not None:
            data = _loads(last["data"])
            channel, account, recipient = last["channel"], last["account"], data["from"]
            in_reply_to = last["id"]
        else:
            channel, account = conv["channel"], conv["account"]
    else:
        channel, account = request.channel, request.account
    candidates = [r for r in routes if r.channel == channel
                  and (account is None or r.account == account)]
    if not candidates:
        raise ValidationFailed(f"no configured account sends on channel {channel!r}"
                               + (f" as account {account!r}" if account else ""))
    route = candidates[0]
    if recipient is None:
        kinds = CHANNEL_IDENTITY_KINDS.get(route.channel, ())
        rows = tx.conn.execute(
            f"SELECT kind, address FROM identities WHERE customer_id = ? AND kind IN "
            f"({','.join('?' * len(kinds))}) ORDER BY created_at DESC", (cid, *kinds)).fetchall()
        if not rows:
            raise ValidationFailed(f"customer {cid} has no identity reachable on "
                                   f"channel {route.channel!r}")
        recipient = {"kind": rows[0]["kind"], "address": rows[0]["address"], "name": None}

    if conv is None:
        latest = tx.one("SELECT * FROM conversations WHERE customer_id = ? AND status = 'open' "
                        "AND group_id IS NULL "  # H8: a proactive message is 1:1
                        "ORDER BY last_message_at DESC, id DESC LIMIT 1", (cid,))
        if latest is not None:
            conv = latest
        else:
            new_conv = new_id("cnv")
            tx.conn.execute(
                "INSERT INTO conversations (id, customer_id, channel, account, status, "
                "opened_at, last_message_at) VALUES (?, ?, ?, ?, 'open', ?, ?)",
                (new_conv, cid, route.channel, route.account, tx.now_iso, tx.now_iso))
            conv = tx.one("SELECT * FROM conversations WHERE id = ?", (new_conv,))
            assert conv is not None
            tx.emit("conversation.opened", {"conversation": _conversation_json(conv)},
                    conversation_id=new_conv, customer_id=cid)

    message = _message_json(
        message_id=new_id("msg"), conversation_id=conv["id"], customer_id=cid,
        channel=route.channel, account=route.account, direction="outbound",
        sender=route.sender, recipient=recipient, subject=request.subject, text=request.text,
        html=request.html, attachments=request.attachments, in_reply_to=in_reply_to,
        provider_message_id=None, thread_id=None, status="queued", agent=request.agent,
        automatic=request.automatic, sent_at=None, received_at=tx.now_iso)
    if request.template:
        message["template"] = {"name": request.template, "variables": request.variables or {}}
    _insert_message(tx, message, request.attachments)
    tx.conn.execute(
        "INSERT INTO outbox (message_id, conversation_id, channel, account, state, "
        "next_attempt_at, created_at) VALUES (?, ?, ?, ?, 'pending', ?, ?)",
        (message["id"], conv["id"], route.channel, route.account, time.time(), time.time()))
    tx.conn.execute("UPDATE conversations SET last_message_at = ? WHERE id = ?",
                    (tx.now_iso, conv["id"]))
    tx.cache.latest.pop(cid, None)
    tx.emit("message.queued", {"message": message}, conversation_id=conv["id"], customer_id=cid)
    if idempotency is not None:
        tx.conn.execute("INSERT INTO idempotency_keys (scope, key, request_hash, response, "
                        "created_at) VALUES (?, ?, ?, ?, ?)",
                        (idempotency[0], idempotency[1], idempotency[2], _dumps(message),
                         tx.now_iso))
    return 202, message


def _claim_outbox(tx: Tx, limit: int, now: float) -> list[OutboxItem]:
    rows = tx.conn.execute(
        "SELECT o.seq, o.message_id, o.attempts, o.created_at FROM outbox o "
        "WHERE o.state = 'pending' AND o.next_attempt_at <= ? AND NOT EXISTS ("
        "  SELECT 1 FROM outbox p WHERE p.conversation_id = o.conversation_id "
        "  AND p.state IN ('pending', 'inflight') AND p.seq < o.seq) "
        "ORDER BY o.next_attempt_at, o.seq LIMIT ?", (now, limit)).fetchall()
    items = []
    for row in rows:
        tx.conn.execute("UPDATE outbox SET state = 'inflight', attempts = attempts + 1 "
                        "WHERE seq = ?", (row["seq"],))
        msg = tx.one("SELECT data FROM messages WHERE id = ?", (row["message_id"],))
        if msg is None:  # erased meanwhile
            tx.conn.execute("DELETE FROM outbox WHERE seq = ?", (row["seq"],))
            continue
        message = _loads(msg["data"])
        conv = tx.one("SELECT * FROM conversations WHERE id = ?", (message["conversation_id"],))
        refs = [r[0] for r in tx.conn.execute(
            "SELECT provider_message_id FROM messages WHERE conversation_id = ? AND channel = ? "
            "AND provider_message_id IS NOT NULL AND id < ? ORDER BY id",
            (message["conversation_id"], message["channel"], message["id"]))]
        reply_to = None
        if message["in_reply_to"]:
            parent = tx.one("SELECT provider_message_id FROM messages WHERE id = ?",
                            (message["in_reply_to"],))
            reply_to = parent["provider_message_id"] if parent else None
        items.append(OutboxItem(row["seq"], message, _conversation_json(conv),  # type: ignore[arg-type]
                                row["attempts"] + 1,
                                datetime.fromtimestamp(row["created_at"], UTC),
                                tuple(refs), reply_to))
    return items


def _outbox_sent(tx: Tx, message_id: str, provider_message_id: str | None, status: str) -> None:
    tx.conn.execute("UPDATE outbox SET state = 'sent', last_error = NULL WHERE message_id = ?",
                    (message_id,))
    row = tx.one("SELECT data FROM messages WHERE id = ?", (message_id,))
    if row is None:
        return
    message = _loads(row["data"])
    message["status"] = status
    message["sent_at"] = tx.now_iso
    message["error"] = None
    if provider_message_id:
        message["provider"]["message_id"] = provider_message_id
    try:
        _save_message(tx, message)
    except sqlite3.IntegrityError:
        # The provider id is already stored (its echo arrived first): keep ours, drop the echo.
        tx.conn.execute("DELETE FROM messages WHERE channel = ? AND account = ? AND "
                        "provider_message_id = ? AND id != ?",
                        (message["channel"], message["account"], provider_message_id,
                         message_id))
        _save_message(tx, message)
    tx.emit("message.status", {"message": message}, conversation_id=message["conversation_id"],
            customer_id=message["customer_id"])


def _outbox_retry(tx: Tx, message_id: str, due: float, error: JSON) -> None:
    tx.conn.execute("UPDATE outbox SET state = 'pending', next_attempt_at = ?, last_error = ? "
                    "WHERE message_id = ?", (due, _dumps(error), message_id))


def _outbox_failed(tx: Tx, message_id: str, error: JSON) -> None:
    tx.conn.execute("UPDATE outbox SET state = 'failed', last_error = ? WHERE message_id = ?",
                    (_dumps(error), message_id))
    row = tx.one("SELECT data FROM messages WHERE id = ?", (message_id,))
    if row is None:
        return
    message = _loads(row["data"])
    message["status"] = "failed"
    message["error"] = error
    _save_message(tx, message)
    tx.emit("message.status", {"message": message}, conversation_id=message["conversation_id"],
            customer_id=message["customer_id"])


def _fan_out(tx: Tx, subscription: str, wants: Callable[[str], bool], limit: int,
             now: float) -> int:
    row = tx.one("SELECT seq FROM webhook_cursors WHERE subscription = ?", (subscription,))
    if row is None:
        # A new subscription starts with events from now on, not the whole history.
        start = tx.store._seq
        tx.conn.execute("INSERT INTO webhook_cursors VALUES (?, ?)", (subscription, start))
        return 0
    cursor = row["seq"]
    events = tx.conn.execute("SELECT seq, type, conversation_id, customer_id FROM events "
                             "WHERE seq > ? ORDER BY seq LIMIT ?", (cursor, limit)).fetchall()
    added = 0
    for event in events:
        if wants(event["type"]):
            key = event["conversation_id"] or event["customer_id"] or "-"
            tx.conn.execute(
                "INSERT OR IGNORE INTO webhook_deliveries (subscription, seq, ordering_key, "
                "state, next_attempt_at, created_at) VALUES (?, ?, ?, 'pending', ?, ?)",
                (subscription, event["seq"], key, now, now))
            added += 1
    if events:
        tx.conn.execute("UPDATE webhook_cursors SET seq = ? WHERE subscription = ?",
                        (events[-1]["seq"], subscription))
    return added


def _claim_deliveries(tx: Tx, subscription: str, limit: int, now: float) -> list[Delivery]:
    rows = tx.conn.execute(
        "SELECT d.id, d.seq, d.ordering_key, d.attempts, d.created_at, e.id AS event_id, e.body "
        "FROM webhook_deliveries d JOIN events e ON e.seq = d.seq "
        "WHERE d.subscription = ? AND d.state = 'pending' AND d.next_attempt_at <= ? "
        "AND NOT EXISTS (SELECT 1 FROM webhook_deliveries p WHERE p.subscription = d.subscription"
        "  AND p.ordering_key = d.ordering_key AND p.state IN ('pending', 'inflight') "
        "  AND p.seq < d.seq) "
        "ORDER BY d.seq LIMIT ?", (subscription, now, limit)).fetchall()
    for row in rows:
        tx.conn.execute("UPDATE webhook_deliveries SET state = 'inflight', "
                        "attempts = attempts + 1 WHERE id = ?", (row["id"],))
    return [Delivery(r["id"], subscription, r["seq"], r["ordering_key"], r["attempts"] + 1,
                     bytes(r["body"]), r["event_id"],
                     datetime.fromtimestamp(r["created_at"], UTC)) for r in rows]


def _delivery_retry(tx: Tx, delivery_id: int, due: float, error: str, dead: bool) -> None:
    tx.conn.execute("UPDATE webhook_deliveries SET state = ?, next_attempt_at = ?, "
                    "last_error = ? WHERE id = ?",
                    ("dead" if dead else "pending", due, error, delivery_id))


def _replay(tx: Tx, ids: list[int] | None, subscription: str | None, now: float) -> int:
    sql = ("UPDATE webhook_deliveries SET state = 'pending', attempts = 0, next_attempt_at = ?, "
           "created_at = ? WHERE state = 'dead'")
    params: list[Any] = [now, now]
    if ids is not None:
        if not ids:
            return 0
        sql += f" AND id IN ({','.join('?' * len(ids))})"
        params += ids
    if subscription:
        sql += " AND subscription = ?"
        params.append(subscription)
    return tx.conn.execute(sql, params).rowcount

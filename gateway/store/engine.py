"""The commit engine: one writer thread with group commit, a syncer, a checkpointer, readers.

Why this shape: SQLite allows one writer at a time, and each commit costs an fsync. All
writes are therefore jobs queued to a single writer thread, which runs everything queued
so far inside one transaction and commits once. Because a single thread does all writing,
the jobs need no further locking: the same message delivered twice at the same moment is
simply found the second time.

With ``synchronous = FULL`` (the default) the writer does not wait for the disk: the syncer
thread fsyncs the WAL after commits and only then resolves the callers' futures and
advances the feed, so nothing is acknowledged or shown before it is durable, while the
writer already runs the next batch. The checkpointer thread folds the WAL back into the
database in the background.

The engine knows nothing of messages and names no job: what a batch's jobs see and what
they defer is the job layer's (:class:`JobLayer`, implemented in ``gateway/store/sqlite.py``).
It numbers what jobs publish (``next_seq``) and shows it in the feed's tail once durable.
Reads run on a small thread pool with their own connections (WAL lets them proceed while
the writer commits). docs/architecture.md tells the whole story.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import sqlite3
import sys
import threading
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol, TypeVar

import structlog

from gateway.errors import StoreError
from gateway.osthread import NamedThread
from gateway.store.feed import EmittedEvents, FeedTail

log = structlog.get_logger(__name__)
T = TypeVar("T")

# A queued write: the job, its arguments, the caller's future and the caller's loop.
Job = tuple[Callable[..., Any], tuple[Any, ...], "asyncio.Future[Any]",
            asyncio.AbstractEventLoop]
# Per event loop: (future, ok, result or exception) of a batch's callers.
Settle = dict[asyncio.AbstractEventLoop, list[tuple["asyncio.Future[Any]", bool, Any]]]

_STOP = object()
_CHECKPOINT_PAGES = 8000  # WAL frames (4 KiB pages) before the writer resets the WAL
_CHECKPOINT_EVERY = 50  # batches between background checkpoint passes
_CLOSE_WAIT = 2.0  # seconds a closing checkpoint waits for another process's readers


class BatchScope(Protocol):
    """One batch as the job layer runs it."""

    def context(self, deferred: bool) -> object:
        """The first argument of the next job (``deferred``: it runs without a savepoint
        and may leave rows to ``flush``)."""

    def flush(self) -> None:
        """Write what unguarded jobs deferred, before anything else reads the tables."""


class JobLayer(Protocol):
    """What the engine asks of the jobs it runs (it never names one)."""

    @property
    def unguarded(self) -> Collection[Callable[..., Any]]:
        """Jobs that almost never fail: the first pass of a batch runs them without a
        savepoint (read-only here, so a layer may keep a narrower collection)."""

    def prepare(self, conn: sqlite3.Connection) -> int:
        """On the writer, once: bring the schema up to date; return the newest seq."""

    def begin(self, conn: sqlite3.Connection, batch: list[Job], emitted: EmittedEvents,
              optimistic: bool) -> BatchScope:
        """Inside the batch's open transaction: what its jobs will see."""

    def forget(self) -> None:
        """A transaction or a job was rolled back: drop what was learnt from it."""

    def committed(self) -> None:
        """A batch committed (keep what was learnt bounded)."""


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


def _raise_if_rolled_back(conn: sqlite3.Connection, exc: BaseException) -> None:
    """Re-raise a database error after which SQLite rolled the whole transaction back
    itself (SQLITE_FULL "database or disk is full", SQLITE_IOERR): the batch fails with
    that error (the callers' StoreError says why), not a savepoint's "no such savepoint".
    Nothing ran outside the transaction: every job's statements were undone with it."""
    if isinstance(exc, sqlite3.Error) and not conn.in_transaction:
        raise exc


def _set_result(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)


def _set_exception(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


class WriteQueue:
    """The callers' side of a store's single writer thread, shared by the SQLite and the
    PostgreSQL engines: jobs go into ``queue`` with the caller's future, and at most
    ``max_pending`` wait there; more callers wait for room, so memory stays bounded however
    fast requests arrive. The engine's writer thread takes the jobs and settles the
    futures after its commit."""

    def __init__(self, batch_max: int) -> None:
        self.queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._max_pending = max(64, batch_max * 16)
        self._pending = 0
        self._room = asyncio.Event()

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
            self.queue.put((fn, args, future, loop))
            return await future
        finally:
            self._pending -= 1
            if self._pending < self._max_pending:
                self._room.set()


class CommitEngine(WriteQueue):
    """Runs queued jobs in batches, one transaction and one commit each; answers callers
    once the commit is as durable as configured."""

    def __init__(self, path: Path, layer: JobLayer, *, synchronous: str, batch_max: int,
                 on_commit: Callable[[int], None] | None = None,
                 on_batch: Callable[[int], None] | None = None,
                 on_fatal: Callable[[str], None] | None = None, readers: int = 4) -> None:
        super().__init__(batch_max)
        self.path = path
        self.layer = layer
        self.synchronous = synchronous
        self.batch_max = batch_max
        # Called once, from a store thread, when the store stops taking writes for good.
        self.on_fatal = on_fatal
        self.fatal: str | None = None
        self.on_commit = on_commit
        self.on_batch = on_batch  # called on the writer thread with each batch's job count
        # FULL/EXTRA: the writer commits without waiting for the disk; the syncer thread
        # fsyncs the WAL and only then answers the batch's callers (see _syncer_main).
        self.pipelined = synchronous in ("FULL", "EXTRA")
        self._synced: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._syncer: threading.Thread | None = None
        self._checkpointer: threading.Thread | None = None
        self._checkpoint_wanted = threading.Event()
        self._catch_up = False  # set by the checkpointer: the WAL needs resetting
        self._stopping = False
        self._readers = ThreadPoolExecutor(max_workers=readers, thread_name_prefix="store-read")
        self._local = threading.local()
        self._reader_conns: list[sqlite3.Connection] = []  # closed by close()
        self._reader_lock = threading.Lock()
        self._ready = False  # the writer opened the database
        self.seq = 0  # the newest seq handed out (the writer's)
        self.committed_seq = 0  # the newest seq durable and shown
        self.tail = FeedTail(0)
        self._batch_events = EmittedEvents()
        self._commit_ok = True  # the writer's last COMMIT
        self._sync_ok = True  # the syncer's last fsync
        self.last_error: str | None = None
        self.batches = 0
        self.jobs = 0
        self.reruns = 0  # batches run again job by job after an optimistic run failed

    # ---------------------------------------------------------------- connections

    def connect(self, *, readonly: bool = False) -> sqlite3.Connection:
        """A connection with the store's settings (the writer's, or a read-only one)."""
        # Room for the batch statements of every size (see BatchRows) besides the rest.
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                               timeout=30.0, cached_statements=512)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA busy_timeout = 30000")
        conn.execute("PRAGMA foreign_keys = OFF")
        if readonly:
            conn.execute("PRAGMA query_only = ON")
        else:
            # A new database gives freed pages back on request (PRAGMA incremental_vacuum
            # after a purge or an erasure); only possible before WAL mode and the first
            # table, and a no-op on an existing database.
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
            conn.execute("PRAGMA journal_mode = WAL")
            if self.pipelined:
                # Durability is the syncer's job (an fsync of the WAL before any caller
                # hears of its commit) and checkpoints are the checkpointer's, so a commit
                # never waits for the disk here.
                conn.execute("PRAGMA synchronous = OFF")
                conn.execute("PRAGMA wal_autocheckpoint = 0")
            else:
                conn.execute(f"PRAGMA synchronous = {self.synchronous}")
                conn.execute("PRAGMA wal_autocheckpoint = 4000")  # SQLite checkpoints
            # Deleted rows (an erased customer) are overwritten, not just unlinked.
            conn.execute("PRAGMA secure_delete = ON")
        conn.execute("PRAGMA cache_size = -16000")
        conn.execute("PRAGMA temp_store = MEMORY")  # savepoint journals: no temp-file writes
        return conn

    async def open(self) -> None:
        """Start the writer (which prepares the schema), the syncer and the checkpointer."""
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()
        self._writer = NamedThread(target=self._writer_main, args=(loop, ready),
                                   name="store-writer", daemon=True)
        self._writer.start()
        if self.pipelined:
            self._syncer = NamedThread(target=self._syncer_main, name="store-sync",
                                       daemon=True)
            self._syncer.start()
        await ready
        if self.pipelined:
            self._checkpointer = NamedThread(target=self._checkpointer_main,
                                             name="store-checkpoint", daemon=True)
            self._checkpointer.start()

    async def close(self) -> None:
        """Let queued writes commit (and reach the disk), stop the threads, then fold the
        WAL into the database file, so that the file alone holds everything (an operator
        who copies only the ``.db`` loses nothing)."""
        if self._writer is not None:
            self.queue.put(_STOP)
            await asyncio.to_thread(self._writer.join)  # it stops the syncer after itself
            self._writer = None
        self._stopping = True
        self._checkpoint_wanted.set()
        for thread in (self._syncer, self._checkpointer):
            if thread is not None:
                await asyncio.to_thread(thread.join)
        self._syncer = self._checkpointer = None
        self._readers.shutdown(wait=True)
        with self._reader_lock:
            for conn in self._reader_conns:
                conn.close()
            self._reader_conns.clear()
        # Not after a failed fsync: what the WAL holds may not be what reached the disk,
        # and recovery at the next start must decide from the disk alone.
        if self._ready and self.fatal is None:
            self._ready = False
            await asyncio.to_thread(self.truncate_wal, _CLOSE_WAIT)

    def _writer_main(self, loop: asyncio.AbstractEventLoop, ready: asyncio.Future[None]) -> None:
        try:
            conn = self.connect()
            self.seq = self.layer.prepare(conn)
            self.committed_seq = self.seq
            self.tail = FeedTail(self.seq)
            self._ready = True
        except Exception as exc:
            loop.call_soon_threadsafe(_set_exception, ready, StoreError(f"cannot open: {exc}"))
            return
        loop.call_soon_threadsafe(_set_result, ready, None)
        stopping = False
        while not stopping:
            batch, stopping = _take_queued(self.queue, self.batch_max)
            if not batch:
                continue
            if self.fatal is not None:
                self._refuse(batch)
                continue
            if self._catch_up:
                self._finish_checkpoint(conn)
            self._run_batch(conn, batch)
        if self.pipelined:
            self._synced.put(_STOP)
        conn.close()

    # ---------------------------------------------------------------- durability

    def _refuse(self, batch: list[Job]) -> None:
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
                self._publish_durable(settle, seq, events)
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

    def truncate_wal(self, wait: float = 5.0) -> bool:
        """Fold the WAL into the database, sync it, and truncate the WAL (after an erasure,
        so erased rows' old page images do not linger; at close, so the database file is
        self-contained). Readers of the WAL (a backup in another process) hold it back:
        SQLite's busy handler retries for up to ``wait`` seconds. True when done."""
        conn = sqlite3.connect(self.path, timeout=wait, isolation_level=None)
        try:
            conn.execute("PRAGMA synchronous = FULL")  # the database file is synced first
            busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            if busy:
                log.warning("store.checkpoint_busy", hint="readers held the WAL; it is "
                            "truncated at the next idle checkpoint")
            return not busy
        except sqlite3.Error as exc:
            log.warning("store.checkpoint_failed", error=str(exc))
            return False
        finally:
            conn.close()

    # ---------------------------------------------------------------- batches

    def _run_batch(self, conn: sqlite3.Connection, batch: list[Job]) -> None:
        seq_before = self.seq
        try:
            outcomes = self._execute(conn, batch, optimistic=True)
            if outcomes is None:
                # A job without a savepoint failed: undo the batch, run it again with one
                # savepoint per job so that only the failing job is undone.
                self.seq = seq_before
                self.reruns += 1
                outcomes = self._execute(conn, batch, optimistic=False)
            assert outcomes is not None
            conn.execute("COMMIT")
            if self.on_batch is not None:
                self.on_batch(len(batch))
            self.layer.committed()
            self._commit_ok = True
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            self.layer.forget()
            self.seq = seq_before
            self._commit_ok = False
            self.last_error = str(exc)
            log.error("store.commit_failed", error=str(exc), jobs=len(batch))
            self._batch_events = EmittedEvents()
            error = StoreError(f"the store could not commit: {exc}")
            outcomes = [(False, error) for _ in batch]
        self.batches += 1
        self.jobs += len(batch)
        self._hand_over(batch, outcomes, self.seq if self.seq > seq_before else None,
                        self._batch_events)
        if self.pipelined and self.batches % _CHECKPOINT_EVERY == 0:
            self._checkpoint_wanted.set()

    def _hand_over(self, batch: list[Job], outcomes: list[tuple[bool, Any]], seq: int | None,
                   events: EmittedEvents) -> None:
        """Group a finished batch's outcomes by event loop (one wake-up each, not one per
        caller) and deliver them once durable: through the syncer, or at once."""
        settle: Settle = {}
        for (ok, value), (_fn, _args, future, loop) in zip(outcomes, batch, strict=True):
            if not ok and isinstance(value, sqlite3.Error):
                value = StoreError(str(value))
            settle.setdefault(loop, []).append((future, ok, value))
        if self.pipelined:
            self._synced.put((seq, settle, events))
        else:
            self._publish_durable(settle, seq, events)

    def _publish_durable(self, settle: Settle, seq: int | None, events: EmittedEvents) -> None:
        """The batch is as durable as configured: show it in the feed, answer its callers."""
        if seq is not None:
            self.tail.extend(events, seq)
            self.committed_seq = seq
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

    def _execute(self, conn: sqlite3.Connection, batch: list[Job], *,
                 optimistic: bool) -> list[tuple[bool, Any]] | None:
        """Run a batch inside one open transaction; return each job's outcome.

        Savepoints cost two statements per job, so jobs that almost never fail (ingest) run
        without one when ``optimistic``; if such a job does fail, the transaction is rolled
        back and None is returned so the caller can run the batch again the careful way.
        """
        outcomes: list[tuple[bool, Any]] = []
        emitted = self._batch_events = EmittedEvents()
        conn.execute("BEGIN IMMEDIATE")
        scope = self.layer.begin(conn, batch, emitted, optimistic)
        unguarded = self.layer.unguarded if optimistic else ()
        for fn, args, _future, _loop in batch:
            if fn in unguarded:
                try:
                    outcomes.append((True, fn(scope.context(True), *args)))
                except Exception as exc:
                    _raise_if_rolled_back(conn, exc)
                    conn.execute("ROLLBACK")
                    self.layer.forget()
                    return None
                continue
            tx = scope.context(False)
            emitted_before = len(emitted)
            if optimistic:
                try:
                    scope.flush()  # what this job may read must be in the tables
                except sqlite3.Error as exc:
                    _raise_if_rolled_back(conn, exc)
                    conn.execute("ROLLBACK")
                    self.layer.forget()
                    return None
            conn.execute("SAVEPOINT job")
            try:
                result = fn(tx, *args)
            except Exception as exc:
                _raise_if_rolled_back(conn, exc)
                conn.execute("ROLLBACK TO job")
                conn.execute("RELEASE job")
                self.layer.forget()
                del emitted[emitted_before:]  # undone with the job
                outcomes.append((False, exc))
            else:
                conn.execute("RELEASE job")
                outcomes.append((True, result))
        if optimistic:
            try:
                scope.flush()
            except sqlite3.Error as exc:
                _raise_if_rolled_back(conn, exc)
                conn.execute("ROLLBACK")
                self.layer.forget()
                return None
        return outcomes

    def next_seq(self) -> int:
        """The seq of the next published event (writer thread only)."""
        self.seq += 1
        return self.seq

    # ---------------------------------------------------------------- callers

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
            conn = self.connect(readonly=True)
            self._local.conn = conn
            with self._reader_lock:
                self._reader_conns.append(conn)
        return fn(conn, *args)

    async def ping(self) -> None:
        """Raise StoreError unless a read and the last commit succeeded."""
        await self.read(lambda conn: conn.execute("SELECT 1").fetchone())
        if self.fatal is not None:
            raise StoreError(self.fatal)
        if not (self._commit_ok and self._sync_ok):
            raise StoreError(self.last_error or "the last commit failed")

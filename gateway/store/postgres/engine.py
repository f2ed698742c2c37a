"""The PostgreSQL commit engine: one writer thread per instance with group commit, a feed
listener (LISTEN/NOTIFY), reader threads.

Like the SQLite engine, every write is a job queued to one writer thread, which runs what
is queued inside one transaction (a SAVEPOINT per job) and commits once. Unlike SQLite,
other instances write to the same database at the same time, so:

- Event seqs come from the ``feed_head`` row, locked by a transaction that emits events
  until it commits: seqs commit in order, and an instance that saw seq N saw every event
  before it (identical cursors everywhere, none skipped). The lock is taken late: the
  ingest fast path numbers its events provisionally (-1, -2, … in rows not yet written)
  and the batch locks the head when it writes them (``_number``), or before the first
  other job that may emit. The commit notifies ``omnirelay_feed`` with the new head;
  every instance's listener wakes its feed at once.
- Ingest jobs take transaction advisory locks on their dedupe key and their sender's
  identities before anything else (in one sorted statement, so two batches never wait
  for each other in a cycle): the same message or a new customer arriving at two
  instances at once is stored once, linked once, in one conversation. The unique indexes
  stay the backstop: a job that still meets a unique violation runs once more and finds
  what the other instance committed.
- The writer's cache lives for one batch only: another instance may change what it holds.
- A batch that deadlocks or fails serialization runs again from the start.
- The support metrics' duration samples that the jobs measure (``jobs/stats.py``) are
  handed to ``on_samples`` once their batch committed; a job undone, or a batch rolled
  back, takes its samples with it (as on SQLite).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any, TypeVar, cast

import psycopg
import psycopg.errors
import structlog

from gateway.errors import StoreError
from gateway.ids import iso, utcnow
from gateway.osthread import NamedThread
from gateway.store import compact
from gateway.store.engine import (
    _STOP,
    CommitEngine,
    Job,
    WriteQueue,
    _set_exception,
    _set_result,
    _take_queued,
)
from gateway.store.feed import EmittedEvents
from gateway.store.jobs.stats import (
    HoursOf,
    Sample,
    drop_samples,
    forget_cached_rows,
    take_samples,
)
from gateway.store.jobs.tx import BatchRows, Tx, WriterCache
from gateway.store.postgres.conn import Connection
from gateway.store.postgres.migrate import apply_migrations

log = structlog.get_logger(__name__)
T = TypeVar("T")

CHANNEL = "omnirelay_feed"
_BATCH_ATTEMPTS = 5  # runs of a batch that deadlocked or lost a serialization race
_RETRYABLE = (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure)
_LOCK_KEYS_SQL = ("SELECT pg_advisory_xact_lock(hashtextextended(k, 0)) FROM "
                  "unnest(?::text[]) AS k ORDER BY hashtextextended(k, 0)")

LockKeys = Callable[[tuple[Any, ...]], list[str]]
DedupeOf = Callable[[tuple[Any, ...]], tuple[str, str, str]]
# (connection, the batch's writer cache, its deferred rows, the fast-path jobs' args, the
# batch's clock reading)
Prefetch = Callable[[Connection, WriterCache, BatchRows, list[tuple[Any, ...]], datetime],
                    None]


class PgEngine(WriteQueue):
    """Runs queued jobs in batches on PostgreSQL; see the module docstring."""

    def __init__(self, dsn: str, *, batch_max: int, quiet: Collection[Callable[..., Any]],
                 lock_keys: dict[Callable[..., Any], LockKeys],
                 deferred: dict[Callable[..., Any], DedupeOf] | None = None,
                 prefetch: Prefetch | None = None,
                 on_commit: Callable[[int], None] | None = None,
                 on_batch: Callable[[int], None] | None = None,
                 on_fatal: Callable[[str], None] | None = None, readers: int = 4,
                 on_samples: Callable[[list[Sample]], None] | None = None) -> None:
        super().__init__(batch_max)
        self.dsn = dsn
        self.batch_max = batch_max
        self.quiet = quiet  # jobs that never emit: their batches leave feed_head alone
        self.lock_keys = lock_keys  # per job: the advisory lock keys of its arguments
        # Jobs that may run on the fast path (see _execute), with their dedupe key.
        self.deferred = deferred or {}
        # Reads the fast path's jobs would each make, done once for the batch (their args).
        self.prefetch = prefetch
        self.on_commit = on_commit
        self.on_batch = on_batch
        self.on_fatal = on_fatal
        self.on_samples = on_samples  # the metrics' durations, once their batch committed
        # Other channels the listener hears, each with what it calls (on the listener
        # thread) with a notification's payload: the instances' pushes (.broadcast).
        self.listens: dict[str, Callable[[str], None]] = {}
        # Called on the listener thread when it listens again after its connection broke:
        # notifications of ``listens`` sent meanwhile were lost (.broadcast catches up).
        self.on_relisten: Callable[[], None] | None = None
        self._commit_sent = False  # the writer's batch sent COMMIT (its outcome is unknown)
        self._samples: list[Sample] = []  # the open batch's, of jobs that went through
        self.cache = WriterCache()
        # Each account's business hours for the metrics (jobs/stats.py), set by the store.
        self.hours: HoursOf | None = None
        self._listener: threading.Thread | None = None
        self._stopping = threading.Event()
        self._readers = ThreadPoolExecutor(max_workers=readers, thread_name_prefix="pg-read")
        self._local = threading.local()
        self._reader_conns: list[Connection] = []
        self._reader_lock = threading.Lock()
        self._head_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.seq = 0  # the newest seq handed out by this writer's open batch
        self._numbering = False  # the open batch holds the feed_head lock
        # Before the lock, the fast path's events get provisional seqs -1, -2, … (only in
        # rows not yet written); _number() turns -k into head + k under the lock.
        self._provisional_ok = False
        self._provisional = 0
        self._head_before = 0
        self.committed_seq = 0  # the newest seq known committed (any instance)
        self.last_error: str | None = None
        self._commit_ok = True
        self.fatal: str | None = None
        self.batches = 0
        self.jobs = 0
        self.reruns = 0

    # ---------------------------------------------------------------- lifecycle

    def connect(self, application_name: str = "omnirelay") -> Connection:
        """A new connection (autocommit; the writer's transactions are explicit)."""
        try:
            return Connection.connect(self.dsn, application_name=application_name)
        except psycopg.Error as exc:
            raise StoreError(f"cannot connect to PostgreSQL: {_brief(exc)}") from exc

    async def open(self) -> None:
        """Connect, migrate (once across instances), start the writer and the listener."""
        self._loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = self._loop.create_future()
        self._writer = NamedThread(target=self._writer_main, args=(self._loop, ready),
                                   name="pg-writer", daemon=True)
        self._writer.start()
        try:
            await ready
        except BaseException:
            self._writer.join()
            self._writer = None
            raise
        self._listener = NamedThread(target=self._listener_main, name="pg-listen",
                                     daemon=True)
        self._listener.start()

    async def close(self) -> None:
        """Let queued writes commit, then stop the threads and close the connections."""
        self._stopping.set()
        if self._writer is not None:
            self.queue.put(_STOP)
            await asyncio.to_thread(self._writer.join)
            self._writer = None
        if self._listener is not None:
            await asyncio.to_thread(self._listener.join)
            self._listener = None
        self._readers.shutdown(wait=True)
        with self._reader_lock:
            for conn in self._reader_conns:
                with contextlib.suppress(Exception):
                    conn.close()
            self._reader_conns.clear()

    def _writer_main(self, loop: asyncio.AbstractEventLoop, ready: asyncio.Future[None]) -> None:
        try:
            conn = self.connect("omnirelay-writer")
            apply_migrations(conn)
            conn.execute("INSERT INTO codec_dictionaries (id, data) VALUES (?, ?) "
                         "ON CONFLICT (id) DO NOTHING", compact.builtin_dictionary())
            for row in conn.execute("SELECT id, data FROM codec_dictionaries"):
                compact.register(row[0], bytes(row[1]))
            head = conn.execute("SELECT seq FROM feed_head").fetchone()
            self.seq = self.committed_seq = int(head[0]) if head else 0
        except Exception as exc:
            loop.call_soon_threadsafe(_set_exception, ready, StoreError(f"cannot open: {exc}"))
            return
        loop.call_soon_threadsafe(_set_result, ready, None)
        stopping = False
        while not stopping:
            batch, stopping = _take_queued(self.queue, self.batch_max)
            if not batch:
                continue
            conn = self._run_batch(conn, batch)
        conn.close()

    # ---------------------------------------------------------------- batches

    def _run_batch(self, conn: Connection, batch: list[Job]) -> Connection:
        """Run a batch, again after a deadlock; answer its callers after the commit.
        Returns the connection to go on with (a new one after the old one broke)."""
        outcomes: list[tuple[bool, Any]] | None = None
        head: int | None = None
        optimistic = True
        for attempt in range(_BATCH_ATTEMPTS):
            try:
                outcomes, head = self._execute(conn, batch, optimistic)
                self._commit_ok = True
                self._hand_over_samples()
                break
            except _Rerun:
                _rollback(conn)
                self.reruns += 1
                optimistic = False
                continue
            except _RETRYABLE as exc:
                _rollback(conn)
                self.reruns += 1
                log.info("store.batch_rerun", reason=type(exc).__name__, attempt=attempt + 1)
                continue
            except psycopg.Error as exc:
                _rollback(conn)
                lost = conn.closed  # the server went away: nothing of the batch is kept
                if lost or isinstance(exc, psycopg.OperationalError):
                    with contextlib.suppress(StoreError):
                        conn.close()
                        conn = self.connect("omnirelay-writer")
                if lost and not self._commit_sent and not conn.closed:
                    # Broken before COMMIT was sent (a restart of the server, a network
                    # blip since the last batch): run it again on the new connection.
                    # After COMMIT was sent the outcome is unknown: the callers hear so.
                    self.reruns += 1
                    log.warning("store.batch_rerun", reason="connection_lost",
                                attempt=attempt + 1)
                    continue
                self._commit_ok = False
                self.last_error = _brief(exc)
                log.error("store.commit_failed", error=self.last_error, jobs=len(batch))
                break
        if outcomes is None:
            drop_samples()  # nothing of the batch happened
            self._samples = []
            error = StoreError(f"the store could not commit: {self.last_error or 'deadlocks'}")
            outcomes = [(False, error)] * len(batch)
        self.batches += 1
        self.jobs += len(batch)
        if self.on_batch is not None:
            self.on_batch(len(batch))
        if head is not None:
            self._advance(head)
        settle: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool, Any]]] = {}
        for (ok, value), (_fn, _args, future, loop) in zip(outcomes, batch, strict=True):
            if not ok and isinstance(value, psycopg.Error):
                value = StoreError(_brief(value))
            settle.setdefault(loop, []).append((future, ok, value))
        for loop, results in settle.items():
            loop.call_soon_threadsafe(_settle, results)
        return conn

    def _execute(self, conn: Connection, batch: list[Job], optimistic: bool
                 ) -> tuple[list[tuple[bool, Any]], int | None]:
        """One transaction: locks, the jobs, the feed head, commit.

        Each round trip to the server is most of a job's cost, so when ``optimistic`` the
        deferrable jobs (ingest) run as on SQLite's fast path: without a savepoint, their
        dedupe lookups done in one query for the batch, their message, raw payload and
        event rows inserted together (``BatchRows``) before any other job reads. If one
        of them fails, :class:`_Rerun` undoes the batch and it runs again job by job.
        """
        self.cache.clear()  # another instance may have changed what it knew
        forget_cached_rows()  # the metrics' cached rows likewise (jobs/stats.py)
        drop_samples()  # a rolled back attempt's
        self._samples = []
        emitted = EmittedEvents()
        now = utcnow()
        now_iso = iso(now)
        assert now_iso is not None
        self._commit_sent = False
        conn.execute("BEGIN")
        keys = sorted({key for fn, args, _f, _l in batch if fn in self.lock_keys
                       for key in self.lock_keys[fn](args)})
        if keys:
            conn.execute(_LOCK_KEYS_SQL, (keys,))
        # The feed_head lock is taken late: at the first flush of the fast path's rows, or
        # before the first other job that may emit (see _number), so batches of different
        # instances overlap until then instead of queueing from their first statement.
        self.seq = self._head_before = self.committed_seq
        self._numbering = False
        self._provisional = 0
        outcomes: list[tuple[bool, Any]] = []
        rows = (BatchRows() if optimistic and any(fn in self.deferred for fn, *_ in batch)
                else None)
        if rows is not None:
            _guard(rows.prefetch, conn, [self.deferred[fn](args) for fn, args, _f, _l in batch
                                         if fn in self.deferred])
            if self.prefetch is not None:
                _guard(self.prefetch, conn, self.cache, rows,
                       [args for fn, args, _f, _l in batch if fn in self.deferred], now)
        for fn, args, _future, _loop in batch:
            if rows is not None and fn in self.deferred:
                tx = Tx(cast(Any, conn), cast(CommitEngine, self), now, now_iso, self.cache,
                        rows, emitted, self.hours)
                self._provisional_ok = True
                try:
                    outcomes.append((True, _guard(fn, tx, *args)))
                finally:
                    self._provisional_ok = False
                continue
            if rows is not None:  # what this job may read is in the tables
                self._flush(conn, rows, emitted, now_iso)
            if fn not in self.quiet:
                self._number(conn, rows, emitted)
            outcomes.append(self._run_job(conn, fn, args, emitted, now, now_iso))
        if rows is not None:
            self._flush(conn, rows, emitted, now_iso)
        head: int | None = None
        if self._numbering and self.seq > self._head_before:
            head = self.seq
            conn.execute("UPDATE feed_head SET seq = ?", (head,))
            conn.execute("SELECT pg_notify(?, ?)", (CHANNEL, str(head)))
        self._commit_sent = True
        conn.execute("COMMIT")
        self._samples += take_samples()
        return outcomes, head

    def _run_job(self, conn: Connection, fn: Callable[..., Any], args: tuple[Any, ...],
                 emitted: EmittedEvents, now: datetime, now_iso: str) -> tuple[bool, Any]:
        """One job in a savepoint; once more after a unique violation (another instance
        committed the same row first: the second run finds it)."""
        for attempt in (1, 2):
            before = len(emitted)
            # The batch's one clock reading, as on SQLite: the metrics fold an event in at
            # its created_at (``now_iso``), so that a rebuild from the events agrees.
            tx = Tx(cast(Any, conn), cast(CommitEngine, self), now, now_iso, self.cache,
                    None, emitted, self.hours)
            self._samples += take_samples()  # the jobs before this one keep theirs
            conn.execute("SAVEPOINT job")
            try:
                result = fn(tx, *args)
            except _RETRYABLE:
                raise
            except psycopg.errors.UniqueViolation as exc:
                conn.execute("ROLLBACK TO SAVEPOINT job")
                conn.execute("RELEASE SAVEPOINT job")
                self.cache.clear()
                drop_samples()  # undone with the job
                del emitted[before:]
                if attempt == 2:
                    return False, exc
                continue
            except Exception as exc:
                if isinstance(exc, psycopg.OperationalError):
                    raise
                conn.execute("ROLLBACK TO SAVEPOINT job")
                conn.execute("RELEASE SAVEPOINT job")
                self.cache.clear()
                drop_samples()  # undone with the job
                del emitted[before:]
                return False, exc
            conn.execute("RELEASE SAVEPOINT job")
            return True, result
        raise AssertionError("unreachable")

    def _hand_over_samples(self) -> None:
        """The committed batch's duration samples to the metrics (the writer thread, as on
        SQLite)."""
        samples, self._samples = self._samples, []
        if samples and self.on_samples is not None:
            self.on_samples(samples)

    def next_seq(self) -> int:
        """The seq of the next event (writer thread): under the feed_head lock, the real
        one; on the fast path before the lock, a provisional -k (see _number)."""
        if self._numbering:
            self.seq += 1
            return self.seq
        if self._provisional_ok:
            self._provisional += 1
            return -self._provisional
        # A job listed as quiet emitted: fail it, number nothing.
        raise StoreError("an event emitted outside the feed_head lock")

    def _flush(self, conn: Connection, rows: BatchRows, emitted: EmittedEvents,
               now_iso: str) -> None:
        """Write the fast path's deferred rows, their events numbered first."""
        if rows.events:
            self._number(conn, rows, emitted)
        _guard(rows.flush, conn, now_iso)

    def _number(self, conn: Connection, rows: BatchRows | None,
                emitted: EmittedEvents) -> None:
        """Take the feed_head lock (once a batch) and give the provisional seqs their real
        numbers: -k becomes head + k in the deferred event rows (the ``"seq"`` in their
        body, and the cut point of a shared message behind it), in the message rows that
        name their event, and in the batch's emitted events. Nothing provisional has reached
        a table: only the fast path numbers provisionally, and its rows wait in ``rows``."""
        if self._numbering:
            return
        row = conn.execute("SELECT seq FROM feed_head FOR UPDATE").fetchone()
        assert row is not None
        head = self._head_before = int(row[0])
        self._numbering = True
        self.seq = head + self._provisional
        if not self._provisional:
            return

        def real(seq: int) -> int:
            return head - seq if seq < 0 else seq

        def renumbered(seq: int, body: bytes) -> tuple[bytes, int]:
            old, new = b'"seq":"%d"' % seq, b'"seq":"%d"' % real(seq)
            return body.replace(old, new, 1), len(new) - len(old)

        if rows is not None:
            for i, event in enumerate(rows.events):
                if event[0] < 0:
                    body, shift = renumbered(event[0], event[6])
                    cut = event[8] + shift if event[8] is not None else None
                    rows.events[i] = (real(event[0]), *event[1:6], body, event[7], cut)
            for i, message in enumerate(rows.messages):
                if message[10] is not None and message[10] < 0:
                    rows.messages[i] = (*message[:10], real(message[10]))
        for i, (seq, body) in enumerate(emitted):
            if seq < 0:
                emitted[i] = (real(seq), renumbered(seq, body)[0])

    def _advance(self, head: int) -> None:
        """A newer head is committed (ours, or another instance's): show it."""
        with self._head_lock:
            if head <= self.committed_seq:
                return
            self.committed_seq = head
        loop = self._loop
        if loop is not None and self.on_commit is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self.on_commit, head)

    # ---------------------------------------------------------------- the feed listener

    def _listener_main(self) -> None:
        """LISTEN for other instances' commits; after a reconnect, read the head (a
        notification missed while disconnected is not lost: the head covers it). The same
        connection hears the channels of ``listens`` (a push missed while disconnected is
        lost: what is pushed is also in the store, and ``on_relisten`` says when to read
        it)."""
        delay = 0.5
        listened = False
        while not self._stopping.is_set():
            try:
                conn = psycopg.Connection.connect(self.dsn, autocommit=True,
                                                  application_name="omnirelay-listen")
            except psycopg.Error as exc:
                log.warning("store.listen_failed", error=_brief(exc))
                self._stopping.wait(delay)
                delay = min(delay * 2, 10.0)
                continue
            try:
                conn.execute(f"LISTEN {CHANNEL}")
                for channel in self.listens:
                    conn.execute(f"LISTEN {channel}")
                row = conn.execute("SELECT seq FROM feed_head").fetchone()
                if row is not None:
                    self._advance(int(row[0]))
                if listened and self.on_relisten is not None:
                    try:
                        self.on_relisten()
                    except Exception:
                        log.exception("store.listen_handler_failed", channel=None)
                listened = True
                delay = 0.5
                while not self._stopping.is_set():
                    for note in conn.notifies(timeout=0.1):
                        if note.channel != CHANNEL:
                            self._heard(note.channel, note.payload)
                            continue
                        with contextlib.suppress(ValueError):
                            self._advance(int(note.payload))
            except psycopg.Error as exc:
                if not self._stopping.is_set():
                    log.warning("store.listen_failed", error=_brief(exc))
            finally:
                with contextlib.suppress(Exception):
                    conn.close()

    def _heard(self, channel: str, payload: str) -> None:
        """A notification of a channel of ``listens``; a failing handler never stops the
        listener."""
        handler = self.listens.get(channel)
        if handler is None:
            return
        try:
            handler(payload)
        except Exception:
            log.exception("store.listen_handler_failed", channel=channel)

    # ---------------------------------------------------------------- callers

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(conn, *args)`` on a reader thread."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._readers, self._read_job, fn, args)
        except psycopg.Error as exc:
            raise StoreError(_brief(exc)) from exc

    def _read_job(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        conn = self._reader()
        try:
            return fn(conn, *args)
        except psycopg.OperationalError:
            self._local.conn = None  # broken: the next read connects again
            if not conn.closed:
                raise
        # The connection broke since this thread last used it (a restart of the server, a
        # network blip): once more on a new one. What goes this way is a read or an
        # idempotent write (a blob by its digest, a NOTIFY a subscriber may hear twice).
        return fn(self._reader(), *args)

    def _reader(self) -> Connection:
        """This reader thread's connection (a new one when it has none or it broke)."""
        conn: Connection | None = getattr(self._local, "conn", None)
        if conn is not None and conn.closed:
            conn = None
        if conn is None:
            conn = self.connect("omnirelay-read")
            self._local.conn = conn
            with self._reader_lock:
                self._reader_conns.append(conn)
        return conn

    async def ping(self) -> None:
        """Raise StoreError unless a read and the last commit succeeded."""
        await self.read(lambda conn: conn.execute("SELECT 1").fetchone())
        if not self._commit_ok:
            raise StoreError(self.last_error or "the last commit failed")


class _Rerun(Exception):
    """A job of the optimistic pass failed: undo the batch, run it job by job."""


def _guard(fn: Callable[..., T], *args: Any) -> T:
    """Run part of the optimistic pass; any failure but a lost connection or a deadlock
    (handled by the batch) asks for the careful pass."""
    try:
        return fn(*args)
    except (psycopg.OperationalError, *_RETRYABLE):
        raise
    except Exception as exc:
        raise _Rerun from exc


def _settle(results: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    for future, ok, value in results:
        if future.done():
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)


def _rollback(conn: Connection) -> None:
    with contextlib.suppress(psycopg.Error):
        conn.execute("ROLLBACK")


def _brief(exc: BaseException) -> str:
    """An error's first line (psycopg's messages carry context lines)."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__

"""What a write job sees (:class:`Tx`), the rows a batch defers, what the writer caches.

Write jobs are plain functions ``job(tx, *args)`` run on the writer thread (see
``gateway/store/engine.py``); a guarded job runs inside a SAVEPOINT: raise to undo it.
"""

from __future__ import annotations

import functools
import itertools
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from gateway.ids import new_id
from gateway.store import compact
from gateway.store.base import JSON, StoredAttachment
from gateway.store.engine import CommitEngine
from gateway.store.feed import EmittedEvents
from gateway.store.jobs.stats import HoursOf
from gateway.store.jobs.stats import flush_pending as flush_stats
from gateway.store.jobs.stats import observe as observe_stats


@dataclass(slots=True, frozen=True)
class SharedMessage:
    """A message row an event shares (see :meth:`Tx.emit`): its id, its JSON as stored, and
    that JSON's value (so the metrics need not parse it back)."""

    id: str
    encoded: bytes
    message: JSON


@dataclass(slots=True)
class Tx:
    """What a write job sees: the connection, one clock reading, the events it emitted."""

    conn: sqlite3.Connection
    engine: CommitEngine
    now: datetime
    now_iso: str  # ``now`` in the contract's format, formatted once per batch
    cache: WriterCache
    rows: BatchRows | None = None  # set: inserts are deferred to the batch's flush
    emitted: EmittedEvents | None = None  # the batch's events, for the feed's tail
    hours: HoursOf | None = None  # each account's schedule, for the metrics' business clock

    def one(self, sql: str, params: Iterable[Any] = ()) -> sqlite3.Row | None:
        """Run a query and return its first row."""
        row: sqlite3.Row | None = self.conn.execute(sql, tuple(params)).fetchone()
        return row

    def emit(self, event_type: str, data: JSON, *, conversation_id: str | None = None,
             customer_id: str | None = None, shares: SharedMessage | None = None) -> int:
        """Append an event to the feed inside the job's transaction.

        ``shares``: the message row whose JSON ``data`` holds as a Fragment: the stored body
        leaves that JSON out and the feed splices the row's in (one copy on disk; the
        migration 0007 triggers copy it into the event before the row changes).
        """
        seq = self.engine.next_seq()
        event_id = new_id("evt")
        body = orjson.dumps({"id": event_id, "seq": str(seq), "type": event_type,
                             "created_at": self.now_iso, "data": data})
        if self.emitted is not None:
            self.emitted.append((seq, body))
        message_ref = message_at = None
        stored = body
        if shares is not None:
            message_at = body.find(shares.encoded)
            if message_at >= 0:
                message_ref = shares.id
                stored = body[:message_at] + body[message_at + len(shares.encoded):]
            else:
                message_at = None
        if self.rows is not None:  # compressed with the batch's other rows at its flush
            self.rows.events.append((seq, event_id, event_type, self.now_iso,
                                     conversation_id, customer_id, stored, message_ref,
                                     message_at))
        else:
            self.conn.execute(_INSERT_EVENT + _VALUES[9], (
                seq, event_id, event_type, self.now_iso, conversation_id, customer_id,
                compact.pack(stored), message_ref, message_at))
        observe_stats(self, event_type, data, shares)  # the metrics, in this transaction
        return seq


_INSERT_EVENT = ("INSERT INTO events (seq, id, type, created_at, conversation_id, customer_id,"
                 " body, message_ref, message_at) VALUES ")
_INSERT_MESSAGE = ("INSERT INTO messages (id, conversation_id, customer_id, channel, account, "
                   "direction, provider_message_id, status, created_at, data, event_seq) "
                   "VALUES ")
_INSERT_RAW = "INSERT INTO raw_payloads (message_id, content_type, body, created_at) VALUES "
_VALUES = {width: "(" + ", ".join("?" * width) + ")" for width in (4, 9, 11)}
_CHUNK = 64  # rows per multi-row statement: one prepared statement per size up to this


@dataclass(slots=True)
class BatchRows:
    """Rows that a batch's ingest jobs wrote, inserted together before anything reads them.

    One multi-row INSERT per table: every statement gives up the GIL, and under load
    getting it back waits for the event loop (docs/benchmarks.md, third round). ``by_key`` and
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
    # Identities the batch's prefetch found in no row (jobs/ingest.py prefetch_senders): a
    # job need not ask again; one it links is in the writer cache from then on.
    absent: set[tuple[str, str]] = field(default_factory=set)

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
        self._pack()
        flush_stats(conn)  # the metrics' deferred writes (jobs/stats.py)
        _insert_chunked(conn, _INSERT_MESSAGE, 11, self.messages)
        _insert_chunked(conn, _INSERT_RAW, 4, self.raw)
        _insert_chunked(conn, _INSERT_EVENT, 9, self.events)
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
        self.absent.clear()

    def _pack(self) -> None:
        """Compress the rows' JSON, then their raw payloads (compact.py): two calls a batch."""
        messages, events, raw = self.messages, self.events, self.raw
        packed = compact.pack_many([r[9] for r in messages] + [r[6] for r in events])
        for i, row in enumerate(messages):
            messages[i] = (*row[:9], packed[i], row[10])
        done = len(messages)
        for i, row in enumerate(events):
            events[i] = (*row[:6], packed[done + i], *row[7:])
        packed = compact.pack_many([r[2] for r in raw], compact.LEVEL_RAW)
        for i, row in enumerate(raw):
            raw[i] = (row[0], row[1], compact.pack_raw(row[2], packed[i]), row[3])


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
        # customer id -> (name, the "kind:address" of the identity that gave it)
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



class JobBatch:
    """One batch of the writer: one clock reading, the deferred rows, the emitted events."""

    __slots__ = ("cache", "conn", "emitted", "engine", "hours", "now", "now_iso", "rows")

    def __init__(self, conn: sqlite3.Connection, engine: CommitEngine, cache: WriterCache,
                 rows: BatchRows | None, emitted: EmittedEvents, now: datetime,
                 now_iso: str, hours: HoursOf | None = None) -> None:
        self.conn = conn
        self.engine = engine
        self.cache = cache
        self.rows = rows
        self.emitted = emitted
        self.now = now
        self.now_iso = now_iso
        self.hours = hours

    def context(self, deferred: bool) -> Tx:
        """The next job's Tx (``deferred``: its inserts go to the batch's rows)."""
        return Tx(self.conn, self.engine, self.now, self.now_iso, self.cache,
                  self.rows if deferred else None, self.emitted, self.hours)

    def flush(self) -> None:
        """Insert the deferred rows."""
        if self.rows is not None:
            self.rows.flush(self.conn, self.now_iso)


def _insert_message(tx: Tx, message: JSON, attachments: Iterable[StoredAttachment],
                    encoded: bytes | None = None, event_seq: int | None = None) -> None:
    """Insert a message row (``event_seq``: the event that shares its JSON, see Tx.emit)."""
    data = encoded or orjson.dumps(message)
    row = (message["id"], message["conversation_id"], message["customer_id"],
           message["channel"], message["account"], message["direction"],
           message["provider"]["message_id"], message["status"], message["received_at"],
           data if tx.rows is not None else compact.pack(data), event_seq)
    if tx.rows is not None:  # compressed at the batch's flush
        tx.rows.messages.append(row)
    else:
        tx.conn.execute(_INSERT_MESSAGE + _VALUES[11], row)
    for att in attachments:
        tx.conn.execute(
            "INSERT INTO attachments (id, message_id, filename, content_type, size, sha256, "
            "created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (att.id, message["id"], att.filename, att.content_type, att.size, att.sha256,
             tx.now_iso))


def _insert_raw(tx: Tx, message_id: str, content_type: str, body: bytes) -> None:
    """Keep a message's raw provider payload (compressed at the batch's flush)."""
    if tx.rows is not None:
        tx.rows.raw.append((message_id, content_type, body, tx.now_iso))
    else:
        tx.conn.execute(_INSERT_RAW + _VALUES[4], (message_id, content_type,
                                                   compact.pack_raw(body), tx.now_iso))


def _save_message(tx: Tx, message: JSON) -> None:
    tx.conn.execute("UPDATE messages SET status = ?, provider_message_id = ?, data = ? "
                    "WHERE id = ?", (message["status"], message["provider"]["message_id"],
                                     compact.pack(orjson.dumps(message)), message["id"]))


"""The support metrics' aggregates, kept as the events are written (docs/stats.md).

Every event goes through ``Tx.emit``, which hands it to :func:`observe` in the same
transaction: what the metrics need of it lands in ``stat_buckets`` (counters and exact
duration samples per quarter hour, channel, account and agent), ``stat_writers`` (who
wrote, for the contact rate) and ``stat_conversations`` (what each conversation has seen
so far). The same function replays the stored events (:func:`rebuild`), so the aggregates
of a store older than migration 0008 are the ones the events give, and a test can compare
both. ``/shared/METRICS.md`` defines each number; the rules below follow it:

- a customer message is an inbound message with ``automatic`` null (an auto-reply or a
  bounce is not one); a human reply is an outbound message with ``automatic`` null,
  counted when it is sent (``message.status`` sent, delivered or read, or an echo), never
  when queued, so a failed send is no reply;
- first response: the first human reply after the customer's first message (a
  conversation whose first message was ours has none), in the reply's quarter hour, for
  the replying agent;
- response: each run of customer messages, from its first, to the next human reply;
- resolution, one-touch, automatic resolutions, messages per conversation: of the
  conversation's last close, for the closing agent; a reopen takes them back from that
  close, the next close counts them again;
- open conversations: +1 at an open or reopen, -1 at a close, for the assignee;
- business hours: where a duration is measured for an account with a schedule (the one its
  acknowledgements use), its time inside the schedule's open hours is appended beside it
  (``frt_business``…, migration 0012). Only there: an inbound message costs nothing more.
"""

from __future__ import annotations

import functools
import hashlib
import secrets
import sqlite3
import threading
from array import array
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson

from gateway.store.base import JSON
from gateway.store.jobs.lists import in_chunks
from normalizer.timestamps import parse_iso

if TYPE_CHECKING:
    from gateway.automation.hours import BusinessHours
    from gateway.store.jobs.tx import SharedMessage, Tx

# Each account's business hours, for the durations' business clock: (channel, account)
# -> its schedule, or None (no business samples for it). The daemon builds it from
# [automation] (gateway/daemon.py business_hours_for); the store hands it to every Tx.
HoursOf = Callable[[str, str], "BusinessHours | None"]

BUCKET_SECONDS = 900  # a quarter hour: every time zone's offset is a whole number of them
BUCKETS_A_DAY = 96
SENT_STATUSES = frozenset({"sent", "delivered", "read"})
_REMEMBERED_REPLIES = 16  # outbound ids counted already (a receipt repeats the sent one)
DURATIONS = ("frt", "response", "resolution")
BUSINESS = {name: f"{name}_business" for name in DURATIONS}  # the business-hours twins
DURATION_COLUMNS = (*DURATIONS, *BUSINESS.values())
COUNTERS = ("created", "closes", "resolved", "with_reply", "one_touch", "resolved_msgs",
            "csat_sent", "csat_answers", "csat_sum", "csat_good")
_WANTED = frozenset({"conversation.opened", "conversation.closed", "conversation.reopened",
                     "conversation.updated", "message.received", "message.status",
                     "customer.erased"})


# Durations measured by the writer thread's jobs, handed to the Prometheus histograms once
# their batch committed (take_samples), dropped with a rollback (drop_samples).
_local = threading.local()
# (a DURATION_COLUMNS name: frt … or its BUSINESS twin, channel, account, seconds)
Sample = tuple[str, str, str, float]


def take_samples() -> list[Sample]:
    """The samples this thread's committed batch measured (and forget them)."""
    samples: list[Sample] = getattr(_local, "samples", [])
    _local.samples = []
    return samples


def drop_samples() -> None:
    """A rollback: what it measured never happened, and what the caches below hold may be
    gone."""
    _local.samples = []
    _local.pending = None
    forget_cached_rows()


def forget_cached_rows() -> None:
    """Empty this thread's caches of aggregate rows: after a rollback, and before every batch
    where another writer may have changed the tables since (several instances on PostgreSQL,
    or one thread writing two databases)."""
    _local.states = {}
    _local.wrote = {}


_CACHE_LIMIT = 50_000  # entries of each writer-thread cache before it starts again


def _cache(name: str) -> dict[Any, Any]:
    """A writer thread's cache of rows it wrote (valid while it is the only writer; emptied
    by drop_samples at every rollback, and by forget_cached_rows)."""
    cache: dict[Any, Any] | None = getattr(_local, name, None)
    if cache is None or len(cache) > _CACHE_LIMIT:
        cache = {}
        setattr(_local, name, cache)
    return cache


class _Pending:
    """The writes an optimistic batch's ingest jobs deferred (like their message rows,
    tx.BatchRows): merged by key and written by :func:`flush_pending` in a few multi-row
    statements before anything else reads the tables. Every statement gives up the GIL,
    which the writer then waits for under load (docs/benchmarks.md)."""

    __slots__ = ("counters", "durations", "maxes", "opens", "prev", "states", "writers")

    def __init__(self) -> None:
        # From :func:`prefetch`: customer hash -> {(channel, account): newest bucket} of
        # stat_writers, for the customers the batch prefetched (the rest ask the table).
        self.maxes: dict[int, dict[tuple[str, str], int]] = {}
        self.states: dict[str, JSON] = {}
        self.counters: dict[tuple[int | str, ...], dict[str, int]] = {}
        self.durations: dict[tuple[int | str, ...], dict[str, bytes]] = {}
        self.opens: dict[tuple[str, int, str, str, str], int] = {}
        self.writers: list[tuple[Any, ...]] = []
        self.prev: dict[tuple[int, str | None, str | None], int] = {}


def _pending() -> _Pending:
    pending: _Pending | None = getattr(_local, "pending", None)
    if pending is None:
        pending = _local.pending = _Pending()
    return pending


_CHUNK = 64  # rows per multi-row statement


def _upsert_rows(conn: sqlite3.Connection, head: str, width: int, tail: str,
                 rows: list[tuple[Any, ...]]) -> None:
    row_sql = "(" + ", ".join("?" * width) + ")"
    for start in range(0, len(rows), _CHUNK):
        chunk = rows[start:start + _CHUNK]
        conn.execute(head + ", ".join([row_sql] * len(chunk)) + tail,
                     [value for row in chunk for value in row])


def flush_pending(conn: sqlite3.Connection) -> None:
    """Write what this thread's optimistic batch deferred (tx.BatchRows.flush calls it)."""
    pending: _Pending | None = getattr(_local, "pending", None)
    if pending is None:
        return
    _local.pending = None
    if pending.states:
        _upsert_rows(conn, "INSERT INTO stat_conversations (id, state) VALUES ", 2,
                     " ON CONFLICT (id) DO UPDATE SET state = excluded.state",
                     [(key, orjson.dumps(state).decode())
                      for key, state in pending.states.items()])
    if pending.counters:
        _upsert_rows(
            conn, f"INSERT INTO stat_buckets (channel, account, agent, bucket, "
                  f"{', '.join(COUNTERS)}) VALUES ", 4 + len(COUNTERS),
            " ON CONFLICT (channel, account, agent, bucket) DO UPDATE SET "
            + ", ".join(f"{n} = {n} + excluded.{n}" for n in COUNTERS),
            [(*key, *(values.get(n, 0) for n in COUNTERS))
             for key, values in pending.counters.items()])
    if pending.durations:
        present = {name for values in pending.durations.values() for name in values}
        names = [name for name in DURATION_COLUMNS if name in present]
        _upsert_rows(
            conn, f"INSERT INTO stat_durations (channel, account, agent, bucket, "
                  f"{', '.join(names)}) VALUES ", 4 + len(names),
            " ON CONFLICT (channel, account, agent, bucket) DO UPDATE SET "
            + ", ".join(f"{n} = CAST({n} || excluded.{n} AS BLOB)" for n in names),
            [(*key, *(values.get(n, b"") for n in names))
             for key, values in pending.durations.items()])
    for table, column in (("stat_open", "bucket"), ("stat_open_days", "day")):
        rows = [(unit, channel, account, agent, delta) for (name, unit, channel, account,
                                                            agent), delta
                in pending.opens.items() if name == table]
        if rows:
            _upsert_rows(conn, f"INSERT INTO {table} ({column}, channel, account, agent, "
                               "delta) VALUES ", 5,
                         f" ON CONFLICT ({column}, channel, account, agent) DO UPDATE SET "
                         "delta = delta + excluded.delta", rows)
    if pending.writers:
        _upsert_rows(conn, "INSERT OR IGNORE INTO stat_writers (bucket, channel, account, "
                           "customer, prev_any, prev_channel, prev_account) VALUES ", 7, "",
                     pending.writers)


def prefetch(conn: sqlite3.Connection, conversation_ids: list[str],
             writers: Iterable[tuple[str, str, str]], now: datetime) -> None:
    """Read, for an optimistic batch's ingest jobs, the metrics rows they will need: the
    state of their conversations (into the writer cache) and when each customer last wrote
    (kept with the batch's deferred writes, so it lives as long as they do). One query per
    64 rows instead of one per message (jobs/ingest.py prefetch_senders). ``writers``:
    (customer id, channel, account) of the batch's messages; one the writer cache already
    counted in this quarter hour needs no look-up (:meth:`_Writer.wrote`)."""
    states = _cache("states")
    wanted = [c for c in conversation_ids if c not in states]
    for marks, chunk in in_chunks(wanted):
        for row in conn.execute(f"SELECT id, state FROM stat_conversations WHERE id IN ({marks})",
                                chunk):
            states[row[0]] = orjson.loads(row[1])
    bucket, seen = bucket_of(now.timestamp()), _cache("wrote")
    hashes = {h for h, channel, account in ((customer_hash(c), ch, a) for c, ch, a in writers)
              if seen.get((h, channel, account)) != bucket}
    pending = _pending()
    for marks, chunk in in_chunks(h for h in hashes if h not in pending.maxes):
        for h in chunk:
            pending.maxes.setdefault(h, {})
        for row in conn.execute(
                "SELECT customer, channel, account, MAX(bucket) FROM stat_writers "
                f"WHERE customer IN ({marks}) GROUP BY customer, channel, account", chunk):
            pending.maxes[row[0]][(row[1], row[2])] = row[3]


def bucket_of(epoch: float) -> int:
    """The quarter hour holding a unix time."""
    return int(epoch // BUCKET_SECONDS)


def observe(tx: Tx, event_type: str, data: JSON, shares: SharedMessage | None) -> None:
    """Fold one event being emitted into the aggregates (the emitting job's transaction)."""
    if event_type not in _WANTED:
        return
    if event_type == "message.received" and shares is not None:
        data = {**data, "message": shares.message}  # the row's value, not a Fragment
    now = tx.now  # as the event's created_at has it (whole milliseconds): a rebuild agrees
    # Emitted live, ``conversation.opened`` names a conversation created in this job: it
    # has no metrics state to look up (a rebuild, which may replay it, still looks).
    apply_event(tx.conn, event_type, data,
                now.replace(microsecond=now.microsecond // 1000 * 1000).timestamp(),
                deferred=tx.rows is not None, new=event_type == "conversation.opened",
                hours=tx.hours)


def apply_event(conn: sqlite3.Connection, event_type: str, data: JSON, at: float, *,
                deferred: bool = False, new: bool = False,
                hours: HoursOf | None = None) -> None:
    """Fold one event, emitted at unix time ``at``, into the aggregates (``deferred``:
    its inserts wait for :func:`flush_pending`, in the same transaction; ``new``: the
    event's conversation was created with it, so it has no state yet; ``hours``: each
    account's schedule, for the business-hours twins of the durations)."""
    handler = _HANDLERS.get(event_type)
    if handler is not None:
        handler(_Writer(conn, bucket_of(at), _pending() if deferred else None, new=new,
                        hours=hours), data, at)


def note_new_customer(customer_id: str) -> None:
    """A customer created in the open optimistic batch has written nothing before: their
    ``stat_writers`` look-up is answered without a query (see :func:`prefetch`)."""
    _pending().maxes.setdefault(customer_hash(customer_id), {})


class _Writer:
    """Reads and writes the aggregate tables for one event's quarter hour."""

    __slots__ = ("bucket", "conn", "hours", "new", "pending")

    def __init__(self, conn: sqlite3.Connection, bucket: int,
                 pending: _Pending | None = None, *, new: bool = False,
                 hours: HoursOf | None = None) -> None:
        self.conn = conn
        self.bucket = bucket
        self.pending = pending
        self.new = new  # the event's conversation was created with it: no state to read
        self.hours = hours

    def business(self, state: JSON, start: float, end: float) -> float | None:
        """The open time between two unix times under the account's business hours, or
        None when it has none (only called where a duration is measured)."""
        schedule = self.hours(state["channel"], state["account"]) if self.hours else None
        if schedule is None:
            return None
        return schedule.business_seconds(datetime.fromtimestamp(start, UTC),
                                         datetime.fromtimestamp(end, UTC))

    def state(self, conversation_id: str) -> JSON | None:
        if self.new:
            return None
        pending: _Pending | None = getattr(_local, "pending", None)
        if pending is not None and conversation_id in pending.states:
            return dict(pending.states[conversation_id])
        cached: JSON | None = _cache("states").get(conversation_id)
        if cached is not None:
            return dict(cached)
        row = self.conn.execute("SELECT state FROM stat_conversations WHERE id = ?",
                                (conversation_id,)).fetchone()
        if row is None:
            return None
        state: JSON = orjson.loads(row[0])
        return state

    def save(self, conversation_id: str, state: JSON) -> None:
        _cache("states")[conversation_id] = state
        if self.pending is not None:
            self.pending.states[conversation_id] = state
            return
        self.conn.execute("INSERT INTO stat_conversations (id, state) VALUES (?, ?) "
                          "ON CONFLICT (id) DO UPDATE SET state = excluded.state",
                          (conversation_id, orjson.dumps(state).decode()))

    def add(self, state: JSON, agent: str | None, *, bucket: int | None = None,
            durations: dict[str, float] | None = None, **counters: int) -> None:
        """Add to the counters and append the duration samples of one row."""
        key = (state["channel"], state["account"], agent or "",
               self.bucket if bucket is None else bucket)
        if durations:
            samples: list[Sample] = getattr(_local, "samples", None) or []
            samples += [(name, state["channel"], state["account"], max(0.0, value))
                        for name, value in durations.items()]
            _local.samples = samples
            blobs = {name: array("d", [max(0.0, value)]).tobytes()
                     for name, value in durations.items()}
        if durations and self.pending is not None:
            merged = self.pending.durations.setdefault(key, {})
            for name, blob in blobs.items():
                merged[name] = merged.get(name, b"") + blob
        elif durations:
            # || makes text of blobs (byte for byte); the cast makes it a blob again.
            self.conn.execute(
                f"INSERT INTO stat_durations (channel, account, agent, bucket, "
                f"{', '.join(blobs)}) VALUES (?, ?, ?, ?, {', '.join('?' * len(blobs))}) "
                f"ON CONFLICT (channel, account, agent, bucket) DO UPDATE SET "
                + ", ".join(f"{n} = CAST({n} || excluded.{n} AS BLOB)" for n in blobs),
                (*key, *blobs.values()))
        if counters and self.pending is not None:
            summed = self.pending.counters.setdefault(key, {})
            for name, value in counters.items():
                summed[name] = summed.get(name, 0) + value
        elif counters:
            names = list(counters)
            self.conn.execute(
                f"INSERT INTO stat_buckets (channel, account, agent, bucket, "
                f"{', '.join(names)}) VALUES (?, ?, ?, ?, {', '.join('?' * len(names))}) "
                f"ON CONFLICT (channel, account, agent, bucket) DO UPDATE SET "
                + ", ".join(f"{n} = {n} + excluded.{n}" for n in names),
                (*key, *counters.values()))

    def open_delta(self, state: JSON, assignee: str | None, delta: int) -> None:
        """An open conversation more or less, for its assignee: the quarter hour and the
        day's sum."""
        for table, column, unit in (("stat_open", "bucket", self.bucket),
                                    ("stat_open_days", "day", self.bucket // BUCKETS_A_DAY)):
            if self.pending is not None:
                key = (table, unit, state["channel"], state["account"], assignee or "")
                self.pending.opens[key] = self.pending.opens.get(key, 0) + delta
                continue
            self.conn.execute(
                f"INSERT INTO {table} ({column}, channel, account, agent, delta) "
                f"VALUES (?, ?, ?, ?, ?) ON CONFLICT ({column}, channel, account, agent) "
                f"DO UPDATE SET delta = delta + excluded.delta",
                (unit, state["channel"], state["account"], assignee or "", delta))

    def wrote(self, state: JSON, customer_id: str) -> None:
        """A customer message: the customer wrote in this quarter hour (once a row)."""
        customer = customer_hash(customer_id)
        channel, account = state["channel"], state["account"]
        seen = _cache("wrote")
        if seen.get((customer, channel, account)) == self.bucket:
            return  # counted already in this quarter hour
        seen[(customer, channel, account)] = self.bucket
        known = self.pending.maxes.get(customer) if self.pending is not None else None
        if known is not None:  # the batch's prefetch read this customer's rows
            prevs: list[int | None] = [
                max(known.values(), default=None),
                max((b for (c, _a), b in known.items() if c == channel), default=None),
                known.get((channel, account))]
        else:
            row = self.conn.execute(
                "SELECT (SELECT MAX(bucket) FROM stat_writers WHERE customer = ?1), "
                "(SELECT MAX(bucket) FROM stat_writers WHERE customer = ?1 AND channel = ?2),"
                " (SELECT MAX(bucket) FROM stat_writers WHERE customer = ?1 AND channel = ?2 "
                "AND account = ?3)", (customer, channel, account)).fetchone()
            prevs = list(row)
        if self.pending is not None:  # this batch's writes, not in the table yet
            levels = ((customer, None, None), (customer, channel, None),
                      (customer, channel, account))
            for i, level in enumerate(levels):
                earlier, before = self.pending.prev.get(level), prevs[i]
                if earlier is not None and (before is None or earlier > before):
                    prevs[i] = earlier
                self.pending.prev[level] = self.bucket
        if prevs[2] == self.bucket:
            return  # counted already in this quarter hour
        values = (self.bucket, channel, account, customer, *prevs)
        if self.pending is not None:
            self.pending.writers.append(values)
            return
        self.conn.execute(
            "INSERT OR IGNORE INTO stat_writers (bucket, channel, account, customer, prev_any,"
            " prev_channel, prev_account) VALUES (?, ?, ?, ?, ?, ?, ?)", values)

    def take_back(self, state: JSON, counted: JSON) -> None:
        """Undo what a close counted (the conversation reopened)."""
        if self.pending is not None:  # what it reads and changes must be in the tables
            flush_pending(self.conn)
            self.pending = _pending()
        key = (counted["bucket"], state["channel"], state["account"], counted["agent"])
        self.conn.execute(
            "UPDATE stat_buckets SET resolved = resolved - 1, with_reply = with_reply - ?, "
            "one_touch = one_touch - ?, resolved_msgs = resolved_msgs - ? "
            "WHERE bucket = ? AND channel = ? AND account = ? AND agent = ?",
            (int(counted["human"] >= 1), int(counted["human"] == 1), counted["messages"], *key))
        # The resolution and its business twin, each the value the close appended.
        names = [name for name in ("resolution", BUSINESS["resolution"])
                 if counted.get(name) is not None]
        if not names:
            return
        row = self.conn.execute(f"SELECT {', '.join(names)} FROM stat_durations WHERE "
                                "bucket = ? AND channel = ? AND account = ? AND agent = ?",
                                key).fetchone()
        if row is None:
            return
        changed: dict[str, bytes] = {}
        for name, blob in zip(names, row, strict=True):
            samples = array("d")
            samples.frombytes(blob)
            try:
                samples.remove(max(0.0, counted[name]))
            except ValueError:
                continue
            changed[name] = samples.tobytes()
        if changed:
            self.conn.execute(
                f"UPDATE stat_durations SET {', '.join(f'{n} = ?' for n in changed)} WHERE "
                "bucket = ? AND channel = ? AND account = ? AND agent = ?",
                (*changed.values(), *key))


@functools.lru_cache(maxsize=16384)  # once per customer, not per message
def customer_hash(customer_id: str) -> int:
    """A customer id as the signed 64-bit number stat_writers keeps (no id is stored)."""
    digest = hashlib.blake2b(customer_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def _new_state(conversation: JSON) -> JSON:
    return {"channel": conversation["channel"], "account": conversation["account"],
            "first": None, "ours_first": False, "frt": False, "run": None, "human": 0,
            "messages": 0, "replies": [], "close": None, "open": False,
            "assignee": _agent_id(conversation.get("assignee"))}


def _agent_id(agent: Any) -> str | None:
    return agent.get("id") if isinstance(agent, dict) else None


def _load(writer: _Writer, conversation: JSON) -> JSON:
    return writer.state(conversation["id"]) or _new_state(conversation)


def _opened(writer: _Writer, data: JSON, at: float) -> None:
    conversation = data["conversation"]
    state = writer.state(conversation["id"])
    if state is not None:  # replayed twice: counted already
        return
    state = _new_state(conversation)
    state["open"] = True
    writer.add(state, None, created=1)
    writer.open_delta(state, state["assignee"], 1)
    writer.save(conversation["id"], state)


def _message(writer: _Writer, data: JSON, at: float) -> None:
    message = data["message"]
    if message["direction"] == "inbound":
        conversation = data.get("conversation") or {"id": message["conversation_id"],
                                                    "channel": message["channel"],
                                                    "account": message["account"]}
        state = _load(writer, conversation)
        state["messages"] += 1
        if message.get("automatic") is None:  # an auto-reply or a bounce is no customer's
            writer.wrote(state, message["customer_id"])
            if state["first"] is None and not state["ours_first"]:
                state["first"] = at
            if state["run"] is None:
                state["run"] = at
        writer.save(conversation["id"], state)
    elif message["status"] in SENT_STATUSES:
        _sent(writer, message, at)


def _sent(writer: _Writer, message: JSON, at: float) -> None:
    """An outbound message went out: a reply, unless automatic or counted already."""
    conversation = {"id": message["conversation_id"], "channel": message["channel"],
                    "account": message["account"]}
    state = _load(writer, conversation)
    if message["id"] in state["replies"]:
        return
    state["replies"] = [*state["replies"][-(_REMEMBERED_REPLIES - 1):], message["id"]]
    state["messages"] += 1
    automatic = message.get("automatic")
    if automatic is not None:
        if automatic == "survey":
            closer = (state["close"] or {}).get("agent")
            writer.add(state, closer, csat_sent=1)
    else:
        agent = _agent_id(message.get("agent"))
        state["human"] += 1
        durations: dict[str, float] = {}
        starts: dict[str, float] = {}
        if state["first"] is None:
            state["ours_first"] = True
        elif not state["frt"]:
            starts["frt"] = state["first"]
            state["frt"] = True
        if state["run"] is not None:
            starts["response"] = state["run"]
            state["run"] = None
        for name, start in starts.items():
            durations[name] = at - start
            business = writer.business(state, start, at)
            if business is not None:
                durations[BUSINESS[name]] = business
        if durations:
            writer.add(state, agent, durations=durations)
    writer.save(conversation["id"], state)


def _status(writer: _Writer, data: JSON, at: float) -> None:
    message = data["message"]
    if message["direction"] == "outbound" and message["status"] in SENT_STATUSES:
        _sent(writer, message, at)


def _closed(writer: _Writer, data: JSON, at: float) -> None:
    conversation = data["conversation"]
    state = _load(writer, conversation)
    agent = _agent_id(data.get("agent"))
    writer.add(state, agent, closes=1)
    if state["open"]:
        writer.open_delta(state, state["assignee"], -1)
        state["open"] = False
    if state["close"] is not None:  # closed twice without a reopen we saw: count it once
        writer.take_back(state, state["close"])
    resolution: float | None = None
    business: float | None = None
    durations: dict[str, float] = {}
    if state["first"] is not None:
        resolution = durations["resolution"] = at - state["first"]
        business = writer.business(state, state["first"], at)
        if business is not None:
            durations[BUSINESS["resolution"]] = business
    human = state["human"]
    writer.add(state, agent, durations=durations or None, resolved=1,
               with_reply=int(human >= 1), one_touch=int(human == 1),
               resolved_msgs=state["messages"])
    state["close"] = {"bucket": writer.bucket, "agent": agent or "", "resolution": resolution,
                      "human": human, "messages": state["messages"]}
    if business is not None:  # what a reopen takes back (absent: no schedule then)
        state["close"][BUSINESS["resolution"]] = business
    writer.save(conversation["id"], state)


def _reopened(writer: _Writer, data: JSON, at: float) -> None:
    conversation = data["conversation"]
    state = _load(writer, conversation)
    if state["close"] is not None:
        writer.take_back(state, state["close"])
        state["close"] = None
    if not state["open"]:
        state["open"] = True
        writer.open_delta(state, state["assignee"], 1)
    writer.save(conversation["id"], state)


def _updated(writer: _Writer, data: JSON, at: float) -> None:
    changes = data.get("changes") or {}
    conversation = data["conversation"]
    if "assignee" not in changes and "csat" not in changes:
        return
    state = _load(writer, conversation)
    if "assignee" in changes:
        new = _agent_id(changes["assignee"].get("to"))
        if state["open"] and new != state["assignee"]:
            writer.open_delta(state, state["assignee"], -1)
            writer.open_delta(state, new, 1)
        state["assignee"] = new
    answer = (changes.get("csat") or {}).get("to")
    if isinstance(answer, dict) and isinstance(answer.get("score"), int):
        score = answer["score"]
        agent = _agent_id(answer.get("agent")) or (state["close"] or {}).get("agent")
        writer.add(state, agent, csat_answers=1, csat_sum=score, csat_good=int(score >= 4))
    writer.save(conversation["id"], state)


def _erased(writer: _Writer, data: JSON, at: float) -> None:
    """An erased customer's hash becomes a random number in the writers table, so nothing
    links the rows to the id any more and each still counts once."""
    customer_id = data.get("customer_id")
    if customer_id:
        writer.conn.execute("UPDATE stat_writers SET customer = ? WHERE customer = ?",
                            (secrets.randbits(63), customer_hash(customer_id)))


_HANDLERS: dict[str, Callable[[_Writer, JSON, float], None]] = {
    "conversation.opened": _opened,
    "conversation.closed": _closed,
    "conversation.reopened": _reopened,
    "conversation.updated": _updated,
    "message.received": _message,
    "message.status": _status,
    "customer.erased": _erased,
}


def clear(conn: sqlite3.Connection) -> None:
    """Empty the aggregates (before a rebuild), and this thread's caches of them."""
    drop_samples()
    for table in ("stat_buckets", "stat_durations", "stat_open", "stat_open_days",
                  "stat_writers", "stat_conversations"):
        conn.execute(f"DELETE FROM {table}")


def rebuild(conn: sqlite3.Connection, *, chunk: int = 20_000,
            progress: Callable[[int, int], None] | None = None,
            hours: HoursOf | None = None) -> int:
    """Recompute the aggregates from the stored events, oldest first, in one transaction
    per chunk; ``progress(done, total)`` after each. Returns how many events were read.
    ``hours``: the accounts' schedules now, for the business-hours durations."""
    from gateway.store import compact
    from gateway.store.feed import EVENT_BODY_COLUMNS, EVENT_BODY_JOIN, event_body

    for dictionary_id, data in conn.execute("SELECT id, data FROM codec_dictionaries"):
        compact.register(dictionary_id, bytes(data))  # the stored JSON is compressed
    reader = conn.cursor()
    reader.row_factory = sqlite3.Row
    conn.execute("BEGIN IMMEDIATE")
    clear(conn)
    conn.execute("COMMIT")
    total: int = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0]
    after = done = 0
    wanted = tuple(sorted(_WANTED))
    marks = ", ".join("?" * len(wanted))
    while True:
        rows = reader.execute(
            f"SELECT e.seq AS seq, {EVENT_BODY_COLUMNS} FROM events e {EVENT_BODY_JOIN} "
            f"WHERE e.seq > ? AND e.type IN ({marks}) ORDER BY e.seq LIMIT ?",
            (after, *wanted, chunk)).fetchall()
        if not rows:
            break
        conn.execute("BEGIN IMMEDIATE")
        for row in rows:
            event = orjson.loads(event_body(row))
            data = event.get("data") or {}
            if not data.get("erased"):
                apply_event(conn, event["type"], data, _epoch(event["created_at"]),
                            hours=hours)
        conn.execute("COMMIT")
        after = rows[-1]["seq"]
        done += len(rows)
        if progress is not None:
            progress(after, total)
    return done


def _epoch(value: str) -> float:
    parsed: datetime = parse_iso(value)
    return parsed.timestamp()

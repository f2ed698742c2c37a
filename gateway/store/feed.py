"""The feed's tail: the newest durable events kept in memory, and the feed's table read."""

from __future__ import annotations

import bisect
import collections
import itertools
import sqlite3
import threading

from gateway.store import compact
from gateway.store.base import Page


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
        # Per batch: seqs, one bytes object with every body, each body's end offset: one
        # allocation a batch, not one an event, so the heap does not fragment
        # (docs/benchmarks.md, third round).
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



# What serving a stored event reads (alias ``e`` for events): its stored body and, when the
# body shares a message row's JSON (Tx.emit), where that goes and the JSON itself: the
# event's own copy once the row changed, else the row's.
EVENT_BODY_COLUMNS = ("e.body AS body, e.message_at AS message_at, "
                      "COALESCE(e.message_snapshot, m.data) AS message_data")
EVENT_BODY_JOIN = ("LEFT JOIN messages m ON e.message_snapshot IS NULL "
                   "AND m.id = e.message_ref")


def event_body(row: sqlite3.Row) -> bytes:
    """An event's body as served (the bytes it was emitted with), from EVENT_BODY_COLUMNS."""
    body = compact.unpack_bytes(row["body"])
    at = row["message_at"]
    if at is None:
        return body
    data = row["message_data"]
    message = compact.unpack_bytes(data) if data is not None else b"null"
    return body[:at] + message + body[at:]


def read_events(conn: sqlite3.Connection, after: int, head: int, limit: int) -> Page:
    """Up to ``limit`` events with ``after < seq <= head`` from the table, oldest first.

    ``head`` is the newest durable seq: a consumer never sees an event a crash could undo.
    """
    rows = conn.execute(f"SELECT e.seq AS seq, {EVENT_BODY_COLUMNS} FROM events e "
                        f"{EVENT_BODY_JOIN} WHERE e.seq > ? AND e.seq <= ? "
                        "ORDER BY e.seq LIMIT ?", (after, head, limit)).fetchall()
    return Page([event_body(r) for r in rows], rows[-1]["seq"] if rows else after,
                [r["seq"] for r in rows])

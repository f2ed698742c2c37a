"""``omnirelay report --rebuild`` on PostgreSQL: the metrics' aggregates from the events.

A database that had events before migration 0008 has no aggregates for them; the rebuild
folds every stored event in with the same function as the live writes
(``gateway/store/jobs/stats.py``). Several instances may be running: the rebuild holds
the ``feed_head`` row lock for its one transaction, so every instance's writes that emit
events (each of which also folds itself in) wait until it commits, and no event is
counted twice or missed. Run it at a quiet time on a large store.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import orjson

from gateway.store import compact
from gateway.store.feed import EVENT_BODY_COLUMNS, EVENT_BODY_JOIN, event_body
from gateway.store.jobs.stats import _WANTED, HoursOf, _epoch, apply_event, clear
from gateway.store.postgres.conn import Connection


def rebuild(conn: Connection, *, chunk: int = 20_000,
            progress: Callable[[int, int], None] | None = None,
            hours: HoursOf | None = None) -> int:
    """Recompute the aggregates from the stored events, oldest first, in one transaction;
    ``progress(seq, head)`` after each chunk. Returns how many events were read.
    ``hours``: the accounts' schedules now, for the business-hours durations."""
    for dictionary_id, data in conn.execute("SELECT id, data FROM codec_dictionaries"):
        compact.register(dictionary_id, bytes(data))  # the stored JSON is compressed
    wanted = tuple(sorted(_WANTED))
    marks = ", ".join("?" * len(wanted))
    sqlite_surface = cast(Any, conn)  # the aggregates' functions speak sqlite3's surface
    conn.execute("BEGIN")
    try:
        row = conn.execute("SELECT seq FROM feed_head FOR UPDATE").fetchone()
        head = int(row[0]) if row is not None else 0
        clear(sqlite_surface)
        after = done = 0
        while True:
            rows = conn.execute(
                f"SELECT e.seq AS seq, {EVENT_BODY_COLUMNS} FROM events e {EVENT_BODY_JOIN} "
                f"WHERE e.seq > ? AND e.seq <= ? AND e.type IN ({marks}) ORDER BY e.seq "
                f"LIMIT ?", (after, head, *wanted, chunk)).fetchall()
            if not rows:
                break
            for event_row in rows:
                event = orjson.loads(event_body(cast(Any, event_row)))
                data = event.get("data") or {}
                if not data.get("erased"):
                    apply_event(sqlite_surface, event["type"], data,
                                _epoch(event["created_at"]), hours=hours)
            after = int(rows[-1]["seq"])
            done += len(rows)
            if progress is not None:
                progress(after, head)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return done

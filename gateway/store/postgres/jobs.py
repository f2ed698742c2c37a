"""The write jobs and reads that differ on PostgreSQL: claims shared by several instances.

A claim is a lease, not forever: a claimed row (outbox, webhook delivery, attachment fetch)
is ``inflight`` until ``lease_until`` (``[store] claim_lease_seconds``, 45 s by default:
longer than any send or delivery takes, short enough that a dead instance's rows go out
within a minute); when its instance dies the lease runs out and any
instance claims it again. Claims lock their rows ``FOR UPDATE SKIP LOCKED``, so instances
claiming at the same moment take different rows without waiting for each other. Every
other job is the SQLite backend's own (``gateway/store/jobs/``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

from gateway.store.base import Delivery, OutboxItem, PendingFetch
from gateway.store.feed import EVENT_BODY_COLUMNS, EVENT_BODY_JOIN, event_body
from gateway.store.jobs.outbound import outbox_item
from gateway.store.jobs.tx import Tx
from gateway.store.postgres.conn import Connection

_DUE = ("((x.state = 'pending' AND x.next_attempt_at <= ?) "
        "OR (x.state = 'inflight' AND x.lease_until < ?))")


def claim_outbox(tx: Tx, limit: int, now: float, lease: float) -> list[OutboxItem]:
    """Claim due outbox rows (and rows of expired leases), at most one per conversation."""
    rows = tx.conn.execute(
        "SELECT x.seq, x.message_id, x.attempts, x.created_at FROM outbox x "
        f"WHERE {_DUE} AND NOT EXISTS ("
        "  SELECT 1 FROM outbox p WHERE p.conversation_id = x.conversation_id "
        "  AND p.state IN ('pending', 'inflight') AND p.seq < x.seq) "
        "ORDER BY x.next_attempt_at, x.seq LIMIT ? FOR UPDATE OF x SKIP LOCKED",
        (now, now, limit)).fetchall()
    items = []
    for row in rows:
        tx.conn.execute("UPDATE outbox SET state = 'inflight', attempts = attempts + 1, "
                        "lease_until = ? WHERE seq = ?", (now + lease, row["seq"]))
        item = outbox_item(tx, row)
        if item is not None:
            items.append(item)
    return items


def recover_inflight(tx: Tx) -> int:
    """At start: only rows whose lease ran out go back (the others are another running
    instance's sends)."""
    return tx.conn.execute("UPDATE outbox SET state = 'pending' WHERE state = 'inflight' "
                           "AND lease_until < ?", (time.time(),)).rowcount


def fan_out(tx: Tx, subscription: str, wants: Callable[[str], bool], limit: int,
            now: float) -> int:
    """Events → delivery rows; the cursor row is locked, so two instances fanning out the
    same subscription never add a delivery twice (a done one is deleted: re-adding it would
    deliver it again)."""
    row = tx.one("SELECT seq FROM webhook_cursors WHERE subscription = ? FOR UPDATE",
                 (subscription,))
    if row is None:
        head = tx.one("SELECT seq FROM feed_head")
        start = int(head[0]) if head else 0
        tx.conn.execute("INSERT INTO webhook_cursors VALUES (?, ?) ON CONFLICT DO NOTHING",
                        (subscription, start))
        return 0
    events = tx.conn.execute("SELECT seq, type, conversation_id, customer_id FROM events "
                             "WHERE seq > ? ORDER BY seq LIMIT ?", (row["seq"], limit)).fetchall()
    added = 0
    for event in events:
        if wants(event["type"]):
            key = event["conversation_id"] or event["customer_id"] or "-"
            added += tx.conn.execute(
                "INSERT INTO webhook_deliveries (subscription, seq, ordering_key, state, "
                "next_attempt_at, created_at) VALUES (?, ?, ?, 'pending', ?, ?) "
                "ON CONFLICT DO NOTHING", (subscription, event["seq"], key, now, now)).rowcount
    if events:
        tx.conn.execute("UPDATE webhook_cursors SET seq = ? WHERE subscription = ?",
                        (events[-1]["seq"], subscription))
    return added


def claim_deliveries(tx: Tx, subscription: str, limit: int, now: float,
                     lease: float) -> list[Delivery]:
    """Claim due deliveries (and expired leases), only the oldest open one per key."""
    ids = [r[0] for r in tx.conn.execute(
        "SELECT x.id FROM webhook_deliveries x "
        f"WHERE x.subscription = ? AND {_DUE} "
        "AND NOT EXISTS (SELECT 1 FROM webhook_deliveries p WHERE p.subscription = x.subscription"
        "  AND p.ordering_key = x.ordering_key AND p.state IN ('pending', 'inflight') "
        "  AND p.seq < x.seq) "
        "ORDER BY x.seq LIMIT ? FOR UPDATE OF x SKIP LOCKED",
        (subscription, now, now, limit)).fetchall()]
    if not ids:
        return []
    marks = ",".join("?" * len(ids))
    tx.conn.execute(f"UPDATE webhook_deliveries SET state = 'inflight', "
                    f"attempts = attempts + 1, lease_until = ? WHERE id IN ({marks})",
                    (now + lease, *ids))
    rows = tx.conn.execute(
        "SELECT d.id, d.seq, d.ordering_key, d.attempts, d.created_at, e.id AS event_id, "
        f"{EVENT_BODY_COLUMNS} FROM webhook_deliveries d JOIN events e ON e.seq = d.seq "
        f"{EVENT_BODY_JOIN} WHERE d.id IN ({marks}) ORDER BY d.seq", ids).fetchall()
    return [Delivery(r["id"], subscription, r["seq"], r["ordering_key"], r["attempts"],
                     event_body(r), r["event_id"],
                     datetime.fromtimestamp(r["created_at"], UTC)) for r in rows]


def recover_deliveries(tx: Tx) -> None:
    """At start: deliveries whose lease ran out go back to pending."""
    tx.conn.execute("UPDATE webhook_deliveries SET state = 'pending' WHERE state = 'inflight' "
                    "AND lease_until < ?", (time.time(),))


def claim_fetches(tx: Tx, limit: int, now: float, lease: float) -> list[PendingFetch]:
    """Claim due attachment fetches (and expired leases), oldest due first."""
    rows = tx.conn.execute(
        f"SELECT x.* FROM pending_fetches x WHERE {_DUE} "
        "ORDER BY x.next_attempt_at, x.id LIMIT ? FOR UPDATE OF x SKIP LOCKED",
        (now, now, limit)).fetchall()
    if not rows:
        return []
    ids = [row["id"] for row in rows]
    tx.conn.execute(f"UPDATE pending_fetches SET state = 'inflight', attempts = attempts + 1, "
                    f"lease_until = ? WHERE id IN ({','.join('?' * len(ids))})",
                    (now + lease, *ids))
    return [PendingFetch(row["id"], row["message_id"], row["source"], row["url"],
                         row["filename"], row["content_type"], row["attempts"] + 1,
                         row["created_at"]) for row in rows]


def recover_fetches(tx: Tx) -> int:
    """After a restart of the fetcher: fetches whose lease ran out go back to pending."""
    return tx.conn.execute("UPDATE pending_fetches SET state = 'pending' WHERE state = "
                           "'inflight' AND lease_until < ?", (time.time(),)).rowcount


# ---------------------------------------------------------------- reads: due times count leases


def next_outbox_due(conn: Connection) -> float | None:
    """When the earliest outbox row is due: pending rows, and leases that run out."""
    row = conn.execute("SELECT LEAST(MIN(next_attempt_at) FILTER (WHERE state = 'pending'), "
                       "MIN(lease_until) FILTER (WHERE state = 'inflight')) FROM outbox "
                       "WHERE state IN ('pending', 'inflight')").fetchone()
    return None if row is None else row[0]


def next_delivery_due(conn: Connection, subscription: str) -> float | None:
    """When the subscription's earliest delivery is due, leases counted."""
    row = conn.execute("SELECT LEAST(MIN(next_attempt_at) FILTER (WHERE state = 'pending'), "
                       "MIN(lease_until) FILTER (WHERE state = 'inflight')) "
                       "FROM webhook_deliveries WHERE subscription = ? "
                       "AND state IN ('pending', 'inflight')", (subscription,)).fetchone()
    return None if row is None else row[0]


def next_fetch_due(conn: Connection) -> float | None:
    """When the earliest attachment fetch is due, leases counted."""
    row = conn.execute("SELECT LEAST(MIN(next_attempt_at) FILTER (WHERE state = 'pending'), "
                       "MIN(lease_until) FILTER (WHERE state = 'inflight')) "
                       "FROM pending_fetches").fetchone()
    return None if row is None else row[0]

"""Write jobs of webhook delivery: fan-out of events to rows, claims, retries, replays."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from gateway.store.base import Delivery
from gateway.store.feed import EVENT_BODY_COLUMNS, EVENT_BODY_JOIN, event_body
from gateway.store.jobs.tx import Tx


def _fan_out(tx: Tx, subscription: str, wants: Callable[[str], bool], limit: int,
             now: float) -> int:
    row = tx.one("SELECT seq FROM webhook_cursors WHERE subscription = ?", (subscription,))
    if row is None:
        # A new subscription starts with events from now on, not the whole history.
        start = tx.engine.seq
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
        "SELECT d.id, d.seq, d.ordering_key, d.attempts, d.created_at, e.id AS event_id, "
        f"{EVENT_BODY_COLUMNS} FROM webhook_deliveries d JOIN events e ON e.seq = d.seq "
        f"{EVENT_BODY_JOIN} "
        "WHERE d.subscription = ? AND d.state = 'pending' AND d.next_attempt_at <= ? "
        "AND NOT EXISTS (SELECT 1 FROM webhook_deliveries p WHERE p.subscription = d.subscription"
        "  AND p.ordering_key = d.ordering_key AND p.state IN ('pending', 'inflight') "
        "  AND p.seq < d.seq) "
        "ORDER BY d.seq LIMIT ?", (subscription, now, limit)).fetchall()
    for row in rows:
        tx.conn.execute("UPDATE webhook_deliveries SET state = 'inflight', "
                        "attempts = attempts + 1 WHERE id = ?", (row["id"],))
    return [Delivery(r["id"], subscription, r["seq"], r["ordering_key"], r["attempts"] + 1,
                     event_body(r), r["event_id"],
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


def _delivery_done(tx: Tx, delivery_id: int) -> None:
    tx.conn.execute("DELETE FROM webhook_deliveries WHERE id = ?", (delivery_id,))


def _recover_deliveries(tx: Tx) -> None:
    tx.conn.execute("UPDATE webhook_deliveries SET state = 'pending' WHERE state = 'inflight'")

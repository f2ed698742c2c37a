"""The store's reads: plain functions ``query(conn, *args)`` run on a reader thread."""

from __future__ import annotations

import sqlite3
from typing import Any

from gateway.errors import NotFound
from gateway.store import compact
from gateway.store.base import JSON, FetchBacklog, StoredAttachment
from gateway.store.feed import EVENT_BODY_COLUMNS, EVENT_BODY_JOIN, event_body
from gateway.store.records import (
    _conversation_json,
    _customer_json,
    _loads,
    _resolve_customer_id,
)


def get_message(conn: sqlite3.Connection, message_id: str) -> JSON:
    row = conn.execute("SELECT data FROM messages WHERE id = ?", (message_id,)).fetchone()
    if row is None:
        raise NotFound(f"message {message_id} not found")
    message: JSON = _loads(row["data"])
    return message


def list_messages(conn: sqlite3.Connection, conversation_id: str, after: str | None,
                  limit: int) -> list[JSON]:
    if conn.execute("SELECT 1 FROM conversations WHERE id = ?",
                    (conversation_id,)).fetchone() is None:
        raise NotFound(f"conversation {conversation_id} not found")
    rows = conn.execute(
        "SELECT data FROM messages WHERE conversation_id = ? AND id > ? "
        "ORDER BY id LIMIT ?", (conversation_id, after or "", limit)).fetchall()
    return [_loads(r["data"]) for r in rows]


def get_conversation(conn: sqlite3.Connection, conversation_id: str) -> JSON:
    row = conn.execute("SELECT * FROM conversations WHERE id = ?",
                       (conversation_id,)).fetchone()
    if row is None:
        raise NotFound(f"conversation {conversation_id} not found")
    return _conversation_json(row)


def list_conversations(conn: sqlite3.Connection, status: str | None, customer_id: str | None,
                       after: str | None, limit: int, *, channel: str | None = None,
                       account: str | None = None, tag: str | None = None,
                       queue: str | None = None, assignee: str | None = None,
                       updated_since: str | None = None) -> list[JSON]:
    """Conversations in id order after the cursor, every filter given (each has an index:
    migration 0008; ``tag`` goes through conversation_tags)."""
    sql = "SELECT c.* FROM conversations c WHERE c.id > ?"
    params: list[Any] = [after or ""]
    for column, value in (("status", status), ("channel", channel), ("account", account),
                          ("queue", queue), ("assignee_id", assignee)):
        if value is not None:
            sql += f" AND c.{column} = ?"
            params.append(value)
    if customer_id:
        cid = _resolve_customer_id(conn, customer_id)
        sql += " AND c.customer_id = ?"
        params.append(cid)
    if tag is not None:
        sql += (" AND c.id IN (SELECT conversation_id FROM conversation_tags WHERE tag = ?"
                " AND conversation_id > ?)")
        params += [tag, after or ""]
    if updated_since is not None:
        # Every change of a conversation (a message, a status, a field) is an event naming
        # it: the events from the first one at that time on, a range of the feed's key.
        sql += (" AND c.id IN (SELECT conversation_id FROM events WHERE seq >= ?"
                " AND conversation_id > ?)")
        params += [_first_seq_at(conn, updated_since), after or ""]
    sql += " ORDER BY c.id LIMIT ?"
    params.append(limit)
    return [_conversation_json(r) for r in conn.execute(sql, params).fetchall()]


def _first_seq_at(conn: sqlite3.Connection, moment: str) -> int:
    """The seq of the first event created at or after ``moment`` (past the end: none).

    Events are numbered in commit order with the writer's clock, so created_at grows with
    seq: a binary search over the key finds it in a few lookups, without an index on time.
    """
    low: int = conn.execute("SELECT COALESCE(MIN(seq), 1) FROM events").fetchone()[0]
    high: int = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0] + 1
    while low < high:
        middle = (low + high) // 2
        row = conn.execute("SELECT seq, created_at FROM events WHERE seq >= ? ORDER BY seq "
                           "LIMIT 1", (middle,)).fetchone()
        if row is None or row[1] >= moment:
            high = middle
        else:
            low = row[0] + 1
    return low


def get_customer(conn: sqlite3.Connection, customer_id: str) -> JSON:
    cid = _resolve_customer_id(conn, customer_id)
    customer = _customer_json(conn, cid, with_conversations=True)
    if customer is None:
        raise NotFound(f"customer {customer_id} not found")
    return customer


def find_customer(conn: sqlite3.Connection, kind: str, address: str) -> JSON:
    row = conn.execute("SELECT customer_id FROM identities WHERE kind = ? AND address = ?",
                       (kind, address)).fetchone()
    if row is None:
        raise NotFound(f"no customer has identity {kind}:{address}")
    customer = _customer_json(conn, _resolve_customer_id(conn, row["customer_id"]),
                              with_conversations=True)
    assert customer is not None
    return customer


def get_attachment(conn: sqlite3.Connection, attachment_id: str) -> StoredAttachment:
    row = conn.execute("SELECT * FROM attachments WHERE id = ?", (attachment_id,)).fetchone()
    if row is None:
        raise NotFound(f"attachment {attachment_id} not found")
    return StoredAttachment(row["id"], row["filename"], row["content_type"],
                            row["size"], row["sha256"])


def get_raw(conn: sqlite3.Connection, message_id: str) -> tuple[str, bytes] | None:
    row = conn.execute("SELECT content_type, body FROM raw_payloads WHERE message_id = ?",
                       (message_id,)).fetchone()
    return None if row is None else (row["content_type"], compact.unpack_bytes(row["body"]))


def next_outbox_due(conn: sqlite3.Connection) -> float | None:
    row = conn.execute("SELECT MIN(next_attempt_at) FROM outbox "
                       "WHERE state = 'pending'").fetchone()
    due: float | None = row[0]
    return due


def outbox_depth(conn: sqlite3.Connection) -> dict[str, int]:
    rows = conn.execute("SELECT state, COUNT(*) FROM outbox "
                        "WHERE state IN ('pending', 'inflight') GROUP BY state")
    return {r[0]: r[1] for r in rows}


def list_dead_letters(conn: sqlite3.Connection, subscription: str | None,
                      limit: int) -> list[JSON]:
    sql = (f"SELECT d.*, {EVENT_BODY_COLUMNS} FROM webhook_deliveries d JOIN events e "
           f"ON e.seq = d.seq {EVENT_BODY_JOIN} WHERE d.state = 'dead'")
    params: list[Any] = []
    if subscription:
        sql += " AND d.subscription = ?"
        params.append(subscription)
    sql += " ORDER BY d.id LIMIT ?"
    params.append(limit)
    return [{"id": r["id"], "subscription": r["subscription"], "attempts": r["attempts"],
             "last_error": r["last_error"], "event": _loads(event_body(r))}
            for r in conn.execute(sql, params)]


def next_delivery_due(conn: sqlite3.Connection, subscription: str) -> float | None:
    due: float | None = conn.execute("SELECT MIN(next_attempt_at) FROM webhook_deliveries "
                                     "WHERE subscription = ? AND state = 'pending'",
                                     (subscription,)).fetchone()[0]
    return due


def opted_out(conn: sqlite3.Connection, kind: str, address: str, channel: str,
              account: str) -> bool:
    """Whether the identity opted out of what ``account`` sends on ``channel``."""
    row = conn.execute("SELECT opt_outs FROM identities WHERE kind = ? AND address = ?",
                       (kind, address)).fetchone()
    return bool(row and row["opt_outs"]) and any(
        (o["channel"], o["account"]) == (channel, account) for o in _loads(row["opt_outs"]))


def get_checkpoint(conn: sqlite3.Connection, key: str) -> str | None:
    row = conn.execute("SELECT value FROM checkpoints WHERE key = ?", (key,)).fetchone()
    return None if row is None else row["value"]


def next_fetch_due(conn: sqlite3.Connection) -> float | None:
    """When the earliest pending attachment fetch is due (None: nothing pending)."""
    due: float | None = conn.execute("SELECT MIN(next_attempt_at) FROM pending_fetches "
                                     "WHERE state = 'pending'").fetchone()[0]
    return due


def fetch_backlog(conn: sqlite3.Connection) -> dict[str, FetchBacklog]:
    """Fetches not yet done by media source, with the error of the latest failed attempt."""
    backlog = {}
    for row in conn.execute("SELECT source, COUNT(*) AS pending, MAX(id) AS newest "
                            "FROM pending_fetches GROUP BY source"):
        error = conn.execute("SELECT last_error FROM pending_fetches WHERE source = ? AND "
                             "last_error IS NOT NULL ORDER BY next_attempt_at DESC LIMIT 1",
                             (row["source"],)).fetchone()
        backlog[row["source"]] = FetchBacklog(row["pending"], error[0] if error else None)
    return backlog

"""Write jobs of attachments fetched after the commit: queue, claim, done, retry, failed.

A fetch row is inserted by the ingest job of its message (same transaction: a message
acknowledged to its provider never loses its pending files) and deleted by the job that
adds the attachment or records its failure (same transaction as the ``message.updated``
event: a fetch that completes twice adds the attachment once).
"""

from __future__ import annotations

import time

from gateway.ids import new_id
from gateway.store.base import JSON, PendingFetch, StoredAttachment
from gateway.store.jobs.tx import Tx, _save_message
from gateway.store.records import _loads
from normalizer.model import RemoteAttachment


def _queue_fetches(tx: Tx, message_id: str, remote: list[RemoteAttachment]) -> None:
    """In the ingest job: one pending fetch per remote attachment, due at once."""
    now = time.time()
    tx.conn.executemany(
        "INSERT INTO pending_fetches (message_id, source, url, filename, content_type, "
        "next_attempt_at, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        [(message_id, ref.source, ref.url, ref.filename, ref.content_type, now, now)
         for ref in remote])


def _claim_fetches(tx: Tx, limit: int, now: float) -> list[PendingFetch]:
    rows = tx.conn.execute(
        "SELECT * FROM pending_fetches WHERE state = 'pending' AND next_attempt_at <= ? "
        "ORDER BY next_attempt_at, id LIMIT ?", (now, limit)).fetchall()
    if not rows:
        return []
    ids = [row["id"] for row in rows]
    tx.conn.execute(f"UPDATE pending_fetches SET state = 'inflight', attempts = attempts + 1 "
                    f"WHERE id IN ({','.join('?' * len(ids))})", ids)
    return [PendingFetch(row["id"], row["message_id"], row["source"], row["url"],
                         row["filename"], row["content_type"], row["attempts"] + 1,
                         row["created_at"]) for row in rows]


def _fetch_done(tx: Tx, fetch_id: int, attachment: StoredAttachment) -> JSON | None:
    """Add the attachment to its message and announce it; None when the fetch is already
    done (its row is gone) or its message was erased meanwhile."""
    message = _finish(tx, fetch_id)
    if message is None:
        return None
    tx.conn.execute(
        "INSERT INTO attachments (id, message_id, filename, content_type, size, sha256, "
        "created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (attachment.id, message["id"], attachment.filename, attachment.content_type,
         attachment.size, attachment.sha256, tx.now_iso))
    message["attachments"].append(attachment.to_json())
    return _announce(tx, message)


def _fetch_failed(tx: Tx, fetch_id: int, filename: str, content_type: str,
                  error: JSON) -> JSON | None:
    """Give a fetch up: the message shows the attachment with its ``error`` and no bytes
    (``url``, ``size``, ``sha256`` null), so the help desk can tell the customer."""
    message = _finish(tx, fetch_id)
    if message is None:
        return None
    message["attachments"].append({
        "id": new_id("att"), "filename": filename, "content_type": content_type,
        "size": None, "sha256": None, "url": None, "error": error})
    return _announce(tx, message)


def _fetch_retry(tx: Tx, fetch_id: int, next_attempt_at: float, error: str) -> None:
    tx.conn.execute("UPDATE pending_fetches SET state = 'pending', next_attempt_at = ?, "
                    "last_error = ? WHERE id = ?", (next_attempt_at, error, fetch_id))


def _recover_fetches(tx: Tx) -> int:
    return tx.conn.execute("UPDATE pending_fetches SET state = 'pending' "
                           "WHERE state = 'inflight'").rowcount


def _finish(tx: Tx, fetch_id: int) -> JSON | None:
    """Delete the fetch row; return its message (None: no such row, or no message)."""
    row = tx.one("SELECT message_id FROM pending_fetches WHERE id = ?", (fetch_id,))
    if row is None:
        return None
    tx.conn.execute("DELETE FROM pending_fetches WHERE id = ?", (fetch_id,))
    stored = tx.one("SELECT data FROM messages WHERE id = ?", (row["message_id"],))
    return None if stored is None else _loads(stored["data"])


def _announce(tx: Tx, message: JSON) -> JSON:
    _save_message(tx, message)
    tx.emit("message.updated", {"message": message, "changed": ["attachments"]},
            conversation_id=message["conversation_id"], customer_id=message["customer_id"])
    return message

"""Write jobs that remove data: erasure of a customer, retention of raw payloads and files."""

from __future__ import annotations

import orjson

from gateway.store import compact
from gateway.store.base import JSON
from gateway.store.jobs.tx import Tx
from gateway.store.records import _loads, _resolve_customer_id


def _erase_customer(tx: Tx, customer_id: str) -> JSON:
    cid = _resolve_customer_id(tx.conn, customer_id)
    tx.cache.clear()
    if tx.emitted is not None:
        tx.emitted.rewritten = True  # stored event bodies change: the feed's tail is stale
    ids = [cid] + [r[0] for r in tx.conn.execute(
        "SELECT id FROM customers WHERE merged_into = ?", (cid,))]
    marks = ",".join("?" * len(ids))
    # Their 1:1 conversations go whole; in a group chat only their own posts go (the
    # group's conversation is everyone's, whoever opened it).
    conversations = [r[0] for r in tx.conn.execute(
        f"SELECT id FROM conversations WHERE customer_id IN ({marks}) AND group_id IS NULL",
        ids)]
    messages = [r[0] for r in tx.conn.execute(
        f"SELECT m.id FROM messages m JOIN conversations c ON c.id = m.conversation_id "
        f"WHERE c.customer_id IN ({marks}) AND c.group_id IS NULL", ids)]
    messages += [r[0] for r in tx.conn.execute(
        f"SELECT m.id FROM messages m JOIN conversations c ON c.id = m.conversation_id "
        f"WHERE c.group_id IS NOT NULL AND m.customer_id IN ({marks})", ids)]
    blobs: list[str] = []
    for chunk_start in range(0, len(messages), 500):
        chunk = messages[chunk_start:chunk_start + 500]
        m = ",".join("?" * len(chunk))
        blobs += [r[0] for r in tx.conn.execute(
            f"SELECT sha256 FROM attachments WHERE message_id IN ({m})", chunk)]
        tx.conn.execute(f"DELETE FROM attachments WHERE message_id IN ({m})", chunk)
        tx.conn.execute(f"DELETE FROM raw_payloads WHERE message_id IN ({m})", chunk)
        tx.conn.execute(f"DELETE FROM outbox WHERE message_id IN ({m})", chunk)
        tx.conn.execute(f"DELETE FROM pending_fetches WHERE message_id IN ({m})", chunk)
        # A kept Idempotency-Key response is the reply itself: recipient, name, text.
        tx.conn.execute(f"DELETE FROM idempotency_keys WHERE json_extract(response, '$.id') "
                        f"IN ({m})", chunk)
        tx.conn.execute(f"DELETE FROM messages WHERE id IN ({m})", chunk)
    # A group they opened passes to its earliest remaining poster; with no post left, it goes.
    tx.conn.execute(f"DELETE FROM conversations WHERE group_id IS NOT NULL AND customer_id IN "
                    f"({marks}) AND NOT EXISTS (SELECT 1 FROM messages m "
                    f"WHERE m.conversation_id = conversations.id)", ids)
    tx.conn.execute(f"UPDATE conversations SET customer_id = (SELECT m.customer_id FROM "
                    f"messages m WHERE m.conversation_id = conversations.id ORDER BY m.id "
                    f"LIMIT 1) WHERE group_id IS NOT NULL AND customer_id IN ({marks})", ids)
    # Events keep their seq (cursors stay valid) but lose everything personal. One scan of
    # the events table (no per-customer index: it would cost every commit a random page).
    c = ",".join("?" * len(conversations))
    tx.conn.execute(  # bodies are BLOBs: the feed serves them as bytes
        f"UPDATE events SET body = CAST(json_object('id', id, 'seq', CAST(seq AS TEXT), "
        f"'type', type, 'created_at', created_at, 'data', json_object('erased', json('true'))) "
        f"AS BLOB), message_ref = NULL, message_at = NULL, message_snapshot = NULL "
        f"WHERE customer_id IN ({marks})"
        + (f" OR conversation_id IN ({c})" if conversations else ""), [*ids, *conversations])
    # After the events: they no longer name the messages, so the rows go without the
    # migration 0007 triggers copying them into events.
    tx.conn.execute(f"DELETE FROM messages WHERE conversation_id IN (SELECT id FROM "
                    f"conversations WHERE customer_id IN ({marks}))", ids)
    if conversations:
        tx.conn.execute(f"DELETE FROM conversations WHERE id IN ({c})", conversations)
    tx.conn.execute(f"DELETE FROM identities WHERE customer_id IN ({marks})", ids)
    tx.conn.execute(f"DELETE FROM customers WHERE id IN ({marks})", ids)
    tx.emit("customer.erased", {"customer_id": cid, "erased_ids": ids})
    # _erased_ids: for what holds them in memory (Gateway.customers_erased), not answered.
    return {"customer_id": cid, "conversations": len(conversations), "messages": len(messages),
            "_blobs": sorted(set(blobs)), "_erased_ids": ids}


def _purge(tx: Tx, cutoff: str) -> JSON:
    raw = tx.conn.execute("DELETE FROM raw_payloads WHERE created_at < ?", (cutoff,)).rowcount
    rows = tx.conn.execute("SELECT id, message_id, sha256 FROM attachments "
                           "WHERE created_at < ?", (cutoff,)).fetchall()
    for row in rows:
        msg = tx.one("SELECT data FROM messages WHERE id = ?", (row["message_id"],))
        if msg is not None:
            data = _loads(msg["data"])
            for att in data["attachments"]:
                if att["id"] == row["id"]:
                    att["purged"] = True
            tx.conn.execute("UPDATE messages SET data = ? WHERE id = ?",
                            (compact.pack(orjson.dumps(data)), row["message_id"]))
    tx.conn.execute("DELETE FROM attachments WHERE created_at < ?", (cutoff,))
    return {"raw_payloads": raw, "attachments": len(rows),
            "_blobs": sorted({r["sha256"] for r in rows})}



def _reclaim_free_pages(tx: Tx, pages: int) -> int:
    """Give up to ``pages`` free pages back to the file system; return how many stay free.

    Only a database with ``auto_vacuum = INCREMENTAL`` (every one created since migration
    0007; older ones after ``omnirelay vacuum``) can; elsewhere free pages are reused by
    new rows and 0 is returned. Small steps, so a big purge does not hold up the writer.
    """
    if tx.conn.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:
        return 0
    free = int(tx.conn.execute("PRAGMA freelist_count").fetchone()[0])
    # One page per statement: the pragma yields a column-less row per page, and Python's
    # sqlite3 stops at the first (executescript would run it all but commit the batch).
    for _ in range(min(free, pages)):
        tx.conn.execute("PRAGMA incremental_vacuum(1)")
    return int(tx.conn.execute("PRAGMA freelist_count").fetchone()[0])

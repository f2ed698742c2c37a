"""Write jobs on conversations and customers (the API's changes, and what a provider's
withdrawal takes back), and adapter checkpoints."""

from __future__ import annotations

from collections.abc import Sequence

import orjson

from gateway.errors import Conflict, NotFound, ValidationFailed
from gateway.store import compact
from gateway.store.base import JSON
from gateway.store.jobs.ingest import _link
from gateway.store.jobs.tx import Tx
from gateway.store.records import (
    _conversation_json,
    _customer_json,
    _loads,
    _resolve_customer_id,
)
from normalizer.model import Party


def _set_conversation_status(tx: Tx, conversation_id: str, status: str,
                             agent: JSON | None) -> JSON:
    row = tx.one("SELECT * FROM conversations WHERE id = ?", (conversation_id,))
    if row is None:
        raise NotFound(f"conversation {conversation_id} not found")
    if row["status"] == status:
        return _conversation_json(row)
    closed_at = tx.now_iso if status == "closed" else None
    tx.conn.execute("UPDATE conversations SET status = ?, closed_at = ? WHERE id = ?",
                    (status, closed_at, conversation_id))
    tx.cache.latest.pop(row["customer_id"], None)
    updated = tx.one("SELECT * FROM conversations WHERE id = ?", (conversation_id,))
    assert updated is not None  # read above, in this same transaction
    conversation = _conversation_json(updated)
    event = "conversation.closed" if status == "closed" else "conversation.reopened"
    tx.emit(event, {"conversation": conversation, "agent": agent},
            conversation_id=conversation_id, customer_id=conversation["customer_id"])
    return conversation


def _add_identity(tx: Tx, customer_id: str, kind: str, address: str) -> JSON:
    cid = _resolve_customer_id(tx.conn, customer_id)
    row = tx.one("SELECT customer_id FROM identities WHERE kind = ? AND address = ?",
                 (kind, address))
    if row is not None:
        owner = _resolve_customer_id(tx.conn, row["customer_id"])
        if owner != cid:
            raise Conflict(f"identity {kind}:{address} belongs to customer {owner}; "
                           "merge the customers instead", owner=owner)
        unchanged = _customer_json(tx.conn, cid)
        assert unchanged is not None  # _resolve_customer_id found it
        return unchanged
    _link(tx, cid, Party(kind, address), None)
    tx.conn.execute("UPDATE customers SET updated_at = ? WHERE id = ?", (tx.now_iso, cid))
    customer = _customer_json(tx.conn, cid)
    assert customer is not None  # _resolve_customer_id found it
    tx.emit("customer.updated", {"customer": customer}, customer_id=cid)
    return customer


def _merge_customers(tx: Tx, survivor_id: str, merged_id: str) -> JSON:
    survivor = _resolve_customer_id(tx.conn, survivor_id)
    merged = _resolve_customer_id(tx.conn, merged_id)
    if survivor == merged:
        raise ValidationFailed("a customer cannot be merged into itself")
    tx.cache.clear()  # identities and conversations change owner
    # Messages are reached through their conversations (indexed), before those move: all
    # of a 1:1 conversation, only the merged customer's own posts in a group chat. Stored
    # JSON may be compact (compact.py), so it is rewritten here, not by json_set.
    moved = tx.conn.execute(
        "SELECT id, data FROM messages WHERE conversation_id IN "
        "(SELECT id FROM conversations WHERE customer_id = ? AND group_id IS NULL) "
        "UNION ALL SELECT id, data FROM messages WHERE customer_id = ? AND conversation_id IN "
        "(SELECT id FROM conversations WHERE group_id IS NOT NULL)",
        (merged, merged)).fetchall()
    for row in moved:
        message = _loads(row["data"])
        message["customer_id"] = survivor
        tx.conn.execute("UPDATE messages SET customer_id = ?, data = ? WHERE id = ?",
                        (survivor, compact.pack(orjson.dumps(message)), row["id"]))
    for table in ("identities", "conversations"):
        tx.conn.execute(f"UPDATE {table} SET customer_id = ? WHERE customer_id = ?",
                        (survivor, merged))
    tx.conn.execute("UPDATE customers SET merged_into = ?, updated_at = ? WHERE id = ?",
                    (survivor, tx.now_iso, merged))
    # Older merges pointing at the merged customer now point straight at the survivor.
    tx.conn.execute("UPDATE customers SET merged_into = ? WHERE merged_into = ?",
                    (survivor, merged))
    # The survivor keeps its name; without one it takes the merged customer's, and with it
    # which identity gave it (that identity may still rename it).
    tx.conn.execute("UPDATE customers SET (name, name_source) = (SELECT m.name, m.name_source "
                    "FROM customers m WHERE m.id = ?) WHERE id = ? AND name IS NULL",
                    (merged, survivor))
    tx.conn.execute("UPDATE customers SET updated_at = ? WHERE id = ?", (tx.now_iso, survivor))
    customer = _customer_json(tx.conn, survivor, with_conversations=True)
    assert customer is not None  # _resolve_customer_id found it
    tx.emit("customer.merged", {"customer": customer, "merged_customer_id": merged},
            customer_id=survivor)
    return customer


def _take_back(tx: Tx, kind: str, address: str, name: bool,
               identities: Sequence[tuple[str, str]]) -> JSON:
    """Take back what an identity gave its customer, as one change (``customer.updated``
    once; nothing when nothing moved, so a redelivered withdrawal is silent).

    ``name``: the customer's name goes when this identity gave it (a name another identity
    gave, or one whose source is unknown, stays). ``identities``: those it linked leave the
    customer (this identity itself among them when it leaves too), each with a name it gave;
    one already gone, or since linked to someone else, is left alone. The name is not handed
    to another identity: as at ingest (``_take_name``), the next message whose sender has a
    name names the customer. Raises NotFound when no customer has the identity.
    """
    row = tx.one("SELECT customer_id FROM identities WHERE kind = ? AND address = ?",
                 (kind, address))
    if row is None:
        raise NotFound(f"no customer has the {kind} identity given")
    customer_id = _resolve_customer_id(tx.conn, row["customer_id"])
    sources = [f"{kind}:{address}"] if name else []  # whose names go
    removed = 0
    for key in dict.fromkeys((k, a) for k, a in identities):  # each once, in order
        found = tx.one("SELECT customer_id FROM identities WHERE kind = ? AND address = ?", key)
        if found is None or _resolve_customer_id(tx.conn, found["customer_id"]) != customer_id:
            continue
        tx.conn.execute("DELETE FROM identities WHERE kind = ? AND address = ?", key)
        tx.cache.identities.pop(key, None)
        sources.append(f"{key[0]}:{key[1]}")
        removed += 1
    forgot = bool(sources) and tx.conn.execute(
        "UPDATE customers SET name = NULL, name_source = NULL WHERE id = ? AND name_source IN ("
        + ", ".join("?" * len(sources)) + ")", (customer_id, *sources)).rowcount > 0
    if forgot:
        tx.cache.names[customer_id] = (None, None)
    if not removed and not forgot:
        unchanged = _customer_json(tx.conn, customer_id)
        assert unchanged is not None  # _resolve_customer_id found it
        return unchanged
    tx.conn.execute("UPDATE customers SET updated_at = ? WHERE id = ?", (tx.now_iso, customer_id))
    customer = _customer_json(tx.conn, customer_id)
    assert customer is not None  # _resolve_customer_id found it
    tx.emit("customer.updated", {"customer": customer}, customer_id=customer_id)
    return customer


def _set_opt_out(tx: Tx, kind: str, address: str, channel: str, account: str,
                 keyword: str | None) -> JSON | None:
    """Record that an identity opted out of (``keyword`` given) or back into (None) what
    ``account`` sends on ``channel`` (``customer.updated`` when that changes anything).

    Returns the customer, or None when no customer has the identity.
    """
    row = tx.one("SELECT customer_id, opt_outs FROM identities WHERE kind = ? AND address = ?",
                 (kind, address))
    if row is None:
        return None
    current = _loads(row["opt_outs"]) if row["opt_outs"] else []
    customer_id = _resolve_customer_id(tx.conn, row["customer_id"])
    opted_out = any((o["channel"], o["account"]) == (channel, account) for o in current)
    if opted_out == (keyword is not None):  # a repeat STOP keeps the first; nothing moves
        return _customer_json(tx.conn, customer_id)
    kept = [o for o in current if (o["channel"], o["account"]) != (channel, account)]
    if keyword is not None:
        kept.append({"channel": channel, "account": account, "keyword": keyword,
                     "at": tx.now_iso})
    tx.conn.execute("UPDATE identities SET opt_outs = ? WHERE kind = ? AND address = ?",
                    (orjson.dumps(kept).decode() if kept else None, kind, address))
    customer = _customer_json(tx.conn, customer_id)
    assert customer is not None
    tx.emit("customer.updated", {"customer": customer}, customer_id=customer_id)
    return customer


def _init_checkpoint(tx: Tx, key: str, value: str) -> str:
    """Keep ``value`` unless ``key`` has one; the kept value. Instances starting together
    on PostgreSQL: the second insert waits for the first's commit and keeps it."""
    tx.conn.execute("INSERT OR IGNORE INTO checkpoints (key, value, updated_at) VALUES (?, ?, ?)",
                    (key, value, tx.now_iso))
    row = tx.conn.execute("SELECT value FROM checkpoints WHERE key = ?", (key,)).fetchone()
    assert row is not None
    return str(row[0])


def _set_checkpoint(tx: Tx, key: str, value: str) -> None:
    tx.conn.execute(
        "INSERT INTO checkpoints (key, value, updated_at) VALUES (?, ?, ?) "
        "ON CONFLICT (key) DO UPDATE SET value = excluded.value, "
        "updated_at = excluded.updated_at", (key, value, tx.now_iso))

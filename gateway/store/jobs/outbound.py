"""Write jobs of the outbound path: routing a reply, the outbox, provider receipts."""

from __future__ import annotations

import sqlite3
import time
from datetime import UTC, datetime

from gateway.errors import Conflict, NotFound, ValidationFailed
from gateway.ids import iso, new_id
from gateway.store.base import JSON, ChangeResult, OutboundRequest, OutboxItem, Route
from gateway.store.jobs.tx import Tx, _insert_message, _save_message
from gateway.store.records import (
    _conversation_json,
    _dumps,
    _loads,
    _message_json,
    _resolve_customer_id,
)
from gateway.store.rules import (
    LastInbound,
    RouteRefused,
    choose_recipient,
    choose_reply_route,
    receipt_moves,
)
from normalizer.model import DeliveryStatus, Party
from normalizer.timestamps import parse_iso


def _apply_receipt(tx: Tx, channel: str, account: str, provider_message_id: str,
                   status: DeliveryStatus, error: JSON | None,
                   at: datetime | None) -> ChangeResult | None:
    """Move an outbound message's status by its provider id (``message.status``), never
    backwards (:func:`~gateway.store.rules.receipt_moves`).

    Returns None when no message has that provider id (a provider may report on messages
    sent from elsewhere); a receipt for an inbound message conflicts with what it names.
    """
    row = tx.one("SELECT data FROM messages WHERE channel = ? AND account = ? "
                 "AND provider_message_id = ?", (channel, account, provider_message_id))
    if row is None:
        return None
    message: JSON = _loads(row["data"])
    if message["direction"] != "outbound":
        raise Conflict("that message_id names an inbound message; receipts move "
                       "outbound messages")
    if not receipt_moves(message["status"], status):
        return ChangeResult(message)
    message["status"] = status
    message["error"] = (error or {"code": "failed", "message": "the provider reported a "
                                  "failure"}) if status == "failed" else None
    if status != "queued" and not message.get("sent_at"):
        message["sent_at"] = iso(at) if at is not None else tx.now_iso
    _save_message(tx, message)
    tx.emit("message.status", {"message": message}, conversation_id=message["conversation_id"],
            customer_id=message["customer_id"])
    return ChangeResult(message, ("status",))


def _apply_read_watermark(tx: Tx, channel: str, account: str, recipient: Party,
                          watermark: datetime) -> int:
    """A read watermark (Messenger, Instagram): every reply of the account to ``recipient``
    sent up to ``watermark`` and not yet read is read now (``message.status`` each).
    Returns how many moved."""
    row = tx.one("SELECT customer_id FROM identities WHERE kind = ? AND address = ?",
                 (recipient.kind, recipient.address))
    if row is None:
        return 0
    customer_id = _resolve_customer_id(tx.conn, row["customer_id"])
    moved = 0
    for candidate in tx.conn.execute(
            "SELECT m.data FROM messages m JOIN conversations c ON c.id = m.conversation_id "
            "WHERE c.customer_id = ? AND m.channel = ? AND m.account = ? "
            "AND m.direction = 'outbound' AND m.status IN ('sent', 'delivered')",
            (customer_id, channel, account)).fetchall():
        message: JSON = _loads(candidate["data"])
        sent_at = message["sent_at"]
        if ((message["to"] or {}).get("address") != recipient.address or sent_at is None
                or parse_iso(sent_at) > watermark):
            continue
        message["status"] = "read"
        _save_message(tx, message)
        tx.emit("message.status", {"message": message},
                conversation_id=message["conversation_id"], customer_id=customer_id)
        moved += 1
    return moved


def _enqueue_outbound(tx: Tx, conversation_id: str | None, customer_id: str | None,
                      request: OutboundRequest, routes: list[Route],
                      idempotency: tuple[str, str, str] | None) -> tuple[int, JSON]:
    if idempotency is not None:
        scope, key, request_hash = idempotency
        row = tx.one("SELECT request_hash, response FROM idempotency_keys "
                     "WHERE scope = ? AND key = ?", (scope, key))
        if row is not None:
            if row["request_hash"] != request_hash:
                raise Conflict("Idempotency-Key was already used with another request body")
            return 202, _loads(row["response"])

    if conversation_id is not None:
        conv = tx.one("SELECT * FROM conversations WHERE id = ?", (conversation_id,))
        if conv is None:
            raise NotFound(f"conversation {conversation_id} not found")
        cid = _resolve_customer_id(tx.conn, conv["customer_id"])
    else:
        assert customer_id is not None
        cid = _resolve_customer_id(tx.conn, customer_id)
        conv = None

    last_inbound: LastInbound | None = None
    if conv is not None:
        last = tx.one("SELECT id, channel, account, data FROM messages WHERE conversation_id = ? "
                      "AND direction = 'inbound' ORDER BY id DESC LIMIT 1", (conv["id"],))
        if last is not None:
            last_inbound = LastInbound(last["id"], last["channel"], last["account"],
                                       _loads(last["data"])["from"])
    chosen = choose_reply_route(
        channel=request.channel, account=request.account, last_inbound=last_inbound,
        conversation=(conv["channel"], conv["account"]) if conv is not None else None,
        routes=routes)
    if isinstance(chosen, RouteRefused):
        raise ValidationFailed(chosen.reason, channel=chosen.channel,
                               accounts=list(chosen.accounts))
    route, recipient, in_reply_to = chosen.route, chosen.recipient, chosen.in_reply_to
    if recipient is None:
        # The kinds the channel reaches come with the route, as its adapter declared them.
        kinds = route.kinds
        rows = tx.conn.execute(
            f"SELECT kind, address FROM identities WHERE customer_id = ? AND kind IN "
            f"({','.join('?' * len(kinds))}) ORDER BY created_at DESC", (cid, *kinds)).fetchall()
        recipient = choose_recipient(route, ((r["kind"], r["address"]) for r in rows))
        if recipient is None:
            # The customer's state, not the request, is in the way: 409.
            raise Conflict(f"customer {cid} has no identity reachable on "
                           f"channel {route.channel!r}")

    if conv is None:
        # A proactive message is 1:1: a group the customer opened is not theirs alone.
        latest = tx.one("SELECT * FROM conversations WHERE customer_id = ? AND status = 'open' "
                        "AND group_id IS NULL ORDER BY last_message_at DESC, id DESC LIMIT 1",
                        (cid,))
        if latest is not None:
            conv = latest
        else:
            new_conv = new_id("cnv")
            tx.conn.execute(
                "INSERT INTO conversations (id, customer_id, channel, account, status, "
                "opened_at, last_message_at) VALUES (?, ?, ?, ?, 'open', ?, ?)",
                (new_conv, cid, route.channel, route.account, tx.now_iso, tx.now_iso))
            conv = tx.one("SELECT * FROM conversations WHERE id = ?", (new_conv,))
            assert conv is not None
            tx.emit("conversation.opened", {"conversation": _conversation_json(conv)},
                    conversation_id=new_conv, customer_id=cid)

    message = _message_json(
        message_id=new_id("msg"), conversation_id=conv["id"], customer_id=cid,
        channel=route.channel, account=route.account, direction="outbound",
        sender=route.sender, recipient=recipient, subject=request.subject, text=request.text,
        html=request.html, attachments=request.attachments, in_reply_to=in_reply_to,
        provider_message_id=None, thread_id=None, status="queued", agent=request.agent,
        automatic=request.automatic, sent_at=None, received_at=tx.now_iso)
    if request.template:
        message["template"] = {"name": request.template, "variables": request.variables or {}}
    _insert_message(tx, message, request.attachments)
    tx.conn.execute(
        "INSERT INTO outbox (message_id, conversation_id, channel, account, state, "
        "next_attempt_at, created_at) VALUES (?, ?, ?, ?, 'pending', ?, ?)",
        (message["id"], conv["id"], route.channel, route.account, time.time(), time.time()))
    tx.conn.execute("UPDATE conversations SET last_message_at = ? WHERE id = ?",
                    (tx.now_iso, conv["id"]))
    tx.cache.latest.pop(cid, None)
    tx.emit("message.queued", {"message": message}, conversation_id=conv["id"], customer_id=cid)
    if idempotency is not None:
        tx.conn.execute("INSERT INTO idempotency_keys (scope, key, request_hash, response, "
                        "created_at) VALUES (?, ?, ?, ?, ?)",
                        (idempotency[0], idempotency[1], idempotency[2], _dumps(message),
                         tx.now_iso))
    return 202, message


def _claim_outbox(tx: Tx, limit: int, now: float) -> list[OutboxItem]:
    rows = tx.conn.execute(
        "SELECT o.seq, o.message_id, o.attempts, o.created_at FROM outbox o "
        "WHERE o.state = 'pending' AND o.next_attempt_at <= ? AND NOT EXISTS ("
        "  SELECT 1 FROM outbox p WHERE p.conversation_id = o.conversation_id "
        "  AND p.state IN ('pending', 'inflight') AND p.seq < o.seq) "
        "ORDER BY o.next_attempt_at, o.seq LIMIT ?", (now, limit)).fetchall()
    items = []
    for row in rows:
        tx.conn.execute("UPDATE outbox SET state = 'inflight', attempts = attempts + 1 "
                        "WHERE seq = ?", (row["seq"],))
        item = outbox_item(tx, row)
        if item is not None:
            items.append(item)
    return items


def outbox_item(tx: Tx, row: sqlite3.Row) -> OutboxItem | None:
    """What the worker needs to send a claimed outbox ``row`` (seq, message_id, attempts,
    created_at): the message, its conversation and the provider ids it threads under. None,
    and the row dropped, when the message was erased meanwhile."""
    msg = tx.one("SELECT data FROM messages WHERE id = ?", (row["message_id"],))
    if msg is None:  # erased meanwhile
        tx.conn.execute("DELETE FROM outbox WHERE seq = ?", (row["seq"],))
        return None
    message = _loads(msg["data"])
    conv = tx.one("SELECT * FROM conversations WHERE id = ?", (message["conversation_id"],))
    assert conv is not None  # a message row references its conversation (schema)
    refs = [r[0] for r in tx.conn.execute(
        "SELECT provider_message_id FROM messages WHERE conversation_id = ? AND channel = ? "
        "AND provider_message_id IS NOT NULL AND id < ? ORDER BY id",
        (message["conversation_id"], message["channel"], message["id"]))]
    reply_to = None
    if message["in_reply_to"]:
        parent = tx.one("SELECT provider_message_id FROM messages WHERE id = ?",
                        (message["in_reply_to"],))
        reply_to = parent["provider_message_id"] if parent else None
    return OutboxItem(row["seq"], message, _conversation_json(conv), row["attempts"] + 1,
                      datetime.fromtimestamp(row["created_at"], UTC), tuple(refs), reply_to)


def _outbox_sent(tx: Tx, message_id: str, provider_message_id: str | None, status: str) -> None:
    tx.conn.execute("UPDATE outbox SET state = 'sent', last_error = NULL WHERE message_id = ?",
                    (message_id,))
    row = tx.one("SELECT data FROM messages WHERE id = ?", (message_id,))
    if row is None:
        return
    message = _loads(row["data"])
    message["status"] = status
    message["sent_at"] = tx.now_iso
    message["error"] = None
    if provider_message_id:
        message["provider"]["message_id"] = provider_message_id
    try:
        _save_message(tx, message)
    except sqlite3.IntegrityError:
        # The provider id is already stored (its echo arrived first): keep ours, drop the echo.
        tx.conn.execute("DELETE FROM messages WHERE channel = ? AND account = ? AND "
                        "provider_message_id = ? AND id != ?",
                        (message["channel"], message["account"], provider_message_id,
                         message_id))
        _save_message(tx, message)
    tx.emit("message.status", {"message": message}, conversation_id=message["conversation_id"],
            customer_id=message["customer_id"])


def _outbox_retry(tx: Tx, message_id: str, due: float, error: JSON) -> None:
    tx.conn.execute("UPDATE outbox SET state = 'pending', next_attempt_at = ?, last_error = ? "
                    "WHERE message_id = ?", (due, _dumps(error), message_id))


def _outbox_failed(tx: Tx, message_id: str, error: JSON) -> None:
    tx.conn.execute("UPDATE outbox SET state = 'failed', last_error = ? WHERE message_id = ?",
                    (_dumps(error), message_id))
    row = tx.one("SELECT data FROM messages WHERE id = ?", (message_id,))
    if row is None:
        return
    message = _loads(row["data"])
    message["status"] = "failed"
    message["error"] = error
    _save_message(tx, message)
    tx.emit("message.status", {"message": message}, conversation_id=message["conversation_id"],
            customer_id=message["customer_id"])



def _recover_inflight(tx: Tx) -> int:
    return tx.conn.execute(
        "UPDATE outbox SET state = 'pending' WHERE state = 'inflight'").rowcount

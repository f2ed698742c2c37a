"""Write jobs of the inbound path: dedupe, the sender's customer, threading, the message."""

from __future__ import annotations

import sqlite3

import orjson

from gateway.ids import iso, new_id, parse_iso
from gateway.store.base import JSON, IngestResult, StoredAttachment
from gateway.store.jobs.tx import Tx, _insert_message, _insert_raw
from gateway.store.records import (
    _conversation_json,
    _dumps,
    _loads,
    _message_json,
    _resolve_customer_id,
)
from gateway.store.rules import (
    dedupe_key,
    joins_latest,
    may_join,
    reopen_window_start,
    reply_token_conversation_id,
    threading_reference,
)
from normalizer.model import InboundMessage, Party


def _owner(tx: Tx, party: Party) -> tuple[str, list[str]] | None:
    """The surviving customer owning an identity, and the identity's channels."""
    key = (party.kind, party.address)
    entry = tx.cache.identities.get(key)
    if entry is None:
        row = tx.one("SELECT customer_id, channels FROM identities WHERE kind = ? "
                     "AND address = ?", key)
        if row is None:
            return None
        entry = (_resolve_customer_id(tx.conn, row["customer_id"]), _loads(row["channels"]))
        tx.cache.identities[key] = entry
    return entry


def _resolve_sender(tx: Tx, inbound: InboundMessage) -> tuple[str, JSON | None]:
    """Return (customer id, the new customer's JSON or None) for the sender.

    Further identities the message carries are linked to the customer.
    """
    primary = inbound.sender
    others = [p for p in inbound.linked_identities
              if (p.kind, p.address) != (primary.kind, primary.address)]
    owner = _owner(tx, primary)
    customer_id = owner[0] if owner is not None else None
    if customer_id is None:
        for other in others:
            found = _owner(tx, other)
            if found is not None:
                customer_id = found[0]
                break
    if customer_id is None:
        customer_id = new_id("cus")
        tx.conn.execute("INSERT INTO customers (id, name, created_at, updated_at) "
                        "VALUES (?, ?, ?, ?)", (customer_id, primary.name, tx.now_iso,
                                                tx.now_iso))
        _link(tx, customer_id, primary, inbound.channel)
        for other in others:
            _link(tx, customer_id, other, None)
        if primary.name:
            tx.cache.named.add(customer_id)
        identities = sorted(
            ({"kind": p.kind, "address": p.address,
              "channels": [inbound.channel] if p is primary else []}
             for p in [primary, *others] if tx.cache.identities.get(
                 (p.kind, p.address), ("",))[0] == customer_id),
            key=lambda i: (i["kind"], i["address"]))
        return customer_id, {"id": customer_id, "name": primary.name, "merged_into": None,
                             "identities": identities, "created_at": tx.now_iso}
    if primary.name and customer_id not in tx.cache.named:
        tx.conn.execute("UPDATE customers SET name = ?, updated_at = ? "
                        "WHERE id = ? AND name IS NULL", (primary.name, tx.now_iso, customer_id))
        tx.cache.named.add(customer_id)
    _link(tx, customer_id, primary, inbound.channel)
    for other in others:
        _link(tx, customer_id, other, None)
    return customer_id, None


def _link(tx: Tx, customer_id: str, party: Party, channel: str | None) -> None:
    """Give ``party`` to the customer unless someone owns it; note the channel it used."""
    entry = _owner(tx, party)
    if entry is None:
        channels = [channel] if channel else []
        tx.conn.execute("INSERT INTO identities (kind, address, customer_id, channels, "
                        "created_at) VALUES (?, ?, ?, ?, ?)",
                        (party.kind, party.address, customer_id, _dumps(channels), tx.now_iso))
        tx.cache.identities[(party.kind, party.address)] = (customer_id, channels)
        return
    owner, channels = entry
    if channel and owner == customer_id and channel not in channels:
        channels.append(channel)  # the cached list, kept in step with the row
        tx.conn.execute("UPDATE identities SET channels = ? WHERE kind = ? AND address = ?",
                        (_dumps(channels), party.kind, party.address))


def _ingest(tx: Tx, inbound: InboundMessage, attachments: list[StoredAttachment],
            reopen_window_days: float) -> IngestResult:
    key = dedupe_key(inbound.channel, inbound.account, inbound.provider_message_id)
    if tx.rows is not None and key in tx.rows.by_key:  # the same message earlier in the batch
        return IngestResult(tx.rows.by_key[key], created=False)
    if tx.rows is not None and tx.rows.stored is not None:  # the batch looked its keys up
        if key in tx.rows.stored:
            return IngestResult(_loads(tx.rows.stored[key]), created=False)
    else:
        existing = tx.one("SELECT data FROM messages WHERE channel = ? AND account = ? "
                          "AND provider_message_id = ?", key)
        if existing is not None:
            return IngestResult(_loads(existing["data"]), created=False)

    customer_id, new_customer = _resolve_sender(tx, inbound)
    if new_customer is not None:
        tx.emit("customer.created", {"customer": new_customer}, customer_id=customer_id)

    conversation: JSON | None = None
    in_reply_to: str | None = None

    def find(ref: str) -> sqlite3.Row | JSON | None:
        row = tx.one("SELECT id, conversation_id FROM messages WHERE provider_message_id = ? "
                     "AND channel = ? ORDER BY id LIMIT 1", (ref, inbound.channel))
        if row is None and tx.rows is not None:  # stored earlier in this batch
            return tx.rows.by_ref.get((inbound.channel, ref))
        return row

    threaded = threading_reference(inbound.reply_refs, find) if inbound.reply_refs else None
    if threaded is not None:
        in_reply_to = threaded[1]["id"]
        conversation = _conversation_by_id(tx, threaded[1]["conversation_id"])
    if conversation is None and inbound.reply_token:
        conversation = _conversation_by_id(tx, reply_token_conversation_id(inbound.reply_token))
    if conversation is not None and not may_join(conversation["customer_id"], customer_id):
        conversation = None
        in_reply_to = None
    if conversation is None and new_customer is None:
        latest = _latest_conversation(tx, customer_id)
        if latest is not None:
            closed_at = latest["closed_at"]
            if joins_latest(latest["status"], parse_iso(closed_at) if closed_at else None,
                            reopen_window_start(tx.now, reopen_window_days)):
                conversation = latest

    sent_at = iso(inbound.sent_at) if inbound.sent_at else tx.now_iso
    if conversation is None:
        conversation_id = new_id("cnv")
        conversation = {
            "id": conversation_id, "customer_id": customer_id, "channel": inbound.channel,
            "account": inbound.account, "status": "open", "opened_at": tx.now_iso,
            "closed_at": None, "last_message_at": tx.now_iso, "tags": [],
            "priority": "normal", "queue": None, "context": inbound.context or {}}
        tx.conn.execute(
            "INSERT INTO conversations (id, customer_id, channel, account, status, opened_at, "
            "last_message_at, context) VALUES (?, ?, ?, ?, 'open', ?, ?, ?)",
            (conversation_id, customer_id, inbound.channel, inbound.account, tx.now_iso,
             tx.now_iso, _dumps(conversation["context"])))
        tx.emit("conversation.opened", {"conversation": conversation},
                conversation_id=conversation_id, customer_id=customer_id)
    else:
        conversation_id = conversation["id"]
        if conversation["status"] == "closed":
            tx.conn.execute("UPDATE conversations SET status = 'open', closed_at = NULL "
                            "WHERE id = ?", (conversation_id,))
            conversation["status"], conversation["closed_at"] = "open", None
            tx.emit("conversation.reopened", {"conversation": conversation, "agent": None},
                    conversation_id=conversation_id, customer_id=customer_id)
        if inbound.context:
            tx.conn.execute("UPDATE conversations SET context = ? WHERE id = ?",
                            (_dumps(inbound.context), conversation_id))
            conversation["context"] = inbound.context
        if tx.rows is not None:
            tx.rows.touched.add(conversation_id)
        else:
            tx.conn.execute("UPDATE conversations SET last_message_at = ? WHERE id = ?",
                            (tx.now_iso, conversation_id))
        conversation["last_message_at"] = tx.now_iso
    tx.cache.latest[customer_id] = conversation

    message_id = new_id("msg")
    message = _message_json(
        message_id=message_id, conversation_id=conversation_id, customer_id=customer_id,
        channel=inbound.channel, account=inbound.account, direction="inbound",
        sender=inbound.sender, recipient=inbound.recipient, subject=inbound.subject,
        text=inbound.text, html=inbound.html, attachments=attachments, in_reply_to=in_reply_to,
        provider_message_id=inbound.provider_message_id,
        thread_id=inbound.provider_thread_id, status="received", agent=None,
        automatic=inbound.automatic, sent_at=sent_at, received_at=tx.now_iso,
        content=inbound.content)
    encoded = orjson.dumps(message)  # once: the row, the event and the caller's answer
    # The event shares the row's copy of the message (compact storage, migration 0007).
    event_seq = tx.emit("message.received", {"message": orjson.Fragment(encoded),
                                             "conversation": conversation},
                        conversation_id=conversation_id, customer_id=customer_id,
                        shares=(message_id, encoded))
    _insert_message(tx, message, attachments, encoded, event_seq)
    if inbound.raw is not None:
        _insert_raw(tx, message_id, inbound.raw_content_type, inbound.raw)
    if tx.rows is not None:
        tx.rows.by_key[key] = message
        tx.rows.by_ref.setdefault((inbound.channel, inbound.provider_message_id), message)
    return IngestResult(message, created=True, message_json=encoded)


def _conversation_by_id(tx: Tx, conversation_id: str) -> JSON | None:
    """A conversation as JSON (the cached copy when it is its customer's latest)."""
    row = tx.one("SELECT * FROM conversations WHERE id = ?", (conversation_id,))
    if row is None:
        return None
    cached = tx.cache.latest.get(row["customer_id"])
    if cached is not None and cached["id"] == conversation_id:
        return cached
    return _conversation_json(row)


def _latest_conversation(tx: Tx, customer_id: str) -> JSON | None:
    """The customer's most recently active conversation."""
    cached = tx.cache.latest.get(customer_id)
    if cached is not None:
        return cached
    row = tx.one("SELECT * FROM conversations WHERE customer_id = ? "
                 "ORDER BY last_message_at DESC, id DESC LIMIT 1", (customer_id,))
    return None if row is None else _conversation_json(row)



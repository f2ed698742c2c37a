"""Write jobs of the inbound path: dedupe, the sender's customer, threading, the message.

Two kinds of provider message take a turn of their own: a post in a group chat joins the
group's conversation (each poster a customer), and an echo (a message the account sent,
seen on the provider's side) is stored as an outbound message of its recipient's
conversation, or matched to omnirelay's own send.
"""

from __future__ import annotations

import dataclasses
import sqlite3
from datetime import datetime, timedelta

import orjson

from gateway.automation import jobs as automation_jobs
from gateway.errors import ValidationFailed
from gateway.ids import iso, new_id
from gateway.store.base import JSON, IngestResult, StoredAttachment
from gateway.store.jobs import stats as stats_jobs
from gateway.store.jobs.lists import in_chunks
from gateway.store.jobs.media import _queue_fetches
from gateway.store.jobs.tx import (
    BatchRows,
    SharedMessage,
    Tx,
    WriterCache,
    _insert_message,
    _insert_raw,
    _save_message,
)
from gateway.store.records import (
    _conversation_json,
    _customer_json,
    _dumps,
    _loads,
    _message_json,
    _resolve_customer_id,
)
from gateway.store.rules import (
    DedupeKey,
    GroupKey,
    dedupe_key,
    joins_latest,
    may_join,
    reopen_window_start,
    reply_token_conversation_id,
    threading_reference,
)
from normalizer.model import InboundMessage, Party
from normalizer.timestamps import parse_iso


def prefetch_senders(conn: sqlite3.Connection, cache: WriterCache, rows: BatchRows,
                     inbounds: list[InboundMessage], now: datetime) -> None:
    """Look up, in a few queries for the whole batch, what its ingest jobs would otherwise
    each ask the tables one row at a time: the senders' identities and customers, their
    latest conversations and those conversations' metrics state (jobs/stats.py).

    Only what the writer cache does not hold is asked for: on SQLite, whose cache outlives
    batches, that is mostly new senders; on PostgreSQL, whose cache lives for one batch
    (other instances write too), it turns several round trips a message into a few a
    batch. Everything is read inside the batch's transaction, after its locks, so the jobs
    see what they would have read themselves.
    """
    parties = {(p.kind, p.address) for inbound in inbounds
               for p in (inbound.sender, *inbound.linked_identities)
               if p.address and (p.kind, p.address) not in cache.identities}
    owners: dict[tuple[str, str], tuple[str, list[str]]] = {}
    by_kind: dict[str, list[str]] = {}
    for kind, address in parties:
        by_kind.setdefault(kind, []).append(address)
    for kind, addresses in by_kind.items():
        for marks, chunk in in_chunks(addresses):
            for row in conn.execute("SELECT address, customer_id, channels FROM identities "
                                    f"WHERE kind = ? AND address IN ({marks})", (kind, *chunk)):
                owners[(kind, row["address"])] = (row["customer_id"], _loads(row["channels"]))
    rows.absent.update(parties - owners.keys())
    merged: set[str] = set()
    for marks, chunk in in_chunks({customer for customer, _ in owners.values()}):
        for row in conn.execute("SELECT id, name, name_source, merged_into FROM customers "
                                f"WHERE id IN ({marks})", chunk):
            if row["merged_into"] is not None:
                merged.add(row["id"])
            elif row["id"] not in cache.names:
                cache.names[row["id"]] = (row["name"], row["name_source"])
    for key, (customer, channels) in owners.items():
        if customer in merged:  # rare: follow the chain as a job would
            customer = _resolve_customer_id(conn, customer)
        cache.identities[key] = (customer, channels)
    writers = {(cache.identities[(i.sender.kind, i.sender.address)][0], i.channel, i.account)
               for i in inbounds if (i.sender.kind, i.sender.address) in cache.identities}
    customers = {customer for customer, _channel, _account in writers}
    wanted = [c for c in customers if c not in cache.latest]
    for marks, chunk in in_chunks(wanted):
        for row in conn.execute(
                "SELECT * FROM (SELECT c.*, ROW_NUMBER() OVER (PARTITION BY customer_id "
                "ORDER BY last_message_at DESC, id DESC) AS latest FROM conversations c "
                f"WHERE customer_id IN ({marks}) AND group_id IS NULL) t WHERE latest = 1",
                chunk):
            cache.latest[row["customer_id"]] = _conversation_json(row)
    stats_jobs.prefetch(conn, [cache.latest[c]["id"] for c in customers if c in cache.latest],
                        writers, now)


def _owner(tx: Tx, party: Party) -> tuple[str, list[str]] | None:
    """The surviving customer owning an identity, and the identity's channels."""
    key = (party.kind, party.address)
    entry = tx.cache.identities.get(key)
    if entry is None:
        if tx.rows is not None and key in tx.rows.absent:
            return None  # the batch's prefetch found no row, and no job has linked it
        row = tx.one("SELECT customer_id, channels FROM identities WHERE kind = ? "
                     "AND address = ?", key)
        if row is None:
            return None
        entry = (_resolve_customer_id(tx.conn, row["customer_id"]), _loads(row["channels"]))
        tx.cache.identities[key] = entry
    return entry


def _resolve_sender(tx: Tx, inbound: InboundMessage) -> tuple[str, JSON | None]:
    """Return (customer id, the new customer's JSON or None) for the sender.

    Further identities the message carries are linked to the customer. For a known
    customer, a name set or changed and an identity linked are announced
    (``customer.updated``).
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
        source = f"{primary.kind}:{primary.address}" if primary.name else None
        tx.conn.execute("INSERT INTO customers (id, name, name_source, created_at, updated_at) "
                        "VALUES (?, ?, ?, ?, ?)", (customer_id, primary.name, source,
                                                   tx.now_iso, tx.now_iso))
        _link(tx, customer_id, primary, inbound.channel)
        for other in others:
            _link(tx, customer_id, other, None)
        tx.cache.names[customer_id] = (primary.name, source)
        if tx.rows is not None:  # the batch's metrics writes are deferred (jobs/stats.py)
            stats_jobs.note_new_customer(customer_id)
        identities = sorted(
            ({"kind": p.kind, "address": p.address,
              "channels": [inbound.channel] if p is primary else []}
             for p in [primary, *others] if tx.cache.identities.get(
                 (p.kind, p.address), ("",))[0] == customer_id),
            key=lambda i: (i["kind"], i["address"]))
        return customer_id, {"id": customer_id, "name": primary.name, "merged_into": None,
                             "identities": identities, "created_at": tx.now_iso}
    changed = bool(primary.name) and _take_name(tx, customer_id, primary)
    changed = _link(tx, customer_id, primary, inbound.channel) or changed
    for other in others:
        changed = _link(tx, customer_id, other, None) or changed
    if changed:
        tx.emit("customer.updated", {"customer": _customer_json(tx.conn, customer_id)},
                customer_id=customer_id)
    return customer_id, None


def _take_name(tx: Tx, customer_id: str, sender: Party) -> bool:
    """Whether the sender's name became the customer's.

    It does when they have none, or when this same identity gave the current one (a
    renamed profile); another identity's name does not replace it, so names do not flap
    between channels.
    """
    cached = tx.cache.names.get(customer_id)
    if cached is None:
        row = tx.one("SELECT name, name_source FROM customers WHERE id = ?", (customer_id,))
        cached = (row["name"], row["name_source"]) if row is not None else (None, None)
        tx.cache.names[customer_id] = cached
    name, source = cached
    if name == sender.name:  # the usual case: nothing to build or write
        return False
    identity = f"{sender.kind}:{sender.address}"
    if name is not None and source not in (None, identity):
        return False
    tx.conn.execute("UPDATE customers SET name = ?, name_source = ?, updated_at = ? "
                    "WHERE id = ?", (sender.name, identity, tx.now_iso, customer_id))
    tx.cache.names[customer_id] = (sender.name, identity)
    return True


def _link(tx: Tx, customer_id: str, party: Party, channel: str | None) -> bool:
    """Give ``party`` to the customer unless someone owns it; note the channel it used.

    Returns whether the identity is new (the caller announces it)."""
    entry = _owner(tx, party)
    if entry is None:
        channels = [channel] if channel else []
        tx.conn.execute("INSERT INTO identities (kind, address, customer_id, channels, "
                        "created_at) VALUES (?, ?, ?, ?, ?)",
                        (party.kind, party.address, customer_id, _dumps(channels), tx.now_iso))
        tx.cache.identities[(party.kind, party.address)] = (customer_id, channels)
        return True
    owner, channels = entry
    if channel and owner == customer_id and channel not in channels:
        channels.append(channel)  # the cached list, kept in step with the row
        tx.conn.execute("UPDATE identities SET channels = ? WHERE kind = ? AND address = ?",
                        (_dumps(channels), party.kind, party.address))
    return False


def _ingest(tx: Tx, inbound: InboundMessage, attachments: list[StoredAttachment],
            reopen_window_days: float,
            automation: automation_jobs.Automation | None = None) -> IngestResult:
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
    if inbound.direction == "outbound":
        return _ingest_echo(tx, inbound, key, attachments, reopen_window_days)

    customer_id, new_customer = _resolve_sender(tx, inbound)
    if new_customer is not None:
        tx.emit("customer.created", {"customer": new_customer}, customer_id=customer_id)

    conversation: JSON | None = None
    in_reply_to: str | None = None
    if inbound.group is not None:
        conversation, in_reply_to = _group_conversation(tx, inbound, customer_id,
                                                        reopen_window_days)
    else:
        def find(ref: str) -> sqlite3.Row | JSON | None:
            row = tx.one("SELECT id, conversation_id FROM messages "
                         "WHERE provider_message_id = ? AND channel = ? ORDER BY id LIMIT 1",
                         (ref, inbound.channel))
            if row is None and tx.rows is not None:  # stored earlier in this batch
                return tx.rows.by_ref.get((inbound.channel, ref))
            return row

        threaded: tuple[str, sqlite3.Row | JSON] | None = (
            threading_reference(inbound.reply_refs, find) if inbound.reply_refs else None)
        if threaded is not None:
            in_reply_to = threaded[1]["id"]
            conversation = _conversation_by_id(tx, threaded[1]["conversation_id"])
        if conversation is None and inbound.reply_token:
            conversation = _conversation_by_id(
                tx, reply_token_conversation_id(inbound.reply_token))
        if conversation is not None and not may_join(conversation["customer_id"], customer_id,
                                                     _group_key(conversation)):
            conversation = None
            in_reply_to = None
        if conversation is None and new_customer is None:
            latest = _latest_conversation(tx, customer_id)
            if latest is not None:
                closed_at = latest["closed_at"]
                if joins_latest(latest["status"], parse_iso(closed_at) if closed_at else None,
                                reopen_window_start(tx.now, reopen_window_days)):
                    conversation = latest

    sent_at = iso(inbound.sent_at) or tx.now_iso
    if conversation is None:
        conversation = _open_conversation(tx, inbound, customer_id, automation,
                                          new_customer is not None)
    else:
        conversation_id = conversation["id"]
        # A short answer to a CSAT survey is recorded, not a reason to reopen (automation).
        answered = automation_jobs.survey_answer(tx, automation, inbound, conversation)
        if conversation["status"] == "closed" and not answered:
            tx.conn.execute("UPDATE conversations SET status = 'open', closed_at = NULL "
                            "WHERE id = ?", (conversation_id,))
            conversation["status"], conversation["closed_at"] = "open", None
            tx.emit("conversation.reopened", {"conversation": conversation, "agent": None},
                    conversation_id=conversation_id, customer_id=customer_id)
        if inbound.context:
            tx.conn.execute("UPDATE conversations SET context = ? WHERE id = ?",
                            (_dumps(inbound.context), conversation_id))
            conversation["context"] = inbound.context
        _touch(tx, conversation)
        if not answered and automation is not None and automation_jobs.applies(automation,
                                                                              inbound):
            automation_jobs.classify_existing(tx, automation, inbound, conversation)
    if inbound.group is None:  # a group's conversation is nobody's latest 1:1 one
        tx.cache.latest[customer_id] = conversation
    return _add_message(tx, inbound, key, attachments, conversation, customer_id, in_reply_to,
                        direction="inbound", status="received", sent_at=sent_at)


def _ingest_all(tx: Tx, items: list[tuple[InboundMessage, list[StoredAttachment]]],
                reopen_window_days: float,
                automation: automation_jobs.Automation | None = None) -> list[IngestResult]:
    """Several messages of one provider request (a LINE webhook's events) in one job: the
    job runs inside its own savepoint, so they are committed all together or not at all."""
    return [_ingest(tx, inbound, attachments, reopen_window_days, automation)
            for inbound, attachments in items]


def _open_conversation(tx: Tx, inbound: InboundMessage, customer_id: str,
                       automation: automation_jobs.Automation | None = None,
                       new_customer: bool = False) -> JSON:
    """Start a conversation for the message (the group's, for a group post); routing rules
    set its tags, priority and queue before ``conversation.opened`` (automation)."""
    conversation_id = new_id("cnv")
    group = inbound.group
    conversation: JSON = {
        "id": conversation_id, "customer_id": customer_id, "channel": inbound.channel,
        "account": inbound.account, "status": "open", "opened_at": tx.now_iso,
        "closed_at": None, "last_message_at": tx.now_iso, "tags": [],
        "priority": "normal", "queue": None, "assignee": None,
        "context": inbound.context or {},
        "group": None if group is None else group.to_json(), "csat": None}
    if group is None:
        tx.conn.execute(
            "INSERT INTO conversations (id, customer_id, channel, account, status, opened_at, "
            "last_message_at, context) VALUES (?, ?, ?, ?, 'open', ?, ?, ?)",
            (conversation_id, customer_id, inbound.channel, inbound.account, tx.now_iso,
             tx.now_iso, _dumps(conversation["context"])))
    else:
        tx.conn.execute(
            "INSERT INTO conversations (id, customer_id, channel, account, status, opened_at, "
            "last_message_at, context, group_id, group_name) "
            "VALUES (?, ?, ?, ?, 'open', ?, ?, ?, ?, ?)",
            (conversation_id, customer_id, inbound.channel, inbound.account, tx.now_iso,
             tx.now_iso, _dumps(conversation["context"]), group.id, group.name))
    if automation is not None and automation_jobs.applies(automation, inbound):
        automation_jobs.classify_new(tx, automation, inbound, conversation,
                                     new_customer=new_customer)
    tx.emit("conversation.opened", {"conversation": conversation},
            conversation_id=conversation_id, customer_id=customer_id)
    return conversation


def _touch(tx: Tx, conversation: JSON) -> None:
    """The conversation's ``last_message_at`` becomes now (at the batch's flush)."""
    if tx.rows is not None:
        tx.rows.touched.add(conversation["id"])
    else:
        tx.conn.execute("UPDATE conversations SET last_message_at = ? WHERE id = ?",
                        (tx.now_iso, conversation["id"]))
    conversation["last_message_at"] = tx.now_iso


def _add_message(tx: Tx, inbound: InboundMessage, key: DedupeKey,
                 attachments: list[StoredAttachment], conversation: JSON, customer_id: str,
                 in_reply_to: str | None, *, direction: str, status: str,
                 sent_at: str) -> IngestResult:
    """Insert the message, its raw payload and ``message.received``."""
    message_id = new_id("msg")
    conversation_id = conversation["id"]
    message = _message_json(
        message_id=message_id, conversation_id=conversation_id, customer_id=customer_id,
        channel=inbound.channel, account=inbound.account, direction=direction,
        sender=inbound.sender, recipient=inbound.recipient, subject=inbound.subject,
        text=inbound.text, html=inbound.html, attachments=attachments, in_reply_to=in_reply_to,
        provider_message_id=inbound.provider_message_id,
        thread_id=inbound.provider_thread_id, status=status, agent=None,
        automatic=inbound.automatic, sent_at=sent_at, received_at=tx.now_iso,
        content=inbound.content, error=inbound.error,
        authentication=None if inbound.authentication is None
        else inbound.authentication.to_json())
    encoded = orjson.dumps(message)  # once: the row, the event and the caller's answer
    # The event shares the row's copy of the message (compact storage, migration 0007).
    event_seq = tx.emit("message.received", {"message": orjson.Fragment(encoded),
                                             "conversation": conversation},
                        conversation_id=conversation_id, customer_id=customer_id,
                        shares=SharedMessage(message_id, encoded, message))
    _insert_message(tx, message, attachments, encoded, event_seq)
    if inbound.remote_attachments:  # fetched after this commit (gateway/fetcher.py)
        _queue_fetches(tx, message_id, inbound.remote_attachments)
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
    """The customer's most recently active 1:1 conversation (a group they opened is not
    theirs alone)."""
    cached = tx.cache.latest.get(customer_id)
    if cached is not None:
        return cached
    row = tx.one("SELECT * FROM conversations WHERE customer_id = ? AND group_id IS NULL "
                 "ORDER BY last_message_at DESC, id DESC LIMIT 1", (customer_id,))
    return None if row is None else _conversation_json(row)




# ---------------------------------------------------------------- group chats


def _group_key(conversation: JSON) -> GroupKey | None:
    group = conversation.get("group")
    return None if group is None else (conversation["account"], group["id"])


def _group_conversation(tx: Tx, inbound: InboundMessage, customer_id: str,
                        reopen_window_days: float) -> tuple[JSON | None, str | None]:
    """The conversation a group post joins (None: start one), and the message it answers.

    A reply reference threads only inside the same group of the same account (a provider's
    message ids may repeat across chats, Telegram's do). Otherwise the group's latest
    conversation is joined when it is open or was closed within the reopen window (the
    caller reopens it).
    """
    group = inbound.group
    assert group is not None
    key: GroupKey = (inbound.account, group.id)
    for ref in inbound.reply_refs:
        row: sqlite3.Row | JSON | None = tx.one(
            "SELECT m.id, m.conversation_id FROM messages m JOIN conversations c "
            "ON c.id = m.conversation_id WHERE m.channel = ? AND m.provider_message_id = ? "
            "AND m.account = ? AND c.group_id = ?",
            (inbound.channel, ref, inbound.account, group.id))
        if row is None and tx.rows is not None:  # stored earlier in this batch
            row = tx.rows.by_ref.get((inbound.channel, ref))
        if row is None:
            continue
        conversation = _conversation_by_id(tx, row["conversation_id"])
        if conversation is not None and may_join(conversation["customer_id"], customer_id,
                                                 _group_key(conversation), key):
            return _renamed(tx, conversation, inbound), row["id"]
    latest = tx.one("SELECT * FROM conversations WHERE group_id = ? AND channel = ? "
                    "AND account = ? ORDER BY last_message_at DESC, id DESC LIMIT 1",
                    (group.id, inbound.channel, inbound.account))
    if latest is not None:
        conversation = _conversation_json(latest)
        closed_at = conversation["closed_at"]
        if joins_latest(conversation["status"], parse_iso(closed_at) if closed_at else None,
                        reopen_window_start(tx.now, reopen_window_days)):
            return _renamed(tx, conversation, inbound), None
    return None, None


def _renamed(tx: Tx, conversation: JSON, inbound: InboundMessage) -> JSON:
    """Keep the group's name current (``conversation.updated`` when it was renamed)."""
    group = inbound.group
    assert group is not None
    if group.name and (conversation.get("group") or {}).get("name") != group.name:
        tx.conn.execute("UPDATE conversations SET group_name = ? WHERE id = ?",
                        (group.name, conversation["id"]))
        conversation = {**conversation, "group": group.to_json()}
        tx.emit("conversation.updated", {"conversation": conversation},
                conversation_id=conversation["id"], customer_id=conversation["customer_id"])
    return conversation


# ---------------------------------------------------------------- echoes


def _ingest_echo(tx: Tx, echo: InboundMessage, key: DedupeKey,
                 attachments: list[StoredAttachment],
                 reopen_window_days: float) -> IngestResult:
    """Store a message the account sent elsewhere (an echo); the caller ruled out a repeat
    (an echo carrying the provider id of one of omnirelay's own sends is one).

    An echo of omnirelay's own send without a provider id (a provider that gives none) is
    matched by recipient and text within ``echo.match_window`` seconds and adds nothing
    (the send takes the echo's id). Any other echo joins its customer's open conversation
    (a new one when none is open; it reopens nothing) as an outbound message with
    ``agent: null`` and status ``sent``, announced as ``message.received``.
    """
    recipient = echo.recipient
    if recipient is None:
        raise ValidationFailed("an outbound message (echo) needs its recipient")
    if echo.match_window is not None:
        matched = _match_own_send(tx, echo, recipient, echo.match_window)
        if matched is not None:
            return IngestResult(matched, created=False)
    customer_id, new_customer = _resolve_sender(tx, dataclasses.replace(echo, sender=recipient))
    if new_customer is not None:
        tx.emit("customer.created", {"customer": new_customer}, customer_id=customer_id)
    conversation: JSON | None = None
    in_reply_to: str | None = None
    if echo.group is not None:
        conversation, in_reply_to = _group_conversation(tx, echo, customer_id,
                                                        reopen_window_days)
    else:
        for ref in echo.reply_refs:
            row: sqlite3.Row | JSON | None = tx.one(
                "SELECT id, conversation_id FROM messages WHERE channel = ? "
                "AND provider_message_id = ? AND account = ?", (echo.channel, ref, echo.account))
            if row is None and tx.rows is not None:
                row = tx.rows.by_ref.get((echo.channel, ref))
            if row is None:
                continue
            found = _conversation_by_id(tx, row["conversation_id"])
            if found is not None and may_join(found["customer_id"], customer_id,
                                              _group_key(found)):
                conversation, in_reply_to = found, row["id"]
                break
        if conversation is None and new_customer is None:
            latest = _latest_conversation(tx, customer_id)
            if latest is not None and latest["status"] == "open":
                conversation = latest
    if conversation is None:
        conversation = _open_conversation(tx, echo, customer_id)
    else:
        _touch(tx, conversation)
    if echo.group is None:
        tx.cache.latest[customer_id] = conversation
    return _add_message(tx, echo, key, attachments, conversation, customer_id, in_reply_to,
                        direction="outbound", status="sent",
                        sent_at=iso(echo.sent_at) or tx.now_iso)


def _match_own_send(tx: Tx, echo: InboundMessage, recipient: Party,
                    window: float) -> JSON | None:
    """omnirelay's own send to ``recipient`` with the echo's text, without a provider id,
    sent (or queued) within ``window`` seconds; it takes the echo's provider id, so a
    second echo of the same text matches the next send, never this one again."""
    owner = _owner(tx, recipient)
    if owner is None:
        return None
    since = tx.now - timedelta(seconds=window)
    for candidate in tx.conn.execute(
            "SELECT m.data FROM messages m JOIN conversations c ON c.id = m.conversation_id "
            "WHERE c.customer_id = ? AND m.channel = ? AND m.account = ? "
            "AND m.direction = 'outbound' AND m.provider_message_id IS NULL "
            "ORDER BY m.id DESC LIMIT 50", (owner[0], echo.channel, echo.account)).fetchall():
        message: JSON = _loads(candidate["data"])
        when = message["sent_at"] or message["received_at"]
        if (message["text"] == echo.text and (message["to"] or {}).get("address")
                == recipient.address and parse_iso(when) >= since):
            message["provider"]["message_id"] = echo.provider_message_id
            _save_message(tx, message)
            return message
    return None

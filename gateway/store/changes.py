"""Write jobs for what providers report after a message: changes, receipts, echoes, groups.

Every provider channel needs these, so they are built once here, behind the store: an
edit, a reaction or a withdrawal changes a stored message (``message.updated``); a delivery
or read receipt moves an outbound message's status forwards (``message.status``); an echo
of a message the account sent is matched to omnirelay's own send or stored as an outbound
message without an agent; a group post joins its group's conversation; a withdrawn
identity leaves its customer (``customer.updated``). Each function runs on the writer
thread inside the caller's transaction (a :class:`~gateway.store.sqlite.Tx`), like the
jobs in ``sqlite.py``; the same change applied twice emits nothing.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime, timedelta

import orjson

from gateway.errors import NotFound, ValidationFailed
from gateway.ids import iso, new_id, parse_iso
from gateway.store.base import JSON, IngestResult, StoredAttachment
from gateway.store.sqlite import (
    _INSERT_RAW,
    _VALUES,
    Tx,
    _conversation_by_id,
    _conversation_json,
    _customer_json,
    _dumps,
    _insert_message,
    _latest_conversation,
    _loads,
    _message_json,
    _resolve_customer_id,
    _resolve_sender,
    _save_message,
)
from normalizer.model import DeliveryStatus, InboundMessage, MessageChange, Party

_RANK = {"queued": 0, "sent": 1, "delivered": 2, "read": 3}


@dataclass(frozen=True, slots=True)
class ChangeResult:
    """The message after a change or receipt, and which of its fields moved (none: a repeat)."""

    message: JSON
    changed: tuple[str, ...] = ()


def receipt_moves(current: str, status: str) -> bool:
    """Whether a receipt saying ``status`` moves a message that is ``current``.

    Never backwards: queued < sent < delivered < read. ``failed`` ends a message that was
    not yet delivered (Twilio's undelivered/failed and Meta's failed follow ``sent``); a
    failure reported after delivery or reading is stale. Twilio documents that status
    callbacks may arrive out of order, so a later ``delivered`` or ``read`` proves a
    failed message arrived after all and moves it on.
    """
    if status == current:
        return False
    if status == "failed":
        return current in ("queued", "sent")
    if current == "failed":
        return status in ("delivered", "read")
    return _RANK.get(status, -1) > _RANK.get(current, 99)


def _find(tx: Tx, channel: str, account: str, provider_message_id: str) -> JSON:
    row = tx.one("SELECT data FROM messages WHERE channel = ? AND provider_message_id = ? "
                 "AND account = ?", (channel, provider_message_id, account))
    if row is None:
        raise NotFound(f"no {channel} message {provider_message_id!r} in account {account!r}")
    message: JSON = _loads(row["data"])
    return message


def _reaction_pairs(reactions: list[JSON]) -> list[tuple[str, str]]:
    return [(r["emoji"], r["by"]) for r in reactions]


def change_message(tx: Tx, channel: str, account: str, provider_message_id: str,
                   change: MessageChange) -> ChangeResult:
    """Apply an edit, reactions or a withdrawal; emit ``message.updated`` if anything moved.

    Raises NotFound for a provider id this account never delivered.
    """
    message = _find(tx, channel, account, provider_message_id)
    at = iso(change.at) if change.at is not None else tx.now_iso
    assert at is not None
    changed: list[str] = []
    if change.text is not None and change.text != message["text"]:
        edited_at = message.get("edited_at")
        if edited_at is None or parse_iso(edited_at) <= parse_iso(at):
            message["text"] = change.text
            message["html"] = None  # it showed the old text
            message["edited_at"] = at
            changed += ["text", "edited_at"]
    current: list[JSON] = message.get("reactions") or []
    wanted: list[tuple[str, str]] | None = None
    given_at: dict[tuple[str, str], str] = {}
    if change.reactions is not None:
        wanted = []
        for reaction in change.reactions:
            pair = (reaction.emoji, reaction.by)
            if pair not in wanted:
                wanted.append(pair)
                if reaction.at is not None:
                    given_at[pair] = iso(reaction.at) or at
    elif change.reactions_of is not None:
        person, emojis = change.reactions_of
        wanted = [p for p in _reaction_pairs(current) if p[1] != person]
        wanted += [(emoji, person) for emoji in dict.fromkeys(emojis)]
    if wanted is not None and set(wanted) != set(_reaction_pairs(current)):
        kept = {(r["emoji"], r["by"]): r["at"] for r in current}
        message["reactions"] = [{"emoji": e, "by": b, "at": kept.get((e, b))
                                 or given_at.get((e, b), at)} for e, b in wanted]
        changed.append("reactions")
    if change.withdrawn and not message.get("withdrawn"):
        message["withdrawn"] = True
        changed.append("withdrawn")
    if not changed:
        return ChangeResult(message)
    _save_message(tx, message)
    tx.emit("message.updated", {"message": message, "changed": changed},
            conversation_id=message["conversation_id"], customer_id=message["customer_id"])
    return ChangeResult(message, tuple(changed))


def apply_receipt(tx: Tx, channel: str, account: str, provider_message_id: str,
                  status: DeliveryStatus, error: JSON | None,
                  at: datetime | None) -> ChangeResult | None:
    """Move an outbound message's status by its provider id (``message.status``).

    Returns None when no message has that provider id (a provider may report on messages
    sent from elsewhere); refuses a receipt for an inbound message.
    """
    try:
        message = _find(tx, channel, account, provider_message_id)
    except NotFound:
        return None
    if message["direction"] != "outbound":
        raise ValidationFailed(f"message {provider_message_id!r} is inbound; receipts move "
                               f"outbound messages")
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


def apply_read_watermark(tx: Tx, channel: str, account: str, recipient: Party,
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


def remove_identity(tx: Tx, kind: str, address: str) -> JSON:
    """Take an identity a provider withdrew from its customer (``customer.updated``).

    The customer's name goes too when that identity gave it. Raises NotFound when no
    customer has the identity.
    """
    row = tx.one("SELECT customer_id FROM identities WHERE kind = ? AND address = ?",
                 (kind, address))
    if row is None:
        raise NotFound(f"no customer has identity {kind}:{address}")
    customer_id = _resolve_customer_id(tx.conn, row["customer_id"])
    tx.conn.execute("DELETE FROM identities WHERE kind = ? AND address = ?", (kind, address))
    tx.cache.identities.pop((kind, address), None)
    tx.cache.names.pop(customer_id, None)
    tx.conn.execute("UPDATE customers SET name = CASE WHEN name_source = ?1 THEN NULL "
                    "ELSE name END, name_source = CASE WHEN name_source = ?1 THEN NULL "
                    "ELSE name_source END, updated_at = ?2 WHERE id = ?3",
                    (f"{kind}:{address}", tx.now_iso, customer_id))
    customer = _customer_json(tx.conn, customer_id)
    assert customer is not None
    tx.emit("customer.updated", {"customer": customer}, customer_id=customer_id)
    return customer


# ---------------------------------------------------------------- groups


def group_conversation(tx: Tx, inbound: InboundMessage, customer_id: str,
                       reopen_window_days: float) -> tuple[JSON, str | None]:
    """The conversation of a group post, and the message it answers (threading in a group).

    A reply reference threads only into the same group. Otherwise the group's latest
    conversation is joined when it is open or was closed within the reopen window (the
    caller reopens it), else a new one starts, opened by this poster.
    """
    group = inbound.group
    assert group is not None
    for ref in inbound.reply_refs:
        row = tx.one("SELECT m.id, m.conversation_id FROM messages m JOIN conversations c "
                     "ON c.id = m.conversation_id WHERE m.channel = ? "
                     "AND m.provider_message_id = ? AND m.account = ? AND c.group_id = ?",
                     (inbound.channel, ref, inbound.account, group.id))
        if row is None and tx.rows is not None:  # stored earlier in this batch
            earlier = tx.rows.by_ref.get((inbound.channel, ref))
            if earlier is not None and earlier["account"] == inbound.account:
                row = earlier
        if row is not None:
            conversation = _conversation_by_id(tx, row["conversation_id"])
            if conversation is not None and (conversation.get("group") or {}).get(
                    "id") == group.id:
                return _named(tx, conversation, inbound), row["id"]
    latest = tx.one("SELECT * FROM conversations WHERE group_id = ? AND channel = ? "
                    "AND account = ? ORDER BY last_message_at DESC, id DESC LIMIT 1",
                    (group.id, inbound.channel, inbound.account))
    if latest is not None:
        conversation = _conversation_json(latest)
        start = tx.now - timedelta(days=reopen_window_days)
        closed_at = conversation["closed_at"]
        if conversation["status"] == "open" or (closed_at and parse_iso(closed_at) >= start):
            return _named(tx, conversation, inbound), None
    conversation_id = new_id("cnv")
    conversation = {
        "id": conversation_id, "customer_id": customer_id, "channel": inbound.channel,
        "account": inbound.account, "status": "open", "opened_at": tx.now_iso,
        "closed_at": None, "last_message_at": tx.now_iso, "tags": [], "priority": "normal",
        "queue": None, "context": inbound.context or {}, "group": group.to_json()}
    tx.conn.execute(
        "INSERT INTO conversations (id, customer_id, channel, account, status, opened_at, "
        "last_message_at, context, group_id, group_name) VALUES (?, ?, ?, ?, 'open', ?, ?, ?, "
        "?, ?)", (conversation_id, customer_id, inbound.channel, inbound.account, tx.now_iso,
                  tx.now_iso, _dumps(conversation["context"]), group.id, group.name))
    tx.emit("conversation.opened", {"conversation": conversation},
            conversation_id=conversation_id, customer_id=customer_id)
    return conversation, None


def _named(tx: Tx, conversation: JSON, inbound: InboundMessage) -> JSON:
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


def store_echo(tx: Tx, inbound: InboundMessage, attachments: list[StoredAttachment],
               reopen_window_days: float) -> IngestResult:
    """Store a message the account sent elsewhere (an echo); the caller ruled out a repeat.

    An echo of omnirelay's own send without a provider id (a provider that gives none) is
    matched by recipient and text within ``inbound.match_window`` seconds and adds nothing
    (the send takes the echo's id). Any other echo is stored in the customer's open
    conversation (a new one when none is open) as an outbound message with ``agent: null``
    and status ``sent``, announced as ``message.received``.
    """
    recipient = inbound.recipient
    if recipient is None:
        raise ValidationFailed("an outbound message (echo) needs its recipient")
    if inbound.match_window is not None:
        matched = _match_own_send(tx, inbound, recipient, inbound.match_window)
        if matched is not None:
            return IngestResult(matched, created=False)
    as_customer = dataclasses.replace(inbound, sender=recipient)
    customer_id, new_customer = _resolve_sender(tx, as_customer)
    if new_customer is not None:
        tx.emit("customer.created", {"customer": new_customer}, customer_id=customer_id)
    conversation: JSON | None = None
    in_reply_to: str | None = None
    if inbound.group is not None:
        conversation, in_reply_to = group_conversation(tx, inbound, customer_id,
                                                       reopen_window_days)
    else:
        for ref in inbound.reply_refs:
            row = tx.one("SELECT id, conversation_id FROM messages WHERE channel = ? AND "
                         "provider_message_id = ? AND account = ?",
                         (inbound.channel, ref, inbound.account))
            if row is None and tx.rows is not None:
                row = tx.rows.by_ref.get((inbound.channel, ref))
            if row is not None:
                found = _conversation_by_id(tx, row["conversation_id"])
                if found is not None and found["customer_id"] == customer_id \
                        and found.get("group") is None:
                    conversation, in_reply_to = found, row["id"]
                    break
        if conversation is None and new_customer is None:
            latest = _latest_conversation(tx, customer_id)
            if latest is not None and latest["status"] == "open":
                conversation = latest
    if conversation is None:
        conversation_id = new_id("cnv")
        conversation = {
            "id": conversation_id, "customer_id": customer_id, "channel": inbound.channel,
            "account": inbound.account, "status": "open", "opened_at": tx.now_iso,
            "closed_at": None, "last_message_at": tx.now_iso, "tags": [],
            "priority": "normal", "queue": None, "context": inbound.context or {},
            "group": None}
        tx.conn.execute(
            "INSERT INTO conversations (id, customer_id, channel, account, status, opened_at, "
            "last_message_at, context) VALUES (?, ?, ?, ?, 'open', ?, ?, ?)",
            (conversation_id, customer_id, inbound.channel, inbound.account, tx.now_iso,
             tx.now_iso, _dumps(conversation["context"])))
        tx.emit("conversation.opened", {"conversation": conversation},
                conversation_id=conversation_id, customer_id=customer_id)
    else:
        if tx.rows is not None:
            tx.rows.touched.add(conversation["id"])
        else:
            tx.conn.execute("UPDATE conversations SET last_message_at = ? WHERE id = ?",
                            (tx.now_iso, conversation["id"]))
        conversation = {**conversation, "last_message_at": tx.now_iso}
    if conversation.get("group") is None:
        tx.cache.latest[customer_id] = conversation
    message = _message_json(
        message_id=new_id("msg"), conversation_id=conversation["id"], customer_id=customer_id,
        channel=inbound.channel, account=inbound.account, direction="outbound",
        sender=inbound.sender, recipient=recipient, subject=inbound.subject, text=inbound.text,
        html=inbound.html, attachments=attachments, in_reply_to=in_reply_to,
        provider_message_id=inbound.provider_message_id,
        thread_id=inbound.provider_thread_id, status="sent", agent=None,
        automatic=inbound.automatic,
        sent_at=iso(inbound.sent_at) if inbound.sent_at else tx.now_iso,
        received_at=tx.now_iso, content=inbound.content)
    encoded = orjson.dumps(message)
    _insert_message(tx, message, attachments, encoded)
    if inbound.raw is not None:
        raw = (message["id"], inbound.raw_content_type, inbound.raw, tx.now_iso)
        if tx.rows is not None:
            tx.rows.raw.append(raw)
        else:
            tx.conn.execute(_INSERT_RAW + _VALUES[4], raw)
    if tx.rows is not None:
        key = (inbound.channel, inbound.account, inbound.provider_message_id)
        tx.rows.by_key[key] = message
        tx.rows.by_ref.setdefault((inbound.channel, inbound.provider_message_id), message)
    tx.emit("message.received", {"message": orjson.Fragment(encoded),
                                 "conversation": conversation},
            conversation_id=conversation["id"], customer_id=customer_id)
    return IngestResult(message, created=True, message_json=encoded)


def _match_own_send(tx: Tx, echo: InboundMessage, recipient: Party,
                    window: float) -> JSON | None:
    """omnirelay's own send to ``recipient`` with the echo's text, without a provider id,
    sent (or queued) within ``window`` seconds; it takes the echo's provider id, so a
    second echo of the same text matches the next send, never this one again."""
    row = tx.one("SELECT customer_id FROM identities WHERE kind = ? AND address = ?",
                 (recipient.kind, recipient.address))
    if row is None:
        return None
    customer_id = _resolve_customer_id(tx.conn, row["customer_id"])
    since = tx.now - timedelta(seconds=window)
    for candidate in tx.conn.execute(
            "SELECT m.data FROM messages m JOIN conversations c ON c.id = m.conversation_id "
            "WHERE c.customer_id = ? AND m.channel = ? AND m.account = ? "
            "AND m.direction = 'outbound' AND m.provider_message_id IS NULL "
            "ORDER BY m.id DESC LIMIT 50", (customer_id, echo.channel, echo.account)
            ).fetchall():
        message: JSON = _loads(candidate["data"])
        when = message["sent_at"] or message["received_at"]
        if (message["text"] == echo.text and (message["to"] or {}).get("address")
                == recipient.address and parse_iso(when) >= since):
            message["provider"]["message_id"] = echo.provider_message_id
            _save_message(tx, message)
            return message
    return None

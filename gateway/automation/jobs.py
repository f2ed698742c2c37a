"""Automation's store work: run inside the SQLite writer's transactions.

Two kinds: steps the ingest job calls for each customer message (the routing rules and the
urgency signal set tags, priority and queue before the message's events are written; a
short answer to a CSAT survey is recorded instead of reopening the conversation), and the
automatic sends (an acknowledgement, a rule's reply, a survey) queued with a dedupe key in
the same transaction, so a restart that sees an event again never sends twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

from gateway.automation.config import AutomationConfig
from gateway.automation.csat import parse_score
from gateway.automation.rules import MessageFacts, changes_for, classify
from gateway.ids import iso
from gateway.store.base import JSON, OutboundRequest, Route
from gateway.store.jobs.outbound import _enqueue_outbound
from gateway.store.records import _dumps, _loads
from normalizer.timestamps import parse_iso

if TYPE_CHECKING:
    from gateway.store.jobs.tx import Tx
    from normalizer.model import InboundMessage


@dataclass(frozen=True, slots=True)
class Automation:
    """What the store's ingest job needs: the config and each account's ``type``."""

    config: AutomationConfig
    account_types: dict[tuple[str, str], str]  # (channel, account name) → account type

    def account_type(self, channel: str, account: str) -> str:
        """The ``type`` of the account receiving on ``channel`` (the channel if unknown)."""
        return self.account_types.get((channel, account), channel)


def _facts(tx: Tx, automation: Automation, inbound: InboundMessage, conversation: JSON, *,
           first: bool, new_customer: bool) -> MessageFacts:
    recent = 1
    window = automation.config.urgency.burst_minutes
    if not first and automation.config.urgency.enabled:
        since = iso(tx.now - timedelta(minutes=window)) or ""
        row = tx.one("SELECT COUNT(*) FROM messages WHERE conversation_id = ? AND "
                     "direction = 'inbound' AND created_at >= ?", (conversation["id"], since))
        recent += int(row[0]) if row is not None else 0
        if tx.rows is not None:  # this batch's messages are inserted at its flush
            recent += sum(1 for m in tx.rows.messages
                          if m[1] == conversation["id"] and m[5] == "inbound" and m[8] >= since)
    return MessageFacts(
        channel=inbound.channel, account=inbound.account,
        account_type=automation.account_type(inbound.channel, inbound.account),
        text=inbound.text or "", subject=inbound.subject,
        sender=f"{inbound.sender.kind}:{inbound.sender.address}",
        sender_name=inbound.sender.name, context=conversation.get("context") or {},
        at=tx.now, new_customer=new_customer, first_message=first, recent_messages=recent)


def applies(automation: Automation | None, inbound: InboundMessage) -> bool:
    """Whether automation looks at this message: a person's 1:1 message, rules configured."""
    return (automation is not None and automation.config.classifies
            and inbound.group is None and inbound.automatic is None
            and inbound.direction == "inbound")


def classify_new(tx: Tx, automation: Automation, inbound: InboundMessage,
                 conversation: JSON, *, new_customer: bool) -> None:
    """A conversation this message opens: its fields set before ``conversation.opened``."""
    facts = _facts(tx, automation, inbound, conversation, first=True,
                   new_customer=new_customer)
    result = classify(facts, automation.config.rules, automation.config.urgency)
    changes = changes_for(conversation, result)
    if changes:
        _write_fields(tx, conversation, changes)


def classify_existing(tx: Tx, automation: Automation, inbound: InboundMessage,
                      conversation: JSON) -> None:
    """A message joining a conversation: what it changes is a ``conversation.updated``."""
    facts = _facts(tx, automation, inbound, conversation, first=False, new_customer=False)
    result = classify(facts, automation.config.rules, automation.config.urgency)
    changes = changes_for(conversation, result)
    if not changes:
        return
    _write_fields(tx, conversation, changes)
    tx.emit("conversation.updated", {"conversation": conversation, "changes": changes,
                                     "agent": None},
            conversation_id=conversation["id"], customer_id=conversation["customer_id"])


def _write_fields(tx: Tx, conversation: JSON, changes: dict[str, dict[str, object]]) -> None:
    for name, change in changes.items():
        conversation[name] = change["to"]
    tx.conn.execute("UPDATE conversations SET tags = ?, priority = ?, queue = ? WHERE id = ?",
                    (_dumps(conversation["tags"]), conversation["priority"],
                     conversation["queue"], conversation["id"]))


def survey_answer(tx: Tx, automation: Automation | None, inbound: InboundMessage,
                  conversation: JSON) -> bool:
    """Record a short answer to a pending CSAT survey (``conversation.updated`` with
    ``changes.csat``); True when it was one, so the conversation is not reopened."""
    if (automation is None or inbound.group is not None or inbound.automatic is not None
            or inbound.direction != "inbound"
            or conversation["status"] != "closed"
            or not any(a.csat for a in automation.config.accounts)):
        return False
    row = tx.one("SELECT survey, csat FROM conversations WHERE id = ?", (conversation["id"],))
    if row is None or row["survey"] is None or row["csat"] is not None:
        return False
    survey = _loads(row["survey"])
    if tx.now > parse_iso(survey["expires_at"]):
        return False
    score = parse_score(inbound.text or "")
    if score is None:
        return False
    csat = {"score": score, "agent": survey.get("agent"), "answered_at": tx.now_iso}
    tx.conn.execute("UPDATE conversations SET csat = ?, survey = NULL WHERE id = ?",
                    (_dumps(csat), conversation["id"]))
    conversation["csat"] = csat
    tx.emit("conversation.updated", {"conversation": conversation,
                                     "changes": {"csat": {"from": None, "to": csat}},
                                     "agent": None},
            conversation_id=conversation["id"], customer_id=conversation["customer_id"])
    return True


def _send_automatic(tx: Tx, conversation_id: str, request: OutboundRequest,
                    routes: list[Route], keys: list[tuple[str, float | None]],
                    survey: JSON | None) -> JSON | None:
    """Queue an automatic message unless one of ``keys`` was used (within its window in
    seconds; None: ever). Returns the queued message, or None when deduped."""
    for key, window in keys:
        row = tx.one("SELECT created_at FROM automatic_sends WHERE key = ?", (key,))
        if row is None:
            continue
        if window is None or (tx.now - parse_iso(row["created_at"])).total_seconds() < window:
            return None
    _status, message = _enqueue_outbound(tx, conversation_id, None, request, routes, None)
    for key, _window in keys:
        tx.conn.execute("INSERT INTO automatic_sends (key, message_id, created_at) "
                        "VALUES (?, ?, ?) ON CONFLICT (key) DO UPDATE SET message_id = "
                        "excluded.message_id, created_at = excluded.created_at",
                        (key, message["id"], tx.now_iso))
    if survey is not None:
        tx.conn.execute("UPDATE conversations SET survey = ? WHERE id = ?",
                        (_dumps({**survey, "message_id": message["id"]}), conversation_id))
    return message

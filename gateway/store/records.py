"""Rows to the contract's JSON shapes, shared by the write jobs and the reads."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from typing import Any

import orjson

from gateway.errors import NotFound
from gateway.store import compact
from gateway.store.base import JSON, StoredAttachment
from normalizer.model import Party


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def _loads(value: str | bytes | None) -> Any:
    """Parse stored JSON, plain or compact (a zstd frame, see compact.py)."""
    return None if value is None else orjson.loads(compact.unpack(value))


def _conversation_json(row: sqlite3.Row) -> JSON:
    return {
        "id": row["id"], "customer_id": row["customer_id"], "channel": row["channel"],
        "account": row["account"], "status": row["status"], "opened_at": row["opened_at"],
        "closed_at": row["closed_at"], "last_message_at": row["last_message_at"],
        "tags": _loads(row["tags"]), "priority": row["priority"], "queue": row["queue"],
        "assignee": _loads(row["assignee"]),
        "context": _loads(row["context"]),
        "group": ({"id": row["group_id"], "name": row["group_name"]}
                  if row["group_id"] is not None else None),
        "csat": _loads(row["csat"]),  # automation's CSAT answer (migration 0009)
    }


def _customer_json(conn: sqlite3.Connection, customer_id: str, *,
                   with_conversations: bool = False) -> JSON | None:
    row = conn.execute("SELECT * FROM customers WHERE id = ?", (customer_id,)).fetchone()
    if row is None:
        return None
    identities = []
    for r in conn.execute("SELECT kind, address, channels, opt_outs FROM identities "
                          "WHERE customer_id = ? ORDER BY created_at, kind, address",
                          (customer_id,)):
        identity = {"kind": r["kind"], "address": r["address"],
                    "channels": _loads(r["channels"])}
        if r["opt_outs"]:  # only where there are some (migration 0010, docs/twilio.md)
            identity["opt_outs"] = _loads(r["opt_outs"])
        identities.append(identity)
    customer: JSON = {"id": row["id"], "name": row["name"], "merged_into": row["merged_into"],
                      "identities": identities, "created_at": row["created_at"]}
    if with_conversations:
        customer["conversations"] = [
            _conversation_json(r) for r in conn.execute(
                "SELECT * FROM conversations WHERE customer_id = ? ORDER BY id", (customer_id,))
        ]
    return customer


def _resolve_customer_id(conn: sqlite3.Connection, customer_id: str) -> str:
    """Follow ``merged_into`` to the surviving customer."""
    seen = set()
    current = customer_id
    while current not in seen:
        seen.add(current)
        row = conn.execute("SELECT merged_into FROM customers WHERE id = ?",
                           (current,)).fetchone()
        if row is None:
            raise NotFound(f"customer {customer_id} not found")
        if row["merged_into"] is None:
            return current
        current = row["merged_into"]
    return current



def _message_json(*, message_id: str, conversation_id: str, customer_id: str, channel: str,
                  account: str, direction: str, sender: Party | JSON | None,
                  recipient: Party | JSON | None, subject: str | None, text: str,
                  html: str | None, attachments: Iterable[StoredAttachment],
                  in_reply_to: str | None, provider_message_id: str | None,
                  thread_id: str | None, status: str, agent: JSON | None,
                  automatic: str | None, sent_at: str | None, received_at: str,
                  content: JSON | None = None, error: JSON | None = None,
                  authentication: JSON | None = None) -> JSON:
    def party(p: Party | JSON | None) -> JSON | None:
        return p.to_json() if isinstance(p, Party) else p

    message: JSON = {
        "id": message_id, "conversation_id": conversation_id, "customer_id": customer_id,
        "channel": channel, "account": account, "direction": direction,
        "from": party(sender), "to": party(recipient), "subject": subject, "text": text,
        "html": html, "attachments": [a.to_json() for a in attachments],
        "in_reply_to": in_reply_to,
        "provider": {"message_id": provider_message_id, "thread_id": thread_id},
        "status": status, "error": error, "agent": agent, "automatic": automatic,
        "sent_at": sent_at, "received_at": received_at,
    }
    if content is not None:
        message["content"] = content
    if authentication is not None:  # e-mail of an account with trusted_authserv_ids only
        message["provider"]["authentication"] = authentication
    return message

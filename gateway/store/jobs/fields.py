"""The conversation fields a help desk sets: tags, priority, queue, assignee (issue 23).

One ``conversation.updated`` event per request that changed something, naming each field
that moved with its old and new value; a request that changes nothing emits nothing.
"""

from __future__ import annotations

from gateway.errors import NotFound
from gateway.store.base import JSON
from gateway.store.jobs.tx import Tx
from gateway.store.records import _conversation_json, _dumps

SETTABLE = ("tags", "priority", "queue", "assignee")


def _patch_conversation(tx: Tx, conversation_id: str, wanted: JSON,
                        agent: JSON | None) -> JSON:
    """Set the fields of ``wanted`` (already validated); return the conversation."""
    row = tx.one("SELECT * FROM conversations WHERE id = ?", (conversation_id,))
    if row is None:
        raise NotFound(f"conversation {conversation_id} not found")
    current = _conversation_json(row)
    changes = {name: {"from": current[name], "to": wanted[name]}
               for name in SETTABLE if name in wanted and wanted[name] != current[name]}
    if not changes:
        return current
    columns: dict[str, object] = {}
    for name, change in changes.items():
        value = change["to"]
        if name == "tags":
            columns["tags"] = _dumps(value)
        elif name == "assignee":
            columns["assignee"] = None if value is None else _dumps(value)
            columns["assignee_id"] = None if value is None else value["id"]
        else:
            columns[name] = value
    tx.conn.execute(f"UPDATE conversations SET {', '.join(f'{c} = ?' for c in columns)} "
                    "WHERE id = ?", (*columns.values(), conversation_id))
    tx.cache.latest.pop(current["customer_id"], None)
    updated = tx.one("SELECT * FROM conversations WHERE id = ?", (conversation_id,))
    assert updated is not None  # read above, in this same transaction
    conversation = _conversation_json(updated)
    tx.emit("conversation.updated",
            {"conversation": conversation, "changes": changes, "agent": agent},
            conversation_id=conversation_id, customer_id=conversation["customer_id"])
    return conversation

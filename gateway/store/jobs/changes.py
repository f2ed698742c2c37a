"""Write jobs for what a provider reports about a message it delivered earlier: an edit,
reactions, a withdrawal. Each emits ``message.updated`` with the fields that moved; the
same change twice emits nothing."""

from __future__ import annotations

from gateway.errors import NotFound
from gateway.ids import iso
from gateway.store.base import JSON, ChangeResult
from gateway.store.jobs.tx import Tx, _save_message
from gateway.store.records import _loads
from normalizer.model import MessageChange
from normalizer.timestamps import parse_iso


def _change_message(tx: Tx, channel: str, account: str, provider_message_id: str,
                    change: MessageChange) -> ChangeResult:
    """Apply an edit, reactions or a withdrawal; emit ``message.updated`` if anything moved.

    An edit older than the stored one is stale and changes nothing. Raises NotFound for a
    provider id this account never delivered.
    """
    row = tx.one("SELECT data FROM messages WHERE channel = ? AND account = ? "
                 "AND provider_message_id = ?", (channel, account, provider_message_id))
    if row is None:
        raise NotFound(f"no {channel} message {provider_message_id!r} in account {account!r}")
    message: JSON = _loads(row["data"])
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
    if _reactions(message, change, at):
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


def _reactions(message: JSON, change: MessageChange, at: str) -> bool:
    """Set the message's reactions from the change; whether they moved.

    ``change.reactions`` is the whole current set, ``change.reactions_of`` one person's
    (the others' stay). A reaction kept keeps the time it was first given.
    """
    current: list[JSON] = message.get("reactions") or []
    pairs = [(r["emoji"], r["by"]) for r in current]
    wanted: list[tuple[str, str]]
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
        wanted = [p for p in pairs if p[1] != person]
        wanted += [(emoji, person) for emoji in dict.fromkeys(emojis)]
    else:
        return False
    if set(wanted) == set(pairs):
        return False
    kept = {(r["emoji"], r["by"]): r["at"] for r in current}
    message["reactions"] = [{"emoji": e, "by": b, "at": kept.get((e, b))
                             or given_at.get((e, b), at)} for e, b in wanted]
    return True

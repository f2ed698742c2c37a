"""The store interface: SQLiteStore implements every role of ``Store`` as declared."""

from __future__ import annotations

import inspect

import pytest

from gateway.store import base
from gateway.store.sqlite import SQLiteStore

ROLES = [base.FeedStore, base.BlobStore, base.IngestStore, base.CheckpointStore, base.MediaStore,
         base.ChangeStore, base.AdapterStore, base.ReceiptStore, base.OutboxStore,
         base.WebhookStore, base.ConversationStore, base.CustomerStore, base.AdminStore,
         base.Store]


def _methods(protocol: type) -> list[str]:
    return sorted(name for name, value in vars(protocol).items()
                  if callable(value) and not name.startswith("_"))


@pytest.mark.parametrize("role", ROLES, ids=lambda role: role.__name__)
def test_sqlite_store_implements_each_role_with_the_declared_signatures(role: type) -> None:
    for name in _methods(role):
        declared = inspect.signature(getattr(role, name))
        implemented = inspect.signature(getattr(SQLiteStore, name))
        assert implemented == declared, f"{role.__name__}.{name}"
        assert (inspect.iscoroutinefunction(getattr(SQLiteStore, name))
                == inspect.iscoroutinefunction(getattr(role, name))), name


def test_store_is_every_role_and_covers_what_callers_use() -> None:
    every = {name for role in ROLES for name in _methods(role)}
    assert every == {name for name in dir(base.Store) if not name.startswith("_")
                     and callable(getattr(base.Store, name))}
    # What the API, outbox, webhooks, feed, adapters and CLI call (grep "store.<name>").
    assert {"events_after", "head_seq", "ingest", "put_blobs", "enqueue_outbound",
            "claim_outbox", "outbox_sent", "fan_out", "claim_deliveries", "get_checkpoint",
            "set_checkpoint", "get_message", "get_raw", "blob_path", "erase_customer",
            "purge_older_than", "ping", "open", "close", "list_dead_letters",
            "replay_dead_letters", "merge_customers", "add_identity", "get_attachment",
            "list_conversations", "list_messages", "find_customer", "get_customer",
            "set_conversation_status", "outbox_depth", "next_outbox_due",
            "next_delivery_due", "recover_inflight", "recover_deliveries",
            "delivery_done", "delivery_retry", "outbox_retry", "outbox_failed",
            "backup", "change_message", "remove_identity", "take_back", "apply_receipt",
            "apply_read_watermark"} <= every

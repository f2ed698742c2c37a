"""Persistence: one :class:`Store` interface, an SQLite backend with group commit."""

from __future__ import annotations

from gateway.store.base import (
    Delivery,
    IngestResult,
    OutboundRequest,
    OutboxItem,
    Store,
    StoredAttachment,
)

__all__ = [
    "Delivery",
    "IngestResult",
    "OutboundRequest",
    "OutboxItem",
    "Store",
    "StoredAttachment",
]

"""The one path from an adapter's normalized inbound message to a committed row.

Identities are canonicalized (E.164, lower-cased e-mail), attachments are written to the
content-addressed blob store (off the loop, before the message that names them commits),
and the message is stored once. The call returns only after the commit, so an adapter
that acknowledges after it acknowledges only what is stored.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import structlog

from gateway.errors import PayloadTooLarge, ValidationFailed
from gateway.logging import info_enabled
from gateway.metrics import Metrics
from gateway.store.base import IngestResult
from gateway.store.sqlite import SQLiteStore
from normalizer.identity import InvalidIdentity, normalize_party
from normalizer.model import InboundMessage

log = structlog.get_logger(__name__)


class IngestService:
    """Implements :class:`adapters.base.Ingest` for every adapter."""

    def __init__(self, store: SQLiteStore, metrics: Metrics, *, default_region: str,
                 max_attachment_bytes: int) -> None:
        self.store = store
        self.metrics = metrics
        self.default_region = default_region
        self.max_attachment_bytes = max_attachment_bytes
        self._counters: dict[tuple[str, str], tuple[Any, Any, Any]] = {}

    async def __call__(self, inbound: InboundMessage) -> IngestResult:
        """Store ``inbound`` once and return after its commit."""
        started = time.perf_counter()
        try:
            sender = normalize_party(inbound.sender, self.default_region)
        except InvalidIdentity as exc:
            raise ValidationFailed(f"sender: {exc}") from exc
        linked = []
        for party in inbound.linked_identities:
            try:
                linked.append(normalize_party(party, self.default_region))
            except InvalidIdentity as exc:
                # A bad extra field must not lose the message: keep it, skip the link.
                log.warning("ingest.identity_skipped", kind=party.kind, error=str(exc))
        # normalize_party returns the same object when nothing changed (the usual case);
        # list comparison checks identity before equality.
        if sender is not inbound.sender or linked != inbound.linked_identities:
            inbound = dataclasses.replace(inbound, sender=sender, linked_identities=linked)
        if inbound.direction == "outbound" and inbound.recipient is not None:
            inbound = self._canonical_recipient(inbound)  # H8: an echo's customer
        for att in inbound.attachments:
            if len(att.data) > self.max_attachment_bytes:
                raise PayloadTooLarge(f"attachment {att.filename!r} is {len(att.data)} bytes; "
                                      f"the limit is {self.max_attachment_bytes}")
        stored = await self.store.put_blobs([
            (a.filename, a.content_type, a.data, a.inline, a.content_id)
            for a in inbound.attachments]) if inbound.attachments else []
        result = await self.store.ingest(inbound, stored)
        counters = self._counters.get((inbound.channel, inbound.account))
        if counters is None:
            labels = (inbound.channel, inbound.account)
            counters = (self.metrics.messages_in.labels(*labels),
                        self.metrics.duplicates.labels(*labels),
                        self.metrics.ingest_latency.labels(inbound.channel))
            self._counters[labels] = counters
        if result.created:
            counters[0].inc()
            counters[2].observe(time.perf_counter() - started)
            if info_enabled():
                log.info("ingest.stored", message_id=result.message["id"],
                         conversation_id=result.message["conversation_id"],
                         channel=inbound.channel, account=inbound.account)
        else:
            counters[1].inc()
            if info_enabled():
                log.info("ingest.duplicate", message_id=result.message["id"],
                         channel=inbound.channel, account=inbound.account)
        return result

    def _canonical_recipient(self, inbound: InboundMessage) -> InboundMessage:
        """An echo's customer is its recipient: canonicalize it as a sender would be."""
        assert inbound.recipient is not None
        try:
            recipient = normalize_party(inbound.recipient, self.default_region)
        except InvalidIdentity as exc:
            raise ValidationFailed(f"recipient: {exc}") from exc
        if recipient is inbound.recipient:
            return inbound
        return dataclasses.replace(inbound, recipient=recipient)

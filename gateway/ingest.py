"""The one path from an adapter's normalized inbound message to a committed row.

Identities are canonicalized (E.164, lower-cased e-mail), attachments are written to the
content-addressed blob store (off the loop, before the message that names them commits),
and the message is stored once. The call returns only after the commit, so an adapter
that acknowledges after it acknowledges only what is stored.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import structlog
from prometheus_client import Counter, Histogram

from gateway.errors import PayloadTooLarge, ValidationFailed
from gateway.logging import info_event
from gateway.metrics import Metrics
from gateway.store.base import IngestResult, IngestStore, StoredAttachment
from normalizer.attachments import sanitize_content_type, sanitize_filename
from normalizer.identity import InvalidIdentity, normalize_party
from normalizer.model import AttachmentData, InboundMessage

log = structlog.get_logger(__name__)


class IngestService:
    """Implements :class:`adapters.base.Ingest` for every adapter."""

    def __init__(self, store: IngestStore, metrics: Metrics, *, default_region: str,
                 max_attachment_bytes: int) -> None:
        self.store = store
        self.metrics = metrics
        self.default_region = default_region
        self.max_attachment_bytes = max_attachment_bytes
        self._counters: dict[tuple[str, str], tuple[Counter, Counter, Histogram]] = {}
        # Called after a commit that queued attachment fetches (the fetcher's wake-up).
        self.on_remote_attachments: Callable[[], None] | None = None

    async def __call__(self, inbound: InboundMessage) -> IngestResult:
        """Store ``inbound`` once and return after its commit.

        ``inbound.attachments`` is emptied once their bytes are in the blob store.
        """
        started = time.perf_counter()
        inbound, stored = await self._prepare(inbound)
        result = await self.store.ingest(inbound, stored)
        self._count(inbound, result, started)
        return result

    async def ingest_all(self, inbounds: list[InboundMessage]) -> list[IngestResult]:
        """Store the messages of one provider request in one transaction, all or none (a
        LINE webhook's events); return after the commit, a result per message in order.

        A store without ``ingest_all`` stores them one after the other (each committed).
        """
        started = time.perf_counter()
        prepared = [await self._prepare(inbound) for inbound in inbounds]
        batch = getattr(self.store, "ingest_all", None)
        if batch is not None:
            results: list[IngestResult] = await batch(prepared)
        else:
            results = [await self.store.ingest(inbound, stored) for inbound, stored in prepared]
        for (inbound, _), result in zip(prepared, results, strict=True):
            self._count(inbound, result, started)
        return results

    async def _prepare(self, inbound: InboundMessage
                       ) -> tuple[InboundMessage, list[StoredAttachment]]:
        """Canonical identities, attachment metadata and bytes in the blob store."""
        # Errors and log lines name the field, never the refused address: a log is out of
        # reach of a customer's erasure.
        try:
            sender = normalize_party(inbound.sender, self.default_region)
        except InvalidIdentity:
            raise ValidationFailed(f"sender: not a valid {inbound.sender.kind} "
                                   "address") from None
        linked = []
        for party in inbound.linked_identities:
            try:
                linked.append(normalize_party(party, self.default_region))
            except InvalidIdentity:
                # A bad extra field must not lose the message: keep it, skip the link.
                log.warning("ingest.identity_skipped", kind=party.kind,
                            channel=inbound.channel, account=inbound.account,
                            reason=f"not a valid {party.kind} address")
        # normalize_party returns the same object when nothing changed (the usual case);
        # list comparison checks identity before equality.
        if sender is not inbound.sender or linked != inbound.linked_identities:
            inbound = dataclasses.replace(inbound, sender=sender, linked_identities=linked)
        if inbound.direction == "outbound":  # an echo: its recipient is the customer
            if inbound.recipient is None:
                raise ValidationFailed("an outbound message (echo) needs its recipient")
            inbound = self._canonical_recipient(inbound)
        # Not a loop variable: it would keep the last attachment's bytes alive below.
        too_large = next((a for a in inbound.attachments
                          if len(a.data) > self.max_attachment_bytes), None)
        if too_large is not None:
            raise PayloadTooLarge(f"attachment {too_large.filename!r} is {len(too_large.data)} "
                                  f"bytes; the limit is {self.max_attachment_bytes}")
        if inbound.attachments:
            inbound.attachments = safe_attachments(inbound.attachments)
        stored = await self.store.put_blobs([
            (a.filename, a.content_type, a.data, a.inline, a.content_id)
            for a in inbound.attachments]) if inbound.attachments else []
        # The bytes are in the blob store now; the store's own copies of the raw message
        # (SQLite builds its row in memory) need not sit beside 25 MB of them.
        inbound.attachments = []
        return inbound, stored

    def _count(self, inbound: InboundMessage, result: IngestResult, started: float) -> None:
        """Metrics, the fetcher's wake-up and the log line of one stored message."""
        counters = self._counters.get((inbound.channel, inbound.account))
        if counters is None:
            labels = (inbound.channel, inbound.account)
            counters = (self.metrics.messages_in.labels(*labels),
                        self.metrics.duplicates.labels(*labels),
                        self.metrics.ingest_latency.labels(inbound.channel))
            self._counters[labels] = counters
        if result.created:
            if inbound.remote_attachments and self.on_remote_attachments is not None:
                self.on_remote_attachments()
            counters[0].inc()
            counters[2].observe(time.perf_counter() - started)
            info_event("ingest.stored", message_id=result.message["id"],
                       conversation_id=result.message["conversation_id"],
                       channel=inbound.channel, account=inbound.account)
        else:
            counters[1].inc()
            info_event("ingest.duplicate", message_id=result.message["id"],
                       channel=inbound.channel, account=inbound.account)

    def _canonical_recipient(self, inbound: InboundMessage) -> InboundMessage:
        """An echo's customer is its recipient: canonicalize it as a sender would be."""
        assert inbound.recipient is not None
        try:
            recipient = normalize_party(inbound.recipient, self.default_region)
        except InvalidIdentity:
            raise ValidationFailed(f"recipient: not a valid {inbound.recipient.kind} "
                                   "address") from None
        if recipient is inbound.recipient:
            return inbound
        return dataclasses.replace(inbound, recipient=recipient)


def safe_attachments(attachments: list[AttachmentData]) -> list[AttachmentData]:
    """Every channel's attachments with metadata the download and e-mail can trust.

    A provider's (or a mail's) content type outside the MIME grammar becomes
    ``application/octet-stream`` and a filename loses control, bidi and path characters
    (normalizer/attachments.py): a message is never refused over its metadata.
    """
    cleaned = []
    for att in attachments:
        filename = sanitize_filename(att.filename)
        content_type = sanitize_content_type(att.content_type)
        if filename != att.filename or content_type != att.content_type:
            att = dataclasses.replace(att, filename=filename, content_type=content_type)
        cleaned.append(att)
    return cleaned

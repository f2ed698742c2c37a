"""The typed sink adapters hand delivery and read receipts to.

A provider reports what happened to a message omnirelay sent (Twilio status callbacks,
WhatsApp and Messenger statuses, LINE and Telegram have none): the adapter maps the
provider's words to a :data:`DeliveryStatus` and hands a :class:`Receipt` to
``ctx.receipts``, which moves the outbound message found by its provider id forwards only
(see :func:`gateway.store.rules.receipt_moves`) and emits ``message.status``. It returns
after the commit, so the adapter acknowledges the provider only then.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from gateway.store.base import ChangeResult, ReceiptStore
from normalizer.model import DeliveryStatus, Party


@dataclass(frozen=True, slots=True)
class DeliveryError:
    """Why the provider could not deliver: its own code and text."""

    code: str
    message: str


@dataclass(frozen=True, slots=True)
class Receipt:
    """One status report for a message omnirelay sent, keyed by the provider's id."""

    channel: str
    account: str
    provider_message_id: str
    status: DeliveryStatus
    error: DeliveryError | None = None
    at: datetime | None = None  # when the provider says it happened


class Receipts(Protocol):
    """Where adapters hand receipts. Returns after the commit.

    Returns None when no message has that provider id (one sent from elsewhere: still
    acknowledge it), else the message and whether its status moved. Example::

        await self.ctx.receipts(Receipt("sms", self.name, form["MessageSid"], "delivered"))
        return web.Response(status=204)
    """

    async def __call__(self, receipt: Receipt) -> ChangeResult | None: ...

    async def read_up_to(self, channel: str, account: str, recipient: Party,
                         watermark: datetime) -> int:
        """A read watermark (Messenger, Instagram): replies to ``recipient`` sent up to
        ``watermark`` are read. Returns how many moved."""
        ...


class ReceiptSink:
    """Implements :class:`Receipts` over the store."""

    def __init__(self, store: ReceiptStore) -> None:
        self.store = store

    async def __call__(self, receipt: Receipt) -> ChangeResult | None:
        """Apply ``receipt``; see :class:`Receipts`."""
        error = None if receipt.error is None else {"code": receipt.error.code,
                                                    "message": receipt.error.message}
        return await self.store.apply_receipt(receipt.channel, receipt.account,
                                              receipt.provider_message_id, receipt.status,
                                              error, receipt.at)

    async def read_up_to(self, channel: str, account: str, recipient: Party,
                         watermark: datetime) -> int:
        """Apply a read watermark; see :class:`Receipts`."""
        return await self.store.apply_read_watermark(channel, account, recipient, watermark)

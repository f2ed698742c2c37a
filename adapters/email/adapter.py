"""E-mail adapter: an aiosmtpd listener for inbound mail, aiosmtplib for replies."""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

import structlog
from aiosmtpd.smtp import SMTP, Envelope, Session

from adapters.base import ChannelAdapter, SendResult
from adapters.email.config import EmailConfig
from adapters.email.outbound import send_reply
from gateway.errors import AdapterConfigError, OmnirelayError, StoreError
from gateway.store.base import OutboxItem
from normalizer.email import parse_email
from normalizer.model import Party

log = structlog.get_logger(__name__)


class EmailAdapter(ChannelAdapter):
    """One mailbox: inbound over SMTP (and IMAP), replies over SMTP submission."""

    type = "email"
    channels = frozenset({"email"})
    config_class = EmailConfig
    config: EmailConfig

    def __init__(self, name: str, config: Any, ctx: Any) -> None:
        super().__init__(name, config, ctx)
        self._server: asyncio.base_events.Server | None = None
        self._inflight: set[asyncio.Task[Any]] = set()
        self.smtp_port: int | None = None

    def sender(self, channel: str) -> Party:
        """Replies come from the account's address."""
        return Party("email", self.config.address, self.config.display_name)

    async def on_start(self) -> None:
        """Open the SMTP listener when one is configured."""
        if self.config.smtp_listen is None:
            return
        host, port = self.config.smtp_listen
        tls_context = None
        if self.config.tls_cert_file:
            tls_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            try:
                tls_context.load_cert_chain(self.config.tls_cert_file,
                                            self.config.tls_key_file)
            except (OSError, ssl.SSLError) as exc:
                raise AdapterConfigError(f"cannot load the TLS certificate: {exc}",
                                         channel="email", account=self.name) from exc
        handler = _SmtpHandler(self)
        loop = asyncio.get_running_loop()

        def factory() -> SMTP:
            return SMTP(handler, data_size_limit=self.config.max_message_bytes,
                        enable_SMTPUTF8=True, hostname=self.config.address.split("@")[-1],
                        ident="omnirelay ESMTP", tls_context=tls_context,
                        require_starttls=False, timeout=300)

        self._server = await loop.create_server(factory, host=host, port=port,
                                                reuse_address=True)
        self.smtp_port = self._server.sockets[0].getsockname()[1]
        self.log.info("email.smtp_listening", host=host, port=self.smtp_port)

    async def on_stop(self) -> None:
        """Stop accepting connections; sessions mid-DATA finish their commit."""
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._inflight:
            await asyncio.wait(self._inflight, timeout=30)

    async def accept_mail(self, raw: bytes, recipient: str | None) -> str:
        """Parse (off the loop), store, and return the SMTP reply line."""
        task = asyncio.current_task()
        if task is not None:
            self._inflight.add(task)
        try:
            inbound = await asyncio.to_thread(parse_email, raw, self.name, recipient=recipient)
            result = await self.ingest(inbound)
        except StoreError as exc:
            self.last_error = exc.message
            return "451 4.3.0 Temporary failure storing the message; try again later"
        except OmnirelayError as exc:
            self.log.warning("email.rejected", error=exc.message)
            return f"554 5.6.0 {exc.message}"
        finally:
            if task is not None:
                self._inflight.discard(task)
        self.log.info("email.accepted", message_id=result.message["id"],
                      duplicate=not result.created)
        return "250 2.0.0 Message accepted"

    async def send(self, item: OutboxItem) -> SendResult:
        """Send a reply over SMTP submission."""
        return await send_reply(self.config, item, self.name, self.ctx.store.blob_dir)


class _SmtpHandler:
    """aiosmtpd handler: 550 for foreign recipients, 250 only after commit."""

    def __init__(self, adapter: EmailAdapter) -> None:
        self.adapter = adapter

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        if not self.adapter.config.accepts(address):
            return f"550 5.1.1 <{address}>: no such mailbox here"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session,
                          envelope: Envelope) -> str:
        raw = envelope.original_content or envelope.content or b""
        if isinstance(raw, str):
            raw = raw.encode("utf-8", "surrogateescape")
        recipient = envelope.rcpt_tos[0] if envelope.rcpt_tos else None
        return await self.adapter.accept_mail(raw, recipient)

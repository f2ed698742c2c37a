"""E-mail adapter: SMTP listener and IMAP mailboxes in, SMTP submission out.

Inbound mail of every source goes through :meth:`EmailAdapter.accept_raw`: parse (in a
thread when large), hand to the gateway, return after the commit. Only then is the source
acknowledged: ``250`` to the sending server, ``\\Seen`` (or a move) on the IMAP server.
"""

from __future__ import annotations

import asyncio
import ssl
import weakref
from typing import Any

from aiosmtpd.smtp import SMTP

from adapters.base import (
    AdapterContext,
    AdapterHealth,
    AdapterState,
    ChannelAdapter,
    OutboundMessage,
    SendLimits,
    SendResult,
)
from adapters.email.config import EmailConfig
from adapters.email.imap import Mailbox, append_copy
from adapters.email.inbound import SmtpHandler, SmtpSession
from adapters.email.outbound import render, submit, thread_of
from gateway.errors import (
    AdapterConfigError,
    AdapterNotReady,
    NotFound,
    OmnirelayError,
    PayloadTooLarge,
    PermanentSendError,
    RetryableSendError,
    StoreError,
)
from gateway.store.base import IngestResult
from normalizer.email import parse_email
from normalizer.model import Party

# Parsing a small message takes ~0.1 ms: cheaper on the loop than a thread hop. Larger
# ones (attachments) go to a thread so the loop keeps serving other sessions.
INLINE_PARSE_BYTES = 64 * 1024


class EmailAdapter(ChannelAdapter):
    """One e-mail account: inbound over SMTP and IMAP, replies over SMTP submission."""

    type = "email"
    channels = frozenset({"email"})
    identity_kinds = frozenset({"email"})
    config_class = EmailConfig
    config: EmailConfig

    def __init__(self, name: str, config: EmailConfig, ctx: AdapterContext, *,
                 limits: SendLimits | None = None) -> None:
        super().__init__(name, config, ctx, limits=limits)
        self._server: asyncio.base_events.Server | None = None
        self._sessions: weakref.WeakSet[SMTP] = weakref.WeakSet()
        self._inflight: set[asyncio.Task[Any]] = set()
        self.mailboxes: list[Mailbox] = []
        self.smtp_port: int | None = None
        self.counters.update({"smtp_accepted": 0, "smtp_rejected": 0, "smtp_deferred": 0,
                              "imap_imported": 0, "imap_reconnects": 0,
                              "sent_copy_errors": 0})

    def sender(self, channel: str) -> Party:
        """Replies come from the account's address."""
        return Party("email", self.config.address, self.config.display_name)

    # ------------------------------------------------------------------ lifecycle

    async def on_start(self) -> None:
        """Open the SMTP listener and start one supervised loop per IMAP mailbox.

        A listener that cannot bind is transient (AdapterNotReady: the daemon retries); a
        certificate that cannot be loaded is a configuration error. IMAP servers are not
        waited for: each mailbox reconnects on its own, and health shows its last error.
        """
        if self.config.smtp_listen is not None:
            await self._listen()
        for settings in self.config.imap:
            mailbox = Mailbox(settings, account=self.name, deliver=self._deliver_imap,
                              store=self.ctx.store,
                              max_message_bytes=self.config.max_message_bytes)
            self.mailboxes.append(mailbox)
            mailbox.start(self.ctx.loops)

    async def _listen(self) -> None:
        assert self.config.smtp_listen is not None
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
        handler = SmtpHandler(self)
        loop = asyncio.get_running_loop()

        def factory() -> SMTP:
            session = SmtpSession(handler, data_size_limit=self.config.max_message_bytes,
                           enable_SMTPUTF8=True, hostname=self.config.domain,
                           ident="omnirelay ESMTP", tls_context=tls_context,
                           require_starttls=False, timeout=300)
            self._sessions.add(session)
            return session

        try:
            self._server = await loop.create_server(factory, host=host, port=port,
                                                    reuse_address=True)
        except OSError as exc:
            raise AdapterNotReady(f"cannot listen on {host}:{port}: {exc.strerror or exc}",
                                  channel="email", account=self.name) from exc
        self.smtp_port = self._server.sockets[0].getsockname()[1]
        self.log.info("email.smtp_listening", host=host, port=self.smtp_port,
                      starttls=tls_context is not None)

    async def on_stop(self) -> None:
        """Stop intake: no new SMTP sessions (the mailbox loops are already cancelled);
        commits in flight finish."""
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._inflight:
            await asyncio.wait(self._inflight, timeout=30)
        for session in list(self._sessions):
            transport = getattr(session, "transport", None)
            if transport is not None:
                transport.close()

    def health(self) -> AdapterHealth:
        """SMTP and every mailbox; DEGRADED while a mailbox cannot reach its server."""
        counters = dict(self.counters)
        counters["imap_imported"] = sum(m.imported for m in self.mailboxes)
        counters["imap_reconnects"] = sum(m.reconnects for m in self.mailboxes)
        failing = [m.last_error for m in self.mailboxes if m.last_error and not m.connected]
        state = self.state
        if state is AdapterState.RUNNING and failing:
            state = AdapterState.DEGRADED
        return AdapterHealth(state, failing[0] if failing else self.last_error, counters,
                             self.ctx.loops.health())

    # ------------------------------------------------------------------ inbound

    async def accept_raw(self, raw: bytes, recipient: str | None) -> IngestResult:
        """Parse and ingest one message; returns after commit. Raises what ingest raises."""
        if len(raw) <= INLINE_PARSE_BYTES:
            inbound = parse_email(raw, self.name, recipient=recipient)
        else:
            inbound = await asyncio.to_thread(parse_email, raw, self.name,
                                              recipient=recipient)
        return await self.ingest(inbound)

    async def accept_mail(self, raw: bytes, recipient: str | None) -> str:
        """SMTP DATA: store the message and return the reply line (250 after commit)."""
        task = asyncio.current_task()
        if task is not None:
            self._inflight.add(task)
        try:
            result = await self.accept_raw(raw, recipient)
        except StoreError as exc:
            self.last_error = exc.message
            self.counters["smtp_deferred"] += 1
            self.log.warning("email.store_unavailable", error=exc.message)
            return "451 4.3.0 Temporary failure storing the message; try again later"
        except PayloadTooLarge as exc:
            self.counters["smtp_rejected"] += 1
            return f"552 5.3.4 {exc.message}"
        except OmnirelayError as exc:
            self.counters["smtp_rejected"] += 1
            self.log.warning("email.rejected", error=exc.message)
            return f"554 5.6.0 {exc.message}"
        except Exception:
            # Not stored, so not ours yet: a temporary failure keeps it at the sender.
            self.counters["smtp_deferred"] += 1
            self.log.exception("email.accept_failed")
            return "451 4.3.0 Temporary failure; try again later"
        finally:
            if task is not None:
                self._inflight.discard(task)
        self.counters["smtp_accepted"] += 1
        if not result.created:
            self.log.info("email.duplicate", message_id=result.message["id"])
        return "250 2.0.0 Message accepted"

    async def _deliver_imap(self, raw: bytes) -> bool:
        """IMAP: ingest one fetched message; True when it was new."""
        result = await self.accept_raw(raw, None)
        return result.created

    # ------------------------------------------------------------------ outbound

    async def send(self, message: OutboundMessage) -> SendResult:
        """Send one message over SMTP submission, then file a copy in Sent if configured."""
        smtp = self.config.smtp
        if smtp is None:
            raise PermanentSendError(
                f"e-mail account {self.name!r} has no [smtp] server for replies",
                error_code="no_smtp_server")
        parent, parent_raw = await self._parent(message)
        thread = thread_of(message, parent, parent_raw)
        message_id, data = await render(self.config, message, thread, self.ctx.store.blob_path,
                                        plus_addressing=self.config.plus_addressing)
        recipient = message.to.address
        try:
            await submit(smtp, self.config.address, [recipient], data)
        except (RetryableSendError, PermanentSendError) as exc:
            self.last_error = exc.message
            raise
        self.log.info("email.sent", message_id=message.id, smtp_id=message_id)
        await self._copy_to_sent(data)
        return SendResult(message_id, "sent")

    async def _parent(self, message: OutboundMessage
                      ) -> tuple[dict[str, Any] | None, bytes | None]:
        """The message being answered, and its raw bytes (for its References)."""
        parent_id = message.in_reply_to
        if not parent_id:
            return None, None
        store = self.ctx.store
        try:
            parent = await store.get_message(parent_id)
        except NotFound:
            return None, None
        raw = await store.get_raw(parent_id)
        return parent, raw[1] if raw else None

    async def _copy_to_sent(self, data: bytes) -> None:
        """APPEND to the Sent folder. The mail is already sent: a failure only logs."""
        settings = self.config.sent_copy
        if settings is None:
            return
        try:
            async with asyncio.timeout(settings.timeout * 2):
                await append_copy(settings, data)
        except Exception as exc:
            self.counters["sent_copy_errors"] += 1
            error = getattr(exc, "message", None) or str(exc) or type(exc).__name__
            self.last_error = f"copy to {settings.sent_folder!r} failed: {error}"
            self.log.warning("email.sent_copy_failed", folder=settings.sent_folder,
                             error=error)


"""E-mail adapter: SMTP listener and IMAP mailboxes in, SMTP submission out.

Inbound mail of every source goes through :meth:`EmailAdapter.accept_raw`: parse (in a
thread when large), hand to the gateway, return after the commit. Only then is the source
acknowledged: ``250`` to the sending server, ``\\Seen`` (or a move) on the IMAP server.

A message the parser cannot take (it raises, or the message is beyond the MIME limits) is
a *poison message*: refusing or retrying it would bring it back forever (a sending server
retries for days, an IMAP mailbox fetches it on every start). It is stored as received,
flagged with the message's ``error = {"code": "unparsable", …}``, and acknowledged like
any other.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import email.parser
import email.utils
import hashlib
import ssl
import weakref
from collections.abc import Callable
from pathlib import Path
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
from adapters.email.bounces import read_bounce, returned_to_null_sender
from adapters.email.config import EmailConfig, ServerSettings
from adapters.email.imap import Mailbox, append_copy
from adapters.email.inbound import SessionLimits, SmtpHandler, SmtpSession, SpooledData
from adapters.email.outbound import render, submit, thread_of
from adapters.email.probe import probe_mailbox, probe_relay
from gateway.errors import (
    AdapterAuthError,
    AdapterConfigError,
    AdapterError,
    AdapterNotReady,
    Conflict,
    NotFound,
    OmnirelayError,
    PayloadTooLarge,
    PermanentSendError,
    RetryableSendError,
    StoreError,
    ValidationFailed,
)
from gateway.oauth2 import AccessTokens, OAuth2Settings
from gateway.receipts import Receipt
from gateway.store.base import ChangeResult, IngestResult
from normalizer.email import MessageTooComplex, ParseLimits, parse_email
from normalizer.identity import InvalidIdentity, normalize_email
from normalizer.model import InboundMessage, Party

# A small message is parsed on the loop: cheaper than a thread hop (docs/benchmarks.md,
# SMTP). Larger ones (attachments) go to a thread so the loop keeps serving other sessions.
INLINE_PARSE_BYTES = 64 * 1024
# Storing a message costs about four times its size in memory while it runs (the raw
# bytes, and SQLite building the raw row; the parse itself stays under one): so one large
# message at a time (the parse holds the GIL, so a second one would not run alongside
# anyway), and the allocator is asked to give the memory back after each.
LARGE_MESSAGE_BYTES = 1024 * 1024
# Poison messages: where their sender is looked for, and how much of the head is read.
POISON_HEADER_BYTES = 64 * 1024
UNKNOWN_SENDER = "unknown@invalid"
# A bounce's references tried against our replies (each one a store lookup): its own
# In-Reply-To, its References newest first, then the original it quotes.
MAX_BOUNCE_REFS = 10


class EmailAdapter(ChannelAdapter):
    """One e-mail account: inbound over SMTP and IMAP, replies over SMTP submission."""

    type = "email"
    channels = frozenset({"email"})
    identity_kinds = frozenset({"email"})
    channel_identity_kinds = {"email": ("email",)}
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
        self.parse_limits = ParseLimits(max_parts=self.config.max_mime_parts,
                                        max_depth=self.config.max_mime_depth)
        self._large = asyncio.Lock()
        # One token source per distinct oauth2 table: mailboxes (and the relay) signing in
        # with the same one share its cached token and its refreshes.
        self._tokens: dict[OAuth2Settings, AccessTokens] = {}
        self.counters.update({"smtp_accepted": 0, "smtp_rejected": 0, "smtp_deferred": 0,
                              "smtp_connections_refused": 0, "smtp_timeouts": 0,
                              "unparsable": 0, "imap_imported": 0, "imap_reconnects": 0,
                              "sent_copy_errors": 0, "bounces_applied": 0})

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
        for index, settings in enumerate(self.config.imap):
            mailbox = Mailbox(settings, account=self.name, ingest=self._ingest_fetched,
                              store=self.ctx.store,
                              max_message_bytes=self.config.max_message_bytes,
                              tokens=self.tokens_for(settings), index=index)
            self.mailboxes.append(mailbox)
            mailbox.start(self.ctx.loops)

    async def probe(self) -> str | None:
        """Sign in to every IMAP mailbox (EXAMINE, read-only) and to the SMTP relay (AUTH,
        no MAIL FROM). The SMTP listener has no remote side: an account with only a
        listener has nothing to check. Every failure is named, the first one's kind (a
        refused sign-in first) is raised.

        One after the other: servers whose ``oauth2`` tables differ only in their scope
        share a refresh token (one lineage), and a provider that rotates it would refuse
        the second of two concurrent refreshes presenting the same one.
        """
        checks = [probe_mailbox(settings, self.tokens_for(settings))
                  for settings in self.config.imap]
        if self.config.smtp is not None:
            checks.append(probe_relay(self.config.smtp, self.tokens_for(self.config.smtp)))
        if not checks:
            return None
        results: list[str | Exception] = []
        for check in checks:
            try:
                results.append(await check)
            except Exception as exc:
                results.append(exc)
        failures = [r for r in results if isinstance(r, Exception)]
        if failures:
            auth = [f for f in failures if isinstance(f, AdapterAuthError)]
            first = (auth or failures)[0]
            if len(failures) == 1:
                raise first
            text = "; ".join(getattr(f, "message", None) or str(f) or type(f).__name__
                             for f in failures)
            kind = type(first) if isinstance(first, AdapterError) else AdapterNotReady
            raise kind(text, channel_type="email", account=self.name) from first
        summary = [r for r in results if isinstance(r, str)]
        if self.config.smtp_listen is not None:
            summary.append("SMTP listener: nothing remote to check")
        return "; ".join(summary)

    def tokens_for(self, settings: ServerSettings) -> AccessTokens | None:
        """The access tokens a server's ``oauth2`` table gives (None: it takes a password)."""
        if settings.oauth2 is None:
            return None
        tokens = self._tokens.get(settings.oauth2)
        if tokens is None:
            tokens = AccessTokens(settings.oauth2, http=self.ctx.http, store=self.ctx.store,
                                  timeout=settings.timeout, logger=self.log)
            self._tokens[settings.oauth2] = tokens
        return tokens

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
                                         channel_type="email", account=self.name) from exc
        handler = SmtpHandler(self)
        loop = asyncio.get_running_loop()
        limits = SessionLimits(self.config.smtp_max_sessions,
                               self.config.smtp_max_sessions_per_address)
        spool_dir = self._spool_dir()

        def factory() -> SMTP:
            session = SmtpSession(handler, limits=limits,
                                  data_size_limit=self.config.max_message_bytes,
                                  hostname=self.config.domain, tls_context=tls_context,
                                  require_starttls=self.config.smtp_require_starttls,
                                  timeout=self.config.smtp_idle_timeout, spool_dir=spool_dir)
            self._sessions.add(session)
            return session

        try:
            self._server = await loop.create_server(factory, host=host, port=port,
                                                    reuse_address=True)
        except OSError as exc:
            raise AdapterNotReady(f"cannot listen on {host}:{port}: {exc.strerror or exc}",
                                  channel_type="email", account=self.name) from exc
        self.smtp_port = self._server.sockets[0].getsockname()[1]
        self.log.info("email.smtp_listening", host=host, port=self.smtp_port,
                      starttls=tls_context is not None,
                      require_starttls=self.config.smtp_require_starttls)

    def _spool_dir(self) -> Path | None:
        """``spool/`` in the data directory (private, on disk: /tmp may be RAM)."""
        blob_dir = getattr(self.ctx.store, "blob_dir", None)
        if not isinstance(blob_dir, Path):
            return None  # the system's temporary directory
        spool = blob_dir.parent / "spool"
        try:
            spool.mkdir(mode=0o700, exist_ok=True)
        except OSError as exc:
            raise AdapterConfigError(f"cannot create the SMTP spool {spool}: {exc}",
                                     channel_type="email", account=self.name) from exc
        return spool

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
        if self._tokens:
            counters["oauth2_refreshes"] = sum(t.refreshes for t in self._tokens.values())
        failing = [m.last_error for m in self.mailboxes if m.last_error and not m.connected]
        state = self.state
        if state is AdapterState.RUNNING and failing:
            state = AdapterState.DEGRADED
        return AdapterHealth(state, failing[0] if failing else self.last_error, counters,
                             self.ctx.loops.health())

    # ------------------------------------------------------------------ inbound

    async def accept_raw(self, raw: bytes, recipient: str | None, *,
                         mail_from: str | None = None) -> IngestResult:
        """Parse and ingest one message; returns after commit. Raises what ingest raises.

        A large message waits for its turn, so concurrent sessions cannot stack their
        parses in memory; a message the parser cannot take is stored as a poison message
        (see the module docstring). After a large message, callers drop their reference to
        ``raw`` and call :meth:`release_memory`.
        """
        if len(raw) < LARGE_MESSAGE_BYTES:
            return await self._accept(raw, recipient, mail_from)
        async with self._large:
            return await self._accept(raw, recipient, mail_from)

    async def _accept_spooled(self, spool: SpooledData, recipient: str | None,
                              mail_from: str | None) -> IngestResult:
        """A spooled message is read into memory only when its turn comes."""
        async with self._large:
            raw = await asyncio.to_thread(spool.read)
            return await self._accept(raw, recipient, mail_from)

    async def release_memory(self, size: int) -> None:
        """After a message of ``size`` bytes is gone: give the heap back if it was large.

        Freed memory stays in glibc's heaps (one per thread that parsed) unless trimmed:
        one 24.6 MB mail left the daemon 200 MB larger for good.
        """
        if size >= LARGE_MESSAGE_BYTES and _MALLOC_TRIM is not None:
            await asyncio.to_thread(_MALLOC_TRIM, 0)

    async def _accept(self, raw: bytes, recipient: str | None,
                      mail_from: str | None) -> IngestResult:
        inbound: InboundMessage
        try:
            if len(raw) <= INLINE_PARSE_BYTES:
                inbound = self._parse(raw, recipient)
            else:
                inbound = await asyncio.to_thread(self._parse, raw, recipient)
        except Exception as exc:  # whatever it was, the message must not come back
            inbound = self._poison(raw, recipient, mail_from, exc)
        refused: ValidationFailed
        try:
            return await self._hand_over(inbound, mail_from)
        except ValidationFailed as exc:  # what the parser made of it cannot be stored
            if inbound.error is not None:
                raise
            refused = exc.with_traceback(None)  # its frames would keep the parse alive
        del inbound
        return await self.ingest(self._poison(raw, recipient, mail_from, refused))

    def _parse(self, raw: bytes, recipient: str | None) -> InboundMessage:
        """Parse; after a large message, hand the parse's scratch memory back at once.

        The parse runs in a worker thread and the store writes in its own: each allocates
        from its own glibc arena, so what the parse freed could not serve the store's
        copies of the raw message (peak 4.6 times a 20 MB mail instead of 3.8).
        """
        message = parse_email(raw, self.name, recipient=recipient, limits=self.parse_limits,
                              trusted_authserv_ids=self.config.trusted_authserv_ids)
        if message.authentication is not None and message.authentication.verdict == "fail":
            # The domain only: ops see spoofing attempts without the address or content.
            self.log.warning("email.sender_unverified",
                             from_domain=message.sender.address.rpartition("@")[2],
                             by=message.authentication.by)
        if len(raw) >= LARGE_MESSAGE_BYTES and _MALLOC_TRIM is not None:
            _MALLOC_TRIM(0)
        return message

    def _poison(self, raw: bytes, recipient: str | None, mail_from: str | None,
                error: Exception, code: str = "unparsable") -> InboundMessage:
        """The stored form of a message the parser could not take: raw, flagged, dedupable.

        The sender is the ``From`` of the header block when it can be read cheaply and is
        a plain address, else the envelope's MAIL FROM, else ``unknown@invalid``. The
        dedupe key is the hash of the raw message, so a redelivery is recognised.
        """
        expected = isinstance(error, MessageTooComplex | OmnirelayError)
        if isinstance(error, OmnirelayError):
            reason = error.message
        elif isinstance(error, MessageTooComplex):
            reason = str(error)
        else:
            reason = f"the parser failed ({type(error).__name__})"
        self.counters["unparsable"] += 1
        # An OmnirelayError's text may quote the sender's address: the log gets its kind
        # only (the store, which erasure reaches, keeps the text).
        self.log.warning("email.unparsable", code=code, size=len(raw), exc_info=not expected,
                         reason=type(error).__name__ if isinstance(error, OmnirelayError)
                         else reason)
        name, sender = _header_sender(raw)
        if sender is None:
            name, sender = None, _plain_address(mail_from) or UNKNOWN_SENDER
        envelope_to = _plain_address(recipient)
        return InboundMessage(
            channel="email", account=self.name,
            provider_message_id="sha256:" + hashlib.sha256(raw).hexdigest(),
            sender=Party("email", sender, name),
            recipient=Party("email", envelope_to) if envelope_to else None,
            text=("This e-mail could not be read by omnirelay "
                  f"({reason}). It is kept exactly as received: open the raw message."),
            raw=raw, raw_content_type="message/rfc822",
            automatic="auto_reply" if mail_from == "<>" else None,
            error={"code": code, "message": reason},
        )

    # ------------------------------------------------------------------ bounces

    async def _hand_over(self, inbound: InboundMessage,
                         mail_from: str | None = None) -> IngestResult:
        """Ingest a parsed message, unless it is a bounce of one of our replies.

        Such a bounce is a receipt (the reply's ``message.status``), not a customer's
        message: it is acknowledged like a stored message and stores nothing. Any other
        message, a bounce naming none of our replies included, is ingested as it is.
        """
        if inbound.automatic == "bounce" and inbound.reply_refs:
            applied = await self._apply_bounce(inbound, mail_from)
            if applied is not None:
                return applied
        return await self.ingest(inbound)

    async def _apply_bounce(self, inbound: InboundMessage,
                            mail_from: str | None) -> IngestResult | None:
        """Apply a bounce to the reply it names (adapters/email/bounces.py); None when it
        names none of this account's replies.

        The references are tried in order and the first outbound message of the account
        takes the verdict. A report that moves nothing (delayed, relayed) is applied as
        ``sent``: it proves the reply left, and a receipt never moves a message back, so
        that only finds the reply.
        """
        verdict = read_bounce(inbound, null_sender=returned_to_null_sender(inbound.raw,
                                                                           mail_from))
        if verdict is None or self.ctx.receipts is None:
            return None
        status = verdict.status or "sent"
        result: ChangeResult | None = None
        for ref in inbound.reply_refs[:MAX_BOUNCE_REFS]:
            try:
                result = await self.ctx.receipts(Receipt(
                    "email", self.name, ref, status, verdict.error, inbound.sent_at))
            except Conflict:  # a customer's message (a bounce of their own mail, quoted)
                continue
            if result is not None:
                break
        if result is None:
            return None
        message = result.message
        self.counters["bounces_applied"] += 1
        self.log.info("email.bounce_applied", message_id=message["id"], action=verdict.action,
                      status=message["status"], moved=bool(result.changed))
        return IngestResult(message, created=False,
                            ignored=f"a delivery report ({verdict.action}) on reply "
                                    f"{message['id']}: applied as its status, not stored")

    async def accept_mail(self, raw: bytes | SpooledData, recipient: str | None, *,
                          mail_from: str | None = None) -> str:
        """SMTP DATA: store the message and return the reply line (250 after commit)."""
        task = asyncio.current_task()
        if task is not None:
            self._inflight.add(task)
        try:
            if isinstance(raw, SpooledData):
                result = await self._accept_spooled(raw, recipient, mail_from)
            else:
                result = await self.accept_raw(raw, recipient, mail_from=mail_from)
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
        if not result.created and result.ignored is None:
            self.log.info("email.duplicate", message_id=result.message["id"])
        return "250 2.0.0 Message accepted"

    async def _ingest_fetched(self, raw: bytes) -> bool:
        """IMAP: ingest one fetched message; True when it was new.

        An attachment over the store's limit cannot be refused to anyone over IMAP (SMTP
        answers 552): raised, the mailbox would fetch it again forever, so the message is
        stored raw, flagged ``too_large``.
        """
        try:
            result = await self.accept_raw(raw, None)
        except PayloadTooLarge as exc:
            result = await self.ingest(self._poison(raw, None, None, exc, "too_large"))
        await self.release_memory(len(raw))
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
        message_id, data = await render(self.config, message, thread, self.ctx.store.blob_file,
                                        plus_addressing=self.config.plus_addressing)
        recipient = message.to.address
        try:
            await submit(smtp, self.config.address, [recipient], data, self.tokens_for(smtp))
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
                await append_copy(settings, data, self.tokens_for(settings))
        except Exception as exc:
            self.counters["sent_copy_errors"] += 1
            error = getattr(exc, "message", None) or str(exc) or type(exc).__name__
            self.last_error = f"copy to {settings.sent_folder!r} failed: {error}"
            self.log.warning("email.sent_copy_failed", folder=settings.sent_folder,
                             error=error)



# ---------------------------------------------------------------- poison messages


def _header_sender(raw: bytes) -> tuple[str | None, str | None]:
    """(name, address) of ``From`` in the head of ``raw``, when it is sane; else (None, None).

    Only the first :data:`POISON_HEADER_BYTES` are read, a header line over RFC 5322's
    998 characters is not trusted, and anything unusual gives up.
    """
    try:
        head = raw[:POISON_HEADER_BYTES].decode("ascii", "surrogateescape")
        value = email.parser.HeaderParser().parsestr(head, headersonly=True).get("From")
        if not isinstance(value, str) or len(value) > 998:
            return None, None
        name, address = email.utils.parseaddr(value)
    except Exception:
        return None, None
    plain = _plain_address(address)
    if plain is None:
        return None, None
    name = name.strip()
    return (name if name and name.isprintable() and "=?" not in name else None), plain


def _plain_address(value: str | None) -> str | None:
    """A usable e-mail address, lower-cased; None for an empty path, garbage or non-ASCII."""
    if not value or not value.isascii():
        return None
    try:
        return normalize_email(value)
    except InvalidIdentity:
        return None


def _load_malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim`` (None elsewhere, e.g. musl)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


_MALLOC_TRIM = _load_malloc_trim()

"""The SMTP listener: session limits, DATA read into one buffer, 250 only after the commit.

aiosmtpd enforces the declared size (``SIZE`` is advertised; ``MAIL FROM … SIZE=n`` over it
gets 552 at once). Everything else is decided here: a connection beyond the listener's or
its client's session cap gets 421 before the greeting; a session silent for
``smtp_idle_timeout`` is closed; an unknown recipient gets 550 at RCPT time, so the sending
server bounces it to the sender instead of us accepting mail we cannot place; DATA is
answered only when the message is committed (or known), and a store that cannot write
answers 451 so that the sending server keeps the message and tries again.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import re
import ssl
import tempfile
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from aiosmtpd.smtp import SMTP, Envelope, Session, syntax

if TYPE_CHECKING:
    from adapters.email.adapter import EmailAdapter

MAX_RECIPIENTS = 100
# DATA beyond this goes to a file while it arrives (see SpooledData).
SPOOL_BYTES = 1024 * 1024

# RFC 5321 Path in its everyday form: <local@domain> (no source route, no quoted local
# part, no address literal), then the ESMTP parameters.
_PLAIN_PATH = re.compile(
    r"\s*<([A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+@[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?)>"
    r"(.*)", re.DOTALL)


def client_key(peer: object) -> str:
    """Whom a connection counts against: its IPv4 address, or its IPv6 /64.

    One IPv6 host usually holds a whole /64, so counting single v6 addresses would let it
    open as many sessions as it likes.
    """
    host = peer[0] if isinstance(peer, tuple) and peer else str(peer)
    try:
        address = ipaddress.ip_address(str(host).split("%", 1)[0])
    except ValueError:
        return str(host)
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class SpooledData:
    """A large message as it arrives: in an unlinked temporary file, read back whole when
    its turn to be parsed comes, so sessions sending at once do not each hold one in memory.

    The file is created unlinked (``O_TMPFILE`` where available) and mode 0600: nothing is
    left behind by a crash, and only the daemon's user could ever open it. Its methods do
    blocking I/O: call them in a thread.
    """

    def __init__(self, directory: Path | None) -> None:
        self.file = tempfile.TemporaryFile(dir=directory, buffering=0)  # noqa: SIM115
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def write(self, data: bytearray) -> None:
        """Append ``data``."""
        view = memoryview(data)
        while view:
            written = self.file.write(view)
            view = view[written or 0:]
            self.size += written or 0

    def read(self) -> bytes:
        """The whole message as one ``bytes`` (one allocation of its size)."""
        data = os.pread(self.file.fileno(), self.size, 0)
        if len(data) != self.size:
            raise OSError(f"spool file shrank: {len(data)} of {self.size} bytes")
        return data

    def close(self) -> None:
        """Delete the file (idempotent)."""
        self.file.close()


class SessionLimits:
    """Open sessions of one listener, overall and per client (the 421 decision)."""

    def __init__(self, total: int, per_client: int) -> None:
        self.total = total
        self.per_client = per_client
        self.open: Counter[str] = Counter()
        self.count = 0

    def admit(self, key: str) -> tuple[str, str] | None:
        """Take a slot for ``key``; or why not (enhanced status code and text for 421)."""
        if self.count >= self.total:
            return "4.3.2", "too many connections; try again later"
        if self.open[key] >= self.per_client:
            return "4.7.0", "too many connections from your address; try again later"
        self.open[key] += 1
        self.count += 1
        return None

    def release(self, key: str) -> None:
        """Give back the slot of a session that ended."""
        self.count -= 1
        self.open[key] -= 1
        if self.open[key] <= 0:
            del self.open[key]


class SmtpSession(SMTP):
    """aiosmtpd's SMTP with session limits, a DATA reader of our own and fast paths.

    - Connections over :class:`SessionLimits` are answered 421 and closed before a
      session starts.
    - DATA goes into one ``bytearray`` (aiosmtpd keeps a list of per-line ``bytearray``
      objects and joins them: about three times the message, and small-object memory the
      allocator keeps long after); the handler gets one ``bytes``, or beyond
      :data:`SPOOL_BYTES` a :class:`SpooledData` on disk.
    - The idle timer counts silence, not the time a large DATA takes: every received line
      keeps the session alive, and the timer is off while the message is being stored.
    - Plain ``<local@domain>`` paths of MAIL FROM and RCPT TO are matched here (aiosmtpd
      parses each with the e-mail package's header grammar and defines a typing.Protocol
      class per call: profiled, a sixth of the listener's CPU per message); anything else
      goes to aiosmtpd's own parser with the same result.
    """

    def __init__(self, handler: SmtpHandler, *, limits: SessionLimits | None = None,
                 data_size_limit: int | None = None, hostname: str | None = None,
                 tls_context: ssl.SSLContext | None = None, require_starttls: bool = False,
                 timeout: float = 60.0, spool_dir: Path | None = None) -> None:
        super().__init__(handler, data_size_limit=data_size_limit, enable_SMTPUTF8=True,
                         hostname=hostname, ident="omnirelay ESMTP", tls_context=tls_context,
                         require_starttls=require_starttls, timeout=timeout)
        self.handler = handler
        self.limits = limits
        self.spool_dir = spool_dir
        self._client: str | None = None
        self._refused = False
        self._last_data = 0.0

    # ------------------------------------------------------------ connection limits

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Refuse beyond the session caps (421, RFC 5321 §3.8); else start the session."""
        if self.limits is not None and self._original_transport is None:  # not STARTTLS
            key = client_key(transport.get_extra_info("peername"))
            refusal = self.limits.admit(key)
            if refusal is not None:
                self._refused = True
                self.handler.refused(key)
                assert isinstance(transport, asyncio.WriteTransport)
                code, text = refusal
                transport.write(f"421 {code} {self.hostname} {text}\r\n".encode())
                transport.close()
                return
            self._client = key
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        """Give the slot back (once: a STARTTLS session ends once)."""
        if self._refused:
            return
        if self._client is not None and self.limits is not None:
            self.limits.release(self._client)
            self._client = None
        super().connection_lost(error)

    def _timeout_cb(self) -> None:
        """Close a silent session; a DATA still arriving is not silence."""
        idle = self.loop.time() - self._last_data
        if self._last_data and idle < self._timeout_duration:
            self._reset_timeout(self._timeout_duration - idle)
            return
        self.handler.timed_out()
        super()._timeout_cb()

    # ------------------------------------------------------------ DATA

    @syntax("DATA")
    async def smtp_DATA(self, arg: str | None) -> None:
        """Read the message into one buffer; reply with what the handler says."""
        if await self.check_helo_needed():
            return
        if await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        data, problem = await self._read_data()
        if problem is not None:
            await self.push(problem)
            self._set_post_data_state()
            return
        assert data is not None
        envelope = self.envelope
        self._set_post_data_state()  # the envelope keeps no copy of the message
        if self._timeout_handle is not None:
            self._timeout_handle.cancel()  # storing a message is not idling
        size = len(data)
        try:
            status = await self.handler.data(envelope, data)
        finally:
            if isinstance(data, SpooledData):
                data.close()
            del data  # the last reference: the message is freed before memory is trimmed
            self._reset_timeout()
        await self.push(status)
        await self.handler.adapter.release_memory(size)

    async def _read_data(self) -> tuple[bytes | SpooledData | None, str | None]:
        """The message until ``CRLF.CRLF``, dot-unstuffed; or the error reply.

        As aiosmtpd does: only CRLF ends a line (no bare-LF smuggling), a line over
        ``line_length_limit`` or data over ``data_size_limit`` is drained, then refused.
        Beyond :data:`SPOOL_BYTES` the message goes to an unlinked file in ``spool_dir``
        a MiB at a time, so a session holds at most that much of it in memory.
        """
        buffer = bytearray()
        spool: SpooledData | None = None
        limit = self.data_size_limit
        size = 0
        problem: str | None = None
        loop = self.loop
        reader = self._reader
        continued = False  # the rest of an over-long line: not the start of one
        try:
            while True:
                try:
                    line = await reader.readuntil(b"\r\n")
                except asyncio.LimitOverrunError as exc:
                    problem = problem or "500 Line too long (see RFC5321 4.5.3.1.6)"
                    buffer = bytearray()
                    size += len(await reader.read(exc.consumed))
                    continued = True
                    continue
                self._last_data = loop.time()
                if line == b".\r\n" and not continued:
                    break
                continued = False
                size += len(line)
                if problem is not None:
                    continue
                if limit and size > limit:
                    problem = "552 Error: Too much mail data"
                    buffer = bytearray()
                    continue
                if line[:1] == b".":
                    buffer += memoryview(line)[1:]
                else:
                    buffer += line
                if len(buffer) >= SPOOL_BYTES:
                    spool, problem = await self._spool(spool, buffer)
                    buffer = bytearray()
            if problem is None and spool is not None:
                spool, problem = await self._spool(spool, buffer)
        except BaseException:
            if spool is not None:
                spool.close()
            raise
        finally:
            self._last_data = 0.0
        if problem is not None:
            if spool is not None:
                spool.close()
            return None, problem
        if spool is not None:
            return spool, None
        return bytes(buffer), None

    async def _spool(self, spool: SpooledData | None,
                     data: bytearray) -> tuple[SpooledData | None, str | None]:
        """Append ``data`` to the spool (made on first use); a disk error defers the mail."""
        try:
            if spool is None:
                spool = await asyncio.to_thread(SpooledData, self.spool_dir)
            await asyncio.to_thread(spool.write, data)
        except OSError as exc:
            self.handler.spool_failed(exc)
            if spool is not None:
                spool.close()
            return None, "451 4.3.0 Temporary failure storing the message; try again later"
        return spool, None

    # ------------------------------------------------------------ addresses

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        match = _PLAIN_PATH.fullmatch(arg)
        if match is None:
            return super()._getaddr(arg)
        address, rest = match.groups()
        local = address.rpartition("@")[0]
        if ".." in local or local.startswith(".") or local.endswith("."):
            return super()._getaddr(arg)
        if self.local_part_limit and len(local) > self.local_part_limit:
            return None, None
        return address, rest.lstrip()


class SmtpHandler:
    """aiosmtpd handler bound to one e-mail account."""

    def __init__(self, adapter: EmailAdapter) -> None:
        self.adapter = adapter

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        """550 for addresses this account does not serve (RFC 5321 §3.3)."""
        if not self.adapter.config.accepts(address):
            self.adapter.counters["smtp_rejected"] += 1
            return f"550 5.1.1 <{address}>: no such mailbox here"
        if len(envelope.rcpt_tos) >= MAX_RECIPIENTS:
            return "452 4.5.3 Too many recipients"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def data(self, envelope: Envelope, raw: bytes | SpooledData) -> str:
        """Store the message; the reply line says whether it is ours now."""
        recipient = envelope.rcpt_tos[0] if envelope.rcpt_tos else None
        return await self.adapter.accept_mail(raw, recipient, mail_from=envelope.mail_from)

    def refused(self, client: str) -> None:
        """A connection over the session caps got 421."""
        self.adapter.counters["smtp_connections_refused"] += 1
        self.adapter.log.warning("email.smtp_too_many_connections", client=client)

    def spool_failed(self, error: OSError) -> None:
        """The spool file could not be written (disk full): the sender keeps the mail."""
        self.adapter.counters["smtp_deferred"] += 1
        self.adapter.last_error = f"SMTP spool: {error.strerror or error}"
        self.adapter.log.warning("email.spool_failed", error=str(error.strerror or error))

    def timed_out(self) -> None:
        """A session was closed for silence."""
        self.adapter.counters["smtp_timeouts"] += 1

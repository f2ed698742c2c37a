"""The SMTP listener's handler: recipients, size, and 250 only after the commit.

aiosmtpd enforces the size limit itself (``SIZE`` is advertised; ``MAIL FROM … SIZE=n``
over it gets 552 at once, an oversize DATA gets 552 after it is read). Everything else is
decided here: an unknown recipient gets 550 at RCPT time, so the sending server bounces
it to the sender instead of us accepting mail we cannot place; DATA is answered only when
the message is committed (or known), and a store that cannot write answers 451 so that the
sending server keeps the message and tries again.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from aiosmtpd.smtp import SMTP, Envelope, Session

if TYPE_CHECKING:
    from adapters.email.adapter import EmailAdapter

MAX_RECIPIENTS = 100

# RFC 5321 Path in its everyday form: <local@domain> (no source route, no quoted local
# part, no address literal), then the ESMTP parameters.
_PLAIN_PATH = re.compile(
    r"\s*<([A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+@[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?)>"
    r"(.*)", re.DOTALL)


class SmtpSession(SMTP):
    """aiosmtpd's SMTP with a fast path for the addresses of MAIL FROM and RCPT TO.

    aiosmtpd parses every path with the e-mail package's RFC 5322 header grammar (and
    defines a typing.Protocol class on each call); profiled, that is a sixth of the
    listener's CPU per message. Plain ``<local@domain>`` paths, nearly all of them, are
    matched here with the same result; anything else goes to aiosmtpd's own parser.
    """

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

    async def handle_DATA(self, server: SMTP, session: Session,
                          envelope: Envelope) -> str:
        """Store the message; the reply line says whether it is ours now."""
        raw = envelope.original_content or envelope.content or b""
        if isinstance(raw, str):
            raw = raw.encode("utf-8", "surrogateescape")
        recipient = envelope.rcpt_tos[0] if envelope.rcpt_tos else None
        return await self.adapter.accept_mail(raw, recipient)

"""Settings of an e-mail account."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from adapters.base import AdapterConfig
from gateway.config import Secret, parse_hostport

if TYPE_CHECKING:
    from gateway.config import Section

SECURITY = ("tls", "starttls", "none")


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """An IMAP or SMTP server the account connects to."""

    host: str
    port: int
    security: str
    username: str | None
    password: Secret | None
    folder: str = "INBOX"
    timeout: float = 30.0


@dataclass(frozen=True, slots=True)
class EmailConfig(AdapterConfig):
    """``address`` is the account's own; ``smtp_listen`` takes inbound mail."""

    address: str
    display_name: str | None = None
    smtp_listen: tuple[str, int] | None = None
    recipients: tuple[str, ...] = ()
    accept_any_recipient: bool = False
    max_message_bytes: int = 25 * 1024 * 1024
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    smtp: ServerSettings | None = None
    imap: ServerSettings | None = None
    send_concurrency: int = 4
    send_rate: float | None = None

    def accepts(self, recipient: str) -> bool:
        """Whether mail to ``recipient`` belongs to this account."""
        if self.accept_any_recipient:
            return True
        address = recipient.strip("<>").lower()
        local, _, domain = address.partition("@")
        base = local.split("+", 1)[0] + "@" + domain
        for entry in (self.address, *self.recipients):
            entry = entry.lower()
            if entry.startswith("@") and domain == entry[1:]:
                return True
            if entry in (address, base):
                return True
        return False

    @classmethod
    def parse(cls, section: Section) -> EmailConfig:
        """Read the e-mail keys."""
        address = section.get("address", str, "", required=True,
                              hint='the account\'s own address, e.g. "support@shop.example"')
        if address and "@" not in address:
            section.error("address", "must be an e-mail address")
        listen = None
        raw_listen = section.get("smtp_listen", str, None)
        if raw_listen:
            try:
                listen = parse_hostport(raw_listen)
            except ValueError as exc:
                section.error("smtp_listen", str(exc), 'e.g. "127.0.0.1:2525"')
        cert = section.get("tls_cert_file", str, None)
        key = section.get("tls_key_file", str, None)
        if bool(cert) != bool(key):
            section.error("tls_cert_file", "tls_cert_file and tls_key_file go together")
        rate = section.get("send_rate", (int, float), None)
        return cls(
            address=address.lower(),
            display_name=section.get("display_name", str, None),
            smtp_listen=listen,
            recipients=tuple(r.lower() for r in section.str_list("recipients")),
            accept_any_recipient=section.get("accept_any_recipient", bool, False),
            max_message_bytes=section.get("max_message_bytes", int, 25 * 1024 * 1024),
            tls_cert_file=cert, tls_key_file=key,
            smtp=_server(section.sub("smtp"), 587, "starttls"),
            imap=_server(section.sub("imap"), 993, "tls"),
            send_concurrency=section.get("send_concurrency", int, 4),
            send_rate=None if rate is None else float(rate),
        )


def _server(section: Section | None, default_port: int, default_security: str
            ) -> ServerSettings | None:
    if section is None:
        return None
    host = section.get("host", str, "", required=True)
    security = section.get("security", str, default_security)
    if security not in SECURITY:
        section.error("security", f"must be one of {', '.join(SECURITY)}")
    port = section.get("port", int, default_port if security != "none" else
                       (143 if default_port == 993 else 25))
    username = section.get("username", str, None)
    password = section.secret("password")
    if username and password is None:
        section.error("password_file", "is required with username")
    settings = ServerSettings(host, port, security, username, password,
                              section.get("folder", str, "INBOX"),
                              float(section.get("timeout", (int, float), 30.0)))
    section.finish()
    return settings

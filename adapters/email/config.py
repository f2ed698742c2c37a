"""Settings of an e-mail account: its address, SMTP listener, IMAP mailboxes, SMTP relay."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from adapters.base import AdapterConfig
from gateway.configkit import Secret, Section, parse_hostport
from gateway.oauth2 import OAuth2Settings, is_loopback, parse_oauth2

if TYPE_CHECKING:
    from gateway.configkit import ParseContext

SECURITY = ("tls", "starttls", "none")
FIRST_SYNC = ("unseen", "all", "none")


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """An IMAP or SMTP server the account connects to.

    ``ca_file`` trusts a private CA (or a self-signed server certificate) in addition to the
    system store; certificates are always verified when ``security`` is tls or starttls.
    ``oauth2`` signs ``username`` in with SASL XOAUTH2 and an OAuth2 access token instead of
    a password (Microsoft 365 and Gmail no longer take passwords).
    """

    host: str
    port: int
    security: str
    username: str | None
    password: Secret | None
    folder: str = "INBOX"
    timeout: float = 30.0
    ca_file: str | None = None
    oauth2: OAuth2Settings | None = None


@dataclass(frozen=True, slots=True)
class ImapSettings(ServerSettings):
    """One IMAP mailbox (a folder on a server) that omnirelay imports mail from.

    ``processed_folder``: move imported mail there (MOVE, else COPY + expunge) instead of
    marking it ``\\Seen``. ``first_sync``: what to import the first time a mailbox is seen
    (or when its UIDVALIDITY changes): ``unseen`` mail, ``all`` of it, or ``none`` (only
    what arrives from now on). ``sent_folder``: append a copy of every reply sent over SMTP.
    """

    poll_interval: float = 60.0
    idle: bool = True
    idle_timeout: float = 600.0
    processed_folder: str | None = None
    first_sync: str = "unseen"
    sent_folder: str | None = None

    @property
    def label(self) -> str:
        """How logs and health name this mailbox (no secrets)."""
        return f"{self.username or '-'}@{self.host}:{self.port}/{self.folder}"


@dataclass(frozen=True, slots=True)
class EmailConfig(AdapterConfig):
    """``address`` is the account's own; ``smtp_listen`` takes inbound mail.

    ``plus_addressing``: replies carry ``Reply-To: local+c-<conversation>@domain`` so a
    client that drops In-Reply-To still threads; turn it off when the mail host does not
    deliver ``local+tag@`` addresses to ``local@``.

    The listener's limits (``smtp_max_sessions``, ``smtp_max_sessions_per_address``,
    ``smtp_idle_timeout``) default to Postfix's (100 processes, 50 per client) with a
    one-minute idle timeout: a relaying MTA stays well inside them, a flood from one
    address does not take every session. ``max_mime_parts``/``max_mime_depth`` bound the
    parse of every inbound message; a message beyond them is stored raw, flagged.

    ``trusted_authserv_ids``: the receiving servers (``mx.google.com``) whose
    Authentication-Results header is believed; each message then carries
    ``provider.authentication`` (docs/email.md, "Spoofed senders"). Empty: off.
    """

    address: str
    display_name: str | None = None
    smtp_listen: tuple[str, int] | None = None
    recipients: tuple[str, ...] = ()
    accept_any_recipient: bool = False
    max_message_bytes: int = 25 * 1024 * 1024
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    smtp: ServerSettings | None = None
    imap: tuple[ImapSettings, ...] = ()
    plus_addressing: bool = True
    smtp_max_sessions: int = 100
    smtp_max_sessions_per_address: int = 50
    smtp_idle_timeout: float = 60.0
    smtp_require_starttls: bool = False
    max_mime_parts: int = 200
    max_mime_depth: int = 20
    trusted_authserv_ids: tuple[str, ...] = ()

    example: ClassVar[Mapping[str, object]] = {"address": "support@shop.example"}

    @property
    def domain(self) -> str:
        """The account's mail domain (Message-IDs of replies live there)."""
        return self.address.rpartition("@")[2]

    @property
    def sent_copy(self) -> ImapSettings | None:
        """The mailbox whose server keeps copies of sent replies, if any."""
        return next((m for m in self.imap if m.sent_folder), None)

    def accepts(self, recipient: str) -> bool:
        """Whether mail to ``recipient`` belongs to this account (plus-addresses included)."""
        if self.accept_any_recipient:
            return True
        address = recipient.strip().strip("<>").lower()
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
        require_starttls = section.get("smtp_require_starttls", bool, False)
        if require_starttls and not cert:
            section.error("smtp_require_starttls", "needs tls_cert_file and tls_key_file")
        max_bytes = section.get("max_message_bytes", int, 25 * 1024 * 1024)
        if max_bytes < 1024:
            section.error("max_message_bytes", "must be at least 1024")
        sessions = section.get("smtp_max_sessions", int, 100)
        if sessions < 1:
            section.error("smtp_max_sessions", "must be at least 1")
        per_address = section.get("smtp_max_sessions_per_address", int, 50)
        if not 1 <= per_address <= max(sessions, 1):
            section.error("smtp_max_sessions_per_address",
                          "must be between 1 and smtp_max_sessions")
        idle = float(section.get("smtp_idle_timeout", (int, float), 60.0))
        if not 0 < idle <= 3600:
            section.error("smtp_idle_timeout", "must be more than 0 and at most 3600 seconds")
        parts = section.get("max_mime_parts", int, 200)
        if parts < 1:
            section.error("max_mime_parts", "must be at least 1")
        depth = section.get("max_mime_depth", int, 20)
        if depth < 1:
            section.error("max_mime_depth", "must be at least 1")
        trusted = tuple(t.strip().lower() for t in section.str_list("trusted_authserv_ids"))
        for entry in trusted:
            if len(entry.split()) != 1 or ";" in entry or "=" in entry:
                section.error("trusted_authserv_ids", f"{entry!r} is not an authserv-id",
                              'the receiving server\'s name, e.g. "mx.google.com"')
        smtp_section = section.sub("smtp")
        smtp = None
        if smtp_section is not None:
            smtp = _server(smtp_section, 587, "starttls", folder=False)
            smtp_section.finish()
        return cls(
            address=address.lower(),
            display_name=section.get("display_name", str, None),
            smtp_listen=listen,
            recipients=tuple(r.lower() for r in section.str_list("recipients")),
            accept_any_recipient=section.get("accept_any_recipient", bool, False),
            max_message_bytes=max_bytes,
            tls_cert_file=cert, tls_key_file=key,
            smtp=smtp,
            imap=_mailboxes(section),
            plus_addressing=section.get("plus_addressing", bool, True),
            smtp_max_sessions=sessions,
            smtp_max_sessions_per_address=per_address,
            smtp_idle_timeout=idle,
            smtp_require_starttls=require_starttls,
            max_mime_parts=parts,
            max_mime_depth=depth,
            trusted_authserv_ids=trusted,
        )


def _mailboxes(section: Section) -> tuple[ImapSettings, ...]:
    """``imap = {…}`` for one mailbox, or ``imap = [{…}, {…}]`` / ``[[channels.imap]]``."""
    value = section.get("imap", (dict, list), None)
    if value is None:
        return ()
    tables = [value] if isinstance(value, dict) else value
    mailboxes = []
    ctx: ParseContext = section.ctx
    for index, table in enumerate(tables):
        key = "imap" if isinstance(value, dict) else f"imap[{index}]"
        if not isinstance(table, dict):
            section.error(key, "each mailbox is a table: { host = …, username = … }")
            continue
        sub = Section(table, section.key(key), ctx)
        server = _server(sub, 993, "tls")
        poll = float(sub.get("poll_interval", (int, float), 60.0))
        if poll <= 0:
            sub.error("poll_interval", "must be more than 0 seconds")
        idle_timeout = float(sub.get("idle_timeout", (int, float), 600.0))
        if not 10 <= idle_timeout <= 29 * 60:
            sub.error("idle_timeout", "must be between 10 and 1740 seconds (RFC 2177)")
        first_sync = sub.get("first_sync", str, "unseen")
        if first_sync not in FIRST_SYNC:
            sub.error("first_sync", f"must be one of {', '.join(FIRST_SYNC)}")
        mailboxes.append(ImapSettings(
            server.host, server.port, server.security, server.username, server.password,
            server.folder, server.timeout, server.ca_file, server.oauth2,
            poll_interval=poll, idle=sub.get("idle", bool, True), idle_timeout=idle_timeout,
            processed_folder=sub.get("processed_folder", str, None) or None,
            first_sync=first_sync,
            sent_folder=sub.get("sent_folder", str, None) or None,
        ))
        sub.finish()
    labels = [m.label for m in mailboxes]
    if len(set(labels)) != len(labels):
        section.error("imap", "the same mailbox is listed twice")
    return tuple(mailboxes)


def _server(section: Section, default_port: int, default_security: str, *,
            folder: bool = True) -> ServerSettings:
    host = section.get("host", str, "", required=True)
    security = section.get("security", str, default_security)
    if security not in SECURITY:
        section.error("security", f"must be one of {', '.join(SECURITY)}")
    plain_port = 143 if default_port == 993 else 25
    port = section.get("port", int, plain_port if security == "none" else default_port)
    username = section.get("username", str, None)
    gave_password = any(k in section.data for k in (
        "password", "password_file", "password_env", "password_credential"))
    password = section.secret("password")
    oauth2 = None
    oauth2_section = section.sub("oauth2")
    if oauth2_section is not None:
        oauth2 = parse_oauth2(oauth2_section)
        oauth2_section.finish()
        if gave_password:
            section.error("oauth2", "give either a password or oauth2, not both",
                          "oauth2 signs in with a token instead of the password: "
                          "delete the password key")
        if security == "none" and host and not is_loopback(host):
            section.error("security", 'must be "tls" or "starttls" with oauth2 (a server '
                          "other than this machine)",
                          "an access token reads the whole mailbox for an hour: it must "
                          "not cross a network in clear")
        if not username:
            section.error("username", "is required with oauth2",
                          'the mailbox address the token is for, e.g. '
                          'username = "support@shop.example"')
    elif username and password is None and not gave_password:
        section.error("password_file", "is required with username",
                      "or sign in with a token: oauth2 = { token_url = …, client_id = …, "
                      "… } (docs/email.md, OAuth2)")
    timeout = float(section.get("timeout", (int, float), 30.0))
    if timeout <= 0:
        section.error("timeout", "must be more than 0 seconds")
    return ServerSettings(host, port, security, username, password,
                          section.get("folder", str, "INBOX") if folder else "INBOX", timeout,
                          section.get("ca_file", str, None), oauth2)

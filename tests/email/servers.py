"""Real servers for the e-mail tests: Dovecot (IMAP), an aiosmtpd sink (SMTP relay), TLS.

Dovecot runs from a throw-away config in a temp dir on 127.0.0.1 (see RECIPES.md for why
each line is there); the sink runs in the test's event loop and records what omnirelay
submitted, with knobs to answer 4xx/5xx or to refuse connections.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import pwd
import signal
import socket
import subprocess
import time
import warnings
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aioimaplib
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, Session

from adapters.email.imap import quote_mailbox
from tests.conftest import free_port
from tests.email.oauth2_server import OAuth2Server

DOVECOT_CONF = """\
base_dir = {d}/run
state_dir = {d}/state
instance_name = omnirelay-test-{port}
log_path = {d}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = yes
ssl_cert = <{d}/cert.pem
ssl_key = <{d}/key.pem
disable_plaintext_auth = no
auth_mechanisms = plain login{oauth_mechanisms}
# Failed logins (one test makes some) must not slow the others down: no failure delay,
# no per-IP penalty for loopback.
auth_failure_delay = 0
login_trusted_networks = 127.0.0.0/8
{users_block}
passdb {{
  driver = static
  args = password={password}
  mechanisms = plain login
}}
{oauth_passdb}userdb {{
  driver = static
  args = uid={uid} gid={gid} home={d}/mail/%u
}}
first_valid_uid = {uid}
mail_location = maildir:~/Maildir
namespace inbox {{
  inbox = yes
  separator = /
  mailbox Sent {{
    auto = create
    special_use = \\Sent
  }}
  mailbox Processed {{
    auto = create
  }}
}}
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {tls_port}
    ssl = yes
  }}
}}
"""


def ports(count: int) -> list[int]:
    """``count`` distinct free ports on 127.0.0.1.

    Picked while all are bound at once: ``free_port()`` called twice can return the same
    port, and a daemon given one port for two listeners does not start.
    """
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (tests trust it through ``ca_file``)."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
         "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True)
    return cert, key


OAUTH2_PASSDB = """\
# XOAUTH2 / OAUTHBEARER: the token is checked with the test's OAuth2 server (RFC 7662).
passdb {{
  driver = oauth2
  mechanisms = xoauth2 oauthbearer
  args = {d}/dovecot-oauth2.conf.ext
}}
"""
OAUTH2_CONF = """\
introspection_mode = post
introspection_url = {url}
username_attribute = username
active_attribute = active
active_value = true
"""


class Dovecot:
    """A Dovecot of our own: start, stop, restart (same ports), users added on the fly.

    With ``introspection_url`` it also takes XOAUTH2 and OAUTHBEARER, asking that URL
    whether a token is good (passwords never reach it: the passdbs are per mechanism).
    """

    def __init__(self, root: Path, introspection_url: str | None = None) -> None:
        self.root = root
        self.port, self.tls_port = ports(2)
        self.proc: subprocess.Popen[bytes] | None = None
        self.passwords: dict[str, str] = {}
        root.mkdir(parents=True, exist_ok=True)
        os.chmod(root, 0o755)  # auth runs as 'dovecot', login as 'dovenull': both traverse it
        if os.geteuid() == 0:
            self.mail_user, users_block = "dovecot", ""
        else:
            me = pwd.getpwuid(os.geteuid()).pw_name
            self.mail_user = me
            users_block = (f"default_internal_user = {me}\ndefault_internal_group = {me}\n"
                           f"default_login_user = {me}\nservice anvil {{\n  chroot =\n}}\n"
                           "service imap-login {\n  chroot =\n}\n")
        entry = pwd.getpwnam(self.mail_user)
        self.uid, self.gid = entry.pw_uid, entry.pw_gid
        for sub in ("run", "state", "mail"):
            (root / sub).mkdir(exist_ok=True)
        os.chown(root / "mail", self.uid, self.gid)
        self.cert, self.key = make_certificate(root)
        os.chmod(self.key, 0o644)
        self.conf = root / "dovecot.conf"
        oauth_mechanisms = oauth_passdb = ""
        if introspection_url is not None:
            (root / "dovecot-oauth2.conf.ext").write_text(OAUTH2_CONF.format(
                url=introspection_url))
            oauth_mechanisms = " xoauth2 oauthbearer"
            oauth_passdb = OAUTH2_PASSDB.format(d=root)
        self.conf.write_text(DOVECOT_CONF.format(
            d=root, port=self.port, tls_port=self.tls_port, uid=self.uid, gid=self.gid,
            users_block=users_block, password=self.PASSWORD,
            oauth_mechanisms=oauth_mechanisms, oauth_passdb=oauth_passdb))

    PASSWORD = "secret"

    def add_user(self, name: str) -> str:
        """A fresh mailbox owner: any name logs in with PASSWORD (a static passdb), so
        tests need no reload of Dovecot to get a mailbox of their own."""
        self.passwords[name] = self.PASSWORD
        return name

    def start(self) -> None:
        """Run ``dovecot -F`` and wait for a greeting that says ``ready.`` (not just a port)."""
        # Its own process group: a restart must take the per-connection imap processes
        # down too (the master alone leaves them serving their sessions).
        self.proc = subprocess.Popen(["dovecot", "-c", str(self.conf), "-F"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        deadline = time.monotonic() + 15
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError("dovecot exited:\n" + self.log())
            with contextlib.suppress(OSError), socket.create_connection(
                    ("127.0.0.1", self.port), timeout=1) as sock:
                if b"ready." in sock.recv(4096):
                    return
            if time.monotonic() > deadline:
                raise TimeoutError("dovecot not ready:\n" + self.log())
            time.sleep(0.02)

    def stop(self) -> None:
        """SIGTERM the process group we started, wait for the master to exit (a new master
        refuses to start on the same base_dir before)."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.proc = None

    def restart(self) -> None:
        """Stop and start again on the same ports and mail store."""
        self.stop()
        self.start()

    def kick(self, user: str) -> None:
        """End ``user``'s sessions, as Microsoft 365 does when their access token expires
        (``BYE Session invalidated - AccessTokenExpired``)."""
        subprocess.run(["doveadm", "-c", str(self.conf), "kick", user], check=True,
                       capture_output=True, timeout=15)

    def log(self) -> str:
        """Dovecot's own log."""
        path = self.root / "dovecot.log"
        return path.read_text(errors="replace") if path.exists() else ""

    @contextlib.asynccontextmanager
    async def client(self, user: str) -> AsyncIterator[aioimaplib.IMAP4]:
        """A logged-in aioimaplib connection (the test's own, plain, on 127.0.0.1)."""
        imap = aioimaplib.IMAP4(host="127.0.0.1", port=self.port, timeout=10)
        await imap.wait_hello_from_server()
        response = await imap.login(user, self.passwords[user])
        assert response.result == "OK", response
        try:
            yield imap
        finally:
            with contextlib.suppress(Exception):
                await imap.logout()

    async def append(self, user: str, raw: bytes, folder: str = "INBOX",
                     flags: str | None = None) -> None:
        """Deliver a message into a folder (IMAP APPEND from another connection)."""
        async with self.client(user) as imap:
            response = await imap.append(raw, mailbox=quote_mailbox(folder), flags=flags)
            assert response.result == "OK", response

    async def flags(self, user: str, folder: str = "INBOX") -> dict[str, set[str]]:
        """Message-ID → flags of every message in a folder."""
        async with self.client(user) as imap:
            response = await imap.select(quote_mailbox(folder))
            assert response.result == "OK", response
            found: dict[str, set[str]] = {}
            response = await imap.fetch("1:*", "(FLAGS BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
            current: set[str] = set()
            for line in response.lines:
                if isinstance(line, bytes) and b"FLAGS (" in line:
                    inner = line.split(b"FLAGS (", 1)[1].split(b")", 1)[0]
                    current = set(inner.decode().split())
                elif isinstance(line, bytearray):
                    header = bytes(line).decode(errors="replace")
                    mid = header.partition(":")[2].strip().strip("<>")
                    found[mid] = current
            return found

    async def uidvalidity(self, user: str, folder: str) -> int:
        """The folder's UIDVALIDITY."""
        async with self.client(user) as imap:
            response = await imap.select(quote_mailbox(folder))
            for line in response.lines:
                if isinstance(line, bytes) and b"UIDVALIDITY" in line:
                    return int(line.split(b"UIDVALIDITY ")[1].split(b"]")[0])
        raise AssertionError("no UIDVALIDITY")

    async def command(self, user: str, name: str, *args: str) -> None:
        """CREATE / DELETE / … a folder."""
        async with self.client(user) as imap:
            response = await getattr(imap, name)(*args)
            assert response.result == "OK", response


def mail(message_id: str, *, subject: str = "Hello", sender: str = "customer@mail.example",
         to: str = "support@shop.example", body: str = "Hi there", **headers: str) -> bytes:
    """A small RFC 5322 message with CRLF line ends."""
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = "Sun, 22 Nov 2026 10:00:00 +0900"
    msg["Message-ID"] = f"<{message_id}>"
    for name, value in headers.items():
        msg[name.replace("_", "-")] = value
    msg.set_content(body)
    return msg.as_bytes(policy=policy.SMTP)


# ---------------------------------------------------------------- SMTP sink


@dataclass
class Submission:
    """One message the sink accepted."""

    sender: str
    recipients: list[str]
    data: bytes
    login: str | None = None  # who signed in (AUTH), if anyone

    @property
    def message(self) -> EmailMessage:
        """Parsed with the modern policy (what a mail client would see)."""
        return message_from_bytes(self.data, policy=policy.default)  # type: ignore[return-value]


@dataclass
class SmtpSink:
    """A relay standing in for the shop's submission server, in the test's loop.

    ``fail_next(code, text, times=1, stage="DATA")`` answers with an error;
    ``stop()``/``start()`` make the port refuse connections and accept them again.
    """

    port: int = field(default_factory=free_port)
    received: list[Submission] = field(default_factory=list)
    attempts: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    server: Any = None

    def fail_next(self, reply: str, *, times: int = 1, stage: str = "DATA") -> None:
        """Answer the next ``times`` attempts at ``stage`` with ``reply`` (e.g. "451 ...")."""
        self.failures += [(stage, reply)] * times

    def _failure(self, stage: str) -> str | None:
        if self.failures and self.failures[0][0] == stage:
            return self.failures.pop(0)[1]
        return None

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, options: list[str]) -> str:
        """Record or refuse a recipient."""
        self.attempts += 1
        failure = self._failure("RCPT")
        if failure:
            return failure
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session,
                          envelope: Envelope) -> str:
        """Record the message or refuse it."""
        failure = self._failure("DATA")
        if failure:
            return failure
        data = envelope.original_content or b""
        login = session.auth_data if isinstance(session.auth_data, str) else None
        self.received.append(Submission(str(envelope.mail_from), list(envelope.rcpt_tos),
                                        bytes(data), login))
        self.arrived.set()
        return "250 2.0.0 queued"

    async def start(self) -> None:
        """Listen on 127.0.0.1:port."""
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(self.session, host="127.0.0.1", port=self.port,
                                               reuse_address=True)

    def session(self) -> SMTP:
        """The aiosmtpd protocol for one connection."""
        return SMTP(self, hostname="relay.test", data_size_limit=None)

    async def stop(self) -> None:
        """Refuse connections from now on."""
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None

    async def wait_for(self, count: int, timeout: float = 15.0) -> list[Submission]:
        """Until ``count`` messages were accepted."""
        deadline = time.monotonic() + timeout
        while len(self.received) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"sink got {len(self.received)} of {count} messages")
            self.arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.arrived.wait(), remaining)
        return self.received



@dataclass
class Xoauth2Sink(SmtpSink):
    """A relay that takes mail only after ``AUTH XOAUTH2`` with a live token of ``oauth``.

    A refused token gets Google's answer: a ``334`` challenge carrying a JSON error, then
    ``535`` once the client has answered it with an empty line. ``logins`` records every
    attempt as (user, accepted).
    """

    oauth: OAuth2Server | None = None
    logins: list[tuple[str, bool]] = field(default_factory=list)

    def session(self) -> SMTP:
        """No mail before AUTH; XOAUTH2 is the only mechanism (as at Microsoft 365)."""
        with warnings.catch_warnings():  # AUTH without TLS: on loopback, in a test
            warnings.simplefilter("ignore", UserWarning)
            return SMTP(self, hostname="relay.test", data_size_limit=None, auth_required=True,
                        auth_require_tls=False, auth_exclude_mechanism=["LOGIN", "PLAIN"])

    async def auth_XOAUTH2(self, server: SMTP, args: list[str]) -> AuthResult:
        """Check the bearer token with the authorization server."""
        assert self.oauth is not None
        blob = args[1].encode() if len(args) > 1 else await server.challenge_auth("")
        if not isinstance(blob, bytes):
            return AuthResult(success=False, handled=True)
        decoded = base64.b64decode(blob).decode() if len(args) > 1 else blob.decode()
        fields = dict(part.split("=", 1) for part in decoded.split("\x01") if "=" in part)
        user = fields.get("user", "")
        token = fields.get("auth", "").removeprefix("Bearer ")
        good = self.oauth.active(token, user)
        self.logins.append((user, good))
        if good:
            return AuthResult(success=True, auth_data=user)
        await server.challenge_auth('{"status":"401","schemes":"Bearer",'
                                    '"scope":"https://mail.google.com/"}')
        return AuthResult(success=False, handled=False)

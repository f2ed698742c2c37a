"""``omnirelay check-config --online``, run as ops run it (a subprocess) against real parts:
Dovecot, SMTP relays, the OAuth2 server; then the daemon on the same store."""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import textwrap
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson
import psycopg
import pytest
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

from tests.email.conftest import Feed, MakeDaemon
from tests.email.oauth2_server import OAuth2Server
from tests.email.servers import Dovecot, SmtpSink, Xoauth2Sink, mail, ports
from tests.email.test_imap import ids
from tests.email.test_oauth2 import oauth_account, secrets_in
from tests.helpers import unique
from tests.postgres.server import PgServer

WRONG = "not-the-password-7f3a"


@dataclass
class CheckRun:
    """What ``check-config --online`` printed and returned."""

    code: int
    out: str
    err: str

    def line(self, account: str) -> str:
        """The stdout line of ``type/name``."""
        found = [line for line in self.out.splitlines() if f" {account} " in line]
        assert len(found) == 1, self.out + self.err
        return found[0]


async def check_online(tmp_path: Path, channels: str, *extra: str,
                       store_url: str | None = None) -> CheckRun:
    """Write a config with ``channels`` (store in tmp_path/data, or at ``store_url``) and
    check it online."""
    data = tmp_path / "data"
    path = tmp_path / f"{unique('omnirelay')}.toml"
    path.write_text(textwrap.dedent(f"""
        [store]
        url = "{store_url or f'sqlite:///{data}/omnirelay.db'}"
        data_dir = "{data}"
        """) + textwrap.dedent(channels))
    # Awaited, not waited for: the relays and the token endpoint answer from this loop.
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "check-config", "--online", str(path), *extra,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return CheckRun(proc.returncode, out.decode(), err.decode())


def secret(tmp_path: Path, value: str) -> Path:
    """A credential file holding ``value`` (as ops give passwords: never in the config)."""
    path = tmp_path / unique("secret")
    path.write_text(value)
    return path


def imap_account(name: str, port: int, user: str, password: Path, *,
                 folder: str = "INBOX") -> str:
    return f"""
        [[channels]]
        type = "email"
        name = "{name}"
        address = "{name}@shop.example"
        [[channels.imap]]
        host = "127.0.0.1"
        port = {port}
        security = "none"
        username = "{user}"
        password_file = "{password}"
        folder = "{folder}"
        timeout = 5
        """


def relay_account(name: str, port: int, user: str, password: Path) -> str:
    return f"""
        [[channels]]
        type = "email"
        name = "{name}"
        address = "{name}@shop.example"
        smtp = {{ host = "127.0.0.1", port = {port}, security = "none", username = "{user}", password_file = "{password}", timeout = 5 }}
        """  # noqa: E501 - one TOML line


@dataclass
class PasswordRelay(SmtpSink):
    """A submission server that takes AUTH PLAIN/LOGIN with one user's password."""

    users: dict[str, str] = field(default_factory=dict)
    commands: list[str] = field(default_factory=list)

    def session(self) -> SMTP:
        with warnings.catch_warnings():  # AUTH without TLS: on loopback, in a test
            warnings.simplefilter("ignore", UserWarning)
            return SMTP(self, hostname="relay.test", auth_required=True,
                        auth_require_tls=False, authenticator=self.authenticate)

    def authenticate(self, _server: SMTP, _session: object, _envelope: object,
                     _mechanism: str, data: object) -> AuthResult:
        assert isinstance(data, LoginPassword)
        user, password = data.login.decode(), data.password.decode()
        return AuthResult(success=self.users.get(user) == password, handled=False)

    async def handle_MAIL(self, server: SMTP, session: object, envelope: object,
                          address: str, options: list[str]) -> str:
        self.commands.append("MAIL")
        return "250 OK"


@pytest.fixture
async def relay() -> PasswordRelay:
    server = PasswordRelay(users={"shop": "relay-password"})
    await server.start()
    yield server  # type: ignore[misc]
    await server.stop()


async def test_a_good_mailbox_is_signed_in_and_counted_read_only(
        dovecot: Dovecot, tmp_path: Path) -> None:
    user = dovecot.add_user(f"{unique('probe')}@shop.example")
    for n in range(3):
        await dovecot.append(user, mail(f"{unique(f'm{n}')}@mail.example"))
    run = await check_online(tmp_path, imap_account("support", dovecot.port, user,
                                                    secret(tmp_path, dovecot.PASSWORD)))
    assert run.code == 0, run.out + run.err
    line = run.line("email/support")
    assert line.startswith("ok ")
    assert f"127.0.0.1:{dovecot.port} as {user}" in line and "INBOX has 3 messages" in line
    # EXAMINE, not SELECT: nothing marked \Seen, nothing imported, no store made.
    assert all("\\Seen" not in flags for flags in (await dovecot.flags(user)).values())
    assert not (tmp_path / "data" / "omnirelay.db").exists()


async def test_a_wrong_password_fails_naming_the_account_and_not_the_password(
        dovecot: Dovecot, tmp_path: Path) -> None:
    user = dovecot.add_user(f"{unique('probe')}@shop.example")
    channels = (imap_account("support", dovecot.port, user, secret(tmp_path, WRONG))
                + imap_account("sales", dovecot.port, user,
                               secret(tmp_path, dovecot.PASSWORD)))
    run = await check_online(tmp_path, channels)
    assert run.code == 1, run.out + run.err
    failed = run.line("email/support")
    assert failed.startswith("FAIL ") and "credentials refused" in failed
    assert f"login rejected for {user}" in failed and "AUTHENTICATIONFAILED" in failed
    assert run.line("email/sales").startswith("ok ")  # one account's failure is its own
    assert WRONG not in run.out + run.err and dovecot.PASSWORD not in run.out + run.err
    assert "1 of 2 account(s) failed" in run.err


async def test_an_unreachable_port_fails_with_host_and_port(
        dovecot: Dovecot, tmp_path: Path) -> None:
    (closed,) = ports(1)
    run = await check_online(tmp_path, imap_account("support", closed, "u",
                                                    secret(tmp_path, "p")))
    assert run.code == 1
    line = run.line("email/support")
    assert line.startswith("FAIL ") and f"127.0.0.1:{closed}" in line
    assert "refused" in line.lower()


async def test_a_missing_folder_fails(dovecot: Dovecot, tmp_path: Path) -> None:
    user = dovecot.add_user(f"{unique('probe')}@shop.example")
    run = await check_online(tmp_path, imap_account("support", dovecot.port, user,
                                                    secret(tmp_path, dovecot.PASSWORD),
                                                    folder="Nope"))
    assert run.code == 1
    assert "cannot open folder 'Nope'" in run.line("email/support")


async def test_the_relay_is_signed_in_to_without_sending(
        relay: PasswordRelay, tmp_path: Path) -> None:
    channels = (relay_account("good", relay.port, "shop", secret(tmp_path, "relay-password"))
                + relay_account("bad", relay.port, "shop", secret(tmp_path, WRONG)))
    run = await check_online(tmp_path, channels)
    assert run.code == 1, run.out + run.err
    good, bad = run.line("email/good"), run.line("email/bad")
    assert good.startswith("ok ") and f"SMTP signed in to 127.0.0.1:{relay.port} as shop" \
        in good
    assert bad.startswith("FAIL ") and "credentials refused" in bad and "535" in bad
    assert f"127.0.0.1:{relay.port}" in bad
    assert WRONG not in run.out + run.err and "relay-password" not in run.out + run.err
    assert relay.commands == [] and relay.received == []  # no MAIL FROM, nothing sent


async def test_a_slow_check_is_cut_at_the_timeout(
        oauth: OAuth2Server, xoauth2_sink: Xoauth2Sink, dovecot: Dovecot,
        tmp_path: Path) -> None:
    oauth.hang_next()
    user = dovecot.add_user(f"{unique('m365')}@shop.example")
    secret_file = tmp_path / "client-secret"
    secret_file.write_text(oauth.client_secret)
    channels = oauth_account("m365", user, dovecot, oauth, secret_file=secret_file,
                             refresh_file=None, client_id=oauth.grant_app(user)[0])
    run = await check_online(tmp_path, channels, "--timeout", "1")
    assert run.code == 1
    assert "no answer within 1 s" in run.line("email/m365")


async def test_a_rotated_refresh_token_is_kept_for_the_daemon(
        oauth: OAuth2Server, dovecot: Dovecot, xoauth2_sink: Xoauth2Sink,
        make_daemon: MakeDaemon, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    oauth.rotate = oauth.revoke_used = True  # the used one stops working at once
    user = dovecot.add_user(f"{unique('m365')}@shop.example")
    secret_file, refresh_file = tmp_path / "client-secret", tmp_path / "refresh-token"
    secret_file.write_text(oauth.client_secret)
    configured = oauth.consent(user)
    refresh_file.write_text(configured + "\n")
    account = oauth_account("m365", user, dovecot, oauth, secret_file=secret_file,
                            refresh_file=refresh_file, sink=xoauth2_sink)
    await dovecot.append(user, mail(first := f"{unique('first')}@mail.example"))

    run = await check_online(tmp_path, account)
    assert run.code == 0, run.out + run.err
    line = run.line("email/m365")
    assert "IMAP signed in with XOAUTH2" in line and "INBOX has 1 message" in line
    assert "SMTP signed in with XOAUTH2" in line
    assert xoauth2_sink.logins == [(user, True)] and xoauth2_sink.received == []
    # The mailbox's token (its scope), then the relay's with the refresh token the first
    # answer rotated: the configured one is dead by then.
    imap_grant, smtp_grant = oauth.grants()
    assert imap_grant.form["refresh_token"] == configured
    assert smtp_grant.form["refresh_token"] != configured
    assert configured not in oauth.refresh_tokens
    assert secrets_in(run.out + run.err, oauth) == []
    db = sqlite3.connect(tmp_path / "data" / "omnirelay.db")
    (record,) = db.execute("SELECT value FROM checkpoints WHERE key LIKE 'oauth2:%'")
    db.close()
    kept = orjson.loads(record[0])["refresh_token"]
    assert kept in oauth.refresh_tokens

    daemon = await make_daemon(account, data_dir=tmp_path / "data")
    feed = Feed(http, daemon)
    await feed.wait_for(lambda f: first in ids(f.received("m365")))
    assert oauth.grants()[2].form["refresh_token"] == kept

    # Run again while the daemon runs: it signs in with the newest kept token too.
    rerun = await check_online(tmp_path, account)
    assert rerun.code == 0, rerun.out + rerun.err
    assert oauth.grants()[-1].form["refresh_token"] not in (configured, kept)


async def test_on_postgresql_the_rotated_token_is_kept_in_the_database(
        oauth: OAuth2Server, dovecot: Dovecot, pg_server: PgServer, tmp_path: Path) -> None:
    oauth.rotate = oauth.revoke_used = True
    url = pg_server.new_database(template=None)  # empty: the check brings the schema
    user = dovecot.add_user(f"{unique('m365')}@shop.example")
    secret_file, refresh_file = tmp_path / "client-secret", tmp_path / "refresh-token"
    secret_file.write_text(oauth.client_secret)
    configured = oauth.consent(user)
    refresh_file.write_text(configured)
    account = oauth_account("m365", user, dovecot, oauth, secret_file=secret_file,
                            refresh_file=refresh_file)
    first = await check_online(tmp_path, account, store_url=url)
    assert first.code == 0, first.out + first.err
    with psycopg.connect(url) as conn:
        (record,) = conn.execute("SELECT value FROM checkpoints WHERE key LIKE 'oauth2:%'")
    kept = orjson.loads(record[0])["refresh_token"]
    again = await check_online(tmp_path, account, store_url=url)  # the configured one is dead
    assert again.code == 0, again.out + again.err
    assert [g.form["refresh_token"] for g in oauth.grants()] == [configured, kept]


async def test_an_api_account_has_nothing_to_check(tmp_path: Path) -> None:
    run = await check_online(tmp_path, """
        [[channels]]
        type = "api"
        name = "default"
        """)
    assert run.code == 0, run.out + run.err
    assert run.line("api/default").split() == ["--", "api/default", "nothing", "to",
                                                "check"]


async def test_tls_settings_are_used_and_an_untrusted_certificate_fails(
        dovecot: Dovecot, tmp_path: Path) -> None:
    user = dovecot.add_user(f"{unique('probe')}@shop.example")
    password = secret(tmp_path, dovecot.PASSWORD)
    trusted = imap_account("trusted", dovecot.tls_port, user, password).replace(
        'security = "none"', f'security = "tls"\n        ca_file = "{dovecot.cert}"')
    untrusted = imap_account("untrusted", dovecot.tls_port, user, password).replace(
        'security = "none"', 'security = "tls"')
    run = await check_online(tmp_path, trusted + untrusted)
    assert run.code == 1, run.out + run.err
    assert run.line("email/trusted").startswith("ok ") and "(TLS)" in run.line("email/trusted")
    line = run.line("email/untrusted")
    assert line.startswith("FAIL ") and f"127.0.0.1:{dovecot.tls_port}" in line
    assert "server certificate rejected" in line

"""OAuth2 certificate credentials (RFC 7523 ``private_key_jwt``): config, token source, daemon.

The local authorization server (tests/email/oauth2_server.py) checks each client assertion
as Entra ID does (registered certificate by ``x5t#S256``, signature, audience, issuer and
subject, time range, one use per ``jti``) before it issues a token; Dovecot then checks
that token. Keys and certificates are made here, none is committed.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import time
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from structlog.testing import capture_logs

from gateway.config import parse_config
from gateway.errors import ConfigErrors
from gateway.oauth2 import CLIENT_ASSERTION_TYPE, AccessTokens, OAuth2Rejected, OAuth2Settings
from tests.email.certificates import (
    AppCertificate,
    ec_key,
    make_certificate,
    rsa_key,
    shared_certificate,
)
from tests.email.conftest import Feed, MakeDaemon
from tests.email.oauth2_server import OAuth2Server, x5t_s256
from tests.email.servers import Dovecot, mail
from tests.email.test_imap import channel, channel_if, ids
from tests.email.test_oauth2 import parse
from tests.helpers import unique, wait_until

TOKEN_URL = "https://login.microsoftonline.com/t/oauth2/v2.0/token"


def oauth2_table(token_url: str, client_id: str, credentials: str, *,
                 refresh_file: Path | None = None,
                 scope: str = "https://outlook.office365.com/.default") -> str:
    """An inline ``oauth2`` table; ``credentials`` is the client's credential keys."""
    refresh = f', refresh_token_file = "{refresh_file}"' if refresh_file else ""
    return (f'{{ token_url = "{token_url}", client_id = "{client_id}", {credentials}'
            f'{refresh}, scope = "{scope}" }}')


def files(key_file: Path, cert_file: Path | None = None) -> str:
    """The credential keys for a key file (and a certificate file)."""
    cert = f', certificate_file = "{cert_file}"' if cert_file is not None else ""
    return f'private_key_file = "{key_file}"{cert}'


def settings(token_url: str, client_id: str, credentials: str, **kw: Any) -> OAuth2Settings:
    """The oauth2 settings a relay's table gives, read as the daemon reads them."""
    config = parse(f'''
        address = "s@shop.example"
        smtp = {{ host = "smtp.office365.com", username = "s@shop.example", oauth2 = {oauth2_table(token_url, client_id, credentials, **kw)} }}
        ''')  # noqa: E501
    oauth2: OAuth2Settings = config.channels[0].options.smtp.oauth2
    return oauth2


def config_errors(credentials: str) -> list[tuple[str, str, str]]:
    """(key, message, hint) of each error an smtp.oauth2 table with ``credentials`` has."""
    with pytest.raises(ConfigErrors) as raised:
        settings(TOKEN_URL, "app", credentials)
    prefix = "channels[0].smtp.oauth2."
    return [(e.key.removeprefix(prefix), e.message, e.hint) for e in raised.value.errors]


@pytest.fixture(scope="module")
def app() -> AppCertificate:
    """The certificate the tests' app registrations know."""
    return shared_certificate()


@pytest.fixture
def app_files(app: AppCertificate, tmp_path: Path) -> tuple[Path, Path]:
    """Its key and certificate files."""
    return app.write(tmp_path)


# ---------------------------------------------------------------- config


def test_config_reads_the_key_and_certificate_and_names_the_certificate(
        app: AppCertificate, app_files: tuple[Path, Path]) -> None:
    oauth2 = settings(TOKEN_URL, "app", files(*app_files))
    assert oauth2.client_secret is None and oauth2.grant == "client_credentials"
    certificate = oauth2.certificate
    assert certificate is not None and certificate.algorithm == "PS256"
    assert certificate.x5t_s256 == base64.urlsafe_b64encode(hashlib.sha256(
        app.certificate.public_bytes(serialization.Encoding.DER)).digest()).rstrip(b"=").decode()
    assert certificate.sha1_thumbprint == app.sha1_thumbprint
    assert app.key_body not in repr(oauth2)  # the key is a Secret

    rs256 = settings(TOKEN_URL, "app", files(*app_files) + ', assertion_algorithm = "RS256"')
    assert rs256.certificate is not None and rs256.certificate.algorithm == "RS256"


def test_the_certificate_may_sit_in_the_key_file_or_with_its_chain(
        app: AppCertificate, tmp_path: Path) -> None:
    other = make_certificate(name="some CA")
    combined = tmp_path / "combined.pem"  # as Azure Key Vault exports a PEM certificate
    combined.write_text(app.cert_pem + app.key_pem)
    oauth2 = settings(TOKEN_URL, "app", files(combined))
    assert oauth2.certificate is not None
    assert oauth2.certificate.sha1_thumbprint == app.sha1_thumbprint

    key_file, _ = app.write(tmp_path, "chained")
    chain = tmp_path / "chain.pem"
    chain.write_text(other.cert_pem + app.cert_pem)  # the key's own one is picked
    oauth2 = settings(TOKEN_URL, "app", files(key_file, chain))
    assert oauth2.certificate is not None
    assert oauth2.certificate.sha1_thumbprint == app.sha1_thumbprint


@pytest.mark.parametrize(("days", "said"), [(-1, "expired on"), (10, "expires on")])
def test_an_expired_or_expiring_certificate_is_a_warning(
        days: int, said: str, tmp_path: Path, session: aiohttp.ClientSession) -> None:
    ending = make_certificate(days=days)
    key_file, cert_file = ending.write(tmp_path)
    config = parse(f'''
        address = "s@shop.example"
        smtp = {{ host = "s", username = "u", oauth2 = {oauth2_table(TOKEN_URL, "app", files(key_file, cert_file))} }}
        ''')  # noqa: E501
    oauth2 = config.channels[0].options.smtp.oauth2
    assert oauth2.certificate is not None  # the daemon still starts
    (warning,) = [w for w in config.warnings if w.key and "certificate_file" in w.key]
    assert f"(SHA-1 thumbprint {ending.sha1_thumbprint}) {said}" in warning.message
    with capture_logs() as logs:
        AccessTokens(oauth2, http=session)  # at each start and reload
    (logged,) = [e for e in logs if e["event"] == "oauth2.certificate_expiring"]
    assert logged["days_left"] == max(days - 1, 0) and logged["log_level"] == "warning"


def test_store_commands_do_not_read_the_key(app_files: tuple[Path, Path]) -> None:
    _, cert_file = app_files
    # An admin shell that cannot read the service's credentials: not even looked for.
    text = ('[store]\nurl = "sqlite:///x.db"\n[[channels]]\ntype = "email"\nname = "s"\n'
            'address = "s@shop.example"\nsmtp = { host = "s", username = "u", oauth2 = '
            + oauth2_table(TOKEN_URL, "app", files(Path("/nonexistent/key"), cert_file))
            + " }\n")
    parse_config(text, environ={}, resolve_secrets=False)  # no error


def _write(tmp_path: Path, name: str, text: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


@pytest.mark.parametrize(("case", "key", "complaint"), [
    ("secret and certificate", "private_key_file",
     "give either a client secret or a certificate, not both"),
    ("key unreadable", "private_key_file", "cannot read secret file"),
    ("key not PEM", "private_key_file", "is not a PEM private key"),
    ("key empty", "private_key_file", "is empty"),
    ("key in DER", "private_key_file", "is not UTF-8 text"),
    ("certificate instead of key", "private_key_file", "is not a PEM private key"),
    ("key encrypted", "private_key_file", "is encrypted with a passphrase"),
    ("key not RSA", "private_key_file", "must be an RSA key"),
    ("key too short", "private_key_file", "is a 1024-bit RSA key, too short"),
    ("certificate unreadable", "certificate_file", "cannot read certificate file"),
    ("certificate not PEM", "certificate_file", "is not a PEM certificate"),
    ("certificate of another key", "certificate_file",
     "does not match private_key_file: the certificate (SHA-1 thumbprint"),
    ("key file with another key's certificate", "private_key_file",
     "holds a certificate (SHA-1 thumbprint"),
    ("no certificate", "certificate_file", "is required with private_key_file"),
    ("certificate without key", "private_key_file", "is required with certificate_file"),
    ("unknown algorithm", "assertion_algorithm", "must be PS256 or RS256"),
])
def test_certificate_config_errors_are_clear_and_quote_no_key(
        case: str, key: str, complaint: str, app: AppCertificate,
        app_files: tuple[Path, Path], tmp_path: Path) -> None:
    key_file, cert_file = app_files
    credentials = {
        "secret and certificate": files(key_file, cert_file) + ', client_secret = "s"',
        "key unreadable": files(tmp_path / "missing.key", cert_file),
        "key not PEM": files(_write(tmp_path, "k", "-----BEGIN PRIVATE KEY-----\nx\n"),
                             cert_file),
        "key empty": files(_write(tmp_path, "empty.key", "\n"), cert_file),
        "key file with another key's certificate": files(_write(
            tmp_path, "mixed.pem", make_certificate(key=rsa_key()).cert_pem + app.key_pem)),
        "key in DER": files(_write(tmp_path, "k.der", app.key.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption())), cert_file),
        "certificate instead of key": files(cert_file, cert_file),
        "key encrypted": files(_write(tmp_path, "enc.key", app.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"))), cert_file),
        "key not RSA": files(*make_certificate(key=ec_key()).write(tmp_path, "ec")),
        "key too short": files(*make_certificate(key=rsa_key(1024)).write(tmp_path, "short")),
        "certificate unreadable": files(key_file, tmp_path / "missing.crt"),
        "certificate not PEM": files(key_file, _write(tmp_path, "c.crt", app.certificate
                                                      .public_bytes(serialization.Encoding.DER))),
        "certificate of another key": files(key_file, make_certificate().write(
            tmp_path, "other")[1]),
        "no certificate": files(key_file),
        "certificate without key": f'certificate_file = "{cert_file}"',
        "unknown algorithm": files(key_file, cert_file) + ', assertion_algorithm = "ES256"',
    }[case]
    errors = config_errors(credentials)
    found = [(message, hint) for k, message, hint in errors if k == key]
    assert found and complaint in found[0][0], errors
    assert found[0][1], "every error says what to do"
    assert app.key_body not in str(errors)


# ---------------------------------------------------------------- the token source


def decoded(assertion: str, app: AppCertificate,
            audience: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(header, claims) of an assertion, its signature checked with the certificate."""
    claims = jwt.decode(assertion, app.certificate.public_key(), algorithms=["PS256", "RS256"],
                        audience=audience)
    return jwt.get_unverified_header(assertion), claims


async def test_client_credentials_with_a_certificate_send_a_fresh_signed_assertion(
        oauth: OAuth2Server, session: aiohttp.ClientSession, app: AppCertificate,
        app_files: tuple[Path, Path]) -> None:
    client_id = oauth.grant_app_certificate("support@shop.example", app.certificate)
    tokens = AccessTokens(settings(oauth.url, client_id, files(*app_files)), http=session)
    before = int(time.time())
    assert oauth.active(await tokens.token(), "support@shop.example")
    tokens.forget()
    assert oauth.active(await tokens.token(), "support@shop.example")
    first, second = oauth.grants()
    assert first.form.keys() == {"grant_type", "client_id", "client_assertion_type",
                                 "client_assertion", "scope"}  # no client secret
    assert first.form["grant_type"] == "client_credentials"
    assert first.form["client_assertion_type"] == CLIENT_ASSERTION_TYPE
    header, claims = decoded(first.form["client_assertion"], app, oauth.url)
    assert header == {"alg": "PS256", "typ": "JWT", "x5t#S256": x5t_s256(app.certificate)}
    assert claims["iss"] == claims["sub"] == client_id and claims["aud"] == oauth.url
    assert before <= claims["nbf"] == claims["iat"] <= time.time()
    assert claims["exp"] == claims["iat"] + 300
    _, again = decoded(second.form["client_assertion"], app, oauth.url)
    assert again["jti"] != claims["jti"]  # a fresh assertion per request

    # The server takes an assertion once: a replayed one is refused.
    async with session.post(oauth.url, data=first.form) as response:
        assert response.status == 401
        assert "already used" in (await response.json())["error_description"]
    # It checks the signature with the registered certificate, not just the header's name.
    forged = jwt.encode({**claims, "jti": "forged"}, rsa_key(), algorithm="PS256",
                        headers={"x5t#S256": x5t_s256(app.certificate)})
    async with session.post(oauth.url, data={**first.form, "client_assertion": forged}) \
            as response:
        assert response.status == 401
        assert "invalid signature" in (await response.json())["error_description"]


async def test_a_refresh_token_grant_may_authenticate_the_client_with_a_certificate(
        oauth: OAuth2Server, session: aiohttp.ClientSession, app: AppCertificate,
        app_files: tuple[Path, Path], tmp_path: Path) -> None:
    oauth.register_certificate(oauth.client_id, app.certificate)
    refresh = tmp_path / "refresh-token"
    refresh.write_text(oauth.consent("hal@shop.example"))
    tokens = AccessTokens(settings(oauth.url, oauth.client_id,
                                   files(*app_files) + ', assertion_algorithm = "RS256"',
                                   refresh_file=refresh), http=session)
    assert oauth.active(await tokens.token(), "hal@shop.example")
    (grant,) = oauth.grants()
    assert grant.form["refresh_token"] == refresh.read_text()
    header, _ = decoded(grant.form["client_assertion"], app, oauth.url)
    assert header["alg"] == "RS256"


async def test_a_refused_assertion_is_a_clear_auth_error_without_secrets(
        oauth: OAuth2Server, session: aiohttp.ClientSession, app: AppCertificate,
        app_files: tuple[Path, Path], tmp_path: Path) -> None:
    client_id = oauth.grant_app_certificate("ida@shop.example", app.certificate)
    # A renewed certificate that was never uploaded to the app registration.
    renewed = make_certificate()
    unknown = AccessTokens(settings(oauth.url, client_id,
                                    files(*renewed.write(tmp_path, "renewed"))), http=session)
    with pytest.raises(OAuth2Rejected) as raised:
        await unknown.token()
    message = raised.value.message
    assert raised.value.error == "invalid_client"
    assert "AADSTS700027" in message and "The key was not found" in message
    assert f"the certificate (SHA-1 thumbprint {renewed.sha1_thumbprint}) is uploaded" in message
    assert renewed.key_body not in message

    # This machine's clock is an hour behind: the assertion expired before it was sent.
    slow = AccessTokens(settings(oauth.url, client_id, files(*app_files)), http=session,
                        wall_clock=lambda: time.time() - 3600)
    with pytest.raises(OAuth2Rejected) as raised:
        await slow.token()
    assert "AADSTS700024" in raised.value.message  # not within its valid time range
    assert "this machine's clock" in raised.value.message

    # The certificate ran out (the config only warned): the message says so.
    expired = make_certificate(days=-1)
    oauth.register_certificate(client_id, expired.certificate)
    late = AccessTokens(settings(oauth.url, client_id, files(*expired.write(tmp_path, "old"))),
                        http=session)
    with pytest.raises(OAuth2Rejected) as raised:
        await late.token()
    assert "has expired" in raised.value.message
    assert f"; the certificate expired on {expired.certificate.not_valid_after_utc:%Y-%m-%d}" \
        in raised.value.message
    assert oauth.grants() == []
    for request in oauth.requests:
        assert request.form["client_assertion"] not in raised.value.message


# ---------------------------------------------------------------- the daemon, as ops run it


def account(name: str, user: str, dovecot: Dovecot, oauth: OAuth2Server, client_id: str,
            credentials: str) -> str:
    """An e-mail account whose mailbox signs in app-only with a certificate credential."""
    table = oauth2_table(oauth.url, client_id, credentials)
    return f"""
        [[channels]]
        type = "email"
        name = "{name}"
        address = "{name}@shop.example"
        [[channels.imap]]
        host = "127.0.0.1"
        port = {dovecot.port}
        security = "none"
        username = "{user}"
        timeout = 5
        oauth2 = {table}
        """


def leaks(text: str, oauth: OAuth2Server, *apps: AppCertificate) -> list[str]:
    """Tokens, assertions or private key material of ``oauth`` and ``apps`` in ``text``."""
    found = [t for t in [*oauth.access_tokens, *(r.form.get("client_assertion", "")
                                                 for r in oauth.requests)] if t and t in text]
    return found + [a.key_body for a in apps if a.key_body in text] + \
        (["PRIVATE KEY"] if "PRIVATE KEY" in text else [])


async def test_daemon_signs_in_to_dovecot_with_a_token_got_with_a_certificate(
        oauth: OAuth2Server, dovecot: Dovecot, make_daemon: MakeDaemon,
        http: aiohttp.ClientSession, app: AppCertificate,
        app_files: tuple[Path, Path]) -> None:
    user = dovecot.add_user(f"{unique('certapp')}@shop.example")
    client_id = oauth.grant_app_certificate(user, app.certificate)
    first = f"{unique('cert')}@mail.example"
    await dovecot.append(user, mail(first))
    daemon = await make_daemon(account("entra", user, dovecot, oauth, client_id,
                                       files(*app_files)))
    feed = Feed(http, daemon)
    await feed.wait_for(lambda f: first in ids(f.received("entra")))
    (grant,) = oauth.grants()
    assert "client_secret" not in grant.form
    assert grant.form["client_assertion_type"] == CLIENT_ASSERTION_TYPE
    (header, claims), = oauth.assertions
    assert header["x5t#S256"] == x5t_s256(app.certificate) and claims["sub"] == client_id
    token = next(t for t, good in oauth.introspections if good)  # Dovecot took it
    assert oauth.active(token, user)
    entry = await channel(http, daemon, "entra")
    assert entry["state"] == "running" and entry["counters"]["oauth2_refreshes"] == 1
    refreshed = [orjson.loads(line) for line in daemon.logs().splitlines()
                 if '"oauth2.token_refreshed"' in line]
    assert refreshed[0]["certificate"] == app.sha1_thumbprint
    assert leaks(daemon.logs(), oauth, app) == []


async def test_refused_assertions_show_the_account_degraded_with_a_readable_error(
        oauth: OAuth2Server, dovecot: Dovecot, make_daemon: MakeDaemon,
        http: aiohttp.ClientSession, app: AppCertificate, app_files: tuple[Path, Path],
        tmp_path: Path) -> None:
    unregistered = make_certificate()  # the wrong key: its certificate is not uploaded
    wrong_user = dovecot.add_user(f"{unique('wrongkey')}@shop.example")
    late_user = dovecot.add_user(f"{unique('lateclock')}@shop.example")
    wrong_id = oauth.grant_app_certificate(wrong_user, app.certificate)
    late_id = oauth.grant_app_certificate(late_user, app.certificate)
    oauth.clock_skew = 3600  # the server's clock is an hour ahead of this machine's
    daemon = await make_daemon(
        account("wrongkey", wrong_user, dovecot, oauth, wrong_id,
                files(*unregistered.write(tmp_path, "unregistered")))
        + account("lateclock", late_user, dovecot, oauth, late_id, files(*app_files)))
    wrong = await wait_until(lambda: channel_if(http, daemon, "wrongkey",
                                                lambda c: c["state"] == "degraded"))
    assert "OAuth2 sign-in failed: invalid_client (AADSTS700027" in wrong["last_error"]
    assert unregistered.sha1_thumbprint in wrong["last_error"]
    assert wrong_user in wrong["last_error"]
    late = await wait_until(lambda: channel_if(http, daemon, "lateclock",
                                               lambda c: c["state"] == "degraded"))
    assert "AADSTS700024: Client assertion is not within its valid time range" in \
        late["last_error"] and "this machine's clock" in late["last_error"]
    failed = [orjson.loads(line) for line in daemon.logs().splitlines()
              if '"oauth2.failed"' in line]
    assert {f["account"] for f in failed} == {"wrongkey", "lateclock"}
    assert all(f["error"] == "invalid_client" and f["level"] == "warning" for f in failed)
    assert oauth.grants() == [] and dovecot_saw_no_token(oauth)
    assert leaks(daemon.logs(), oauth, app, unregistered) == []
    assert leaks(orjson.dumps([wrong, late]).decode(), oauth, app, unregistered) == []


def dovecot_saw_no_token(oauth: OAuth2Server) -> bool:
    """No sign-in got as far as Dovecot asking about a token."""
    return oauth.introspections == []


async def test_concurrent_callers_share_one_assertion(
        oauth: OAuth2Server, session: aiohttp.ClientSession, app: AppCertificate,
        app_files: tuple[Path, Path]) -> None:
    client_id = oauth.grant_app_certificate("jo@shop.example", app.certificate)
    tokens = AccessTokens(settings(oauth.url, client_id, files(*app_files)), http=session)
    got = await asyncio.gather(*(tokens.token() for _ in range(4)))
    assert len(set(got)) == 1 and len(oauth.requests) == 1

"""OAuth2 (SASL XOAUTH2) sign-in: the token source, IMAP against Dovecot, the SMTP relay.

The authorization server is a local one speaking the token endpoint's wire format
(tests/email/oauth2_server.py); Dovecot checks the tokens it issued through RFC 7662
introspection, so a token omnirelay did not refresh in time is refused for real.
"""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from adapters.email import imap as imap_module
from adapters.email.config import ImapSettings, ServerSettings
from adapters.email.imap import ImapSession, Mailbox
from adapters.email.outbound import submit
from gateway.config import parse_config
from gateway.configkit import Secret
from gateway.errors import AdapterConfigError, ConfigErrors, RetryableSendError, StoreError
from gateway.oauth2 import (
    AccessTokens,
    OAuth2Rejected,
    OAuth2Settings,
    OAuth2Unavailable,
)
from tests.email.conftest import Feed, MakeDaemon
from tests.email.oauth2_server import OAuth2Server
from tests.email.servers import Dovecot, Xoauth2Sink, mail
from tests.email.test_adapter import FakeIngest, FakeStore, ingest_into
from tests.email.test_imap import channel, channel_if, ids
from tests.helpers import post_json, unique, wait_until


class DictStore:
    """Checkpoints in a dict; ``broken`` makes every call fail like a full disk."""

    def __init__(self) -> None:
        self.checkpoints: dict[str, str] = {}
        self.broken = False

    async def get_checkpoint(self, key: str) -> str | None:
        if self.broken:
            raise StoreError("disk full")
        return self.checkpoints.get(key)

    async def set_checkpoint(self, key: str, value: str) -> None:
        if self.broken:
            raise StoreError("disk full")
        self.checkpoints[key] = value

    async def init_checkpoint(self, key: str, value: str) -> str:
        return self.checkpoints.setdefault(key, value)


def delegated(oauth: OAuth2Server, refresh_token: str, **overrides: Any) -> OAuth2Settings:
    """Settings for a refresh token of ``oauth``."""
    values: dict[str, Any] = {
        "token_url": oauth.url, "client_id": oauth.client_id,
        "client_secret": Secret(oauth.client_secret), "refresh_token": Secret(refresh_token),
        "scope": "https://outlook.office.com/IMAP.AccessAsUser.All offline_access"}
    values.update(overrides)
    return OAuth2Settings(**values)


def imap_settings(dovecot: Dovecot, user: str, oauth: OAuth2Server) -> ImapSettings:
    """Plain IMAP to Dovecot, signing in with a token of ``oauth``."""
    return ImapSettings("127.0.0.1", dovecot.port, "none", user, None, timeout=5.0,
                        oauth2=delegated(oauth, "unused"))


# ---------------------------------------------------------------- the token source


async def test_refresh_grant_is_form_encoded_cached_and_shared_by_concurrent_callers(
        oauth: OAuth2Server, session: aiohttp.ClientSession) -> None:
    refresh = oauth.consent("alice@shop.example")
    tokens = AccessTokens(delegated(oauth, refresh), http=session)
    first = await asyncio.gather(*(tokens.token() for _ in range(5)))
    assert len(set(first)) == 1 and oauth.active(first[0], "alice@shop.example")
    assert await tokens.token() == first[0]
    (request,) = oauth.requests  # one refresh for six callers
    assert request.form == {
        "grant_type": "refresh_token", "client_id": oauth.client_id,
        "client_secret": oauth.client_secret, "refresh_token": refresh,
        "scope": "https://outlook.office.com/IMAP.AccessAsUser.All offline_access"}


async def test_client_credentials_grant_without_a_refresh_token(
        oauth: OAuth2Server, session: aiohttp.ClientSession) -> None:
    client_id, secret = oauth.grant_app("support@shop.example")
    tokens = AccessTokens(OAuth2Settings(oauth.url, client_id, Secret(secret),
                                         scope="https://outlook.office365.com/.default"),
                          http=session)
    assert oauth.active(await tokens.token(), "support@shop.example")
    assert oauth.requests[0].form == {
        "grant_type": "client_credentials", "client_id": client_id, "client_secret": secret,
        "scope": "https://outlook.office365.com/.default"}
    assert tokens.lineage_key is None  # nothing to keep


class Clock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_a_token_is_replaced_before_it_expires_and_a_rejected_one_once(
        oauth: OAuth2Server, session: aiohttp.ClientSession) -> None:
    clock = Clock()
    tokens = AccessTokens(delegated(oauth, oauth.consent("bob@shop.example")), http=session,
                          clock=clock)
    first = await tokens.token()
    clock.now += 3299  # an hour's token is kept until five minutes before it ends
    assert await tokens.token() == first and len(oauth.requests) == 1
    clock.now += 2
    second = await tokens.token()
    assert second != first and len(oauth.requests) == 2
    # A server refused ``second`` (revoked early): callers passing it back share one refresh.
    third = await asyncio.gather(*(tokens.token(rejected=second) for _ in range(3)))
    assert len(set(third)) == 1 and third[0] != second and len(oauth.requests) == 3
    # A caller still holding the older token gets the current one, with no request.
    assert await tokens.token(rejected=first) == third[0] and len(oauth.requests) == 3

    oauth.expires_in = 60  # a short-lived one is replaced at half its life
    clock.now += 3600
    short = await tokens.token()
    clock.now += 29
    assert await tokens.token() == short
    clock.now += 2
    assert await tokens.token() != short and len(oauth.requests) == 5


async def test_an_endpoint_blip_in_a_tokens_last_minutes_costs_nothing(
        oauth: OAuth2Server, session: aiohttp.ClientSession) -> None:
    clock = Clock()
    tokens = AccessTokens(delegated(oauth, oauth.consent("gus@shop.example")), http=session,
                          clock=clock)
    first = await tokens.token()
    clock.now += 3400  # due for a refresh, still valid for 200 s
    oauth.fail_next(503)
    assert await tokens.token() == first
    oauth.revoke(oauth.requests[0].form["refresh_token"])
    assert await tokens.token() == first  # refused: still the valid one, meanwhile
    clock.now += 200  # now it has run out, and the quiet time after the refusal too
    with pytest.raises(OAuth2Rejected):
        await tokens.token()
    assert [r.status for r in oauth.requests] == [200, 503, 400, 400]


async def test_rotated_refresh_token_is_kept_and_used_after_a_restart(
        oauth: OAuth2Server, session: aiohttp.ClientSession) -> None:
    oauth.rotate = oauth.revoke_used = True  # the used one stops working at once
    configured = oauth.consent("carol@shop.example")
    store = DictStore()
    tokens = AccessTokens(delegated(oauth, configured), http=session, store=store)
    await tokens.token()
    tokens.forget()
    await tokens.token()
    used = [r.form["refresh_token"] for r in oauth.requests]
    assert used[0] == configured and used[1] != configured  # the rotated one, next time
    (record,) = store.checkpoints.values()
    newest = orjson.loads(record)["refresh_token"]
    assert newest not in used and newest in oauth.refresh_tokens
    assert configured not in record  # kept by a hash of its origin only

    restarted = AccessTokens(delegated(oauth, configured), http=session, store=store)
    await restarted.token()
    assert oauth.requests[-1].form["refresh_token"] == newest

    # A new consent (another configured token) starts afresh: the kept one is not its.
    fresh = oauth.consent("carol@shop.example")
    again = AccessTokens(delegated(oauth, fresh), http=session, store=store)
    await again.token()
    assert oauth.requests[-1].form["refresh_token"] == fresh


async def test_a_store_that_cannot_keep_the_rotated_token_still_signs_in(
        oauth: OAuth2Server, session: aiohttp.ClientSession) -> None:
    oauth.rotate = oauth.revoke_used = True
    store = DictStore()
    store.broken = True
    tokens = AccessTokens(delegated(oauth, oauth.consent("dan@shop.example")), http=session,
                          store=store)
    await tokens.token()
    tokens.forget()
    await tokens.token()  # the rotated one, from memory
    assert [r.status for r in oauth.requests] == [200, 200]


async def test_invalid_grant_is_a_clear_auth_error_not_retried_at_once(
        oauth: OAuth2Server, session: aiohttp.ClientSession) -> None:
    tokens = AccessTokens(delegated(oauth, "rt-revoked-long-ago"), http=session)
    with pytest.raises(OAuth2Rejected) as raised:
        await tokens.token()
    assert raised.value.error == "invalid_grant"
    assert "invalid_grant" in raised.value.message and "AADSTS70000" in raised.value.message
    assert "rt-revoked" not in raised.value.message
    with pytest.raises(OAuth2Rejected):
        await tokens.token()
    assert len(oauth.requests) == 1  # the same answer, without asking again

    wrong = AccessTokens(delegated(oauth, oauth.consent("eve@shop.example"),
                                   client_secret=Secret("not-the-secret")), http=session)
    with pytest.raises(OAuth2Rejected) as raised:
        await wrong.token()
    assert raised.value.error == "invalid_client" and "not-the-secret" not in str(raised.value)


async def test_5xx_and_timeouts_are_transient(
        oauth: OAuth2Server, session: aiohttp.ClientSession) -> None:
    tokens = AccessTokens(delegated(oauth, oauth.consent("fay@shop.example")), http=session,
                          timeout=0.5)
    oauth.fail_next(503)
    with pytest.raises(OAuth2Unavailable) as raised:
        await tokens.token()
    assert "HTTP 503" in raised.value.message
    oauth.hang_next()
    with pytest.raises(OAuth2Unavailable) as raised:
        await tokens.token()
    assert "timed out" in raised.value.message
    assert oauth.active(await tokens.token())  # the next attempt asks again and works


# ---------------------------------------------------------------- config


def parse(channel: str) -> Any:
    """Parse a config with one e-mail channel (the rest minimal)."""
    text = '[store]\nurl = "sqlite:///x.db"\n[[channels]]\ntype = "email"\nname = "s"\n'
    return parse_config(text + textwrap.dedent(channel), environ={})


OAUTH2 = ('oauth2 = { token_url = "https://login.microsoftonline.com/t/oauth2/v2.0/token", '
          'client_id = "c", client_secret = "s", refresh_token = "r" }')


def test_config_takes_an_oauth2_table_for_imap_and_smtp(tmp_path: Any) -> None:
    secret, refresh = tmp_path / "client-secret", tmp_path / "refresh-token"
    secret.write_text("the-secret\n")
    refresh.write_text("the-refresh-token\n")
    refresh.chmod(0o400)  # a read-only credential: nothing is ever written there
    config = parse(f'''
        address = "s@shop.example"
        [channels.smtp]
        host = "smtp.office365.com"
        username = "s@shop.example"
        oauth2 = {{ token_url = "https://login.microsoftonline.com/t/oauth2/v2.0/token", client_id = "app", client_secret_file = "{secret}", refresh_token_file = "{refresh}", scope = "https://outlook.office.com/SMTP.Send offline_access" }}
        [[channels.imap]]
        host = "outlook.office365.com"
        username = "s@shop.example"
        oauth2 = {{ token_url = "https://login.microsoftonline.com/t/oauth2/v2.0/token", client_id = "app", client_secret_file = "{secret}", scope = "https://outlook.office365.com/.default" }}
        ''').channels[0].options  # noqa: E501
    smtp, imap = config.smtp, config.imap[0]
    assert smtp.password is None and smtp.oauth2.grant == "refresh_token"
    assert smtp.oauth2.refresh_token.reveal() == "the-refresh-token"
    assert smtp.oauth2.client_secret.reveal() == "the-secret"
    assert imap.oauth2.grant == "client_credentials" and imap.oauth2.client_id == "app"
    assert "the-secret" not in repr(config)


@pytest.mark.parametrize(("table", "key", "complaint"), [
    (f'imap = {{ host = "i", username = "u", password = "p", {OAUTH2} }}',
     "imap.oauth2", "give either a password or oauth2, not both"),
    (f'smtp = {{ host = "s", password_file = "/nonexistent", {OAUTH2} }}',
     "smtp.oauth2", "give either a password or oauth2, not both"),
    (f'imap = {{ host = "i", {OAUTH2} }}', "imap.username", "is required with oauth2"),
    ('imap = { host = "i", username = "u", oauth2 = { token_url = '
     '"http://login.example/token", client_id = "c", refresh_token = "r" } }',
     "imap.oauth2.token_url", "must be an https:// URL (http:// only to a loopback address)"),
    ('smtp = { host = "s", username = "u", oauth2 = { token_url = "https://t.example/", '
     'client_id = "c" } }', "smtp.oauth2.client_secret_file",
     "is required without refresh_token"),
    ('smtp = { host = "s", username = "u", oauth2 = { client_id = "c", '
     'refresh_token = "r" } }', "smtp.oauth2.token_url", "is required"),
    ('smtp = { host = "s", username = "u", oauth2 = { token_url = "https://t.example/", '
     'client_id = "c", refresh_token = "r", tenant = "x" } }', "smtp.oauth2.tenant",
     "unknown key"),
    ('smtp = { host = "mail.example", security = "none", username = "u", oauth2 = { '
     'token_url = "https://t.example/", client_id = "c", refresh_token = "r" } }',
     "smtp.security", 'must be "tls" or "starttls" with oauth2'),
])
def test_oauth2_config_errors_are_clear(table: str, key: str, complaint: str) -> None:
    with pytest.raises(ConfigErrors) as errors:
        parse(f'address = "s@shop.example"\n{table}\n')
    found = [e for e in errors.value.errors if e.key == f"channels[0].{key}"]
    assert found and complaint in found[0].message, str(errors.value)


def test_loopback_token_urls_may_be_plain_http() -> None:
    for url in ("http://127.0.0.1:8080/token", "http://[::1]/token", "http://localhost/t"):
        config = parse(f'''
            address = "s@shop.example"
            smtp = {{ host = "s", username = "u", oauth2 = {{ token_url = "{url}", client_id = "c", refresh_token = "r" }} }}
            ''').channels[0].options  # noqa: E501
        assert config.smtp.oauth2.token_url == url


# ---------------------------------------------------------------- IMAP and SMTP in-process


async def test_mailbox_signs_in_with_xoauth2_and_a_refused_token_is_replaced_once(
        oauth: OAuth2Server, session: aiohttp.ClientSession, dovecot: Dovecot) -> None:
    user = dovecot.add_user(unique("xo"))
    first, second = f"{unique('a')}@x", f"{unique('b')}@x"
    await dovecot.append(user, mail(first))
    tokens = AccessTokens(delegated(oauth, oauth.consent(user)), http=session)
    ingest = FakeIngest()
    mailbox = Mailbox(imap_settings(dovecot, user, oauth), account="support",
                      store=FakeStore(), max_message_bytes=10**6, tokens=tokens,
                      ingest=lambda raw: ingest_into(ingest, raw))
    mailbox.start()
    try:
        await asyncio.wait_for(mailbox.synced.wait(), 10)
        assert [m.provider_message_id for m in ingest.received] == [first]
        assert [good for _, good in oauth.introspections] == [True]
        # The token is revoked early (a password change); the cache cannot know. The next
        # session is refused once, gets a fresh token and goes on.
        oauth.revoke(oauth.introspections[0][0])
        await dovecot.append(user, mail(second))
        await asyncio.to_thread(dovecot.kick, user)
        while len(ingest.received) < 2:
            mailbox.synced.clear()
            await asyncio.wait_for(mailbox.synced.wait(), 10)
        assert [m.provider_message_id for m in ingest.received] == [first, second]
        assert [good for _, good in oauth.introspections] == [True, False, True]
        assert len(oauth.grants()) == 2
    finally:
        await mailbox.stop()


async def test_servers_without_sasl_ir_get_the_response_after_the_continuation(
        oauth: OAuth2Server, session: aiohttp.ClientSession, dovecot: Dovecot,
        monkeypatch: pytest.MonkeyPatch) -> None:
    original = imap_module._Xoauth2Command.__init__

    def without_ir(self: Any, protocol: Any, sasl: str, *, initial: bool) -> None:
        original(self, protocol, sasl, initial=False)

    monkeypatch.setattr(imap_module._Xoauth2Command, "__init__", without_ir)
    user = dovecot.add_user(unique("noir"))
    tokens = AccessTokens(delegated(oauth, oauth.consent(user)), http=session)
    stale = await tokens.token()
    oauth.expire_access_tokens()  # refused first (two continuations), then accepted
    imap = ImapSession(imap_settings(dovecot, user, oauth), tokens)
    try:
        await imap.open()
        assert "MOVE" in imap.capabilities  # learned after sign-in (Dovecot lists it)
        assert [(t, good) for t, good in oauth.introspections][-2:] == [
            (stale, False), (await tokens.token(), True)]
    finally:
        await imap.close()


async def test_a_server_without_xoauth2_is_a_clear_config_error(
        oauth: OAuth2Server, session: aiohttp.ClientSession, dovecot: Dovecot) -> None:
    class PasswordsOnly(ImapSession):
        async def _sign_in_with_token(self) -> None:
            assert self.client is not None
            self.client.protocol.capabilities.discard("AUTH=XOAUTH2")
            await super()._sign_in_with_token()

    user = dovecot.add_user(unique("plainonly"))
    tokens = AccessTokens(delegated(oauth, oauth.consent(user)), http=session)
    imap = PasswordsOnly(imap_settings(dovecot, user, oauth), tokens)
    try:
        with pytest.raises(AdapterConfigError) as raised:
            await imap.open()
        assert "does not offer AUTH=XOAUTH2 (it offers AUTH=LOGIN, AUTH=OAUTHBEARER" in \
            raised.value.message
        assert oauth.requests == []  # no token fetched for nothing
    finally:
        await imap.close()


async def test_relay_takes_xoauth2_and_a_refused_token_is_replaced_once(
        oauth: OAuth2Server, session: aiohttp.ClientSession, xoauth2_sink: Xoauth2Sink) -> None:
    user = f"{unique('relay')}@shop.example"
    tokens = AccessTokens(delegated(oauth, oauth.consent(user)), http=session)
    relay = ServerSettings("127.0.0.1", xoauth2_sink.port, "none", user, None, timeout=5,
                           oauth2=tokens.settings)
    await submit(relay, user, ["c@customer.example"], mail(f"{unique('s')}@x"), tokens)
    assert xoauth2_sink.received[-1].login == user
    assert xoauth2_sink.logins[-1] == (user, True)

    oauth.expire_access_tokens()  # the relay refuses the cached token: one refresh, resent
    await submit(relay, user, ["c@customer.example"], mail(f"{unique('s')}@x"), tokens)
    assert xoauth2_sink.logins[-2:] == [(user, False), (user, True)]
    assert xoauth2_sink.received[-1].login == user and len(oauth.grants()) == 2

    oauth.revoke(tokens.settings.refresh_token.reveal())  # type: ignore[union-attr]
    oauth.expire_access_tokens()
    with pytest.raises(RetryableSendError) as raised:
        await submit(relay, user, ["c@customer.example"], mail(f"{unique('s')}@x"), tokens)
    assert raised.value.code == "smtp_auth_failed"
    assert "invalid_grant" in raised.value.message


# ---------------------------------------------------------------- the daemon, as ops run it


def oauth_account(name: str, user: str, dovecot: Dovecot, oauth: OAuth2Server, *,
                  secret_file: Path, refresh_file: Path | None, sink: Xoauth2Sink | None = None,
                  client_id: str | None = None) -> str:
    """An e-mail account whose mailbox (and relay) sign in with tokens of ``oauth``."""
    refresh = f', refresh_token_file = "{refresh_file}"' if refresh_file else ""
    table = (f'{{ token_url = "{oauth.url}", client_id = "{client_id or oauth.client_id}", '
             f'client_secret_file = "{secret_file}"{refresh}, scope = "%s" }}')
    smtp = ""
    if sink is not None:
        smtp = (f'smtp = {{ host = "127.0.0.1", port = {sink.port}, security = "none", '
                f'username = "{user}", timeout = 5, oauth2 = '
                f'{table % "https://outlook.office.com/SMTP.Send offline_access"} }}')
    return f"""
        [[channels]]
        type = "email"
        name = "{name}"
        address = "{name}@shop.example"
        {smtp}
        [[channels.imap]]
        host = "127.0.0.1"
        port = {dovecot.port}
        security = "none"
        username = "{user}"
        timeout = 5
        oauth2 = {table % "https://outlook.office.com/IMAP.AccessAsUser.All offline_access"}
        """


def secrets_in(text: str, oauth: OAuth2Server) -> list[str]:
    """Every token or client secret of ``oauth`` that appears in ``text``."""
    found = [t for t in [*oauth.access_tokens, *oauth.refresh_tokens,
                         *(r.form.get("refresh_token", "") for r in oauth.requests)]
             if t and t in text]
    return found + ([oauth.client_secret] if oauth.client_secret in text else [])


async def test_daemon_imports_and_replies_with_tokens_that_expire_and_rotate(
        oauth: OAuth2Server, dovecot: Dovecot, xoauth2_sink: Xoauth2Sink,
        make_daemon: MakeDaemon, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    oauth.rotate = oauth.revoke_used = True  # Microsoft's rotation; the used one dies
    oauth.expires_in = 2  # replaced after a second
    user = dovecot.add_user(f"{unique('m365')}@shop.example")
    secret_file, refresh_file = tmp_path / "client-secret", tmp_path / "refresh-token"
    secret_file.write_text(oauth.client_secret)
    configured = oauth.consent(user)
    refresh_file.write_text(configured + "\n")
    refresh_file.chmod(0o400)  # a read-only credential: the rotated token goes elsewhere
    account = oauth_account("m365", user, dovecot, oauth, secret_file=secret_file,
                            refresh_file=refresh_file, sink=xoauth2_sink)
    data = tmp_path / "data"
    first = f"{unique('first')}@mail.example"
    await dovecot.append(user, mail(first))
    daemon = await make_daemon(account, data_dir=data)
    feed = Feed(http, daemon)
    await feed.wait_for(lambda f: first in ids(f.received("m365")))
    (grant,) = oauth.grants()
    assert grant.form["refresh_token"] == configured

    # The access token runs out; the server ends the session (as Microsoft 365 does).
    # The next sign-in uses a token refreshed beforehand, with the rotated refresh token.
    token = next(t for t, good in oauth.introspections if good)
    while oauth.active(token):
        await asyncio.sleep(0.1)  # its lifetime is the event: two seconds
    second = f"{unique('second')}@mail.example"
    await dovecot.append(user, mail(second))
    await asyncio.to_thread(dovecot.kick, user)
    await feed.wait_for(lambda f: second in ids(f.received("m365")))
    rotated = [r.form["refresh_token"] for r in oauth.grants()]
    assert len(rotated) == 2 and rotated[1] not in (configured, "")
    assert all(good for _, good in oauth.introspections)  # never signed in with a stale one

    # A reply goes out over the relay, signed in as the mailbox with a current token.
    (message,) = [m for m in feed.received("m365") if m["provider"]["message_id"] == first]
    status, queued = await post_json(
        http, f"{daemon.url}/v1/conversations/{message['conversation_id']}/messages",
        {"text": "Thanks, on its way."})
    assert status == 202, queued
    sent = await feed.wait_for(lambda f: next(
        (s for s in xoauth2_sink.received if s.message["Message-ID"] ==
         f"<{queued['id']}@shop.example>"), None))
    assert sent.login == user and sent.recipients == ["customer@mail.example"]

    # A restart takes the newest refresh token from the store; the configured one and the
    # earlier rotations no longer work.
    assert await daemon.stop() == 0
    newest = next(t for t, owner in oauth.refresh_tokens.items() if owner == user)
    third = f"{unique('third')}@mail.example"
    await dovecot.append(user, mail(third))
    daemon = await make_daemon(account, data_dir=data)
    feed = Feed(http, daemon)
    await feed.wait_for(lambda f: third in ids(f.received("m365")))
    assert oauth.grants()[-1].form["refresh_token"] == newest
    assert [r.status for r in oauth.requests] == [200] * len(oauth.requests)
    assert refresh_file.read_text() == configured + "\n"
    entry = await channel(http, daemon, "m365")
    assert entry["state"] == "running" and entry["counters"]["oauth2_refreshes"] >= 1
    logs = daemon.logs()
    assert "oauth2.token_refreshed" in logs and secrets_in(logs, oauth) == []


async def test_a_refused_refresh_token_shows_in_health_and_the_log_without_secrets(
        oauth: OAuth2Server, dovecot: Dovecot, make_daemon: MakeDaemon,
        http: aiohttp.ClientSession, tmp_path: Path) -> None:
    revoked_user = dovecot.add_user(f"{unique('revoked')}@shop.example")
    app_user = dovecot.add_user(f"{unique('app')}@shop.example")
    secret_file, refresh_file = tmp_path / "client-secret", tmp_path / "refresh-token"
    secret_file.write_text(oauth.client_secret)
    refresh = oauth.consent(revoked_user)
    oauth.revoke(refresh)  # the user changed their password: every refresh token is dead
    refresh_file.write_text(refresh)
    app_id, _ = oauth.grant_app(app_user)
    message_id = f"{unique('app')}@mail.example"
    await dovecot.append(app_user, mail(message_id))
    daemon = await make_daemon(
        oauth_account("delegated", revoked_user, dovecot, oauth, secret_file=secret_file,
                      refresh_file=refresh_file)
        # App-only access (client credentials) to another mailbox keeps working.
        + oauth_account("apponly", app_user, dovecot, oauth, secret_file=secret_file,
                        refresh_file=None, client_id=app_id))
    feed = Feed(http, daemon)
    await feed.wait_for(lambda f: message_id in ids(f.received("apponly")))
    entry = await wait_until(lambda: channel_if(http, daemon, "delegated",
                                                lambda c: c["state"] == "degraded"))
    assert "invalid_grant" in entry["last_error"] and "AADSTS70000" in entry["last_error"]
    assert revoked_user in entry["last_error"]  # which mailbox
    failed = [orjson.loads(line) for line in daemon.logs().splitlines()
              if '"oauth2.failed"' in line]
    assert failed and failed[0]["error"] == "invalid_grant"
    assert failed[0]["account"] == "delegated" and failed[0]["level"] == "warning"
    assert failed[0]["description"].startswith("AADSTS70000")
    assert failed[0]["endpoint"] == oauth.url
    disconnected = [orjson.loads(line) for line in daemon.logs().splitlines()
                    if '"imap.disconnected"' in line and revoked_user in line]
    assert "invalid_grant (AADSTS70000" in disconnected[0]["error"]  # readable, not masked
    assert (await channel(http, daemon, "apponly"))["state"] == "running"
    assert secrets_in(daemon.logs(), oauth) == []

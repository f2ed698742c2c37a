"""IMAP import against a real Dovecot: existing mail, IDLE, restarts, UIDVALIDITY, TLS."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from adapters.email.imap import imap_utf7, quote_mailbox
from tests.conftest import Daemon, base_config
from tests.email.conftest import Feed, MakeDaemon
from tests.email.servers import Dovecot, mail, ports
from tests.helpers import get_json, unique, wait_until


def mailbox_account(name: str, dovecot: Dovecot, user: str, *, folder: str = "INBOX",
                    security: str = "none", options: str = "") -> str:
    """An e-mail account importing one Dovecot folder."""
    port = dovecot.tls_port if security == "tls" else dovecot.port
    ca = f', ca_file = "{dovecot.cert}"' if security != "none" else ""
    return f"""
        [[channels]]
        type = "email"
        name = "{name}"
        address = "{name}@shop.example"
        imap = {{ host = "127.0.0.1", port = {port}, security = "{security}", username = "{user}", password = "{dovecot.passwords[user]}", folder = "{folder}", timeout = 5{ca}{options} }}
        """  # noqa: E501


async def channel(http: aiohttp.ClientSession, daemon: Daemon, name: str) -> dict:
    """One account's entry of /v1/channels."""
    status, body = await get_json(http, f"{daemon.url}/v1/channels")
    assert status == 200, body
    return next(c for c in body["channels"] if c["name"] == name)


async def channel_if(http: aiohttp.ClientSession, daemon: Daemon, name: str,
                     predicate: Any) -> dict | None:
    """The account's entry when ``predicate`` holds for it, else None."""
    entry = await channel(http, daemon, name)
    return entry if predicate(entry) else None


def ids(messages: list[dict]) -> list[str]:
    """Provider message ids, in feed order."""
    return [m["provider"]["message_id"] for m in messages]


async def wait_seen(dovecot: Dovecot, user: str, message_ids: list[str],
                    folder: str = "INBOX") -> None:
    """Until the daemon (another process) has flagged them: it does so after the commit."""
    deadline = time.monotonic() + 10
    while True:
        flags = await dovecot.flags(user, folder)
        if all(r"\Seen" in flags.get(m, set()) for m in message_ids):
            return
        assert time.monotonic() < deadline, flags
        await asyncio.sleep(0.05)


def test_mailbox_names_use_modified_utf7() -> None:
    assert imap_utf7("~peter/mail/台北/日本語") == "~peter/mail/&U,BTFw-/&ZeVnLIqe-"  # RFC 3501
    assert imap_utf7("Tom & Jerry") == "Tom &- Jerry"
    assert quote_mailbox("INBOX") == "INBOX"
    assert quote_mailbox("Sent Messages") == '"Sent Messages"'


async def test_existing_mail_is_imported_then_idle_delivers_new_mail(
        dovecot: Dovecot, make_daemon: MakeDaemon, http: aiohttp.ClientSession) -> None:
    user = dovecot.add_user(unique("idle"))
    first, second, seen = (f"{unique(n)}@mail.example" for n in ("a", "b", "seen"))
    await dovecot.append(user, mail(first, subject="First"))
    await dovecot.append(user, mail(seen, subject="Already read"), flags=r"(\Seen)")
    await dovecot.append(user, mail(second, subject="Second"))

    daemon = await make_daemon(mailbox_account("inbox", dovecot, user))
    feed = Feed(http, daemon)
    await feed.wait_for(lambda f: len(f.received("inbox")) >= 2)
    # first_sync = unseen: the message a person had already read stays out.
    assert ids(feed.received("inbox")) == [first, second]
    await wait_seen(dovecot, user, [first, second])  # acknowledged after the commit

    # IDLE: a message appended now arrives without any polling interval in play.
    assert (await channel(http, daemon, "inbox"))["state"] == "running"
    new = f"{unique('new')}@mail.example"
    started = time.monotonic()
    await dovecot.append(user, mail(new, subject="While idling", body="안녕하세요"))
    await feed.wait_for(lambda f: new in ids(f.received("inbox")))
    assert time.monotonic() - started < 5  # Dovecot notifies ~0.5 s after the append
    (message,) = [m for m in feed.received("inbox") if m["provider"]["message_id"] == new]
    assert message["text"] == "안녕하세요" and message["to"]["address"] == "support@shop.example"
    await wait_seen(dovecot, user, [new])
    await feed.settle()
    assert ids(feed.received("inbox")).count(new) == 1


async def test_restart_resumes_with_nothing_reimported_and_nothing_skipped(
        dovecot: Dovecot, make_daemon: MakeDaemon, http: aiohttp.ClientSession,
        tmp_path: Path) -> None:
    user = dovecot.add_user(unique("restart"))
    before = [f"{unique('before')}@mail.example" for _ in range(3)]
    for message_id in before:
        await dovecot.append(user, mail(message_id))
    data = tmp_path / "shared-data"
    daemon = await make_daemon(mailbox_account("inbox", dovecot, user), data_dir=data)
    feed = Feed(http, daemon)
    await feed.wait_for(lambda f: len(f.received("inbox")) == 3)
    daemon.kill()  # a crash, not a clean stop: the checkpoint may lag behind the store

    during = [f"{unique('during')}@mail.example" for _ in range(2)]
    for message_id in during:
        await dovecot.append(user, mail(message_id))
    daemon = await make_daemon(mailbox_account("inbox", dovecot, user), data_dir=data)
    feed = Feed(http, daemon)
    await feed.wait_for(lambda f: len(f.received("inbox")) >= 5)
    after = f"{unique('after')}@mail.example"
    await dovecot.append(user, mail(after))
    await feed.wait_for(lambda f: after in ids(f.received("inbox")))
    await feed.settle()
    assert ids(feed.received("inbox")) == before + during + [after]  # each exactly once
    await wait_seen(dovecot, user, before + during + [after])


async def test_uidvalidity_change_resyncs_without_duplicates(
        dovecot: Dovecot, make_daemon: MakeDaemon, http: aiohttp.ClientSession,
        tmp_path: Path) -> None:
    user = dovecot.add_user(unique("validity"))
    await dovecot.command(user, "create", "Support")
    old = [f"{unique('old')}@mail.example" for _ in range(2)]
    for message_id in old:
        await dovecot.append(user, mail(message_id), folder="Support")
    data = tmp_path / "validity-data"
    account = mailbox_account("support-box", dovecot, user, folder="Support")
    daemon = await make_daemon(account, data_dir=data)
    feed = Feed(http, daemon)
    await feed.wait_for(lambda f: len(f.received("support-box")) == 2)
    assert await daemon.stop() == 0
    validity = await dovecot.uidvalidity(user, "Support")

    # The folder is rebuilt (a migration, a restore): new UIDVALIDITY, UIDs start over,
    # the old messages come back under new UIDs, and one new message arrived meanwhile.
    await dovecot.command(user, "delete", "Support")
    await dovecot.command(user, "create", "Support")
    new = f"{unique('new')}@mail.example"
    for message_id in [*old, new]:
        await dovecot.append(user, mail(message_id), folder="Support")
    assert await dovecot.uidvalidity(user, "Support") != validity

    daemon = await make_daemon(account, data_dir=data)
    feed = Feed(http, daemon)
    await feed.wait_for(lambda f: new in ids(f.received("support-box")))
    await wait_seen(dovecot, user, [*old, new], "Support")
    await feed.settle()
    assert ids(feed.received("support-box")) == [*old, new]  # the old ones were not re-emitted


async def test_dovecot_restart_mid_session_reconnects(
        dovecot: Dovecot, make_daemon: MakeDaemon, http: aiohttp.ClientSession) -> None:
    user = dovecot.add_user(unique("bounce"))
    daemon = await make_daemon(mailbox_account("inbox", dovecot, user))
    feed = Feed(http, daemon)
    first = f"{unique('first')}@mail.example"
    await dovecot.append(user, mail(first))
    await feed.wait_for(lambda f: first in ids(f.received("inbox")))

    await asyncio.to_thread(dovecot.restart)  # the daemon was idling on the old server
    second = f"{unique('second')}@mail.example"
    await dovecot.append(user, mail(second))
    await feed.wait_for(lambda f: second in ids(f.received("inbox")), timeout=30)
    entry = await channel(http, daemon, "inbox")
    assert entry["counters"]["imap_reconnects"] >= 1
    assert entry["state"] == "running" and entry["last_error"] is None
    assert "imap.disconnected" in daemon.logs()


# ---------------------------------------------------------------- several mailboxes at once


@pytest.fixture(scope="module")
async def black_hole() -> AsyncIterator[int]:
    """A port that accepts connections and never says a word (a hung IMAP server)."""
    held: list[asyncio.StreamWriter] = []

    async def swallow(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    for writer in held:
        writer.close()
    server.close()


@pytest.fixture(scope="module")
async def many(dovecot: Dovecot, black_hole: int,
               tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[Daemon, dict]]:
    """One account with four mailboxes: TLS, STARTTLS + processed folder, polling, hung."""
    users = {kind: dovecot.add_user(unique(kind)) for kind in ("tls", "starttls", "poll")}
    tmp = tmp_path_factory.mktemp("many")
    folder = "받은 문의"  # a non-ASCII name with a space: modified UTF-7, quoted
    await dovecot.command(users["starttls"], "create", quote_mailbox(folder))
    extra = f"""
        [[channels]]
        type = "email"
        name = "many"
        address = "many@shop.example"
        [[channels.imap]]
        host = "127.0.0.1"
        port = {black_hole}
        security = "none"
        username = "nobody"
        password = "x"
        timeout = 1
        [[channels.imap]]
        host = "127.0.0.1"
        port = {dovecot.tls_port}
        security = "tls"
        ca_file = "{dovecot.cert}"
        username = "{users['tls']}"
        password = "secret"
        [[channels.imap]]
        host = "127.0.0.1"
        port = {dovecot.port}
        security = "starttls"
        ca_file = "{dovecot.cert}"
        username = "{users['starttls']}"
        password = "secret"
        folder = "{folder}"
        processed_folder = "Processed"
        [[channels.imap]]
        host = "127.0.0.1"
        port = {dovecot.port}
        security = "none"
        username = "{users['poll']}"
        password = "secret"
        idle = false
        poll_interval = 0.3
        """
    http_port, smtp_port = ports(2)
    daemon = Daemon(tmp, base_config(tmp / "data", http_port, smtp_port, extra=extra),
                    http_port)
    daemon.start()
    await daemon.wait_ready()
    yield daemon, {**users, "folder": folder}
    assert await daemon.stop() == 0, daemon.logs()


async def test_mailboxes_work_while_another_server_hangs(
        many: tuple[Daemon, dict], dovecot: Dovecot, http: aiohttp.ClientSession) -> None:
    daemon, users = many
    feed = Feed(http, daemon)
    sent = {}
    for kind in ("tls", "poll"):
        sent[kind] = f"{unique(kind)}@mail.example"
        await dovecot.append(users[kind], mail(sent[kind], subject=kind))
    sent["starttls"] = f"{unique('starttls')}@mail.example"
    await dovecot.append(users["starttls"], mail(sent["starttls"]), folder=users["folder"])
    started = time.monotonic()
    await feed.wait_for(lambda f: set(sent.values()) <= set(ids(f.received("many"))))
    assert time.monotonic() - started < 10  # the hung server stalls nobody
    # Health names the hung mailbox once its greeting deadline (1 s) has passed.
    entry = await wait_until(lambda: channel_if(http, daemon, "many",
                                                lambda c: c["state"] == "degraded"))
    assert "nobody@127.0.0.1" in entry["last_error"] and "timed out" in entry["last_error"]
    assert entry["counters"]["imap_imported"] >= 3


async def test_processed_folder_receives_imported_mail(
        many: tuple[Daemon, dict], dovecot: Dovecot, http: aiohttp.ClientSession) -> None:
    daemon, users = many
    feed = Feed(http, daemon)
    message_id = f"{unique('moved')}@mail.example"
    await dovecot.append(users["starttls"], mail(message_id), folder=users["folder"])
    await feed.wait_for(lambda f: message_id in ids(f.received("many")))
    deadline = time.monotonic() + 10
    while message_id in await dovecot.flags(users["starttls"], users["folder"]):
        assert time.monotonic() < deadline, "not moved"
        await asyncio.sleep(0.05)  # the daemon (another process) moves it after the commit
    assert message_id in await dovecot.flags(users["starttls"], "Processed")

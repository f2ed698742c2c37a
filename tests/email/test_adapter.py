"""The adapter in-process: lifecycle, start errors, SMTP replies, IMAP edge cases, config."""

from __future__ import annotations

import asyncio
import smtplib
import socket
import textwrap
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from adapters.base import AdapterContext, AdapterState, OutboundMessage
from adapters.email import EmailAdapter, EmailConfig
from adapters.email.config import ImapSettings
from adapters.email.imap import Checkpoint, ImapSession, Mailbox
from adapters.email.outbound import Thread, build_reply, submit, thread_of
from gateway.config import Secret, parse_config
from gateway.errors import (
    AdapterConfigError,
    AdapterNotReady,
    ConfigErrors,
    PermanentSendError,
    RetryableSendError,
    StoreError,
)
from gateway.store.base import IngestResult, OutboxItem
from normalizer.model import InboundMessage
from outbox.message import outbound_message
from tests.conftest import free_port
from tests.email.servers import Dovecot, SmtpSink, mail
from tests.helpers import unique

# ---------------------------------------------------------------- fakes


@dataclass
class FakeStore:
    """Checkpoints in a dict; messages and raw by id."""

    checkpoints: dict[str, str] = field(default_factory=dict)
    messages: dict[str, dict] = field(default_factory=dict)
    raw: dict[str, bytes] = field(default_factory=dict)

    async def get_checkpoint(self, key: str) -> str | None:
        return self.checkpoints.get(key)

    async def set_checkpoint(self, key: str, value: str) -> None:
        self.checkpoints[key] = value

    async def get_message(self, message_id: str) -> dict:
        from gateway.errors import NotFound

        if message_id not in self.messages:
            raise NotFound(message_id)
        return self.messages[message_id]

    async def get_raw(self, message_id: str) -> tuple[str, bytes] | None:
        return ("message/rfc822", self.raw[message_id]) if message_id in self.raw else None

    async def blob_file(self, sha256: str) -> Any:
        raise AssertionError("no attachments here")


@dataclass
class FakeIngest:
    """Records what was handed over; ``fail_with`` raises instead (once per message)."""

    received: list[InboundMessage] = field(default_factory=list)
    fail_with: BaseException | None = None
    seen: set[str] = field(default_factory=set)

    async def __call__(self, inbound: InboundMessage) -> IngestResult:
        if self.fail_with is not None:
            raise self.fail_with
        created = inbound.provider_message_id not in self.seen
        self.seen.add(inbound.provider_message_id)
        if created:
            self.received.append(inbound)
        return IngestResult({"id": f"msg_{len(self.seen)}"}, created)


def adapter(config: EmailConfig, ingest: FakeIngest | None = None,
            store: FakeStore | None = None) -> EmailAdapter:
    """An EmailAdapter wired to fakes (no daemon)."""
    ctx = AdapterContext(ingest=ingest or FakeIngest(), http=None,  # type: ignore[arg-type]
                         public_url="http://127.0.0.1", authorize=lambda *_: None,
                         store=store or FakeStore())
    return EmailAdapter("support", config, ctx)


def send(port: int, raw: bytes) -> dict:
    """smtplib against the in-process listener (run it in a thread)."""
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        return client.sendmail("a@mail.example", ["support@shop.example"], raw)


# ---------------------------------------------------------------- lifecycle


async def test_start_and_stop_are_idempotent_and_a_stopped_adapter_stays_stopped() -> None:
    email = adapter(EmailConfig("support@shop.example", smtp_listen=("127.0.0.1", 0)))
    await email.start()
    await email.start()
    assert email.state is AdapterState.RUNNING and email.smtp_port
    await email.stop()
    await email.stop()
    assert email.state is AdapterState.STOPPED
    with pytest.raises(RuntimeError):
        await email.start()
    with socket.socket() as probe:  # the listener is gone
        assert probe.connect_ex(("127.0.0.1", email.smtp_port)) != 0


async def test_a_busy_port_is_transient_and_a_bad_certificate_is_a_config_error(
        tmp_path: Any) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = adapter(EmailConfig("support@shop.example", smtp_listen=("127.0.0.1", port)))
        with pytest.raises(AdapterNotReady):
            await busy.start()
        assert busy.state is AdapterState.FAILED and "cannot listen" in busy.last_error
    bad = adapter(EmailConfig("support@shop.example", smtp_listen=("127.0.0.1", 0),
                              tls_cert_file=str(tmp_path / "missing.pem"),
                              tls_key_file=str(tmp_path / "missing.key")))
    with pytest.raises(AdapterConfigError):
        await bad.start()


@pytest.mark.parametrize(("error", "code"), [
    (StoreError("disk full"), 451),
    (RuntimeError("a bug"), 451),  # not stored, so not ours: the sender keeps it
])
async def test_unstored_mail_is_never_acknowledged(error: BaseException, code: int) -> None:
    ingest = FakeIngest(fail_with=error)
    email = adapter(EmailConfig("support@shop.example", smtp_listen=("127.0.0.1", 0)), ingest)
    await email.start()
    try:
        with pytest.raises(smtplib.SMTPDataError) as refused:
            await asyncio.to_thread(send, email.smtp_port, mail("x@mail.example"))
        assert refused.value.smtp_code == code
        assert email.counters["smtp_deferred"] == 1
        ingest.fail_with = None
        assert await asyncio.to_thread(send, email.smtp_port, mail("x@mail.example")) == {}
        assert [m.provider_message_id for m in ingest.received] == ["x@mail.example"]
    finally:
        await email.stop()


async def test_large_mail_is_parsed_off_the_loop() -> None:
    ingest = FakeIngest()
    email = adapter(EmailConfig("support@shop.example", smtp_listen=("127.0.0.1", 0)), ingest)
    await email.start()
    try:
        body = "\n".join(["line of a long message " * 3] * 3000)
        assert await asyncio.to_thread(send, email.smtp_port, mail("big@x", body=body)) == {}
        (message,) = ingest.received
        assert len(message.raw or b"") > 65536 and message.text.startswith("line of")
    finally:
        await email.stop()


# ---------------------------------------------------------------- IMAP edge cases


def settings(dovecot: Dovecot, user: str, **overrides: Any) -> ImapSettings:
    """Plain IMAP settings for a Dovecot user."""
    values: dict[str, Any] = {"host": "127.0.0.1", "port": dovecot.port, "security": "none",
                              "username": user, "password": Secret(dovecot.PASSWORD),
                              "timeout": 5.0}
    values.update(overrides)
    return ImapSettings(**values)


@pytest.fixture
async def run_mailbox() -> AsyncIterator[Any]:
    """Start Mailbox objects and stop them after the test."""
    running: list[Mailbox] = []

    def start(mailbox: Mailbox) -> Mailbox:
        running.append(mailbox)
        mailbox.start()
        return mailbox

    yield start
    for mailbox in running:
        await mailbox.stop()


async def ingest_into(ingest: FakeIngest, raw: bytes) -> bool:
    """A Mailbox's ingest callback: parse and hand to the fake ingest."""
    from normalizer.email import parse_email

    return (await ingest(parse_email(raw, "support"))).created


async def test_first_sync_none_skips_history_and_too_large_mail_stays_unread(
        dovecot: Dovecot, run_mailbox: Any) -> None:
    user = dovecot.add_user(unique("edge"))
    old = f"{unique('old')}@x"
    await dovecot.append(user, mail(old))
    ingest, store = FakeIngest(), FakeStore()
    mailbox = run_mailbox(Mailbox(settings(dovecot, user, first_sync="none"),
                                  account="support", store=store, max_message_bytes=4096,
                                  ingest=lambda raw: ingest_into(ingest, raw)))
    await asyncio.wait_for(mailbox.synced.wait(), 10)
    assert ingest.received == []
    (key,) = store.checkpoints
    checkpoint = Checkpoint.loads(store.checkpoints[key])
    assert checkpoint is not None and checkpoint.uid == 1

    big, small = f"{unique('big')}@x", f"{unique('small')}@x"
    await dovecot.append(user, mail(big, body="x" * 10000))
    await dovecot.append(user, mail(small))
    while [m.provider_message_id for m in ingest.received] != [small]:
        mailbox.synced.clear()
        await asyncio.wait_for(mailbox.synced.wait(), 10)
    flags = await dovecot.flags(user)
    assert r"\Seen" not in flags[big] and r"\Seen" not in flags[old]  # left for a person
    assert mailbox.skipped == 1


async def test_an_interrupted_first_sync_resumes_its_selection(
        dovecot: Dovecot, run_mailbox: Any) -> None:
    """Crashed after importing UID 1 of an UNSEEN-only first sync: UID 2 (read by a person)
    stays out, UID 3 is still imported, and UID 4 (arrived after the baseline) is new mail."""
    user = dovecot.add_user(unique("resume"))
    ids = [f"{unique(str(n))}@x" for n in range(4)]
    for index, message_id in enumerate(ids):
        await dovecot.append(user, mail(message_id), flags=r"(\Seen)" if index in (1, 3) else None)
    validity = await dovecot.uidvalidity(user, "INBOX")
    store = FakeStore()
    box = settings(dovecot, user)
    key = f"email:support:imap:{box.label}"
    store.checkpoints[key] = Checkpoint(validity, 1, "2026-11-22T00:00:00+00:00", 3,
                                        ("UNSEEN",)).dumps()
    ingest = FakeIngest()
    mailbox = run_mailbox(Mailbox(box, account="support", store=store, max_message_bytes=10**6,
                                  ingest=lambda raw: ingest_into(ingest, raw)))
    await asyncio.wait_for(mailbox.synced.wait(), 10)
    assert [m.provider_message_id for m in ingest.received] == [ids[2], ids[3]]
    final = Checkpoint.loads(store.checkpoints[key])
    assert final is not None and final.uid == 4 and final.catchup_until is None


async def test_mail_announced_during_an_import_is_not_left_for_the_next_idle(
        dovecot: Dovecot, run_mailbox: Any) -> None:
    """The server reports new mail along with whatever command is running; the mailbox must
    look again before it IDLEs (which would not announce it a second time)."""
    user = dovecot.add_user(unique("race"))
    first, second = f"{unique('first')}@x", f"{unique('second')}@x"
    ingest = FakeIngest()

    async def ingest_slowly(raw: bytes) -> bool:
        if not ingest.received:  # while the first is being imported, the second arrives
            await dovecot.append(user, mail(second))
        return await ingest_into(ingest, raw)

    mailbox = run_mailbox(Mailbox(settings(dovecot, user, idle_timeout=600), account="support",
                                  store=FakeStore(), max_message_bytes=10**6,
                                  ingest=ingest_slowly))
    await asyncio.wait_for(mailbox.synced.wait(), 10)  # idling on an empty folder
    await dovecot.append(user, mail(first))
    deadline = asyncio.get_running_loop().time() + 5
    while len(ingest.received) < 2:
        assert asyncio.get_running_loop().time() < deadline, ingest.received
        await asyncio.sleep(0.02)
    assert [m.provider_message_id for m in ingest.received] == [first, second]


async def test_copy_and_expunge_when_the_server_has_no_move(
        dovecot: Dovecot, run_mailbox: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    user = dovecot.add_user(unique("nomove"))
    message_id = f"{unique('m')}@x"
    await dovecot.append(user, mail(message_id))
    original = ImapSession.capabilities.fget  # type: ignore[attr-defined]
    monkeypatch.setattr(ImapSession, "capabilities",
                        property(lambda self: original(self) - {"MOVE"}))
    ingest = FakeIngest()
    mailbox = run_mailbox(Mailbox(settings(dovecot, user, processed_folder="Processed"),
                                  account="support", store=FakeStore(), max_message_bytes=10**6,
                                  ingest=lambda raw: ingest_into(ingest, raw)))
    await asyncio.wait_for(mailbox.synced.wait(), 10)
    assert [m.provider_message_id for m in ingest.received] == [message_id]
    assert message_id not in await dovecot.flags(user)
    assert message_id in await dovecot.flags(user, "Processed")


async def test_rejected_login_is_reported_and_retried_slowly(
        dovecot: Dovecot, run_mailbox: Any) -> None:
    user = dovecot.add_user(unique("denied"))
    mailbox = run_mailbox(Mailbox(settings(dovecot, user, password=Secret("wrong")),
                                  account="support", store=FakeStore(),
                                  max_message_bytes=10**6, ingest=lambda raw: None))
    while mailbox.last_error is None:
        await asyncio.sleep(0.02)  # the first attempt runs in the mailbox's own task
    assert "login rejected" in mailbox.last_error and not mailbox.connected


async def test_a_failing_store_leaves_mail_unread_and_the_checkpoint_alone(
        dovecot: Dovecot, run_mailbox: Any) -> None:
    user = dovecot.add_user(unique("storefail"))
    message_id = f"{unique('m')}@x"
    await dovecot.append(user, mail(message_id))
    ingest, store = FakeIngest(fail_with=StoreError("disk full")), FakeStore()
    mailbox = run_mailbox(Mailbox(settings(dovecot, user), account="support", store=store,
                                  max_message_bytes=10**6,
                                  ingest=lambda raw: ingest_into(ingest, raw)))
    while mailbox.last_error is None:
        await asyncio.sleep(0.02)
    assert "disk full" in mailbox.last_error
    (value,) = store.checkpoints.values()
    assert Checkpoint.loads(value).uid == 0  # type: ignore[union-attr]  # nothing acknowledged
    assert r"\Seen" not in (await dovecot.flags(user))[message_id]
    ingest.fail_with = None  # the store is back: the next session imports it
    while not ingest.received:
        mailbox.synced.clear()
        await asyncio.wait_for(mailbox.synced.wait(), 10)
    assert [m.provider_message_id for m in ingest.received] == [message_id]


# ---------------------------------------------------------------- outbound pieces


def item(**message: Any) -> OutboundMessage:
    """An outbound reply in conversation cnv_01ABC…, as the outbox hands it to send()."""
    from datetime import UTC, datetime

    base = {"id": "msg_01REPLY", "conversation_id": "cnv_01JDX6K8S7M2Q4V9W3E5R8T1Y0",
            "customer_id": "cus_01C", "channel": "email", "account": "support",
            "from": {"kind": "email", "address": "support@shop.example", "name": None},
            "to": {"kind": "email", "address": "c@customer.example", "name": "김고객"},
            "text": "hello", "html": None, "subject": None, "attachments": [],
            "automatic": None, "in_reply_to": "msg_parent"}
    base.update(message)
    return outbound_message(OutboxItem(
        1, base, {}, 1, datetime.now(UTC),
        thread_refs=("root@c.example", "sha256:abc", "msg_01OLD@shop.example",
                     "parent@c.example"),
        reply_to_provider_id="parent@c.example"))


def test_references_follow_the_parent_or_fall_back_to_the_conversation() -> None:
    parent = {"subject": "RE: Re: 환불"}
    raw = (b"Message-ID: <parent@c.example>\r\nReferences: <root@c.example>\r\n"
           b" <mid@c.example>\r\n\r\nbody")
    thread = thread_of(item(), parent, raw)
    assert thread == Thread("Re: 환불", "parent@c.example",
                            ("root@c.example", "mid@c.example", "parent@c.example"))
    # Raw purged by retention: the conversation's own ids stand in (hashes dropped).
    thread = thread_of(item(), parent, None)
    assert thread.references == ("root@c.example", "msg_01OLD@shop.example",
                                 "parent@c.example")
    many = b"References: " + b" ".join(f"<r{i}@c.example>".encode() for i in range(40))
    refs = thread_of(item(), parent, many + b"\r\n\r\n").references
    assert len(refs) == 20 and refs[0] == "r0@c.example" and refs[-1] == "parent@c.example"


def test_automatic_replies_say_so_and_plus_addressing_can_be_off() -> None:
    config = EmailConfig("support@shop.example", display_name="Shop")
    msg = build_reply(config, item(automatic="acknowledgement"), Thread("Re: x"),
                      plus_addressing=False)
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["X-Auto-Response-Suppress"] == "OOF, AutoReply"
    assert msg["Reply-To"] is None
    assert msg["X-Omnirelay-Conversation"] == "01jdx6k8s7m2q4v9w3e5r8t1y0"
    from email.policy import SMTP

    assert b"To: =?utf-8?b?6rmA6rOg6rCd?= <c@customer.example>\r\n" in msg.as_bytes(policy=SMTP)
    assert msg["Message-ID"] == "<msg_01REPLY@shop.example>"


@pytest.mark.parametrize(("reply", "stage", "error", "code"), [
    ("421 4.3.2 Service shutting down", "DATA", RetryableSendError, "smtp_deferred"),
    ("452 4.2.2 Mailbox full", "RCPT", RetryableSendError, "smtp_deferred"),
    ("552 5.3.4 Message too big", "DATA", PermanentSendError, "smtp_rejected"),
    ("553 5.1.3 Bad recipient address syntax", "RCPT", PermanentSendError, "smtp_rejected"),
])
async def test_submission_errors_are_classified(smtp_sink: SmtpSink, reply: str, stage: str,
                                                error: type[Exception], code: str) -> None:
    relay = settings_for_sink(smtp_sink)
    smtp_sink.fail_next(reply, stage=stage)
    with pytest.raises(error) as raised:
        await submit(relay, "support@shop.example", ["c@customer.example"], mail("s@x"))
    assert raised.value.code == code  # type: ignore[attr-defined]
    assert reply.split(" ", 2)[2] in raised.value.provider_message  # type: ignore[attr-defined]


async def test_connection_refused_is_retryable() -> None:
    relay = settings_for_sink(SmtpSink(port=free_port()))
    with pytest.raises(RetryableSendError) as raised:
        await submit(relay, "support@shop.example", ["c@customer.example"], mail("s@x"))
    assert raised.value.code == "smtp_unavailable"


def settings_for_sink(sink: SmtpSink) -> Any:
    """ServerSettings pointing at a sink."""
    from adapters.email.config import ServerSettings

    return ServerSettings("127.0.0.1", sink.port, "none", None, None, timeout=5)


# ---------------------------------------------------------------- config


def parse(channel: str) -> Any:
    """Parse a config with one e-mail channel (the rest minimal)."""
    text = '[store]\nurl = "sqlite:///x.db"\n[[channels]]\ntype = "email"\nname = "s"\n'
    return parse_config(text + textwrap.dedent(channel), environ={})


def test_config_accepts_one_or_many_mailboxes() -> None:
    one = parse('''
        address = "s@shop.example"
        imap = { host = "imap.example", username = "u", password = "p", sent_folder = "Sent" }
        ''').channels[0].options
    assert isinstance(one, EmailConfig) and len(one.imap) == 1
    assert one.imap[0].port == 993 and one.imap[0].security == "tls" and one.imap[0].idle
    assert one.sent_copy is one.imap[0]
    many = parse('''
        address = "s@shop.example"
        [[channels.imap]]
        host = "a.example"
        security = "none"
        idle = false
        poll_interval = 15
        [[channels.imap]]
        host = "b.example"
        folder = "Support"
        processed_folder = "Done"
        first_sync = "all"
        ''').channels[0].options
    assert [(m.host, m.port, m.folder) for m in many.imap] == [
        ("a.example", 143, "INBOX"), ("b.example", 993, "Support")]
    assert many.imap[0].poll_interval == 15 and not many.imap[0].idle
    assert many.imap[1].processed_folder == "Done" and many.imap[1].first_sync == "all"


def test_config_trusted_authserv_ids_default_off() -> None:
    off = parse('address = "s@shop.example"\n').channels[0].options
    assert off.trusted_authserv_ids == ()
    on = parse('address = "s@shop.example"\ntrusted_authserv_ids = ["MX.Google.com"]\n')
    assert on.channels[0].options.trusted_authserv_ids == ("mx.google.com",)


@pytest.mark.parametrize(("table", "complaint"), [
    ('imap = { host = "i", first_sync = "sometimes" }', "first_sync"),
    ('imap = { host = "i", idle_timeout = 3600 }', "idle_timeout"),
    ('imap = { host = "i", poll_interval = 0 }', "poll_interval"),
    ('imap = { host = "i", folderr = "x" }', "folderr"),
    ('smtp = { host = "s", folder = "INBOX" }', "folder"),
    ('imap = { host = "i", username = "u" }', "password_file"),
    ("max_message_bytes = 10", "max_message_bytes"),
    ('trusted_authserv_ids = "mx.google.com"', "trusted_authserv_ids"),
    ('trusted_authserv_ids = ["mx.google.com; dmarc=pass"]', "trusted_authserv_ids"),
    ('trusted_authserv_ids = ["mx\\tgoogle.com"]', "trusted_authserv_ids"),
    ('trusted_authserv_ids = [" "]', "trusted_authserv_ids"),
])
def test_config_errors_name_the_key(table: str, complaint: str) -> None:
    with pytest.raises(ConfigErrors) as errors:
        parse(f'address = "s@shop.example"\n{table}\n')
    assert complaint in str(errors.value)

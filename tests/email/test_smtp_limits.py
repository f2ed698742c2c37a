"""The SMTP listener's limits with real clients: sessions, idle time, STARTTLS, MIME parts."""

from __future__ import annotations

import asyncio
import smtplib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from adapters.email import EmailAdapter, EmailConfig
from adapters.email.inbound import client_key
from gateway.errors import ConfigErrors
from tests.email.servers import mail, make_certificate
from tests.email.test_adapter import FakeIngest, adapter, parse

StartAdapter = Callable[..., Awaitable[tuple[EmailAdapter, FakeIngest]]]


@pytest.fixture
async def listener() -> AsyncIterator[StartAdapter]:
    """Start in-process adapters (a fake ingest behind them) and stop them after the test."""
    started: list[EmailAdapter] = []

    async def start(**options: Any) -> tuple[EmailAdapter, FakeIngest]:
        ingest = FakeIngest()
        email = adapter(EmailConfig("support@shop.example", smtp_listen=("127.0.0.1", 0),
                                    **options), ingest)
        await email.start()
        started.append(email)
        return email, ingest

    yield start
    for email in started:
        await email.stop()


def send(port: int, raw: bytes, sender: str = "a@mail.example") -> dict[str, Any]:
    """One message over its own smtplib session (run it in a thread)."""
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        return client.sendmail(sender, ["support@shop.example"], raw)


def connect(port: int, source: str = "127.0.0.1") -> smtplib.SMTP:
    """A greeted smtplib session from ``source`` (any 127/8 address is loopback)."""
    return smtplib.SMTP("127.0.0.1", port, timeout=10, source_address=(source, 0))


async def test_sessions_beyond_the_per_address_cap_get_421_and_a_freed_slot_is_reused(
        listener: StartAdapter) -> None:
    email, ingest = await listener(smtp_max_sessions=3, smtp_max_sessions_per_address=2)
    port = email.smtp_port
    assert port is not None
    first = await asyncio.to_thread(connect, port)
    second = await asyncio.to_thread(connect, port)
    with pytest.raises(smtplib.SMTPConnectError) as refused:
        await asyncio.to_thread(connect, port)
    assert refused.value.smtp_code == 421
    assert b"too many connections from your address" in refused.value.smtp_error
    # Another address still gets in, up to the listener's own cap.
    other = await asyncio.to_thread(connect, port, "127.0.0.2")
    with pytest.raises(smtplib.SMTPConnectError) as full:
        await asyncio.to_thread(connect, port, "127.0.0.3")
    assert full.value.smtp_code == 421 and b"too many connections" in full.value.smtp_error
    assert email.counters["smtp_connections_refused"] == 2
    # The admitted sessions work, and a session that ends gives its slot back.
    assert await asyncio.to_thread(first.sendmail, "a@mail.example", ["support@shop.example"],
                                   mail("first@mail.example")) == {}
    await asyncio.to_thread(first.quit)
    third = await asyncio.to_thread(connect, port)
    assert await asyncio.to_thread(third.sendmail, "a@mail.example", ["support@shop.example"],
                                   mail("third@mail.example")) == {}
    for client in (second, other, third):
        await asyncio.to_thread(client.quit)
    assert [m.provider_message_id for m in ingest.received] == [
        "first@mail.example", "third@mail.example"]


def test_ipv6_clients_count_per_64_and_mapped_ipv4_as_ipv4() -> None:
    assert client_key(("2001:db8:1:2:aaaa::1", 25, 0, 0)) == "2001:db8:1:2::/64"
    assert client_key(("2001:db8:1:2:bbbb::9", 25, 0, 0)) == "2001:db8:1:2::/64"
    assert client_key(("::ffff:192.0.2.7", 25, 0, 0)) == "192.0.2.7"
    assert client_key(("192.0.2.7", 25)) == "192.0.2.7"


async def test_a_silent_session_is_closed_after_the_idle_timeout(
        listener: StartAdapter) -> None:
    email, _ = await listener(smtp_idle_timeout=0.5)
    reader, writer = await asyncio.open_connection("127.0.0.1", email.smtp_port)
    try:
        assert (await reader.readline()).startswith(b"220 ")
        writer.write(b"EHLO client.example\r\n")
        await writer.drain()
        # Then nothing: the server hangs up (EOF) without us sending another byte.
        rest = await asyncio.wait_for(reader.read(), 10)
        assert rest.startswith(b"250-") and reader.at_eof()
    finally:
        writer.close()
    assert email.counters["smtp_timeouts"] == 1


async def test_a_slow_data_transfer_is_not_idle(listener: StartAdapter) -> None:
    """The timer counts silence: DATA lines arriving keep a long transfer alive."""
    email, ingest = await listener(smtp_idle_timeout=0.5)
    reader, writer = await asyncio.open_connection("127.0.0.1", email.smtp_port)

    async def command(line: bytes) -> bytes:
        writer.write(line)
        await writer.drain()
        reply = await reader.readline()
        while reply[3:4] == b"-":
            reply = await reader.readline()
        return reply

    try:
        await reader.readline()
        assert (await command(b"HELO client.example\r\n")).startswith(b"250")
        assert (await command(b"MAIL FROM:<a@mail.example>\r\n")).startswith(b"250")
        assert (await command(b"RCPT TO:<support@shop.example>\r\n")).startswith(b"250")
        assert (await command(b"DATA\r\n")).startswith(b"354")
        lines = mail("slow@mail.example").split(b"\r\n")
        for index, line in enumerate(lines):  # a slow link: 1.5 s in all, > the timeout
            writer.write(line + b"\r\n")
            await writer.drain()
            if index % 3 == 0:
                await asyncio.sleep(0.15)
        assert (await command(b".\r\n")).startswith(b"250 ")
    finally:
        writer.close()
    assert [m.provider_message_id for m in ingest.received] == ["slow@mail.example"]
    assert email.counters["smtp_timeouts"] == 0


async def test_required_starttls_refuses_mail_before_tls(listener: StartAdapter,
                                                         tmp_path: Path) -> None:
    cert, key = make_certificate(tmp_path)
    email, ingest = await listener(tls_cert_file=str(cert), tls_key_file=str(key),
                                   smtp_require_starttls=True)
    port = email.smtp_port
    assert port is not None

    def plain_then_tls() -> tuple[tuple[int, bytes], dict[str, Any]]:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.ehlo()
            assert client.has_extn("starttls")
            refused = client.mail("a@mail.example")
            client.starttls(context=ssl.create_default_context(cafile=str(cert)))
            client.ehlo()
            return refused, client.sendmail("a@mail.example", ["support@shop.example"],
                                            mail("tls@mail.example"))

    (code, text), result = await asyncio.to_thread(plain_then_tls)
    assert code == 530 and b"STARTTLS" in text
    assert result == {}
    assert [m.provider_message_id for m in ingest.received] == ["tls@mail.example"]


@pytest.mark.parametrize(("table", "complaint"), [
    ("smtp_require_starttls = true", "smtp_require_starttls"),
    ("smtp_max_sessions = 0", "smtp_max_sessions"),
    ("smtp_max_sessions = 10\nsmtp_max_sessions_per_address = 20",
     "smtp_max_sessions_per_address"),
    ("smtp_idle_timeout = 0", "smtp_idle_timeout"),
    ("max_mime_parts = 0", "max_mime_parts"),
    ("max_mime_depth = 0", "max_mime_depth"),
])
def test_limit_settings_are_checked(table: str, complaint: str) -> None:
    with pytest.raises(ConfigErrors) as errors:
        parse(f'address = "s@shop.example"\n{table}\n')
    assert complaint in str(errors.value)


def test_limits_have_safe_defaults() -> None:
    config = parse('address = "s@shop.example"\n').channels[0].options
    assert isinstance(config, EmailConfig)
    assert (config.smtp_max_sessions, config.smtp_max_sessions_per_address) == (100, 50)
    assert config.smtp_idle_timeout == 60.0 and not config.smtp_require_starttls
    assert (config.max_mime_parts, config.max_mime_depth) == (200, 20)


def many_parts(message_id: str, parts: int, sender: str = "Kim <kim@mail.example>") -> bytes:
    """A multipart/mixed mail of a text and ``parts`` small attachments (written out by
    hand: the e-mail package takes a minute to build 10,000 parts)."""
    head = (f"From: {sender}\r\nTo: support@shop.example\r\nSubject: Many parts\r\n"
            f"Message-ID: <{message_id}>\r\nMIME-Version: 1.0\r\n"
            'Content-Type: multipart/mixed; boundary="b0"\r\n\r\n'
            "--b0\r\nContent-Type: text/plain\r\n\r\nsee the attachments\r\n")
    attachment = ("--b0\r\nContent-Type: application/octet-stream\r\n"
                  'Content-Disposition: attachment; filename="p{0}.bin"\r\n\r\npart {0}\r\n')
    return (head + "".join(attachment.format(i) for i in range(parts)) + "--b0--\r\n").encode()


async def test_mail_beyond_the_mime_part_cap_is_stored_raw_and_flagged(
        listener: StartAdapter) -> None:
    email, ingest = await listener(max_mime_parts=5)
    port = email.smtp_port
    assert port is not None
    within, beyond = many_parts("within@mail.example", 3), many_parts("beyond@mail.example", 5)
    for raw in (within, beyond):
        assert await asyncio.to_thread(send, port, raw, "bounce@mail.example") == {}
    ok, flagged = ingest.received
    assert len(ok.attachments) == 3 and ok.error is None
    assert flagged.attachments == [] and flagged.raw == beyond
    assert flagged.error is not None
    assert flagged.error["code"] == "unparsable"
    assert "5" in flagged.error["message"]
    assert flagged.sender.address == "kim@mail.example"
    assert email.counters["unparsable"] == 1

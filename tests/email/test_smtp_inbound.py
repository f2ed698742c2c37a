"""Inbound SMTP against the daemon subprocess, with smtplib and swaks as the clients."""

from __future__ import annotations

import asyncio
import smtplib
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import aiosmtplib
import pytest

from tests.conftest import Daemon, base_config
from tests.email.conftest import Feed
from tests.email.servers import mail, make_certificate, ports
from tests.helpers import get_json, unique

SMALL_LIMIT = 16384


@pytest.fixture(scope="module")
async def smtp_daemon(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Daemon]:
    """``support`` (base config) plus ``small`` (16 KiB limit) and ``secure`` (STARTTLS)."""
    tmp = tmp_path_factory.mktemp("smtp")
    cert, key = make_certificate(tmp)
    small_port, tls_port, http_port, smtp_port = ports(4)
    extra = f"""
        [[channels]]
        type = "email"
        name = "small"
        address = "small@shop.example"
        smtp_listen = "127.0.0.1:{small_port}"
        max_message_bytes = {SMALL_LIMIT}
        [[channels]]
        type = "email"
        name = "secure"
        address = "secure@shop.example"
        recipients = ["@help.shop.example"]
        smtp_listen = "127.0.0.1:{tls_port}"
        tls_cert_file = "{cert}"
        tls_key_file = "{key}"
        """
    daemon = Daemon(tmp, base_config(tmp / "data", http_port, smtp_port, extra=extra),
                    http_port)
    daemon.smtp_port = smtp_port  # type: ignore[attr-defined]
    daemon.small_port = small_port  # type: ignore[attr-defined]
    daemon.tls_port = tls_port  # type: ignore[attr-defined]
    daemon.cert = cert  # type: ignore[attr-defined]
    daemon.start()
    await daemon.wait_ready()
    yield daemon
    assert await daemon.stop() == 0, daemon.logs()


def smtplib_send(port: int, raw: bytes, to: str = "support@shop.example",
                 sender: str = "customer@mail.example") -> dict[str, tuple[int, bytes]]:
    """A third-party client: the standard library's, as a script would use it."""
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        return client.sendmail(sender, [to], raw)


async def swaks(*args: str) -> tuple[int, str]:
    """Run Debian's swaks; returns (exit code, transcript)."""
    proc = await asyncio.create_subprocess_exec(
        "swaks", "--timeout", "10", *args, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    return proc.returncode or 0, out.decode(errors="replace")


async def message_by_provider_id(feed: Feed, provider_id: str) -> list[dict]:
    """Every message.received for one Message-ID, reading the feed up to now."""
    await feed.settle()
    return [m for m in feed.received() if m["provider"]["message_id"] == provider_id]


async def test_smtplib_message_is_in_the_feed_when_250_arrives(
        smtp_daemon: Daemon, http: aiohttp.ClientSession) -> None:
    feed = await Feed(http, smtp_daemon).skip()
    message_id = f"{unique('m')}@mail.example"
    raw = mail(message_id, subject="=?UTF-8?B?7KO866y4IOusuOydmA==?=",
               sender="김민수 <Minsu@Mail.Example>", body="배송 언제 되나요?")
    refused = await asyncio.to_thread(smtplib_send, smtp_daemon.smtp_port, raw)
    assert refused == {}
    # Acknowledge-after-commit: the 250 came back, so the message must already be there —
    # read once, without waiting.
    (message,) = await message_by_provider_id(feed, message_id)
    assert message["channel"] == "email" and message["account"] == "support"
    assert message["from"] == {"kind": "email", "address": "minsu@mail.example",
                               "name": "김민수"}
    assert message["to"]["address"] == "support@shop.example"
    assert message["subject"] == "주문 문의" and message["text"] == "배송 언제 되나요?"
    status, raw_back = await get_json(http, f"{smtp_daemon.url}/v1/messages/{message['id']}")
    assert status == 200 and raw_back["id"] == message["id"]


async def test_swaks_delivery_and_its_transcript(smtp_daemon: Daemon,
                                                 http: aiohttp.ClientSession) -> None:
    feed = await Feed(http, smtp_daemon).skip()
    message_id = f"{unique('swaks')}@mail.example"
    code, transcript = await swaks(
        "--server", f"127.0.0.1:{smtp_daemon.smtp_port}", "--from", "buyer@mail.example",
        "--to", "Support@Shop.Example", "--header", "Subject: swaks test",
        "--header", f"Message-Id: <{message_id}>", "--body", "sent by swaks")
    assert code == 0, transcript
    assert "<-  250 2.0.0 Message accepted" in transcript
    (message,) = await message_by_provider_id(feed, message_id)
    assert message["text"] == "sent by swaks" and message["subject"] == "swaks test"


async def test_unknown_recipient_gets_550_from_both_clients(
        smtp_daemon: Daemon, http: aiohttp.ClientSession) -> None:
    feed = await Feed(http, smtp_daemon).skip()
    raw = mail(f"{unique('x')}@mail.example")
    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        await asyncio.to_thread(smtplib_send, smtp_daemon.smtp_port, raw,
                                "nobody@elsewhere.example")
    code, text = refused.value.recipients["nobody@elsewhere.example"]
    assert code == 550 and b"no such mailbox" in text
    code, transcript = await swaks("--server", f"127.0.0.1:{smtp_daemon.smtp_port}",
                                   "--to", "sales@shop.example", "--from", "a@b.example")
    assert code == 24, transcript  # swaks: RCPT TO rejected
    assert "<** 550 5.1.1" in transcript
    await feed.settle()
    assert not [e for e in feed.events if e["type"] == "message.received"]


async def test_plus_address_and_domain_recipients_are_accepted(
        smtp_daemon: Daemon, http: aiohttp.ClientSession) -> None:
    feed = await Feed(http, smtp_daemon).skip()
    first, second = f"{unique('p')}@mail.example", f"{unique('d')}@mail.example"
    await asyncio.to_thread(smtplib_send, smtp_daemon.smtp_port, mail(first),
                            "support+anything@shop.example")
    context = ssl.create_default_context(cafile=str(smtp_daemon.cert))  # type: ignore[attr-defined]
    await aiosmtplib.send(mail(second), hostname="127.0.0.1",
                          port=smtp_daemon.tls_port,  # type: ignore[attr-defined]
                          sender="a@mail.example", recipients=["orders@help.shop.example"],
                          start_tls=True, tls_context=context)
    assert len(await message_by_provider_id(feed, first)) == 1
    (secure,) = await message_by_provider_id(feed, second)
    assert secure["account"] == "secure"


async def test_oversize_message_gets_552_and_nothing_is_stored(
        smtp_daemon: Daemon, http: aiohttp.ClientSession) -> None:
    feed = await Feed(http, smtp_daemon).skip()
    port = smtp_daemon.small_port  # type: ignore[attr-defined]
    big = mail(f"{unique('big')}@mail.example", to="small@shop.example",
               body="x" * (SMALL_LIMIT * 2))
    # smtplib declares SIZE= in MAIL FROM: refused before any data is sent.
    with pytest.raises(smtplib.SMTPSenderRefused) as refused:
        await asyncio.to_thread(smtplib_send, port, big, "small@shop.example")
    assert refused.value.smtp_code == 552
    # swaks declares no size: the data is read to the end, then refused.
    code, transcript = await swaks(
        "--server", f"127.0.0.1:{port}", "--to", "small@shop.example",
        "--from", "a@mail.example", "--body", "\n".join(["y" * 70] * (SMALL_LIMIT // 35)))
    assert code == 26, transcript  # swaks: DATA rejected
    assert "<** 552" in transcript
    # A message under the limit still goes through on the same listener.
    small_id = f"{unique('small')}@mail.example"
    await asyncio.to_thread(smtplib_send, port, mail(small_id, to="small@shop.example"),
                            "small@shop.example")
    await feed.settle()
    assert [m["provider"]["message_id"] for m in feed.received()] == [small_id]


async def test_repeat_delivery_is_acknowledged_once_stored_once(
        smtp_daemon: Daemon, http: aiohttp.ClientSession) -> None:
    feed = await Feed(http, smtp_daemon).skip()
    message_id = f"{unique('dup')}@mail.example"
    raw = mail(message_id)
    for _ in range(3):  # a relay that retried after losing our 250
        assert await asyncio.to_thread(smtplib_send, smtp_daemon.smtp_port, raw) == {}
    assert len(await message_by_provider_id(feed, message_id)) == 1
    status, channels = await get_json(http, f"{smtp_daemon.url}/v1/channels")
    assert status == 200, channels
    support = next(c for c in channels["channels"] if c["name"] == "support")
    assert support["counters"]["duplicates"] >= 2


async def test_concurrent_sessions_all_land(smtp_daemon: Daemon,
                                            http: aiohttp.ClientSession) -> None:
    feed = await Feed(http, smtp_daemon).skip()
    ids = [f"{unique('c')}@mail.example" for _ in range(40)]

    async def send(message_id: str, index: int) -> None:
        await aiosmtplib.send(mail(message_id, sender=f"c{index}@mail.example"),
                              hostname="127.0.0.1", port=smtp_daemon.smtp_port,
                              sender=f"c{index}@mail.example",
                              recipients=["support@shop.example"], start_tls=False)

    await asyncio.gather(*(send(m, i) for i, m in enumerate(ids)))
    await feed.settle()
    assert sorted(m["provider"]["message_id"] for m in feed.received()) == sorted(ids)


async def test_starttls_is_offered_and_works(smtp_daemon: Daemon,
                                             http: aiohttp.ClientSession) -> None:
    code, transcript = await swaks(
        "--server", f"127.0.0.1:{smtp_daemon.tls_port}",  # type: ignore[attr-defined]
        "--tls", "--tls-verify", "--tls-ca-path", str(smtp_daemon.cert),  # type: ignore[attr-defined]
        "--to", "secure@shop.example", "--from", "a@mail.example")
    assert code == 0, transcript
    assert "STARTTLS" in transcript and "TLS started" in transcript


async def test_raw_is_kept_verbatim(smtp_daemon: Daemon, http: aiohttp.ClientSession) -> None:
    feed = await Feed(http, smtp_daemon).skip()
    raw = (Path(__file__).parent.parent / "corpus" / "email" / "korean-euc-kr.eml"
           ).read_bytes().replace(b"20261122100051.AB12CD", unique("k").encode())
    await asyncio.to_thread(smtplib_send, smtp_daemon.smtp_port, raw)
    await feed.settle()
    (message,) = feed.received()
    assert message["from"]["name"] == "김민수"
    async with http.get(f"{smtp_daemon.url}/v1/messages/{message['id']}/raw",
                        headers={"Authorization": "Bearer test-admin-token-0123456789"}
                        ) as resp:
        assert resp.status == 200
        assert await resp.read() == raw

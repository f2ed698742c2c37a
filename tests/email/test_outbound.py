"""Replies over SMTP: threading headers as a mail client sees them, errors, Sent copies."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator

import aiohttp
import aiosmtplib
import pytest

from tests.conftest import Daemon, base_config
from tests.email.conftest import Feed
from tests.email.servers import Dovecot, SmtpSink, Submission, mail, ports
from tests.helpers import post_json, unique

PDF = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"


@pytest.fixture(scope="module")
async def shop(tmp_path_factory: pytest.TempPathFactory, smtp_sink: SmtpSink,
               dovecot: Dovecot) -> AsyncIterator[Daemon]:
    """An account that takes mail over SMTP, replies through the sink, files copies in Sent."""
    tmp = tmp_path_factory.mktemp("outbound")
    user = dovecot.add_user(unique("shop"))
    listen, http_port, smtp_port = ports(3)
    extra = f"""
        [[channels]]
        type = "email"
        name = "shop"
        address = "help@shop.example"
        display_name = "Shop Help"
        smtp_listen = "127.0.0.1:{listen}"
        smtp = {{ host = "127.0.0.1", port = {smtp_sink.port}, security = "none", timeout = 5 }}
        imap = {{ host = "127.0.0.1", port = {dovecot.port}, security = "none", username = "{user}", password = "secret", sent_folder = "Sent", timeout = 5 }}
        """  # noqa: E501
    daemon = Daemon(tmp, base_config(tmp / "data", http_port, smtp_port, extra=extra),
                    http_port)
    daemon.listen = listen  # type: ignore[attr-defined]
    daemon.imap_user = user  # type: ignore[attr-defined]
    daemon.start()
    await daemon.wait_ready()
    yield daemon
    assert await daemon.stop() == 0, daemon.logs()


async def customer_writes(daemon: Daemon, raw: bytes, sender: str,
                          to: str = "help@shop.example") -> None:
    """The customer's mail server relays a message to the shop's listener."""
    await aiosmtplib.send(raw, hostname="127.0.0.1", port=daemon.listen,  # type: ignore[attr-defined]
                          sender=sender, recipients=[to], start_tls=False)


async def start_conversation(daemon: Daemon, feed: Feed, customer: str,
                             **headers: str) -> dict:
    """A first customer mail; returns its stored message."""
    message_id = f"{unique('c')}@customer.example"
    await customer_writes(daemon, mail(message_id, sender=customer, to="help@shop.example",
                                       **headers), customer)
    return await feed.wait_for(lambda f: next(
        (m for m in f.received() if m["provider"]["message_id"] == message_id), None))


async def reply(http: aiohttp.ClientSession, daemon: Daemon, conversation_id: str,
                body: dict) -> dict:
    """An agent's reply through the API (202 once queued)."""
    status, message = await post_json(
        http, f"{daemon.url}/v1/conversations/{conversation_id}/messages", body)
    assert status == 202, message
    return message


def status_of(feed: Feed, message_id: str) -> dict | None:
    """The latest message.status of one outbound message, if any."""
    found = [e["data"]["message"] for e in feed.events if e["type"] == "message.status"
             and e["data"]["message"]["id"] == message_id]
    return found[-1] if found else None


def to_customer(sink: SmtpSink, customer: str) -> list[Submission]:
    """What the relay received for one customer."""
    return [s for s in sink.received if s.recipients == [customer]]


async def test_reply_threads_and_the_customers_answer_joins_the_conversation(
        shop: Daemon, smtp_sink: SmtpSink, dovecot: Dovecot,
        http: aiohttp.ClientSession) -> None:
    feed = await Feed(http, shop).skip()
    customer = f"{unique('buyer')}@customer.example"
    first = await start_conversation(
        shop, feed, customer, subject="Re: AW: 배송 문의",
        In_Reply_To="<c0@customer.example>",
        References="<root@customer.example> <c0@customer.example>")
    conversation = first["conversation_id"]

    queued = await reply(http, shop, conversation, {
        "text": "송장 번호를 보내드립니다.", "html": "<p>송장 번호를 <b>보내드립니다</b>.</p>",
        "attachments": [{"filename": "송장.pdf", "content_type": "application/pdf",
                         "content_base64": base64.b64encode(PDF).decode()}],
        "agent": {"id": "a1", "name": "Jiwoo"}})
    sent = await feed.wait_for(lambda f: (s := status_of(f, queued["id"])) and
                               s["status"] == "sent" and s)
    (submission,) = to_customer(smtp_sink, customer)

    msg = submission.message
    our_id = f"{queued['id']}@shop.example"
    assert submission.sender == "help@shop.example"
    assert msg["From"] == "Shop Help <help@shop.example>"
    assert msg["To"] == customer
    assert msg["Message-ID"] == f"<{our_id}>"  # on the account's domain
    assert msg["In-Reply-To"] == f"<{first['provider']['message_id']}>"
    assert msg["References"].split() == ["<root@customer.example>", "<c0@customer.example>",
                                         f"<{first['provider']['message_id']}>"]
    assert msg["Subject"] == "Re: 배송 문의"  # no "Re: Re: AW:" pile-up
    token = conversation.removeprefix("cnv_").lower()
    assert msg["Reply-To"] == f"Shop Help <help+c-{token}@shop.example>"
    assert msg["Auto-Submitted"] is None  # a person wrote it
    assert msg.get_content_type() == "multipart/mixed"
    body = msg.get_body(("plain",))
    assert body is not None and body.get_content().strip() == "송장 번호를 보내드립니다."
    html = msg.get_body(("html",))
    assert html is not None and "<b>보내드립니다</b>" in html.get_content()
    assert [p.get_content_type() for p in msg.iter_parts()] == ["multipart/alternative",
                                                                "application/pdf"]
    (attachment,) = list(msg.iter_attachments())
    assert attachment.get_filename() == "송장.pdf"
    assert attachment.get_content() == PDF
    assert sent["provider"]["message_id"] == our_id

    # The copy in Sent (APPENDed after the relay accepted it; another process does it).
    deadline = time.monotonic() + 10
    while our_id not in (sent_box := await dovecot.flags(shop.imap_user, "Sent")):  # type: ignore[attr-defined]
        assert time.monotonic() < deadline, sent_box
        await asyncio.sleep(0.05)
    assert r"\Seen" in sent_box[our_id]

    # The customer answers from their client: In-Reply-To names our Message-ID.
    answer_id = f"{unique('c2')}@customer.example"
    await customer_writes(shop, mail(
        answer_id, sender=customer, subject="Re: Re: 배송 문의", body="감사합니다!",
        In_Reply_To=f"<{our_id}>",
        References=f"<{first['provider']['message_id']}> <{our_id}>"), customer)
    answer = await feed.wait_for(lambda f: next(
        (m for m in f.received() if m["provider"]["message_id"] == answer_id), None))
    assert answer["conversation_id"] == conversation
    assert answer["in_reply_to"] == queued["id"]

    # The next reply answers the customer's latest message and extends the chain.
    second = await reply(http, shop, conversation, {"text": "천만에요."})
    await feed.wait_for(lambda f: (s := status_of(f, second["id"])) and s["status"] == "sent")
    latest = to_customer(smtp_sink, customer)[-1].message
    assert latest["In-Reply-To"] == f"<{answer_id}>"
    assert latest["References"].split()[-2:] == [f"<{our_id}>", f"<{answer_id}>"]
    assert latest["Subject"] == "Re: 배송 문의"
    assert latest.get_content_type() == "text/plain"


async def test_4xx_is_retried_until_accepted(shop: Daemon, smtp_sink: SmtpSink,
                                             http: aiohttp.ClientSession) -> None:
    feed = await Feed(http, shop).skip()
    customer = f"{unique('grey')}@customer.example"
    first = await start_conversation(shop, feed, customer)
    smtp_sink.fail_next("451 4.7.1 Greylisted, please try again later", times=2)
    queued = await reply(http, shop, first["conversation_id"], {"text": "retry me"})
    await feed.wait_for(lambda f: (s := status_of(f, queued["id"])) and s["status"] == "sent")
    assert len(to_customer(smtp_sink, customer)) == 1
    assert shop.logs().count("outbox.retry_scheduled") >= 2


async def test_5xx_fails_the_message_with_the_servers_text(
        shop: Daemon, smtp_sink: SmtpSink, http: aiohttp.ClientSession) -> None:
    feed = await Feed(http, shop).skip()
    customer = f"{unique('gone')}@customer.example"
    first = await start_conversation(shop, feed, customer)
    smtp_sink.fail_next("550 5.1.1 <gone@customer.example>: Recipient address rejected: "
                        "User unknown", stage="RCPT")
    queued = await reply(http, shop, first["conversation_id"], {"text": "hello?"})
    failed = await feed.wait_for(lambda f: (s := status_of(f, queued["id"])) and
                                 s["status"] == "failed" and s)
    assert failed["error"]["code"] == "smtp_rejected"
    assert "User unknown" in failed["error"]["message"]
    assert "550" in failed["error"]["message"]
    assert not to_customer(smtp_sink, customer)


async def test_unreachable_relay_is_retried(shop: Daemon, smtp_sink: SmtpSink,
                                            http: aiohttp.ClientSession) -> None:
    feed = await Feed(http, shop).skip()
    customer = f"{unique('later')}@customer.example"
    first = await start_conversation(shop, feed, customer)
    retries = shop.logs().count("smtp_unavailable")
    await smtp_sink.stop()  # connection refused from now on
    try:
        queued = await reply(http, shop, first["conversation_id"], {"text": "eventually"})
        deadline = time.monotonic() + 10
        while shop.logs().count("smtp_unavailable") == retries:
            assert time.monotonic() < deadline, shop.logs()[-3000:]
            await feed.poll(wait=1)  # the daemon logs the failed attempt
        assert status_of(feed, queued["id"]) is None  # not failed: still queued
    finally:
        await smtp_sink.start()
    await feed.wait_for(lambda f: (s := status_of(f, queued["id"])) and s["status"] == "sent")
    assert len(to_customer(smtp_sink, customer)) == 1


async def test_automatic_mail_is_flagged_and_replies_mark_themselves(
        shop: Daemon, http: aiohttp.ClientSession) -> None:
    feed = await Feed(http, shop).skip()
    sender = f"{unique('ooo')}@customer.example"
    raw = mail(f"{unique('oof')}@customer.example", sender=sender, subject="Out of office",
               Auto_Submitted="auto-replied")
    await customer_writes(shop, raw, sender)
    (message,) = await feed.wait_for(lambda f: f.received("shop"))
    assert message["automatic"] == "auto_reply"


def test_reply_subject_does_not_pile_up() -> None:
    from adapters.email.outbound import reply_subject

    assert reply_subject("Re: RE: Aw: Fwd: 주문") == "Re: 주문"
    assert reply_subject("답장: 回复: Re[2]: hello") == "Re: hello"
    assert reply_subject("Regarding your order") == "Re: Regarding your order"
    assert reply_subject("") is None


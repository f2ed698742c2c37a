"""Bounces and out-of-office answers to our replies (issue 15): a receipt, not a customer.

A reply goes out through the test relay; the mail system's report on it comes back over
SMTP (or IMAP) into the same daemon, and the feed shows what a help desk would see.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import aiosmtplib
import pytest

from adapters.email.bounces import (
    MAX_BOUNCE_MESSAGE,
    BounceVerdict,
    read_bounce,
    returned_to_null_sender,
)
from normalizer.model import InboundMessage, Party
from tests.conftest import Daemon, base_config
from tests.email.conftest import Feed
from tests.email.servers import Dovecot, SmtpSink, mail, ports
from tests.email.test_imap import wait_seen
from tests.email.test_outbound import reply, start_conversation, status_of
from tests.helpers import unique

SHOP = "help@shop.example"


@pytest.fixture(scope="module")
async def shop(tmp_path_factory: pytest.TempPathFactory, smtp_sink: SmtpSink,
               dovecot: Dovecot) -> AsyncIterator[Daemon]:
    """An account taking mail over SMTP and from one IMAP mailbox, replying via the sink."""
    tmp = tmp_path_factory.mktemp("bounces")
    user = dovecot.add_user(unique("bounces"))
    listen, http_port, smtp_port = ports(3)
    extra = f"""
        [[channels]]
        type = "email"
        name = "shop"
        address = "{SHOP}"
        smtp_listen = "127.0.0.1:{listen}"
        smtp = {{ host = "127.0.0.1", port = {smtp_sink.port}, security = "none", timeout = 5 }}
        imap = {{ host = "127.0.0.1", port = {dovecot.port}, security = "none", username = "{user}", password = "secret", timeout = 5 }}
        """  # noqa: E501
    daemon = Daemon(tmp, base_config(tmp / "data", http_port, smtp_port, extra=extra),
                    http_port)
    daemon.listen = listen  # type: ignore[attr-defined]
    daemon.imap_user = user  # type: ignore[attr-defined]
    daemon.start()
    await daemon.wait_ready()
    yield daemon
    assert await daemon.stop() == 0, daemon.logs()


async def deliver(daemon: Daemon, raw: bytes, sender: str = "") -> str:
    """A mail server hands ``raw`` to the listener (a bounce has the null sender ``<>``);
    returns the listener's answer to the data."""
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=daemon.listen,  # type: ignore[attr-defined]
                             start_tls=False)
    async with client:
        await client.mail(sender)
        await client.rcpt(SHOP)
        answer = await client.data(raw)
    assert answer.code == 250, answer
    return answer.message


def dsn(original_id: str, *, action: str = "failed", status: str = "5.1.1",
        diagnostic: str = "smtp; 550 5.1.1 <gone@customer.example>: Recipient address\r\n"
                          "    rejected: User unknown in virtual mailbox table",
        subject: str = "Undelivered Mail Returned to Sender") -> bytes:
    """A Postfix delivery status notification (RFC 3464) about ``original_id``."""
    boundary = unique("b")
    return (
        "Return-Path: <>\r\n"
        "From: MAILER-DAEMON@mx.customer.example (Mail Delivery System)\r\n"
        f"To: {SHOP}\r\n"
        f"Subject: {subject}\r\n"
        "Date: Sun, 22 Nov 2026 10:15:03 +0900\r\n"
        f"Message-ID: <{unique('dsn')}@mx.customer.example>\r\n"
        "Auto-Submitted: auto-replied\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: multipart/report; report-type=delivery-status;\r\n"
        f"\tboundary=\"{boundary}\"\r\n"
        "\r\n"
        f"--{boundary}\r\n"
        "Content-Type: text/plain; charset=us-ascii\r\n\r\n"
        "This is the mail system at host mx.customer.example.\r\n\r\n"
        "I'm sorry to have to inform you that your message could not\r\n"
        "be delivered to one or more recipients.\r\n\r\n"
        f"--{boundary}\r\n"
        "Content-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.customer.example\r\n\r\n"
        "Final-Recipient: rfc822; gone@customer.example\r\n"
        f"Action: {action}\r\n"
        f"Status: {status}\r\n"
        f"Diagnostic-Code: {diagnostic}\r\n\r\n"
        f"--{boundary}\r\n"
        "Content-Type: text/rfc822-headers\r\n\r\n"
        f"From: {SHOP}\r\n"
        "To: gone@customer.example\r\n"
        "Subject: Re: Where is my order?\r\n"
        f"Message-ID: <{original_id}>\r\n\r\n"
        f"--{boundary}--\r\n").encode()


async def replied(http: aiohttp.ClientSession, shop: Daemon, feed: Feed,
                  customer: str) -> tuple[dict, dict, str]:
    """A customer writes and an agent's reply goes out: (first message, the reply as sent,
    the reply's Message-ID without brackets)."""
    first = await start_conversation(shop, feed, customer)
    queued = await reply(http, shop, first["conversation_id"], {"text": "Here you go."})
    sent = await feed.wait_for(lambda f: (s := status_of(f, queued["id"])) and
                               s["status"] == "sent" and s)
    return first, sent, sent["provider"]["message_id"]


def opened_nothing(events: list[dict]) -> list[str]:
    """Event types that a stored message, a customer or a conversation would have made."""
    return [e["type"] for e in events if e["type"] in (
        "message.received", "customer.created", "conversation.opened", "customer.updated")]


async def test_a_bounce_fails_our_reply_and_opens_nothing(
        shop: Daemon, http: aiohttp.ClientSession) -> None:
    feed = await Feed(http, shop).skip()
    _first, sent, our_id = await replied(http, shop, feed, f"{unique('gone')}@customer.example")
    await feed.settle()
    seen = len(feed.events)

    answer = await deliver(shop, dsn(our_id))
    assert "accepted" in answer.lower()
    await feed.settle()  # the 250 came after the commit
    after = feed.events[seen:]
    failed = status_of(feed, sent["id"])
    assert failed is not None and failed["status"] == "failed", after
    assert failed["error"]["code"] == "bounced"
    assert failed["error"]["message"] == (
        "5.1.1 550 5.1.1 <gone@customer.example>: Recipient address rejected: "
        "User unknown in virtual mailbox table")
    assert opened_nothing(after) == []
    assert [e["type"] for e in after] == ["message.status"]

    # The same report again (the sender's retry after a lost 250): accepted, nothing new.
    await deliver(shop, dsn(our_id))
    assert await feed.poll() == []


async def test_a_delayed_report_changes_nothing(shop: Daemon,
                                                http: aiohttp.ClientSession) -> None:
    feed = await Feed(http, shop).skip()
    _first, _sent, our_id = await replied(http, shop, feed, f"{unique('slow')}@customer.example")
    await feed.settle()
    seen = len(feed.events)

    await deliver(shop, dsn(our_id, action="delayed", status="4.4.7",
                            diagnostic="smtp; 451 4.4.7 Message delayed",
                            subject="Delayed Mail (still being retried)"))
    await feed.settle()
    assert feed.events[seen:] == []
    assert "email.bounce_applied" in shop.logs()


async def test_a_delivery_report_marks_the_reply_delivered(
        shop: Daemon, http: aiohttp.ClientSession) -> None:
    feed = await Feed(http, shop).skip()
    _first, sent, our_id = await replied(http, shop, feed, f"{unique('ok')}@customer.example")
    await feed.settle()
    seen = len(feed.events)
    await deliver(shop, dsn(our_id, action="delivered", status="2.0.0",
                            diagnostic="smtp; 250 2.0.0 Ok: queued",
                            subject="Successful Mail Delivery Report"))
    await feed.settle()
    delivered = status_of(feed, sent["id"])
    assert delivered is not None and delivered["status"] == "delivered"
    assert delivered["error"] is None
    assert opened_nothing(feed.events[seen:]) == []


async def test_a_plain_text_bounce_naming_our_reply_fails_it(
        shop: Daemon, http: aiohttp.ClientSession) -> None:
    feed = await Feed(http, shop).skip()
    _first, sent, our_id = await replied(http, shop, feed, f"{unique('qm')}@customer.example")
    await feed.settle()
    seen = len(feed.events)
    bounce = mail(f"{unique('qmail')}@mx.customer.example",
                  sender="MAILER-DAEMON@mx.customer.example", to=SHOP,
                  subject="failure notice", In_Reply_To=f"<{our_id}>",
                  body="Hi. This is the qmail-send program at mx.customer.example.\n"
                       "I'm afraid I wasn't able to deliver your message to the following "
                       "addresses.\nThis is a permanent error; I've given up.\n\n"
                       "<qm@customer.example>:\nSorry, no mailbox here by that name.\n\n"
                       "--- Below this line is a copy of the message.\n")
    await deliver(shop, bounce)
    await feed.settle()
    failed = status_of(feed, sent["id"])
    assert failed is not None and failed["status"] == "failed"
    assert failed["error"]["code"] == "bounced"
    assert failed["error"]["message"].startswith("Hi. This is the qmail-send program")
    assert "no mailbox here by that name" in failed["error"]["message"]
    assert opened_nothing(feed.events[seen:]) == []


async def test_a_postmaster_writing_about_our_reply_is_kept(
        shop: Daemon, http: aiohttp.ClientSession) -> None:
    # postmaster@ is "bounce" to the classifier, but a person wrote this (a real sender,
    # not the null one): it is theirs to read, and our reply is not failed by it.
    feed = await Feed(http, shop).skip()
    _first, sent, our_id = await replied(http, shop, feed, f"{unique('pm')}@customer.example")
    note_id = f"{unique('note')}@customer.example"
    await deliver(shop, mail(note_id, sender="postmaster@customer.example", to=SHOP,
                             subject="Re: Hello", body="Please stop writing to this user.",
                             In_Reply_To=f"<{our_id}>"), sender="postmaster@customer.example")
    await feed.settle()
    assert [m["automatic"] for m in feed.received()
            if m["provider"]["message_id"] == note_id] == ["bounce"]
    assert status_of(feed, sent["id"])["status"] == "sent"  # type: ignore[index]


async def test_a_bounce_naming_no_reply_of_ours_is_kept_as_automatic(
        shop: Daemon, http: aiohttp.ClientSession) -> None:
    feed = await Feed(http, shop).skip()
    unknown = f"{unique('elsewhere')}@shop.example"
    await deliver(shop, dsn(unknown))
    await feed.settle()
    (stored,) = feed.received()
    assert stored["automatic"] == "bounce"
    assert stored["content"]["dsn"]["recipients"][0]["action"] == "failed"
    assert stored["from"]["address"] == "mailer-daemon@mx.customer.example"


async def test_a_bounce_of_a_customers_own_mail_is_kept(
        shop: Daemon, http: aiohttp.ClientSession) -> None:
    # The reference names an inbound message (a customer's), not one of our replies.
    feed = await Feed(http, shop).skip()
    first = await start_conversation(shop, feed, f"{unique('own')}@customer.example")
    await deliver(shop, dsn(first["provider"]["message_id"]))
    await feed.settle()
    assert [m["automatic"] for m in feed.received()] == [None, "bounce"]


async def test_an_out_of_office_answer_joins_the_customers_conversation(
        shop: Daemon, http: aiohttp.ClientSession) -> None:
    feed = await Feed(http, shop).skip()
    customer = f"{unique('away')}@customer.example"
    first, sent, our_id = await replied(http, shop, feed, customer)
    ooo_id = f"{unique('ooo')}@customer.example"
    await deliver(shop, mail(ooo_id, sender=customer, to=SHOP,
                             subject="Automatic reply: Re: Hello",
                             body="I am out of the office until Monday.",
                             In_Reply_To=f"<{our_id}>", References=f"<{our_id}>",
                             Auto_Submitted="auto-replied"), sender="")
    await feed.settle()
    (ooo,) = [m for m in feed.received() if m["provider"]["message_id"] == ooo_id]
    assert ooo["automatic"] == "auto_reply"
    assert ooo["conversation_id"] == first["conversation_id"]
    assert ooo["in_reply_to"] == sent["id"]
    assert ooo["customer_id"] == first["customer_id"]
    assert status_of(feed, sent["id"])["status"] == "sent"  # type: ignore[index]


async def test_an_out_of_office_from_another_address_stays_out_of_the_conversation(
        shop: Daemon, http: aiohttp.ClientSession) -> None:
    # The customer's mail was forwarded to a colleague, whose responder answers our reply:
    # the customer's conversation is not shown to a stranger's mailbox, nor joined by it.
    feed = await Feed(http, shop).skip()
    first, _sent, our_id = await replied(http, shop, feed,
                                         f"{unique('fw')}@customer.example")
    colleague = f"{unique('colleague')}@customer.example"
    ooo_id = f"{unique('ooo')}@customer.example"
    await deliver(shop, mail(ooo_id, sender=colleague, to=SHOP,
                             subject="Out of office", body="Back next week.",
                             In_Reply_To=f"<{our_id}>", Auto_Submitted="auto-replied"))
    await feed.settle()
    (ooo,) = [m for m in feed.received() if m["provider"]["message_id"] == ooo_id]
    assert ooo["automatic"] == "auto_reply"
    assert ooo["conversation_id"] != first["conversation_id"]
    assert ooo["customer_id"] != first["customer_id"]


async def test_a_bounce_read_from_imap_is_applied_and_marked_seen(
        shop: Daemon, dovecot: Dovecot, http: aiohttp.ClientSession) -> None:
    feed = await Feed(http, shop).skip()
    _first, sent, our_id = await replied(http, shop, feed, f"{unique('imap')}@customer.example")
    report = dsn(our_id)
    report_id = report.split(b"Message-ID: <", 1)[1].split(b">", 1)[0].decode()
    await dovecot.append(shop.imap_user, report)  # type: ignore[attr-defined]
    failed = await feed.wait_for(lambda f: (s := status_of(f, sent["id"])) and
                                 s["status"] == "failed" and s)
    assert failed["error"]["code"] == "bounced"
    await wait_seen(dovecot, shop.imap_user, [report_id])  # type: ignore[attr-defined]
    await feed.settle()
    assert not [m for m in feed.received() if m["automatic"] == "bounce"]


# ---------------------------------------------------------------- the verdict alone


def bounce(content: dict | None, *, subject: str = "Undelivered Mail", text: str = "",
           automatic: str | None = "bounce") -> InboundMessage:
    """A normalized bounce as the parser hands it over."""
    return InboundMessage(channel="email", account="shop", provider_message_id=unique("b"),
                          sender=Party("email", "mailer-daemon@mx.example"), subject=subject,
                          text=text, content=content, automatic=automatic)


def report(*recipients: tuple[str, str | None, str | None]) -> dict:
    return {"type": "email", "dsn": {"recipients": [
        {"recipient": f"r{i}@x.example", "action": action, "status": status,
         "diagnostic": diagnostic} for i, (action, status, diagnostic) in enumerate(recipients)]}}


def verdict(content: dict | None, *, subject: str = "Undelivered Mail", text: str = "",
            automatic: str | None = "bounce") -> BounceVerdict | None:
    """The verdict on a bounce that came back to the null sender, as bounces do."""
    return read_bounce(bounce(content, subject=subject, text=text, automatic=automatic),
                       null_sender=True)


def test_the_verdict_follows_rfc_3464_actions() -> None:
    failed = verdict(report(("failed", "5.2.2", "smtp; 552 5.2.2 Mailbox full")))
    assert failed is not None and failed.status == "failed" and failed.error is not None
    assert (failed.error.code, failed.error.message) == ("bounced",
                                                         "5.2.2 552 5.2.2 Mailbox full")
    for action in ("delivered", "expanded"):
        found = verdict(report((action, "2.0.0", None)))
        assert found is not None and found.status == "delivered"
    for action in ("delayed", "relayed"):
        found = verdict(report((action, "4.4.1", None)))
        assert found is not None and found.status is None and found.error is None
    # An alias expanded to two mailboxes, one full: the address we wrote to got it.
    mixed = verdict(report(("failed", "5.2.2", None), ("delivered", "2.0.0", None)))
    assert mixed is not None and mixed.status == "delivered"
    assert verdict(report(("failed", None, None)), automatic="auto_reply") is None


def test_the_bounce_message_is_bounded_and_a_delay_notice_moves_nothing() -> None:
    long = verdict(report(("failed", "5.0.0", "x; " + "y" * 10_000)))
    assert long is not None and long.error is not None
    assert len(long.error.message) == MAX_BOUNCE_MESSAGE
    plain = verdict(None, text="line one\n\nline two\n" + "z\n" * 100)
    assert plain is not None and plain.error is not None
    assert plain.error.message.startswith("line one line two z")
    delayed = verdict(None, subject="Warning: message delayed 24 hours")
    assert delayed is not None and delayed.status is None


def test_a_plain_text_bounce_must_come_back_to_the_null_sender() -> None:
    assert read_bounce(bounce(None, text="returned"), null_sender=False) is None
    assert read_bounce(bounce(report(("failed", "5.1.1", None))), null_sender=False) is not None
    head = b"Return-Path: <>\r\nFrom: MAILER-DAEMON@x.example\r\n\r\nbody"
    assert returned_to_null_sender(head, None)  # IMAP: what the mailbox kept
    assert not returned_to_null_sender(head, "someone@x.example")  # the envelope wins
    assert returned_to_null_sender(b"From: a@b.example\r\n\r\n", "<>")
    assert not returned_to_null_sender(b"Return-Path: <a@b.example>\r\n\r\n", None)
    assert returned_to_null_sender(b"X-Failed-Recipients: c@d.example\r\n\r\n", "a@b.example")

"""A message the parser cannot take is stored raw, flagged and acknowledged, once (issue 17)."""

from __future__ import annotations

import asyncio
import smtplib
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from adapters.email import EmailConfig
from gateway.errors import ValidationFailed
from gateway.store.base import IngestResult
from normalizer.model import InboundMessage
from tests.conftest import TOKEN
from tests.email.conftest import Feed, MakeDaemon
from tests.email.servers import Dovecot, mail
from tests.email.test_adapter import FakeIngest, adapter
from tests.email.test_imap import channel, ids, mailbox_account, wait_seen
from tests.email.test_smtp_limits import many_parts
from tests.helpers import bearer, unique

HOSTILE_PARTS = 10_000


def send(port: int, raw: bytes, sender: str = "relay@mail.example") -> dict[str, Any]:
    """smtplib, the way a relaying script sends (run it in a thread)."""
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
        return client.sendmail(sender, ["support@shop.example"], raw)


def flagged(feed: Feed) -> list[dict[str, Any]]:
    """Received messages carrying the unparsable flag."""
    return [m for m in feed.received()
            if (m["error"] or {}).get("code") == "unparsable"]


async def test_ten_thousand_mime_parts_are_stored_once_flagged_and_acknowledged(
        make_daemon: MakeDaemon, http: aiohttp.ClientSession) -> None:
    daemon = await make_daemon()
    feed = Feed(http, daemon)
    raw = many_parts(f"{unique('parts')}@mail.example", HOSTILE_PARTS)
    port = daemon.smtp_port  # type: ignore[attr-defined]
    for _ in range(2):  # the sending server retries after a lost 250: still one message
        assert await asyncio.to_thread(send, port, raw) == {}  # 250 both times
    await feed.settle()
    (message,) = feed.received()
    assert flagged(feed) == [message]
    assert "200" in message["error"]["message"]  # the default max_mime_parts
    assert "content" not in message
    assert message["from"]["address"] == "kim@mail.example"
    assert message["attachments"] == [] and "could not be read" in message["text"]
    assert message["provider"]["message_id"].startswith("sha256:")
    async with http.get(f"{daemon.url}/v1/messages/{message['id']}/raw",
                        headers=bearer(TOKEN)) as resp:
        assert resp.status == 200 and await resp.read() == raw
    # The listener is as good as before.
    normal = f"{unique('after')}@mail.example"
    assert await asyncio.to_thread(send, port, mail(normal)) == {}
    await feed.settle()
    assert ids(feed.received())[-1] == normal
    entry = await channel(http, daemon, "support")
    assert entry["counters"]["unparsable"] == 2  # counted per delivery


@pytest.mark.parametrize("failure", [RuntimeError("a bug"), RecursionError(), MemoryError()])
async def test_any_parser_failure_is_stored_with_the_envelope_sender(
        monkeypatch: pytest.MonkeyPatch, failure: BaseException) -> None:
    def broken_parser(*args: object, **kwargs: object) -> None:
        raise failure

    monkeypatch.setattr("adapters.email.adapter.parse_email", broken_parser)
    ingest = FakeIngest()
    email = adapter(EmailConfig("support@shop.example", smtp_listen=("127.0.0.1", 0)), ingest)
    await email.start()
    try:
        # No readable From in the head: the envelope's MAIL FROM names the sender.
        raw = b"Subject: no sender here\r\n\r\nbody\r\n"
        assert email.smtp_port is not None
        assert await asyncio.to_thread(send, email.smtp_port, raw, "Buyer@Mail.Example") == {}
    finally:
        await email.stop()
    (message,) = ingest.received
    assert message.sender.address == "buyer@mail.example"
    assert message.recipient is not None
    assert message.recipient.address == "support@shop.example"
    assert message.error == {
        "code": "unparsable", "message": f"the parser failed ({type(failure).__name__})"}
    assert message.raw == raw and message.automatic is None


async def test_imap_poison_message_is_seen_checkpointed_and_not_fetched_again(
        dovecot: Dovecot, make_daemon: MakeDaemon, http: aiohttp.ClientSession,
        tmp_path: Path) -> None:
    user = dovecot.add_user(unique("poison"))
    poison_id = f"{unique('poison')}@mail.example"
    before = f"{unique('before')}@mail.example"
    await dovecot.append(user, many_parts(poison_id, HOSTILE_PARTS))
    await dovecot.append(user, mail(before))
    data = tmp_path / "shared-data"
    daemon = await make_daemon(mailbox_account("inbox", dovecot, user), data_dir=data)
    feed = Feed(http, daemon)
    await feed.wait_for(lambda f: before in ids(f.received("inbox")), timeout=60)
    assert len(flagged(feed)) == 1
    await wait_seen(dovecot, user, [poison_id, before])  # acknowledged after the commit
    await daemon.stop()

    after = f"{unique('after')}@mail.example"
    await dovecot.append(user, mail(after))
    daemon = await make_daemon(mailbox_account("inbox", dovecot, user), data_dir=data)
    feed = Feed(http, daemon)
    await feed.wait_for(lambda f: after in ids(f.received("inbox")), timeout=60)
    await feed.settle()
    # From the start of the feed: the poison message is there once, and the restarted
    # mailbox went on from its checkpoint (it fetched nothing again: no duplicates).
    assert len(flagged(feed)) == 1
    assert ids(feed.received("inbox"))[-2:] == [before, after]
    entry = await channel(http, daemon, "inbox")
    assert entry["counters"]["duplicates"] == 0 and entry["counters"]["unparsable"] == 0


async def test_a_parsed_message_the_store_refuses_is_stored_flagged_instead() -> None:
    class RefusesParsedSender(FakeIngest):
        async def __call__(self, inbound: InboundMessage) -> IngestResult:
            if inbound.error is None:
                raise ValidationFailed("sender: not an e-mail address")
            return await super().__call__(inbound)

    ingest = RefusesParsedSender()
    email = adapter(EmailConfig("support@shop.example", smtp_listen=("127.0.0.1", 0)), ingest)
    await email.start()
    try:
        assert email.smtp_port is not None
        raw = mail("refused@mail.example")
        assert await asyncio.to_thread(send, email.smtp_port, raw) == {}
    finally:
        await email.stop()
    (message,) = ingest.received
    assert message.error == {"code": "unparsable", "message": "sender: not an e-mail address"}
    assert message.sender.address == "customer@mail.example" and message.raw == raw

"""Spoofed senders through the real SMTP listener: flagged, still linked (docs/email.md)."""

from __future__ import annotations

import asyncio

import aiohttp

from tests.email.conftest import Feed, MakeDaemon
from tests.email.servers import mail, ports
from tests.email.test_smtp_inbound import smtplib_send
from tests.helpers import get_json, unique


def received_by(authserv_id: str, results: str, raw: bytes) -> bytes:
    """``raw`` as the receiving server hands it on: its own header on top."""
    return f"Authentication-Results: {authserv_id};\r\n  {results}\r\n".encode() + raw


async def test_spoofed_mail_is_flagged_and_good_mail_passes(
        make_daemon: MakeDaemon, http: aiohttp.ClientSession) -> None:
    guarded_port, http_port, smtp_port = ports(3)
    daemon = await make_daemon(f"""
        [[channels]]
        type = "email"
        name = "guarded"
        address = "help@shop.example"
        smtp_listen = "127.0.0.1:{guarded_port}"
        trusted_authserv_ids = ["mx.shop.example"]
        """, http_port=http_port, smtp_port=smtp_port)
    feed = await Feed(http, daemon).skip()
    good_id, spoofed_id, plain_id = (f"{unique(k)}@customer.example"
                                     for k in ("good", "spoofed", "plain"))
    good = received_by(
        "mx.shop.example",
        "dkim=pass header.d=customer.example; spf=pass smtp.mailfrom=vip@customer.example;"
        " dmarc=pass header.from=customer.example",
        mail(good_id, sender="VIP <vip@customer.example>", to="help@shop.example"))
    # The forger writes a passing header of its own; the trusted server's is above it.
    spoofed = received_by(
        "mx.shop.example",
        "spf=pass smtp.mailfrom=x@evil.example; dmarc=fail (p=none) header.from=customer.example",
        mail(spoofed_id, sender="VIP <vip@customer.example>", to="help@shop.example",
             subject="Please change my delivery address",
             Authentication_Results="mx.shop.example; dmarc=pass header.from=customer.example"))
    plain = received_by("mx.shop.example", "dmarc=fail header.from=customer.example",
                        mail(plain_id, sender="vip@customer.example"))
    for port, to, raw in ((guarded_port, "help@shop.example", good),
                          (guarded_port, "help@shop.example", spoofed),
                          (smtp_port, "support@shop.example", plain)):
        assert await asyncio.to_thread(smtplib_send, port, raw, to) == {}
    await feed.settle()
    by_id = {m["provider"]["message_id"]: m for m in feed.received()}

    status, stored = await get_json(http, f"{daemon.url}/v1/messages/{by_id[spoofed_id]['id']}")
    assert status == 200
    assert stored["provider"] == {"message_id": spoofed_id, "thread_id": None,
                                  "authentication": {"verdict": "fail", "dmarc": "fail",
                                                     "spf": "pass", "dkim": None,
                                                     "by": "mx.shop.example"}}
    assert by_id[good_id]["provider"]["authentication"] == {
        "verdict": "pass", "dmarc": "pass", "spf": "pass", "dkim": "pass",
        "by": "mx.shop.example"}
    # Flagged, not separated: the forged mail is in the owner's conversation, as help desks do.
    assert by_id[spoofed_id]["customer_id"] == by_id[good_id]["customer_id"]
    assert by_id[spoofed_id]["conversation_id"] == by_id[good_id]["conversation_id"]
    # An account without the setting: today's message JSON, no authentication at all.
    assert by_id[plain_id]["provider"] == {"message_id": plain_id, "thread_id": None}

    logs = daemon.logs()
    warnings = [line for line in logs.splitlines() if "email.sender_unverified" in line]
    assert len(warnings) == 1 and "customer.example" in warnings[0]
    assert "vip@" not in warnings[0] and "delivery address" not in warnings[0]

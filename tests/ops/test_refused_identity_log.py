"""A refused identity is logged by its field name only: erasure cannot reach a log."""

from __future__ import annotations

import smtplib
from pathlib import Path

import aiohttp

from tests.helpers import post_inbound, unique
from tests.ops.conftest import OpsDaemon, crm_config


def send_mail(port: int, raw: bytes) -> tuple[int, bytes]:
    """Relay ``raw`` to the listener; the server's answer to DATA."""
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        smtp.ehlo()
        smtp.mail("bounce@relay.example")
        smtp.rcpt("support@shop.example")
        return smtp.data(raw)


async def test_refused_addresses_appear_in_no_log_line(
        tmp_path: Path, daemons: list[OpsDaemon], http: aiohttp.ClientSession) -> None:
    config, http_port = crm_config(tmp_path)
    daemon = OpsDaemon(tmp_path, config, http_port)
    daemons.append(daemon)
    daemon.start()
    await daemon.wait_ready()
    smtp_port = int(config.split('smtp_listen = "127.0.0.1:')[1].split('"')[0])
    marker = unique("private").replace("-", "")

    # An API-channel message whose extra e-mail and phone cannot be identities: stored,
    # links skipped, and the log names the fields.
    status, body = await post_inbound(http, daemon.url, {
        "message_id": unique("m"), "text": "hi", "from": {
            "id": unique("u"), "email": f"{marker}-at-nowhere", "phone": f"{marker}phone"}})
    assert status == 201, body
    # A mail whose From cannot be an identity: kept as a poison message from the envelope
    # sender (250: refusing it would only make the relay retry), logged without the address.
    code, _ = send_mail(smtp_port, (f"From: x@@{marker}.example\r\nTo: support@shop.example"
                                    "\r\nSubject: hi\r\nMessage-ID: <m1@relay.example>\r\n"
                                    "\r\nhello\r\n").encode())
    assert code == 250
    assert await daemon.stop() == 0

    skipped = [line for line in daemon.lines() if line["event"] == "ingest.identity_skipped"]
    assert sorted(line["kind"] for line in skipped) == ["email", "phone"]
    assert any(line["event"] == "email.unparsable" for line in daemon.lines())
    assert marker not in daemon.logs()



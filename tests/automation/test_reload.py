"""SIGHUP turns automation on and off without a restart."""

from __future__ import annotations

import signal
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import API_SECRET, Daemon, Receiver, base_config, free_port
from tests.helpers import get_json, post_inbound, unique, wait_until

CRM = """
[[channels]]
type = "api"
name = "crm"
secret = "{secret}"
callback_url = "{callback}/callback"
"""
AUTOMATION = """
[automation.hours.always]
weekdays = "00:00-24:00"
saturday = "00:00-24:00"
sunday = "00:00-24:00"
[[automation.accounts]]
account = "crm"
hours = "always"
acknowledge = true
"""


async def sighup(daemon: Daemon, config: str) -> None:
    reloads = daemon.logs().count("daemon.reloaded")
    daemon.config_path.write_text(config)
    daemon.signal(signal.SIGHUP)

    async def reloaded() -> bool:
        return daemon.logs().count("daemon.reloaded") > reloads
    await wait_until(reloaded)


async def test_sighup_starts_and_stops_the_automatic_sends(tmp_path: Path) -> None:
    receiver = Receiver()
    await receiver.start()
    http_port = free_port()
    plain = base_config(tmp_path / "data", http_port, free_port(),
                        extra=CRM.format(secret=API_SECRET, callback=receiver.url))
    daemon = Daemon(tmp_path, plain, http_port)
    daemon.start()
    try:
        await daemon.wait_ready()
        async with aiohttp.ClientSession() as http:
            await sighup(daemon, plain + AUTOMATION)
            status, body = await post_inbound(http, daemon.url, {
                "message_id": unique("m"), "from": {"id": unique("u")}, "text": "hello"})
            assert status == 201
            conversation_id = body["message"]["conversation_id"]
            await receiver.wait_for(lambda reqs: any(
                r.json()["message"]["conversation_id"] == conversation_id
                and r.json()["message"]["automatic"] == "acknowledgement" for r in reqs))

            await sighup(daemon, plain)  # off again: the daemon keeps serving
            status, body = await post_inbound(http, daemon.url, {
                "message_id": unique("m"), "from": {"id": unique("u")}, "text": "hello"})
            assert status == 201
            status, _ = await get_json(http, f"{daemon.url}/v1/conversations/"
                                             f"{body['message']['conversation_id']}")
            assert status == 200
    finally:
        assert await daemon.stop() == 0, daemon.logs()
        await receiver.stop()
    assert "automation.event_failed" not in daemon.logs()


pytestmark = pytest.mark.timeout(60)

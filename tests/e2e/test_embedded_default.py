"""``omnirelay run`` with no config: the embedded default of CONTRACT.md."""

from __future__ import annotations

import asyncio
import os
import re
import smtplib
import sys
from email.message import EmailMessage
from pathlib import Path

import aiohttp

from tests.conftest import Daemon, free_port


class DefaultDaemon(Daemon):
    """``omnirelay run`` without --config, configured by environment only."""

    def start(self) -> None:
        import subprocess

        log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._log_handles.append(log)
        self.proc = subprocess.Popen([sys.executable, "-m", "gateway", "run"], cwd=self.tmp,
                                     env=self.env, stdout=log, stderr=subprocess.STDOUT)


async def test_embedded_default_generates_a_token_and_takes_api_and_smtp_messages(
        tmp_path: Path) -> None:
    http_port, smtp_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k != "OMNIRELAY_API_TOKEN"}
    env.update(OMNIRELAY_DATA_DIR=str(tmp_path / "data"),
               OMNIRELAY_LISTEN=f"127.0.0.1:{http_port}",
               OMNIRELAY_SMTP_LISTEN=f"127.0.0.1:{smtp_port}")
    daemon = DefaultDaemon(tmp_path, "", http_port)
    daemon.env = env
    daemon.start()
    try:
        await daemon.wait_ready()
        token_file = tmp_path / "data" / "api-token"
        token = token_file.read_text().strip()
        assert oct(token_file.stat().st_mode & 0o777) == "0o600"
        assert len(re.findall(re.escape(token), daemon.logs())) == 1  # printed once
        headers = {"Authorization": f"Bearer {token}"}
        async with aiohttp.ClientSession(headers=headers) as http:
            async with http.post(f"{daemon.url}/hooks/api/default/messages", json={
                    "message_id": "ext-1", "text": "Where is my order?",
                    "from": {"id": "u-42", "email": "kim@example.com"}}) as resp:
                assert resp.status == 201, await resp.text()
            msg = EmailMessage()
            msg["From"], msg["To"], msg["Subject"] = ("kim@example.com", "anyone@anywhere.test",
                                                      "order")
            msg.set_content("Me again")
            await asyncio.to_thread(_send, smtp_port, msg)
            async with http.get(f"{daemon.url}/v1/channels") as resp:
                channels = {(c["type"], c["name"]): c["state"]
                            for c in (await resp.json())["channels"]}
            assert channels == {("email", "default"): "running", ("api", "default"): "running",
                                ("webchat", "default"): "running"}
            events = [e for e in await _events(http, daemon.url)
                      if e["type"] == "message.received"]
            assert [e["data"]["message"]["channel"] for e in events] == ["api", "email"]
            assert len({e["data"]["message"]["conversation_id"] for e in events}) == 1
    finally:
        assert await daemon.stop() == 0, daemon.logs()
    # A second start reuses the token and prints nothing new.
    daemon.start()
    try:
        await daemon.wait_ready()
        assert len(re.findall(re.escape(token), daemon.logs())) == 1
    finally:
        assert await daemon.stop() == 0


def _send(port: int, msg: EmailMessage) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        smtp.send_message(msg)


async def _events(http: aiohttp.ClientSession, base: str) -> list[dict]:
    async with http.get(f"{base}/v1/events", params={"after": "0", "limit": "1000"}) as resp:
        return (await resp.json())["events"]


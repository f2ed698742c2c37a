"""``omnirelay run`` with no config serves a working chat on its demo page, and a drain
closes open chats at once."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import orjson
import pytest

from tests.conftest import free_port


async def test_the_embedded_default_serves_the_demo_page_and_drains_open_chats(
        tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "OMNIRELAY_DATA_DIR": str(tmp_path / "data"),
           "OMNIRELAY_LISTEN": f"127.0.0.1:{port}",
           "OMNIRELAY_SMTP_LISTEN": f"127.0.0.1:{free_port()}",
           "OMNIRELAY_API_TOKEN": "embedded-token-0123456789"}
    log = tmp_path / "daemon.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "gateway", "run"], cwd=tmp_path, env=env,
                                stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            deadline = time.monotonic() + 20
            while True:
                try:
                    async with http.get(f"{base}/chat/default/") as response:
                        if response.status == 200:
                            page = await response.text()
                            csp = response.headers["Content-Security-Policy"]
                            break
                except aiohttp.ClientError:
                    pass
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
                await asyncio.sleep(0.05)
            assert 'src="/chat/default/widget.js"' in page
            assert "script-src 'self'" in csp and "unsafe" not in csp
            assert f"{base}/chat/default/" in log.read_text()  # the log names the page

            # The demo page's own origin may chat; any other may not.
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await http.ws_connect(f"{base}/chat/default/ws",
                                      headers={"Origin": "http://127.0.0.1:1"})
            assert refused.value.status == 403
            ws = await http.ws_connect(f"{base}/chat/default/ws", headers={"Origin": base})
            await ws.send_str(orjson.dumps({"type": "hello"}).decode())
            assert orjson.loads((await ws.receive(timeout=10)).data)["type"] == "welcome"

            proc.send_signal(signal.SIGTERM)
            while (frame := await ws.receive(timeout=10)).type is aiohttp.WSMsgType.TEXT:
                pass
            assert frame.type is aiohttp.WSMsgType.CLOSE and frame.data == 1001
            assert await asyncio.to_thread(proc.wait, 20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)

"""A store that cannot make writes durable any more takes the daemon down for a restart."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import aiohttp
import pytest

from gateway.config import parse_config
from gateway.daemon import run
from tests.helpers import post_inbound, unique
from tests.ops.conftest import crm_config


async def test_a_failed_fsync_answers_503_and_exits_75_for_systemd_to_restart(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text, http_port = crm_config(tmp_path)
    config = parse_config(text)
    daemon = asyncio.create_task(run(config))
    base = f"http://127.0.0.1:{http_port}"
    async with aiohttp.ClientSession() as http:
        for _ in range(200):  # bounded: the in-process daemon comes up in well under 10 s
            try:
                async with http.get(f"{base}/readyz") as resp:
                    if resp.status == 200:
                        break
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.05)
        status, _ = await post_inbound(http, base, {
            "message_id": unique("m"), "from": {"id": "c"}, "text": "before"})
        assert status == 201

        def failing_fdatasync(fd: int) -> None:
            raise OSError(5, "Input/output error")

        monkeypatch.setattr(os, "fdatasync", failing_fdatasync)
        status, body = await post_inbound(http, base, {
            "message_id": unique("m"), "from": {"id": "c"}, "text": "lost?"})
        assert status == 503  # not acknowledged: the sender keeps it and retries later
        assert body["error"]["code"] == "store_unavailable"
    assert await asyncio.wait_for(daemon, 30) == 75  # Restart=on-failure restarts it

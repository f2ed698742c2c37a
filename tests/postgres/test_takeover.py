"""A reply claimed by an instance that dies goes out from another once its lease runs out."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
from aiohttp import web

from tests.conftest import Daemon, base_config, free_port
from tests.helpers import all_events, post_inbound, post_json, unique
from tests.postgres.server import PgServer


class StallingCallback:
    """A CRM whose first callback hangs (its sender dies mid-send), the rest answer 200."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, object]] = []
        self.arrived = asyncio.Event()
        self.release = asyncio.Event()
        self.port = free_port()
        self.runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        self.bodies.append(await request.json())
        self.arrived.set()
        if len(self.bodies) == 1:
            await self.release.wait()
        return web.json_response({"ok": True})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/callback", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        self.release.set()
        if self.runner is not None:
            await self.runner.cleanup()


def instance(root: Path, name: str, dsn: str, callback: StallingCallback) -> Daemon:
    home = root / name
    home.mkdir()
    http_port = free_port()
    extra = f"""
        [[channels]]
        type = "api"
        name = "crm"
        secret = "crm-secret-0123456789"
        callback_url = "http://127.0.0.1:{callback.port}/callback"
        """
    text = base_config(root / "data", http_port, free_port(), extra=extra, store_url=dsn)
    text = text.replace('default_region = "KR"', 'default_region = "KR"\nclaim_lease_seconds = 3')
    return Daemon(home, text, http_port)


async def test_a_reply_claimed_by_a_killed_instance_goes_out_from_another(
        pg_server: PgServer, tmp_path: Path) -> None:
    callback = StallingCallback()
    await callback.start()
    dsn = pg_server.fresh_database()
    first = instance(tmp_path, "a", dsn, callback)
    second = instance(tmp_path, "b", dsn, callback)
    try:
        first.start()
        await first.wait_ready()
        async with aiohttp.ClientSession() as http:
            status, body = await post_inbound(http, first.url, {
                "message_id": unique("ext"), "from": {"id": unique("u")}, "text": "hi"})
            assert status == 201, body
            status, reply = await post_json(
                http, f"{first.url}/v1/conversations/{body['message']['conversation_id']}"
                "/messages", {"text": "on its way"})
            assert status == 202, reply
            await asyncio.wait_for(callback.arrived.wait(), 15)  # claimed, being sent
            first.kill()  # kill -9 in the middle of the send
            killed_at = time.monotonic()
            callback.arrived.clear()
            second.start()
            await second.wait_ready()
            await asyncio.wait_for(callback.arrived.wait(), 45)
            assert time.monotonic() - killed_at < 60
            assert [b["message"]["id"] for b in callback.bodies] == [reply["id"]] * 2

            async def sent() -> list[dict[str, object]]:
                return [e for e in await all_events(http, second.url)
                        if e["type"] == "message.status"
                        and e["data"]["message"]["id"] == reply["id"]]

            deadline = time.monotonic() + 10
            while not await sent() and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            statuses = await sent()
            assert [e["data"]["message"]["status"] for e in statuses] == ["sent"]
    finally:
        for daemon in (first, second):
            if daemon.proc is not None and daemon.proc.poll() is None:
                await daemon.stop()
        await callback.stop()

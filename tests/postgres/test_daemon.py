"""One daemon on PostgreSQL, as a help desk sees it: inbound through the API channel → the
feed (long-poll) → a reply → the callback and ``message.status``; after a restart the
cursor goes on where it was."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp

from tests.conftest import Daemon, Receiver, base_config, free_port
from tests.helpers import get_json, post_inbound, post_json, unique
from tests.postgres.server import PgServer


def pg_config(tmp_path: Path, dsn: str, receiver: Receiver, http_port: int) -> str:
    extra = f"""
        [[channels]]
        type = "api"
        name = "crm"
        secret = "crm-secret-0123456789"
        callback_url = "{receiver.url}/callback"
        """
    text = base_config(tmp_path / "data", http_port, free_port(), extra=extra)
    return text.replace(f'url = "sqlite:///{tmp_path / "data"}/omnirelay.db"', f'url = "{dsn}"')


async def test_inbound_feed_reply_and_callback_on_postgres(pg_server: PgServer,
                                                          tmp_path: Path) -> None:
    receiver = Receiver()
    await receiver.start()
    http_port = free_port()
    daemon = Daemon(tmp_path, pg_config(tmp_path, pg_server.fresh_database(), receiver,
                                        http_port), http_port)
    daemon.start()
    try:
        await daemon.wait_ready()
        async with aiohttp.ClientSession() as http:
            long_poll = asyncio.create_task(
                get_json(http, f"{daemon.url}/v1/events", after=0, wait=10))
            status, body = await post_inbound(http, daemon.url, {
                "message_id": unique("ext"), "from": {"id": unique("u"), "name": "Kim"},
                "text": "Where is my order?"})
            assert status == 201, body
            status, page = await asyncio.wait_for(long_poll, 10)
            assert [e["type"] for e in page["events"]] == [
                "customer.created", "conversation.opened", "message.received"]
            conversation = body["message"]["conversation_id"]
            status, reply = await post_json(
                http, f"{daemon.url}/v1/conversations/{conversation}/messages",
                {"text": "It ships today"})
            assert status == 202, reply
            (callback,) = await receiver.wait_for(lambda r: len(r) >= 1)
            assert callback.json()["message"]["id"] == reply["id"]
            status, page = await get_json(http, f"{daemon.url}/v1/events",
                                          after=page["next"], wait=10)
            types = [e["type"] for e in page["events"]]
            while "message.status" not in types:
                status, more = await get_json(http, f"{daemon.url}/v1/events",
                                              after=page["next"], wait=10)
                page["events"] += more["events"]
                page["next"] = more["next"]
                types = [e["type"] for e in page["events"]]
            assert types == ["message.queued", "message.status"]
            cursor = page["next"]

        assert await daemon.stop() == 0
        daemon.start()
        await daemon.wait_ready()
        async with aiohttp.ClientSession() as http:
            status, after = await get_json(http, f"{daemon.url}/v1/events", after=cursor)
            assert after["events"] == [] and after["next"] == cursor
            status, body = await post_inbound(http, daemon.url, {
                "message_id": unique("ext"), "from": {"id": unique("u")}, "text": "again"})
            assert status == 201
            status, after = await get_json(http, f"{daemon.url}/v1/events", after=cursor)
            assert int(after["events"][0]["seq"]) == int(cursor) + 1
    finally:
        await daemon.stop()
        await receiver.stop()

"""One daemon on PostgreSQL, as a help desk sees it: inbound through the API channel → the
feed (long-poll) → a reply → the callback and ``message.status``; after a restart the
cursor goes on where it was."""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path

import aiohttp

from tests.conftest import Daemon, Receiver, base_config, free_port
from tests.helpers import bearer, get_json, post_inbound, post_json, unique
from tests.postgres.server import PgServer


def pg_config(tmp_path: Path, dsn: str, receiver: Receiver, http_port: int) -> str:
    extra = f"""
        [[channels]]
        type = "api"
        name = "crm"
        secret = "crm-secret-0123456789"
        callback_url = "{receiver.url}/callback"
        """
    return base_config(tmp_path / "data", http_port, free_port(), extra=extra, store_url=dsn)


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


HELP_DESK = """
[automation]
language = "en"
[automation.hours.always]
monday = "00:00-24:00"
tuesday = "00:00-24:00"
wednesday = "00:00-24:00"
thursday = "00:00-24:00"
friday = "00:00-24:00"
saturday = "00:00-24:00"
sunday = "00:00-24:00"
[[automation.accounts]]
account = "*"
hours = "always"
acknowledge = true
csat = true
[[automation.rules]]
name = "refunds"
keywords = ["refund"]
tags = ["refund"]
queue = "billing"
"""


async def test_the_help_desk_automation_and_metrics_on_postgres(pg_server: PgServer,
                                                                 tmp_path: Path) -> None:
    """A rule tags the conversation, the acknowledgement and the survey go out, an agent's
    fields, reply and close reach /v1/stats and the Prometheus histograms, the customer's
    rating is recorded: the whole of issue 23 on one PostgreSQL daemon."""
    receiver = Receiver()
    await receiver.start()
    http_port = free_port()
    daemon = Daemon(tmp_path, pg_config(tmp_path, pg_server.fresh_database(), receiver,
                                        http_port) + textwrap.dedent(HELP_DESK), http_port)
    daemon.start()
    agent = {"id": unique("agent"), "name": "Ji-woo"}
    user = unique("u")
    try:
        await daemon.wait_ready()
        async with aiohttp.ClientSession() as http:
            status, body = await post_inbound(http, daemon.url, {
                "message_id": unique("ext"), "from": {"id": user}, "text": "I want a refund"})
            assert status == 201, body
            conversation_id = body["message"]["conversation_id"]
            base = f"{daemon.url}/v1/conversations/{conversation_id}"
            (ack,) = await receiver.wait_for(lambda r: len(r) >= 1)
            assert ack.json()["message"]["automatic"] == "acknowledgement"
            async with http.patch(base, json={"assignee": agent, "tags": ["refund", "vip"]},
                                  headers=bearer()) as resp:
                assert resp.status == 200, await resp.text()
            status, listed = await get_json(http, f"{daemon.url}/v1/conversations",
                                            tag="vip", assignee=agent["id"])
            assert [c["id"] for c in listed["conversations"]] == [conversation_id], listed
            assert listed["conversations"][0]["queue"] == "billing"  # the rule's

            status, reply = await post_json(http, f"{base}/messages",
                                            {"text": "Refunded", "agent": agent})
            assert status == 202, reply
            await receiver.wait_for(lambda r: len(r) >= 2)
            status, _ = await post_json(http, f"{base}/close", {"agent": agent})
            assert status == 200
            requests = await receiver.wait_for(lambda r: len(r) >= 3)
            assert requests[2].json()["message"]["automatic"] == "survey"
            status, body = await post_inbound(http, daemon.url, {
                "message_id": unique("ext"), "from": {"id": user}, "text": "5"})
            assert status == 201, body
            status, conversation = await get_json(http, base)
            assert conversation["csat"]["score"] == 5 and conversation["status"] == "closed"

            status, answer = await get_json(http, f"{daemon.url}/v1/stats", group_by="agent")
            assert status == 200, answer
            [mine] = [g for g in answer["groups"] if g["key"] == agent["id"]]
            assert mine["first_response_time"]["count"] == 1
            assert mine["conversations_closed"] == 1 and mine["resolution_time"]["count"] == 1
            assert mine["csat"]["surveys_sent"] == 1 and mine["csat"]["average_score"] == 5.0
            async with http.get(f"{daemon.url}/metrics") as resp:
                exposition = await resp.text()
            assert "omnirelay_blob_cache_bytes " in exposition  # the local attachment cache
            for name in ("first_response", "response", "resolution"):
                line = next(line for line in exposition.splitlines() if line.startswith(
                    f'omnirelay_{name}_seconds_count{{account="crm",channel="api"}}'))
                assert float(line.split()[-1]) == 1, line
    finally:
        await daemon.stop()
        await receiver.stop()

"""The help desk's side over HTTP against the running daemon: setting conversation fields,
listing by them, and /v1/stats computed from what the daemon really stored."""

from __future__ import annotations

from typing import Any

import aiohttp

from tests.conftest import Daemon
from tests.helpers import TOKEN, bearer, get_json, post_inbound, post_json, unique, wait_until


async def patch(http: aiohttp.ClientSession, url: str, body: Any) -> tuple[int, Any]:
    async with http.patch(url, json=body, headers=bearer(TOKEN)) as resp:
        return resp.status, await resp.json(content_type=None)


async def new_conversation(http: aiohttp.ClientSession, daemon: Daemon) -> dict[str, Any]:
    status, stored = await post_inbound(http, daemon.url, {
        "message_id": unique("m"), "from": {"id": unique("c")}, "text": "where is my order?"})
    assert status == 201, stored
    status, conversation = await get_json(
        http, f"{daemon.url}/v1/conversations/{stored['message']['conversation_id']}")
    assert status == 200
    return conversation  # type: ignore[no-any-return]


async def updated_events(http: aiohttp.ClientSession, daemon: Daemon,
                         conversation_id: str) -> list[dict[str, Any]]:
    from tests.helpers import all_events
    return [e for e in await all_events(http, daemon.url)
            if e["type"] == "conversation.updated"
            and e["data"]["conversation"]["id"] == conversation_id]


async def test_patch_sets_fields_with_one_event_naming_the_changes(
        daemon: Daemon, http: aiohttp.ClientSession) -> None:
    conversation = await new_conversation(http, daemon)
    assert conversation["assignee"] is None
    url = f"{daemon.url}/v1/conversations/{conversation['id']}"
    agent = {"id": "a-9", "name": "Min"}
    status, changed = await patch(http, url, {
        "tags": ["refund", "vip", "refund"], "priority": "high", "queue": "billing",
        "assignee": {"id": "a-1", "name": "Ji-woo"}, "agent": agent})
    assert status == 200, changed
    assert changed["tags"] == ["refund", "vip"] and changed["priority"] == "high"
    assert changed["queue"] == "billing" and changed["assignee"]["id"] == "a-1"
    [event] = await updated_events(http, daemon, conversation["id"])
    assert event["data"]["agent"] == agent
    assert event["data"]["changes"] == {
        "tags": {"from": [], "to": ["refund", "vip"]},
        "priority": {"from": "normal", "to": "high"},
        "queue": {"from": None, "to": "billing"},
        "assignee": {"from": None, "to": {"id": "a-1", "name": "Ji-woo"}}}
    assert event["data"]["conversation"]["assignee"]["id"] == "a-1"

    # The same values again change nothing: no event.
    status, _ = await patch(http, url, {"priority": "high", "tags": ["refund", "vip"]})
    assert status == 200
    assert len(await updated_events(http, daemon, conversation["id"])) == 1
    # Unassigning is a change of its own.
    status, changed = await patch(http, url, {"assignee": None})
    assert status == 200 and changed["assignee"] is None
    [_, second] = await updated_events(http, daemon, conversation["id"])
    assert second["data"]["changes"] == {
        "assignee": {"from": {"id": "a-1", "name": "Ji-woo"}, "to": None}}
    assert second["data"]["agent"] is None


async def test_patch_refuses_bad_input_clearly_and_changes_nothing(
        daemon: Daemon, http: aiohttp.ClientSession) -> None:
    conversation = await new_conversation(http, daemon)
    url = f"{daemon.url}/v1/conversations/{conversation['id']}"
    for body, words in (({"priority": "asap"}, "priority"), ({"tags": "refund"}, "tags"),
                        ({"tags": [" "]}, "tags"), ({"assignee": {"name": "x"}}, "assignee"),
                        ({"status": "closed"}, "status"), ({}, "nothing to set"),
                        ({"queue": 5}, "queue")):
        status, answer = await patch(http, url, body)
        assert status == 422, (body, answer)
        assert words in answer["error"]["message"], answer
    assert await updated_events(http, daemon, conversation["id"]) == []
    status, answer = await patch(
        http, f"{daemon.url}/v1/conversations/cnv_00000000000000000000000000",
        {"priority": "high"})
    assert status == 404, answer


async def test_list_filters_each_field_and_pages_by_cursor(
        daemon: Daemon, http: aiohttp.ClientSession) -> None:
    tag, queue, agent = unique("tag"), unique("queue"), unique("agent")
    made = [await new_conversation(http, daemon) for _ in range(3)]
    status, stamp = await get_json(http, f"{daemon.url}/v1/conversations/{made[0]['id']}")
    since = stamp["last_message_at"]
    for conversation in made:
        await patch(http, f"{daemon.url}/v1/conversations/{conversation['id']}",
                    {"tags": [tag], "queue": queue})
    await patch(http, f"{daemon.url}/v1/conversations/{made[1]['id']}",
                {"assignee": {"id": agent, "name": None}})
    url = f"{daemon.url}/v1/conversations"
    ids = [c["id"] for c in made]

    async def listed(**params: Any) -> list[str]:
        status, page = await get_json(http, url, **params)
        assert status == 200, page
        return [c["id"] for c in page["conversations"]]

    assert await listed(tag=tag) == ids
    assert await listed(queue=queue) == ids
    assert await listed(assignee=agent) == [ids[1]]
    assert await listed(tag=tag, channel="api", account="crm", status="open") == ids
    assert await listed(tag=tag, channel="email") == []
    assert await listed(tag=tag, updated_since=since) == ids
    assert await listed(tag=tag, updated_since="2999-01-01T00:00:00Z") == []
    # Paged by cursor: two, then the rest.
    status, page = await get_json(http, url, tag=tag, limit=2)
    assert [c["id"] for c in page["conversations"]] == ids[:2] and page["next"] == ids[1]
    assert await listed(tag=tag, after=page["next"]) == ids[2:]
    # A new list of tags replaces the old one in the filter too.
    await patch(http, f"{daemon.url}/v1/conversations/{ids[0]}", {"tags": ["other"]})
    assert await listed(tag=tag) == ids[1:]
    status, answer = await get_json(http, url, updated_since="yesterday")
    assert status == 400 and "updated_since" in answer["error"]["message"]


async def test_stats_count_a_real_reply_and_close_for_the_agent(
        daemon: Daemon, http: aiohttp.ClientSession) -> None:
    agent = {"id": unique("agent"), "name": "Ji-woo"}
    conversation = await new_conversation(http, daemon)
    base = f"{daemon.url}/v1/conversations/{conversation['id']}"
    status, reply = await post_json(http, f"{base}/messages", {"text": "On its way",
                                                               "agent": agent})
    assert status == 202, reply

    async def sent() -> bool:
        _, message = await get_json(http, f"{daemon.url}/v1/messages/{reply['id']}")
        return bool(message["status"] == "sent")
    await wait_until(sent)
    status, _ = await post_json(http, f"{base}/close", {"agent": agent})
    assert status == 200
    status, answer = await get_json(http, f"{daemon.url}/v1/stats", group_by="agent")
    assert status == 200, answer
    assert answer["group_by"] == "agent" and answer["from"] < answer["to"]
    mine = next(g for g in answer["groups"] if g["key"] == agent["id"])
    assert mine["first_response_time"]["count"] == 1
    assert mine["first_response_time"]["median"] >= 0
    assert mine["response_time"]["count"] == 1
    assert mine["conversations_closed"] == 1
    assert mine["resolution_time"]["count"] == 1
    assert mine["one_touch_resolution_rate"] == 1.0
    # The same durations as Prometheus histograms, once committed.
    async with http.get(f"{daemon.url}/metrics") as resp:
        exposition = await resp.text()
    for name in ("first_response", "response", "resolution"):
        line = next(line for line in exposition.splitlines() if line.startswith(
            f'omnirelay_{name}_seconds_count{{account="crm",channel="api"}}'))
        assert float(line.split()[-1]) >= 1, line
        # No business hours for the account: no business-clock series.
        assert f"omnirelay_{name}_business_seconds_count{{" not in exposition
    status, total = await get_json(http, f"{daemon.url}/v1/stats")
    assert status == 200 and [g["key"] for g in total["groups"]] == [None]
    assert total["groups"][0]["conversations_created"] >= 1

    # The business clock: the same shape, named. The test daemon's account has no business
    # hours, so its business durations are empty.
    status, business = await get_json(http, f"{daemon.url}/v1/stats", group_by="agent",
                                      clock="business")
    assert status == 200 and business["clock"] == "business", business
    assert answer["clock"] == "wall"
    theirs = next(g for g in business["groups"] if g["key"] == agent["id"])
    assert theirs["first_response_time"] == {"median": None, "p90": None, "count": 0}
    assert theirs["conversations_closed"] == 1

    for params, words in (({"group_by": "week"}, "group_by"), ({"from": "soon"}, "from"),
                          ({"clock": "nonsense"}, "clock must be wall")):
        status, answer = await get_json(http, f"{daemon.url}/v1/stats", **params)
        assert status == 400 and words in answer["error"]["message"], answer
    status, empty = await get_json(http, f"{daemon.url}/v1/stats", group_by="day",
                                   **{"from": "2026-11-02T00:00:00Z",
                                      "to": "2026-11-01T00:00:00Z"})
    assert status == 200 and empty["from"] == empty["to"] == "2026-11-02T00:00:00.000Z"
    assert empty["groups"] == []

"""The worker against a real store: an event read again sends nothing twice, windows expire,
and a burst of messages in one conversation raises its priority."""

from __future__ import annotations

import textwrap
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.automation.jobs import Automation, _send_automatic
from gateway.automation.worker import AutomationWorker
from gateway.config import StoreConfig, parse_config
from gateway.feed import FeedNotifier
from gateway.ids import utcnow
from gateway.store.base import OutboundRequest, Route
from gateway.store.sqlite import SQLiteStore
from normalizer.model import InboundMessage, Party

CONFIG = """
[automation]
[automation.hours.always]
weekdays = "00:00-24:00"
saturday = "00:00-24:00"
sunday = "00:00-24:00"
[automation.urgency]
burst_messages = 3
burst_minutes = 5
[[automation.accounts]]
account = "*"
hours = "always"
acknowledge = true
acknowledgement_window = "1h"
"""
ROUTES = [Route("api", "crm", Party("external", "shop"), ("external",))]


class Outbox:
    def __init__(self) -> None:
        self.wakes = 0

    def wake(self) -> None:
        self.wakes += 1


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    config = StoreConfig(url=f"sqlite:///{tmp_path}/s.db", data_dir=tmp_path,
                         synchronous="NORMAL")
    s = SQLiteStore(config)
    s.automation = Automation(parse_config(textwrap.dedent(CONFIG), environ={}).automation,
                              {("api", "crm"): "api"})
    await s.open()
    yield s
    await s.close()


def inbound(provider_id: str, sender: str, text: str) -> InboundMessage:
    return InboundMessage(channel="api", account="crm", provider_message_id=provider_id,
                          sender=Party("external", sender), text=text)


async def events(store: SQLiteStore) -> list[dict[str, Any]]:
    page = await store.events_after(0, 1000)
    return [orjson.loads(body) for body in page.bodies]


async def test_an_event_seen_again_after_a_restart_sends_nothing_twice(
        store: SQLiteStore) -> None:
    assert store.automation is not None
    outbox = Outbox()
    worker = AutomationWorker(store, FeedNotifier(), store.automation, lambda: ROUTES, outbox)
    first = await store.ingest(inbound("m1", "kim", "hello"), [])
    received = [e for e in await events(store) if e["type"] == "message.received"]
    for _ in range(2):  # the cursor was not saved before a crash: the event comes again
        await worker.handle(received[0])
    messages = await store.list_messages(first.message["conversation_id"], None, 100)
    assert [m["automatic"] for m in messages] == [None, "acknowledgement"]
    assert outbox.wakes == 1 and worker.sent == 1


async def test_one_acknowledgement_per_customer_and_account_within_the_window(
        store: SQLiteStore) -> None:
    request = OutboundRequest(text="got it", automatic="acknowledgement")
    first = await store.ingest(inbound("w1", "lee", "hi"), [])
    conversation_id = first.message["conversation_id"]
    keys: list[tuple[str, float | None]] = [("ack:lee", 3600.0)]
    assert await store.write(_send_automatic, conversation_id, request, ROUTES, keys,
                             None) is not None
    assert await store.write(_send_automatic, conversation_id, request, ROUTES, keys,
                             None) is None
    # The key's time an hour and a minute ago: the window is over.
    past = (utcnow() - timedelta(minutes=61)).strftime("%Y-%m-%dT%H:%M:%S.000Z")

    def age(tx: Any) -> None:
        tx.conn.execute("UPDATE automatic_sends SET created_at = ?", (past,))
    await store.write(age)
    assert await store.write(_send_automatic, conversation_id, request, ROUTES, keys,
                             None) is not None


async def test_a_burst_of_messages_raises_the_priority_once(store: SQLiteStore) -> None:
    texts = ["hello?", "anyone there", "please answer", "still waiting"]
    for index, text in enumerate(texts):
        result = await store.ingest(inbound(f"b{index}", "park", text), [])
    conversation = await store.get_conversation(result.message["conversation_id"])
    assert conversation["priority"] == "high"
    updates = [e for e in await events(store) if e["type"] == "conversation.updated"]
    assert [u["data"]["changes"] for u in updates] == [
        {"priority": {"from": "normal", "to": "high"}}]  # the third message, not the fourth


async def test_the_acknowledgement_is_computed_for_when_the_message_arrived(
        tmp_path: Path) -> None:
    """Saturday afternoon in Seoul: the closed-hours text with Monday's opening; the
    account's SMS-length variant for its channel."""
    text = """
    [automation]
    timezone = "Asia/Seoul"
    language = "ko"
    [automation.hours.shop]
    weekdays = "09:00-18:00"
    [[automation.accounts]]
    account = "crm"
    hours = "shop"
    acknowledge = true
    [templates.acknowledgement_closed.ko]
    text = "지금은 영업시간이 아닙니다. {eta} 답변드릴게요."
    [templates.acknowledgement_closed.channels.api.ko]
    text = "{eta} 답변 예정"
    """
    config = StoreConfig(url=f"sqlite:///{tmp_path}/s.db", data_dir=tmp_path,
                         synchronous="NORMAL")
    store = SQLiteStore(config)
    automation = Automation(parse_config(textwrap.dedent(text), environ={}).automation,
                            {("api", "crm"): "api"})
    store.automation = automation
    await store.open()
    try:
        worker = AutomationWorker(store, FeedNotifier(), automation, lambda: ROUTES, Outbox())
        stored = await store.ingest(inbound("s1", "choi", "주말에도 배송되나요?"), [])
        [event] = [e for e in await events(store) if e["type"] == "message.received"]
        saturday = "2026-12-05T05:00:00.000Z"  # 14:00 in Seoul
        event["data"]["message"]["received_at"] = saturday
        event["data"]["conversation"]["opened_at"] = saturday
        await worker.handle(event)
        messages = await store.list_messages(stored.message["conversation_id"], None, 10)
        ack = messages[-1]
        assert ack["automatic"] == "acknowledgement"
        assert ack["text"] == "다음 영업일 오전 9시 이후 답변 예정"
        assert ack["template"] == {"name": "acknowledgement_closed", "variables": {
            "customer_name": "", "channel": "api", "eta": "다음 영업일 오전 9시 이후",
            "opens_at": "12월 7일(월) 오전 9시", "in_hours": "no"}}
    finally:
        await store.close()


async def test_a_customer_reopening_after_the_window_is_acknowledged_again(
        store: SQLiteStore) -> None:
    assert store.automation is not None
    worker = AutomationWorker(store, FeedNotifier(), store.automation, lambda: ROUTES,
                              Outbox())
    seen = 0

    async def follow() -> None:
        nonlocal seen
        for event in (await events(store))[seen:]:
            await worker.handle(event)
            seen += 1

    first = await store.ingest(inbound("r1", "jung", "hello"), [])
    conversation_id = first.message["conversation_id"]
    await follow()
    await store.set_conversation_status(conversation_id, "closed", {"id": "a-1"})
    await store.ingest(inbound("r2", "jung", "one more question"), [])  # reopens, in window
    await follow()
    await store.set_conversation_status(conversation_id, "closed", {"id": "a-1"})
    past = (utcnow() - timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%S.000Z")

    def age(tx: Any) -> None:
        tx.conn.execute("UPDATE automatic_sends SET created_at = ?", (past,))
    await store.write(age)
    await store.ingest(inbound("r3", "jung", "and another"), [])  # reopens, after it
    await follow()
    messages = await store.list_messages(conversation_id, None, 100)
    assert [(m["text"], m["automatic"]) for m in messages] == [
        ("hello", None), (messages[1]["text"], "acknowledgement"),
        ("one more question", None), ("and another", None),
        (messages[4]["text"], "acknowledgement")]

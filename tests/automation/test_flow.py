"""Automation end to end against a daemon subprocess: acknowledgements, rules, templates, CSAT.

The CRM account (API channel) sends through a local callback receiver, so what a customer
would get is what arrives there; e-mail shows acknowledgements never answering auto-replies.
"""

from __future__ import annotations

import asyncio
import smtplib
from collections.abc import AsyncIterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import API_SECRET, Daemon, Receiver, base_config, free_port
from tests.helpers import all_events, get_json, post_inbound, post_json, unique, wait_until

AUTOMATION = """
[[channels]]
type = "api"
name = "crm"
secret = "{secret}"
callback_url = "{callback}/callback"
[[channels]]
type = "api"
name = "night"
secret = "{secret}"
callback_url = "{callback}/night"

[automation]
timezone = "Asia/Seoul"
language = "ko"
[automation.hours.always]
monday = "00:00-24:00"
tuesday = "00:00-24:00"
wednesday = "00:00-24:00"
thursday = "00:00-24:00"
friday = "00:00-24:00"
saturday = "00:00-24:00"
sunday = "00:00-24:00"
respond_within = "2h"
[automation.hours.closed]
holidays = ["2026-12-25"]
[automation.urgency]
burst_messages = 3
burst_minutes = 5
[[automation.accounts]]
account = "api:night"
hours = "closed"
acknowledge = true
[[automation.accounts]]
account = "*"
hours = "always"
acknowledge = true
acknowledgement_window = "1h"
csat = true
[[automation.rules]]
name = "order status"
keywords = ["주문 조회", "where is my order"]
tags = ["order-status"]
queue = "orders"
reply = "order_lookup"
[[automation.rules]]
name = "refunds"
keywords = ["환불", "refund"]
tags = ["refund"]
queue = "billing"

[templates.order_lookup.ko]
text = "주문 조회는 여기에서: [주문 조회](https://shop.example/orders) (상담원 답변: {{eta}})"
[templates.order_lookup.en]
text = "Track your order here: https://shop.example/orders. A person will answer {{eta}}."
[templates.shipping_delay]
description = "the rush"
[templates.shipping_delay.en]
subject = "Order {{order}}"
text = "Hi {{name}}, order **{{order}}** ships in {{days}} days."
[templates.shipping_delay.ko]
text = "{{name}}님, 주문 **{{order}}**은 {{days}}일 안에 발송됩니다."
"""


@pytest.fixture(scope="module")
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    await rec.start()
    yield rec
    await rec.stop()


@pytest.fixture(scope="module")
async def daemon(tmp_path_factory: pytest.TempPathFactory,
                 receiver: Receiver) -> AsyncIterator[Daemon]:
    tmp: Path = tmp_path_factory.mktemp("automation")
    http_port, smtp_port = free_port(), free_port()
    extra = AUTOMATION.format(secret=API_SECRET, callback=receiver.url)
    proc = Daemon(tmp, base_config(tmp / "data", http_port, smtp_port, extra=extra), http_port)
    proc.smtp_port = smtp_port  # type: ignore[attr-defined]
    proc.start()
    await proc.wait_ready()
    yield proc
    code = await proc.stop()
    assert code == 0, proc.logs()


@pytest.fixture(scope="module")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def customer_writes(http: aiohttp.ClientSession, daemon: Daemon, text: str, *,
                          user: str | None = None, account: str = "crm") -> dict[str, Any]:
    status, body = await post_inbound(http, daemon.url, {
        "message_id": unique("m"), "from": {"id": user or unique("u"), "name": "김민지"},
        "text": text}, account=account)
    assert status == 201, body
    message: dict[str, Any] = body["message"]
    return message


def callbacks(receiver: Receiver, conversation_id: str, path: str = "/callback"
              ) -> list[dict[str, Any]]:
    """The messages the customer got, in order."""
    return [r.json()["message"] for r in receiver.requests
            if r.path == path and r.json()["message"]["conversation_id"] == conversation_id]


async def got(receiver: Receiver, conversation_id: str, count: int = 1,
              path: str = "/callback") -> list[dict[str, Any]]:
    await receiver.wait_for(lambda _: len(callbacks(receiver, conversation_id, path)) >= count)
    return callbacks(receiver, conversation_id, path)


async def test_first_message_is_acknowledged_once_with_when_a_human_answers(
        daemon: Daemon, http: aiohttp.ClientSession, receiver: Receiver) -> None:
    user = unique("u")
    first = await customer_writes(http, daemon, "안녕하세요, 재입고 언제 되나요?", user=user)
    [ack] = await got(receiver, first["conversation_id"])
    assert ack["automatic"] == "acknowledgement"
    assert ack["agent"] is None
    assert ack["text"] == "문의 감사합니다! 담당자가 2시간 이내에 답변드리겠습니다."
    assert ack["template"]["name"] == "acknowledgement"

    await customer_writes(http, daemon, "혹시 확인되셨나요?", user=user)
    # A later customer's acknowledgement means the worker is past the second message.
    marker = await customer_writes(http, daemon, "Hello, is this in stock?")
    [english] = await got(receiver, marker["conversation_id"])
    assert english["text"] == "Thanks for your message! A member of our team will answer " \
        "within 2 hours."
    assert len(callbacks(receiver, first["conversation_id"])) == 1
    async with http.get(f"{daemon.url}/metrics") as resp:
        assert 'omnirelay_automatic_messages_total{kind="acknowledgement"}' in await resp.text()


async def test_outside_hours_the_other_text_says_when_we_are_back(
        daemon: Daemon, http: aiohttp.ClientSession, receiver: Receiver) -> None:
    message = await customer_writes(http, daemon, "Are you open?", account="night")
    [ack] = await got(receiver, message["conversation_id"], path="/night")
    assert ack["automatic"] == "acknowledgement"
    assert ack["template"]["name"] == "acknowledgement_closed"
    assert ack["text"] == ("Thanks for your message! We are away right now; a member of our "
                           "team will answer as soon as we are back.")


def send_mail(port: int, sender: str, text: str, **headers: str) -> None:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = "support@shop.example"
    msg["Subject"] = "Question"
    for name, value in headers.items():
        msg[name.replace("_", "-")] = value
    msg.set_content(text)
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        smtp.send_message(msg)


async def outbound(http: aiohttp.ClientSession, daemon: Daemon,
                   conversation_id: str) -> list[dict[str, Any]]:
    _, page = await get_json(http, f"{daemon.url}/v1/conversations/{conversation_id}/messages")
    return [m for m in page["messages"] if m["direction"] == "outbound"]


async def conversation_of(http: aiohttp.ClientSession, daemon: Daemon,
                          address: str) -> dict[str, Any]:
    async def found() -> Any:
        status, customer = await get_json(http, f"{daemon.url}/v1/customers",
                                          identity=f"email:{address}")
        if status != 200 or not customer["customers"]:
            return None
        _, full = await get_json(http, f"{daemon.url}/v1/customers/"
                                 f"{customer['customers'][0]['id']}")
        return full if full.get("conversations") else None
    customer = await wait_until(found)
    return dict(customer["conversations"][0])


async def test_an_auto_reply_is_never_acknowledged(
        daemon: Daemon, http: aiohttp.ClientSession) -> None:
    port = daemon.smtp_port  # type: ignore[attr-defined]
    robot = f"{unique('ooo')}@example.com"
    person = f"{unique('lee')}@example.com"
    await asyncio.to_thread(send_mail, port, robot, "I am out of the office until Monday.",
                            Auto_Submitted="auto-replied")
    await asyncio.to_thread(send_mail, port, person, "Where can I find my invoice?")
    person_conversation = await conversation_of(http, daemon, person)

    async def acknowledged() -> Any:
        return [m for m in await outbound(http, daemon, person_conversation["id"])
                if m["automatic"] == "acknowledgement"]
    [ack] = await wait_until(acknowledged)
    assert ack["html"] is not None and "within 2 hours" in ack["html"]  # e-mail's HTML part
    # The worker handles the feed in order: past the person's mail, past the robot's.
    robot_conversation = await conversation_of(http, daemon, robot)
    assert await outbound(http, daemon, robot_conversation["id"]) == []


async def test_a_rule_answers_a_first_message_and_tags_the_conversation(
        daemon: Daemon, http: aiohttp.ClientSession, receiver: Receiver) -> None:
    user = unique("u")
    message = await customer_writes(http, daemon, "주문 조회 어떻게 하나요?", user=user)
    conversation_id = message["conversation_id"]
    [answer] = await got(receiver, conversation_id)
    assert answer["automatic"] == "rule"
    assert answer["text"] == ("주문 조회는 여기에서: 주문 조회: https://shop.example/orders "
                              "(상담원 답변: 2시간 이내에)")
    _, conversation = await get_json(http, f"{daemon.url}/v1/conversations/{conversation_id}")
    assert conversation["status"] == "open"  # a human still answers
    assert conversation["tags"] == ["order-status"]
    assert conversation["queue"] == "orders"

    # A refund request in the same conversation: tags added, priority raised, the queue an
    # agent (here: the first rule) chose kept; announced as conversation.updated.
    await customer_writes(http, daemon, "그리고 지난 주문은 환불해 주세요", user=user)
    events = await all_events(http, daemon.url)
    mine = [e for e in events if e["data"].get("conversation", {}).get("id") == conversation_id]
    opened = next(e for e in mine if e["type"] == "conversation.opened")
    assert opened["data"]["conversation"]["tags"] == ["order-status"]  # carried from the start
    [updated] = [e for e in mine if e["type"] == "conversation.updated"]
    assert updated["data"]["agent"] is None
    assert updated["data"]["changes"] == {
        "tags": {"from": ["order-status"], "to": ["order-status", "refund"]},
        "priority": {"from": "normal", "to": "high"}}
    received = [e for e in mine if e["type"] == "message.received"]
    assert received[-1]["data"]["conversation"]["priority"] == "high"
    assert len(callbacks(receiver, conversation_id)) == 1  # no second automatic answer


async def test_templates_are_listed_rendered_and_refused_by_name(
        daemon: Daemon, http: aiohttp.ClientSession, receiver: Receiver) -> None:
    status, listing = await get_json(http, f"{daemon.url}/v1/templates")
    assert status == 200
    by_name = {t["name"]: t for t in listing["templates"]}
    assert by_name["shipping_delay"]["variables"] == ["days", "name", "order"]
    assert by_name["shipping_delay"]["languages"] == ["en", "ko"]
    assert {"acknowledgement", "survey", "order_lookup"} <= set(by_name)

    message = await customer_writes(http, daemon, "배송이 늦네요")
    await got(receiver, message["conversation_id"])  # the acknowledgement
    url = f"{daemon.url}/v1/conversations/{message['conversation_id']}/messages"
    status, queued = await post_json(http, url, {
        "template": "shipping_delay", "variables": {"name": "민지", "order": "A-17", "days": 3},
        "agent": {"id": "a-1", "name": "Jiwoo"}})
    assert status == 202, queued
    assert queued["text"] == "민지님, 주문 A-17은 3일 안에 발송됩니다."  # the customer's language
    assert queued["automatic"] is None and queued["agent"]["id"] == "a-1"
    status, english = await post_json(http, url, {
        "template": "shipping_delay", "language": "en",
        "variables": {"name": "Minji", "order": "A-17", "days": 3}})
    assert status == 202 and english["text"] == "Hi Minji, order A-17 ships in 3 days."

    for body, named in (
            ({"template": "shipping_dely", "variables": {}}, "'shipping_dely'"),
            ({"template": "shipping_delay", "variables": {"name": "x", "days": 1}}, "'order'"),
            ({"template": "shipping_delay", "text": "hi",
              "variables": {"name": "x", "order": "1", "days": 1}}, "not both")):
        status, error = await post_json(http, url, body)
        assert status == 422, error
        assert named in error["error"]["message"]
    before = len(await outbound(http, daemon, message["conversation_id"]))
    assert [m["text"] for m in (await outbound(http, daemon, message["conversation_id"]))
            [-2:]] == [queued["text"], english["text"]]
    assert before == 3  # the acknowledgement and the two templates, nothing refused

    status, proactive = await post_json(
        http, f"{daemon.url}/v1/customers/{message['customer_id']}/messages",
        {"template": "shipping_delay", "channel": "api", "account": "crm",
         "variables": {"name": "민지", "order": "A-18", "days": 2}})
    assert status == 202, proactive
    assert proactive["text"] == "민지님, 주문 A-18은 2일 안에 발송됩니다."
    # An English-writing customer gets the English variant unasked (the account's is ko).
    english_customer = await customer_writes(http, daemon, "My parcel is late")
    status, proactive = await post_json(
        http, f"{daemon.url}/v1/customers/{english_customer['customer_id']}/messages",
        {"template": "shipping_delay", "channel": "api", "account": "crm",
         "variables": {"name": "Sam", "order": "A-19", "days": 2}})
    assert status == 202, proactive
    assert proactive["text"] == "Hi Sam, order A-19 ships in 2 days."


async def test_csat_after_a_close_recorded_against_the_closing_agent(
        daemon: Daemon, http: aiohttp.ClientSession, receiver: Receiver) -> None:
    user = unique("u")
    message = await customer_writes(http, daemon, "사이즈 교환 가능한가요?", user=user)
    conversation_id = message["conversation_id"]
    base = f"{daemon.url}/v1/conversations/{conversation_id}"
    await got(receiver, conversation_id)  # the acknowledgement
    agent = {"id": "a-7", "name": "Jiwoo"}
    status, _ = await post_json(http, f"{base}/messages", {"text": "네, 가능합니다!",
                                                           "agent": agent})
    assert status == 202
    await got(receiver, conversation_id, 2)
    status, _ = await post_json(http, f"{base}/close", {"agent": agent})
    assert status == 200
    survey = (await got(receiver, conversation_id, 3))[-1]
    assert survey["automatic"] == "survey"
    assert survey["text"] == ("상담은 만족스러우셨나요? 1(불만족)부터 5(매우 만족)까지 "
                              "숫자로 답해 주세요.")

    answer = await customer_writes(http, daemon, "최고예요!", user=user)
    assert answer["conversation_id"] == conversation_id  # the answer is stored
    _, conversation = await get_json(http, base)
    assert conversation["status"] == "closed"  # an answer does not reopen it
    assert conversation["csat"]["score"] == 5
    assert conversation["csat"]["agent"] == agent
    events = await all_events(http, daemon.url)
    [updated] = [e for e in events if e["type"] == "conversation.updated"
                 and e["data"]["conversation"]["id"] == conversation_id]
    assert updated["data"]["changes"]["csat"]["from"] is None
    assert updated["data"]["changes"]["csat"]["to"]["score"] == 5
    assert not [e for e in events if e["type"] == "conversation.reopened"
                and e["data"]["conversation"]["id"] == conversation_id]

    # A second answer is a message like any other: it reopens, the score stays.
    await customer_writes(http, daemon, "1", user=user)
    _, conversation = await get_json(http, base)
    assert conversation["status"] == "open"
    assert conversation["csat"]["score"] == 5


async def test_no_survey_when_no_human_answered(
        daemon: Daemon, http: aiohttp.ClientSession, receiver: Receiver) -> None:
    message = await customer_writes(http, daemon, "주문 조회 어떻게 하나요?")
    await got(receiver, message["conversation_id"])  # the rule's answer
    status, _ = await post_json(
        http, f"{daemon.url}/v1/conversations/{message['conversation_id']}/close", {})
    assert status == 200
    # A later conversation's survey means the worker is past this close.
    other = await customer_writes(http, daemon, "교환 문의")
    await got(receiver, other["conversation_id"])
    base = f"{daemon.url}/v1/conversations/{other['conversation_id']}"
    await post_json(http, f"{base}/messages", {"text": "네", "agent": {"id": "a-1"}})
    await post_json(http, f"{base}/close", {"agent": {"id": "a-1"}})
    await got(receiver, other["conversation_id"], 3)
    assert [m["automatic"] for m in callbacks(receiver, message["conversation_id"])] == ["rule"]

"""Routing rules and the urgency signal over a table of real-looking messages."""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime
from typing import Any

import pytest

from gateway.automation.config import AutomationConfig
from gateway.automation.rules import MessageFacts, changes_for, classify, detect_language
from gateway.config import parse_config
from gateway.errors import ConfigErrors

RULES = """
[automation]
timezone = "Asia/Seoul"
language = "ko"
[automation.hours.shop]
weekdays = "09:00-18:00"
[automation.urgency]
burst_messages = 3
burst_minutes = 5
[[automation.rules]]
name = "order status"
keywords = ["주문 조회", "배송 조회", "where is my order", "tracking"]
tags = ["order-status"]
queue = "orders"
reply = "order_lookup"
[[automation.rules]]
name = "refunds"
keywords = ["환불", "refund", "반품"]
tags = ["refund"]
queue = "billing"
[[automation.rules]]
name = "order numbers"
regex = ['(?i)\\b(?:order|주문)\\s*(?:번호\\s*)?#?\\d{6,}']
tags = ["has-order-number"]
[[automation.rules]]
name = "vip"
identities = ["email:*@vip.example", "phone:+8210999*"]
priority = "high"
tags = ["vip"]
[[automation.rules]]
name = "night sms"
channels = ["sms"]
during = "outside_business_hours"
hours = "shop"
tags = ["after-hours"]
[[automation.rules]]
name = "smartstore ads"
accounts = ["navertalk:smartstore"]
context = { inflow = "ad" }
queue = "sales"
[templates.order_lookup.ko]
text = "주문 조회는 여기에서: [주문 조회](https://shop.example/orders) ({eta} 답변드립니다)"
[templates.order_lookup.en]
text = "Track your order here: https://shop.example/orders. A person will answer {eta}."
"""

WEDNESDAY_NOON = datetime(2026, 12, 2, 3, 0, tzinfo=UTC)  # 12:00 in Seoul
WEDNESDAY_NIGHT = datetime(2026, 12, 2, 14, 0, tzinfo=UTC)  # 23:00 in Seoul


def config() -> AutomationConfig:
    return parse_config(textwrap.dedent(RULES), environ={}).automation


def facts(text: str, **overrides: Any) -> MessageFacts:
    values: dict[str, Any] = {
        "channel": "email", "account": "support", "account_type": "email", "text": text,
        "subject": None, "sender": "email:kim@example.com", "sender_name": "김민지",
        "context": {}, "at": WEDNESDAY_NOON, "new_customer": False, "first_message": True,
        "recent_messages": 1}
    values.update(overrides)
    return MessageFacts(**values)


# text, overrides, expected tags, priority, queue, reply
TABLE: list[tuple[str, dict[str, Any], list[str], str | None, str | None, str | None]] = [
    ("안녕하세요, 주문 조회 어떻게 하나요?", {}, ["order-status"], None, "orders",
     "order_lookup"),
    ("Hi, where is my order? It was supposed to arrive Monday.", {}, ["order-status"], None,
     "orders", "order_lookup"),
    ("Where is my order??", {"first_message": False}, ["order-status"], None, "orders", None),
    ("사이즈가 안 맞아서 환불 받고 싶어요", {}, ["refund"], "high", "billing", None),
    ("I'd like a refund for order #1234567 please", {},
     ["refund", "has-order-number"], "high", "billing", None),
    ("주문번호 2026120412 배송이 안 와요", {}, ["has-order-number"], None, None, None),
    ("이게 말이 됩니까? 최악이네요. 당장 환불해 주세요", {}, ["refund"], "urgent", "billing",
     None),
    ("I will file a chargeback with my bank if this isn't fixed today", {}, [], "urgent",
     None, None),
    ("WHY HAS NOBODY ANSWERED MY EMAIL YET", {}, [], "high", None, None),
    ("카드사에 이의 제기하겠습니다", {}, [], "urgent", None, None),
    ("혹시 이 제품 검정색도 있나요?", {}, [], None, None, None),
    ("Do you ship to Canada?", {"sender": "email:lee@vip.example"}, ["vip"], "high", None,
     None),
    ("배송 언제 되나요", {"channel": "sms", "account_type": "twilio", "at": WEDNESDAY_NIGHT,
                      "sender": "phone:+821012345678"}, ["after-hours"], None, None, None),
    ("배송 언제 되나요", {"channel": "sms", "account_type": "twilio",
                      "sender": "phone:+821012345678"}, [], None, None, None),
    ("아직이요?", {"first_message": False, "recent_messages": 3}, [], "high", None, None),
    ("상품 문의드려요", {"channel": "navertalk", "account": "smartstore",
                    "account_type": "navertalk", "context": {"inflow": "ad"}},
     [], None, "sales", None),
    ("상품 문의드려요", {"channel": "navertalk", "account": "smartstore",
                    "account_type": "navertalk", "context": {"inflow": "button"}},
     [], None, None, None),
]


@pytest.mark.parametrize(("text", "overrides", "tags", "priority", "queue", "reply"), TABLE,
                         ids=[row[0][:24] for row in TABLE])
def test_the_rules_table(text: str, overrides: dict[str, Any], tags: list[str],
                         priority: str | None, queue: str | None, reply: str | None) -> None:
    automation = config()
    result = classify(facts(text, **overrides), automation.rules, automation.urgency)
    assert list(result.tags) == tags
    assert result.priority == priority
    assert result.queue == queue
    assert result.reply == reply


def test_changes_only_raise_priority_add_tags_and_keep_an_agents_queue() -> None:
    automation = config()
    result = classify(facts("환불해 주세요"), automation.rules, automation.urgency)
    conversation = {"tags": ["vip"], "priority": "urgent", "queue": "tier2"}
    assert changes_for(conversation, result) == {"tags": {"from": ["vip"],
                                                         "to": ["vip", "refund"]}}
    fresh = {"tags": [], "priority": "normal", "queue": None}
    assert changes_for(fresh, result) == {
        "tags": {"from": [], "to": ["refund"]}, "priority": {"from": "normal", "to": "high"},
        "queue": {"from": None, "to": "billing"}}


@pytest.mark.parametrize(("text", "language"), [
    ("배송 언제 되나요?", "ko"), ("Where is my order?", "en"), ("注文はいつ届きますか", "ja"),
    ("order #123 환불 요청합니다", "ko"), ("👍", "ko"),
])
def test_the_customers_language_from_their_script(text: str, language: str) -> None:
    assert detect_language(text, "ko") == language


@pytest.mark.parametrize(("table", "key", "fragment"), [
    ('[[automation.rules]]\nname = "x"\nregex = ["(unclosed"]\ntags = ["a"]',
     "automation.rules[0].regex[0]", "regular expression"),
    ('[[automation.rules]]\nname = "x"\npriority = "asap"', "automation.rules[0].priority",
     "must be one of"),
    ('[[automation.rules]]\nname = "x"\nreply = "nope"', "automation.rules[0].reply",
     "no template 'nope'"),
    ('[[automation.rules]]\nname = "x"\nkeywords = ["a"]', "automation.rules[0].tags",
     "something to do"),
    ('[[automation.accounts]]\naccount = "*"\nacknowledge = true',
     "automation.accounts[0].hours", "name the business hours"),
    ('[[automation.accounts]]\naccount = "*"\nhours = "shop"\nacknowledgement = "t"\n'
     '[automation.hours.shop]\nweekdays = "09:00-18:00"\n[templates.t]\ntext = "{order}"',
     "automation.accounts[0].acknowledgement", "{order}"),
    ('[automation.hours.shop]\nweekdays = "9 to 5"', "automation.hours.shop", "interval"),
    ('[automation]\ntimezon = "UTC"', "automation.timezon", "unknown key"),
])
def test_config_errors_name_the_key(table: str, key: str, fragment: str) -> None:
    with pytest.raises(ConfigErrors) as caught:
        parse_config(table, environ={})
    errors = caught.value.errors
    assert any(e.key is not None and e.key.startswith(key) and fragment in str(e)
               for e in errors), [f"{e.key}: {e}" for e in errors]

"""Canned replies rendered per channel and refused clearly; CSAT answers in each form."""

from __future__ import annotations

import textwrap

import pytest

from gateway.automation.csat import parse_score
from gateway.automation.templates import Template, TemplateError, render
from gateway.config import parse_config

TEMPLATES = """
[templates.shipping_delay]
description = "the rush: orders ship later than usual"
[templates.shipping_delay.en]
subject = "Your order {order} ships in {days} days"
text = \"\"\"Hi {name}, sorry for the wait!

Your order **{order}** ships in {days} days. [Track it here](https://shop.example/t/{order}).\"\"\"
[templates.shipping_delay.ko]
text = "{name}님, 기다리게 해서 죄송합니다. 주문 **{order}**은 {days}일 안에 발송됩니다. [배송 조회](https://shop.example/t/{order})"
[templates.shipping_delay.channels.sms.ko]
text = "[샵] {order} 주문 {days}일 내 발송 예정"
[templates.shipping_delay.approved]
meta = "shipping_delay_v2"
twilio = "HX0123456789abcdef0123456789abcdef"
[templates.braces]
text = "Use code {{SAVE10}} at checkout, {name}."
[templates.long]
text = "{body}"
"""


def templates() -> dict[str, Template]:
    return dict(parse_config(textwrap.dedent(TEMPLATES), environ={}).automation.templates)


def test_email_gets_an_html_part_with_escaped_variables_and_a_subject() -> None:
    template = templates()["shipping_delay"]
    out = render(template, {"name": "<Kim>", "order": "A-1", "days": 3}, channel="email",
                 language="en")
    assert out.subject == "Your order A-1 ships in 3 days"
    assert out.text == ("Hi <Kim>, sorry for the wait!\n\nYour order A-1 ships in 3 days. "
                        "Track it here: https://shop.example/t/A-1.")
    assert out.html is not None
    assert "&lt;Kim&gt;" in out.html and "<Kim>" not in out.html
    assert '<strong>A-1</strong>' in out.html
    assert '<a href="https://shop.example/t/A-1">Track it here</a>' in out.html
    assert out.html.count("<p>") == 2


def test_plain_channels_get_text_links_spelled_out_and_their_own_variant() -> None:
    template = templates()["shipping_delay"]
    variables = {"name": "김민지", "order": "A-1", "days": 2}
    chat = render(template, variables, channel="telegram", language="ko")
    assert chat.html is None and chat.subject is None
    assert chat.text == ("김민지님, 기다리게 해서 죄송합니다. 주문 A-1은 2일 안에 발송됩니다. "
                         "배송 조회: https://shop.example/t/A-1")
    sms = render(template, variables, channel="sms", language="ko")
    assert sms.text == "[샵] A-1 주문 2일 내 발송 예정"
    # A language the template lacks falls back to the account's, then the first.
    assert render(template, variables, channel="sms", language="ja",
                  default_language="ko").language == "ko"
    assert render(template, variables, channel="webchat", language="ja").language == "en"


def test_missing_variables_and_over_long_texts_are_refused_naming_them() -> None:
    all_templates = templates()
    with pytest.raises(TemplateError, match="needs the variable 'order'") as caught:
        render(all_templates["shipping_delay"], {"name": "Kim"}, channel="email",
               language="en")
    assert caught.value.field == "order"
    with pytest.raises(TemplateError, match="1700 characters; sms takes 1600"):
        render(all_templates["long"], {"body": "x" * 1700}, channel="sms")
    assert len(render(all_templates["long"], {"body": "x" * 1700}, channel="email").text) == 1700
    with pytest.raises(TemplateError, match="empty"):
        render(all_templates["long"], {"body": "  "}, channel="sms")
    with pytest.raises(TemplateError, match="strings or numbers"):
        render(all_templates["long"], {"body": {"nested": 1}}, channel="sms")


def test_the_providers_approved_template_goes_with_the_account_type_only() -> None:
    # WhatsApp outside its 24-hour window takes only a provider-approved template: the canned
    # reply names its stand-in per account type, and no other channel is handed one (an SMS
    # through Twilio must not go out as a Content API template).
    template = templates()["shipping_delay"]
    variables = {"name": "Kim", "order": "A-1", "days": 2}
    meta = render(template, variables, channel="whatsapp", language="en", account_type="meta")
    assert meta.approved == "shipping_delay_v2" and "A-1" in meta.text
    twilio = render(template, variables, channel="whatsapp", account_type="twilio")
    assert twilio.approved == "HX0123456789abcdef0123456789abcdef"
    assert render(template, variables, channel="telegram", account_type="telegram"
                  ).approved is None
    assert render(templates()["braces"], {"name": "Kim"}, channel="whatsapp",
                  account_type="meta").approved is None
    assert template.to_json()["approved"] == {"meta": "shipping_delay_v2",
                                              "twilio": "HX0123456789abcdef0123456789abcdef"}


def test_literal_braces_and_the_listing() -> None:
    all_templates = templates()
    assert render(all_templates["braces"], {"name": "Lee"}, channel="sms").text == (
        "Use code {SAVE10} at checkout, Lee.")
    listed = all_templates["shipping_delay"].to_json()
    assert listed["languages"] == ["en", "ko"]
    assert listed["variables"] == ["days", "name", "order"]
    assert listed["channels"] == ["sms"]
    assert "acknowledgement" in all_templates and "survey" in all_templates  # built in


@pytest.mark.parametrize(("answer", "score"), [
    ("5", 5), ("1", 1), ("4점", 4), ("5/5", 5), ("3 stars", 3), ("\uff12", 2), (" 4. ", 4),
    ("⭐⭐⭐⭐", 4), ("★★", 2), ("😍", 5), ("😡", 1), ("👍", 4), ("👎", 1), ("😐", 3),
    ("❤️", 5), ("👍👍", 4),
    ("최고", 5), ("최고예요!", 5), ("매우 만족", 5), ("만족", 4), ("좋아요", 4), ("보통", 3),
    ("별로", 2), ("불만족", 2), ("최악", 1), ("매우 불만족", 1),
    ("Excellent!", 5), ("great", 5), ("good", 4), ("OK", 3), ("bad", 2), ("terrible", 1),
])
def test_csat_answers_in_each_form(answer: str, score: int) -> None:
    assert parse_score(answer) == score


@pytest.mark.parametrize("message", [
    "6", "0", "hello", "12", "", "I gave 5 stars but my order is still missing!",
    "환불은 언제 되나요?", "5 items are missing from my order", "😍😡",
])
def test_a_message_is_not_an_answer(message: str) -> None:
    assert parse_score(message) is None


def test_a_top_level_text_is_the_default_language() -> None:
    config = parse_config('[automation]\nlanguage = "ko"\n'
                          '[templates.hi]\ntext = "안녕하세요 {name}님"\n'
                          '[templates.hi.en]\ntext = "Hello {name}"\n', environ={}).automation
    template = config.templates["hi"]
    assert template.languages == ["ko", "en"]
    assert render(template, {"name": "Kim"}, channel="sms", language="en").text == "Hello Kim"
    assert render(template, {"name": "김"}, channel="sms", language="ja",
                  default_language="ko").text == "안녕하세요 김님"

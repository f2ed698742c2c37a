"""The pure half of web chat: frames → values and messages (normalizer/webchat.py), tokens
and rate limits (adapters/webchat)."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import pytest

from adapters.webchat import tokens
from adapters.webchat.limits import RateLimiter, limiter, take_all
from normalizer.errors import InvalidInput, MalformedInput
from normalizer.model import InboundMessage, Party
from normalizer.webchat import (
    Hello,
    frame_type,
    parse_hello,
    parse_receipt_ids,
    parse_visitor_message,
)

VISITOR = "vis_" + "A" * 22
HELLO = Hello(None, "Kim", "kim@example.com", "https://shop.example/p/1", None)


def message(frame: dict[str, object], hello: Hello = HELLO) -> InboundMessage:
    return parse_visitor_message(frame, account="shop", visitor=VISITOR, hello=hello,
                                 max_text_chars=20, max_file_bytes=10)


NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(("waited_ms", "sent_at"), [
    (600_000, NOW - timedelta(minutes=10)),  # written offline ten minutes ago
    (7 * 24 * 3600 * 1000, NOW - timedelta(days=7)),  # as long as the widget keeps it
    (None, None), (0, None),  # sent at once: the time it is received
    (-5, None), (7 * 24 * 3600 * 1000 + 1, None), ("600000", None), (1.5, None),
    (True, None),  # nonsense from a buggy widget is ignored, never refused
])
def test_a_message_that_waited_offline_is_dated_when_it_was_written(
        waited_ms: object, sent_at: datetime | None) -> None:
    frame = {"type": "message", "id": "abc-1", "text": "hi", "waited_ms": waited_ms}
    inbound = parse_visitor_message(frame, account="shop", visitor=VISITOR, hello=HELLO,
                                    max_text_chars=20, max_file_bytes=10, now=NOW)
    assert inbound.sent_at == sent_at and inbound.text == "hi"


def test_a_message_is_the_visitors_with_the_forms_email_linked() -> None:
    inbound = message({"type": "message", "id": "abc-1", "text": "  hello\x00 there  "})
    assert inbound.channel == "webchat" and inbound.account == "shop"
    assert inbound.provider_message_id == f"{VISITOR}:abc-1"
    assert inbound.sender == Party("webchat", VISITOR, "Kim")
    assert inbound.text == "hello there"
    assert inbound.linked_identities == [Party("email", "kim@example.com", "Kim")]
    assert inbound.context == {"page_url": "https://shop.example/p/1"}


@pytest.mark.parametrize(("frame", "error"), [
    ({"id": "a", "text": "x" * 21}, "longer than 20"),
    ({"id": "a", "text": ""}, "needs text or a file"),
    ({"id": "a", "text": 5}, "text must be a string"),
    ({"id": "a b", "text": "hi"}, "id must be"),
    ({"text": "hi"}, "id must be"),
    ({"id": "a", "text": "hi", "attachments": "x"}, "attachments must be a list"),
    ({"id": "a", "attachments": [{"filename": "f.bin", "content_base64":
                                  base64.b64encode(b"x" * 11).decode()}]}, "larger than 10"),
    ({"id": "a", "attachments": [{"filename": n, "content_base64":
                                  base64.b64encode(b"x" * 6).decode()} for n in "ab"]},
     "a, b: larger than 10 bytes in all"),
    ({"id": "a", "attachments": [{"filename": "f.bin", "content_base64": "%%%"}]},
     "not base64"),
])
def test_bad_messages_are_refused_with_a_reason(frame: dict[str, object], error: str) -> None:
    with pytest.raises(InvalidInput, match=error):
        message({"type": "message", **frame})


def test_a_file_alone_is_a_message() -> None:
    inbound = message({"type": "message", "id": "f", "attachments": [
        {"filename": "a.txt", "content_type": "text/plain",
         "content_base64": base64.b64encode(b"hi").decode()}]},
        Hello(None, None, None, None, None))
    assert inbound.text == "" and inbound.attachments[0].data == b"hi"
    assert inbound.linked_identities == [] and inbound.context is None


def test_hello_keeps_only_what_it_can_use() -> None:
    hello = parse_hello({"type": "hello", "token": 7, "name": " Kim\n  Lee ",
                         "email": "not an address", "page_url": "javascript:alert(1)",
                         "referrer": "https://google.example/?q=shoes",
                         "language": "ko-KR"})
    assert hello == Hello(None, "Kim Lee", None, None, "https://google.example/?q=shoes",
                          "ko-KR")
    for tag in ("ja", "zh-Hant-TW", "en-US"):
        assert parse_hello({"type": "hello", "language": tag}).language == tag
    for junk in ("<b>ko</b>", "k", "ko_KR;q=0.9", "x" * 40, 7):
        assert parse_hello({"type": "hello", "language": junk}).language is None
    assert parse_hello({"type": "hello", "name": "x" * 500}).name == "x" * 100


def test_frames_and_receipts_are_checked() -> None:
    with pytest.raises(MalformedInput):
        frame_type([1, 2])
    with pytest.raises(MalformedInput):
        frame_type({"kind": "message"})
    assert frame_type({"type": "ack"}) == "ack"
    assert parse_receipt_ids({"ids": ["msg_01ABC", "cnv_01ABC", 5, "msg_<b>"]}) == ["msg_01ABC"]
    with pytest.raises(InvalidInput):
        parse_receipt_ids({"ids": ["msg_1"] * 501})


def test_tokens_verify_only_for_their_account_and_secret() -> None:
    visitor = tokens.new_visitor_id()
    token = tokens.issue(b"s" * 32, "shop", visitor)
    assert tokens.verify(b"s" * 32, "shop", token) == visitor
    assert tokens.verify(b"s" * 32, "other", token) is None
    assert tokens.verify(b"t" * 32, "shop", token) is None
    assert tokens.verify(b"s" * 32, "shop", token[:-1] + ("A" if token[-1] != "A" else "B")) \
        is None
    assert tokens.verify(b"s" * 32, "shop", None) is None
    assert tokens.verify(b"s" * 32, "shop", "vis_short.sig") is None


def test_the_rate_limiter_allows_a_burst_then_says_how_long_to_wait() -> None:
    bucket = RateLimiter(per_minute=60, burst=3)
    assert [bucket.take("v", now=0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take("v", now=0.0) == pytest.approx(1.0)
    assert bucket.take("v", now=1.0) == 0.0  # one a second comes back
    assert bucket.take("other", now=1.0) == 0.0  # per key
    assert limiter(20).burst == 5 and limiter(600).burst == 150


def test_a_token_given_back_can_be_taken_again_up_to_the_burst() -> None:
    bucket = RateLimiter(per_minute=60, burst=2)
    assert [bucket.take("v", now=0.0) for _ in range(2)] == [0.0, 0.0]
    bucket.give_back("v")  # the second was a duplicate: it does not count
    assert bucket.take("v", now=0.0) == 0.0
    assert bucket.take("v", now=0.0) > 0
    for _ in range(5):
        bucket.give_back("v")
    assert [bucket.take("v", now=0.0) == 0.0 for _ in range(3)] == [True, True, False]
    bucket.give_back("unknown")  # nothing taken: nothing to give back
    assert "unknown" not in bucket.buckets


def test_a_message_one_limit_refuses_charges_neither_limit() -> None:
    """The address's limit refuses while the visitor's has room: the visitor's token stays,
    and once the retry goes through the visitor has spent one token per stored message."""
    visitor, address = RateLimiter(per_minute=60, burst=5), RateLimiter(per_minute=60, burst=2)
    charges = ((visitor, "v"), (address, "127.0.0.1"))
    assert [take_all(charges, now=0.0) for _ in range(2)] == [0.0, 0.0]  # two stored
    refusals = [take_all(charges, now=0.0) for _ in range(4)]  # the address is spent
    assert all(wait == pytest.approx(1.0) for wait in refusals)
    assert visitor.buckets["v"].tokens == 3.0  # the refusals cost the visitor nothing
    assert take_all(charges, now=1.0) == 0.0  # the retry, once the address refilled
    assert visitor.wait("v", now=1.0) == 0.0
    assert visitor.buckets["v"].tokens == pytest.approx(3.0)  # 5 - 3 stored + 1 s refill
    # The other way round: the visitor's limit refuses, the address's keeps its tokens.
    visitor.buckets["v"].tokens, address.buckets["127.0.0.1"].tokens = 0.0, 2.0
    assert take_all(charges, now=1.0) == pytest.approx(1.0)
    assert address.buckets["127.0.0.1"].tokens == 2.0

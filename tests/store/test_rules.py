"""The store's rules as table tests, without a database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from gateway.store.base import Route
from gateway.store.rules import (
    LastInbound,
    ReplyRoute,
    RouteRefused,
    choose_recipient,
    choose_reply_route,
    dedupe_key,
    joins_latest,
    may_join,
    receipt_moves,
    reopen_window_start,
    reply_token_conversation_id,
    threading_reference,
)
from normalizer.model import Party

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


def test_the_dedupe_key_separates_accounts_of_one_channel() -> None:
    assert dedupe_key("sms", "us", "SM1") == dedupe_key("sms", "us", "SM1")
    assert dedupe_key("sms", "us", "SM1") != dedupe_key("sms", "kr", "SM1")
    assert dedupe_key("sms", "us", "SM1") != dedupe_key("whatsapp", "us", "SM1")


@pytest.mark.parametrize(("refs", "stored", "expected"), [
    ([], {}, None),
    (["a", "b"], {}, None),
    (["a", "b"], {"b": "msg_b"}, ("b", "msg_b")),
    (["a", "b"], {"a": "msg_a", "b": "msg_b"}, ("a", "msg_a")),  # In-Reply-To first
    (["unknown", "b", "a"], {"a": "msg_a", "b": "msg_b"}, ("b", "msg_b")),
])
def test_the_first_stored_reference_threads_a_message(
        refs: list[str], stored: dict[str, str], expected: tuple[str, str] | None) -> None:
    asked: list[str] = []

    def find(ref: str) -> str | None:
        asked.append(ref)
        return stored.get(ref)

    assert threading_reference(refs, find) == expected
    if expected is not None:  # nothing after the one found is looked up
        assert asked == refs[:refs.index(expected[0]) + 1]


def test_a_reply_token_names_its_conversation() -> None:
    assert reply_token_conversation_id("01jd0c7ym2t0v2m1bx5x0hq3gk") == (
        "cnv_01JD0C7YM2T0V2M1BX5X0HQ3GK")


GROUP = ("bot", "g-1")


@pytest.mark.parametrize(("conversation_customer", "sender", "conversation_group",
                          "message_group", "joins"), [
    ("cus_1", "cus_1", None, None, True),
    ("cus_2", "cus_1", None, None, False),  # a forwarded mail must not leak another's thread
    # A group's conversation belongs to the group, whoever opened it.
    ("cus_2", "cus_1", GROUP, GROUP, True),  # another poster answers in the group
    ("cus_1", "cus_1", GROUP, GROUP, True),
    ("cus_1", "cus_1", GROUP, None, False),  # a 1:1 message never joins a group, even its own
    ("cus_1", "cus_1", None, GROUP, False),  # a group post never joins a 1:1 conversation
    ("cus_1", "cus_1", GROUP, ("bot", "g-2"), False),  # nor another group
    ("cus_1", "cus_1", GROUP, ("other-bot", "g-1"), False),  # nor the group of another account
])
def test_a_thread_joins_only_its_own_customers_or_its_own_groups_conversation(
        conversation_customer: str, sender: str, conversation_group: tuple[str, str] | None,
        message_group: tuple[str, str] | None, joins: bool) -> None:
    assert may_join(conversation_customer, sender, conversation_group, message_group) is joins


@pytest.mark.parametrize(("status", "closed_days_ago", "window_days", "joins"), [
    ("open", None, 7, True),  # open: joined however quiet it has been
    ("closed", 0, 7, True),
    ("closed", 6.9, 7, True),
    ("closed", 7, 7, True),  # exactly at the window's edge still reopens
    ("closed", 7.1, 7, False),
    ("closed", 30, 7, False),
    ("closed", 0.5, 0, False),  # a window of 0: a closed conversation never reopens
    ("closed", 10, 30, True),
    ("closed", None, 7, False),  # closed without a time: treated as long closed
])
def test_the_reopen_window_counts_from_when_the_conversation_was_closed(
        status: str, closed_days_ago: float | None, window_days: float, joins: bool) -> None:
    closed_at = None if closed_days_ago is None else NOW - timedelta(days=closed_days_ago)
    assert joins_latest(status, closed_at, reopen_window_start(NOW, window_days)) is joins


SMS_US = Route("sms", "us-sms", Party("phone", "+15550100"), ("phone",))
SMS_KR = Route("sms", "kr-sms", Party("phone", "+82200000"), ("phone",))
EMAIL = Route("email", "support", Party("email", "support@shop.example"), ("email",))
WHATSAPP = Route("whatsapp", "wa", Party("phone", "+15550199"), ("phone", "whatsapp"))
# A channel whose adapter declares a kind no other channel has (tests/adapters' pigeon post).
PIGEON = Route("pigeon", "loft", Party("pigeon", "loft-1"), ("pigeon",))
# The kinds come from the route, not from the channel's name: an adapter that reaches no
# kind on a channel gets no recipient there.
SILENT = Route("sms", "silent", Party("phone", "+15550111"), ())
ROUTES = [SMS_US, SMS_KR, EMAIL]
FROM_KIM = {"kind": "phone", "address": "+821012345678", "name": "Kim"}
LAST_ON_KR = LastInbound("msg_9", "sms", "kr-sms", FROM_KIM)


@pytest.mark.parametrize(("channel", "account", "last", "conversation", "expected"), [
    # A reply without a channel answers the latest inbound message, on its account.
    (None, None, LAST_ON_KR, ("sms", "us-sms"), ReplyRoute(SMS_KR, FROM_KIM, "msg_9")),
    # No inbound message yet (a conversation the shop started): the conversation's own.
    (None, None, None, ("email", "support"), ReplyRoute(EMAIL)),
    # Another channel named: its only account; the recipient comes from the identities.
    ("email", None, LAST_ON_KR, ("sms", "kr-sms"), ReplyRoute(EMAIL)),
    # A channel with several accounts and one named.
    ("sms", "us-sms", None, None, ReplyRoute(SMS_US)),
    # Several accounts, none named, but the conversation's latest inbound came on one.
    ("sms", None, LAST_ON_KR, ("sms", "kr-sms"), ReplyRoute(SMS_KR)),
])
def test_a_reply_is_routed(channel: str | None, account: str | None, last: LastInbound | None,
                           conversation: tuple[str, str] | None, expected: ReplyRoute) -> None:
    assert choose_reply_route(channel=channel, account=account, last_inbound=last,
                              conversation=conversation, routes=ROUTES) == expected


@pytest.mark.parametrize(("channel", "account", "conversation", "accounts", "says"), [
    # A proactive message on a channel with several accounts must name one.
    ("sms", None, None, ("kr-sms", "us-sms"), "several accounts (kr-sms, us-sms)"),
    ("sms", "eu-sms", None, ("kr-sms", "us-sms"), "as account 'eu-sms'"),
    ("telegram", None, None, (), "no configured account sends on channel 'telegram'"),
    (None, None, None, (), "name the channel"),
    # The conversation's account is gone from the configuration.
    (None, None, ("email", "old-support"), ("support",), "as account 'old-support'"),
])
def test_a_reply_that_cannot_be_routed_is_refused_with_the_choices(
        channel: str | None, account: str | None, conversation: tuple[str, str] | None,
        accounts: tuple[str, ...], says: str) -> None:
    refused = choose_reply_route(channel=channel, account=account, last_inbound=None,
                                 conversation=conversation, routes=ROUTES)
    assert isinstance(refused, RouteRefused)
    assert refused.accounts == accounts
    assert says in refused.reason


@pytest.mark.parametrize(("route", "identities", "expected"), [
    (SMS_US, [("email", "k@x.com"), ("phone", "+8210"), ("phone", "+8211")],
     ("phone", "+8210")),
    (WHATSAPP, [("whatsapp", "wa-1"), ("phone", "+8210")], ("whatsapp", "wa-1")),
    (WHATSAPP, [("email", "k@x.com"), ("phone", "+8210")], ("phone", "+8210")),
    (EMAIL, [("phone", "+8210")], None),
    (PIGEON, [("phone", "+8210"), ("pigeon", "coop-7")], ("pigeon", "coop-7")),
    (PIGEON, [("phone", "+8210")], None),
    (SILENT, [("phone", "+8210")], None),
])
def test_the_recipient_is_the_newest_identity_the_routes_channel_reaches(
        route: Route, identities: list[tuple[str, str]],
        expected: tuple[str, str] | None) -> None:
    chosen = choose_recipient(route, identities)
    assert ((chosen["kind"], chosen["address"]) if chosen else None) == expected


@pytest.mark.parametrize(("current", "status", "moves"), [
    ("sent", "delivered", True), ("delivered", "read", True), ("read", "delivered", False),
    ("delivered", "sent", False), ("sent", "sent", False), ("queued", "sent", True),
    ("sent", "failed", True), ("queued", "failed", True), ("delivered", "failed", False),
    ("read", "failed", False), ("failed", "delivered", True), ("failed", "read", True),
    ("failed", "sent", False), ("failed", "failed", False),
])
def test_receipts_never_move_a_status_backwards(current: str, status: str,
                                                moves: bool) -> None:
    assert receipt_moves(current, status) is moves

"""Store operations for what providers report later: changes, receipts, echoes, groups."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.errors import Conflict, NotFound
from gateway.ids import utcnow
from gateway.store.base import OutboundRequest, Route
from gateway.store.sqlite import SQLiteStore
from normalizer.model import Group, InboundMessage, MessageChange, Party, Reaction
from normalizer.timestamps import parse_iso
from tests.postgres.fixtures import new_store, store_config

ACCOUNT = Party("external", "omnirelay:a")


@pytest.fixture
async def store(tmp_path: Path, backend: str,
                request: pytest.FixtureRequest) -> AsyncIterator[SQLiteStore]:
    """A fresh store of each backend (SQLite in a temp dir, a new PostgreSQL database)."""
    config = store_config(backend, tmp_path, request, synchronous="NORMAL")
    s = new_store(config)
    await s.open()
    yield s
    await s.close()


def inbound(provider_id: str, sender: str = "u1", *, text: str = "hi", name: str | None = None,
            linked: list[Party] | None = None, group: Group | None = None,
            refs: list[str] | None = None) -> InboundMessage:
    """An API-channel message from an external id."""
    return InboundMessage(channel="api", account="a", provider_message_id=provider_id,
                          sender=Party("external", sender, name), text=text,
                          linked_identities=linked or [], group=group, reply_refs=refs or [])


def echo(provider_id: str, to: str = "u1", *, text: str = "typed elsewhere",
         window: float | None = None) -> InboundMessage:
    """A message the account sent, seen on the provider's side."""
    return InboundMessage(channel="api", account="a", provider_message_id=provider_id,
                          sender=ACCOUNT, recipient=Party("external", to), text=text,
                          direction="outbound", match_window=window)


async def events(store: SQLiteStore, after: int = 0) -> list[dict[str, Any]]:
    """Every event after ``after``."""
    page = await store.events_after(after, 1000)
    return [orjson.loads(body) for body in page.bodies]


async def reply(store: SQLiteStore, conversation_id: str, text: str = "our reply",
                provider_id: str | None = "p-1") -> dict[str, Any]:
    """Queue an agent's reply and mark it sent with ``provider_id``."""
    _, message = await store.enqueue_outbound(
        conversation_id=conversation_id, customer_id=None,
        request=OutboundRequest(text=text, agent={"id": "a-1", "name": "Agent"}),
        routes=[Route("api", "a", ACCOUNT, ("external",))], idempotency=None)
    await store.claim_outbox(10)
    await store.outbox_sent(message["id"], provider_id)
    return await store.get_message(message["id"])


# ---------------------------------------------------------------- message changes


async def test_an_edit_sets_edited_at_and_the_new_text_once(store: SQLiteStore) -> None:
    first = (await store.ingest(inbound("m1", text="helo"), [])).message
    head = await store.head_seq()
    result = await store.change_message("api", "a", "m1", MessageChange(text="hello"))
    assert result.changed == ("text", "edited_at")
    stored = await store.get_message(first["id"])
    assert stored["text"] == "hello" and stored["edited_at"] is not None
    again = await store.change_message("api", "a", "m1", MessageChange(text="hello"))
    assert again.changed == ()
    updates = await events(store, head)
    assert [e["type"] for e in updates] == ["message.updated"]
    assert updates[0]["data"]["message"]["text"] == "hello"
    assert updates[0]["data"]["changed"] == ["text", "edited_at"]


async def test_an_edit_older_than_the_stored_one_is_stale(store: SQLiteStore) -> None:
    await store.ingest(inbound("m1", text="v1"), [])
    now = utcnow()
    await store.change_message("api", "a", "m1", MessageChange(text="v3", at=now))
    late = await store.change_message("api", "a", "m1",
                                      MessageChange(text="v2", at=now - timedelta(seconds=5)))
    assert late.changed == () and late.message["text"] == "v3"


async def test_reactions_are_the_whole_set_and_keep_their_time(store: SQLiteStore) -> None:
    await store.ingest(inbound("m1"), [])
    head = await store.head_seq()
    first = await store.change_message("api", "a", "m1", MessageChange(
        reactions=(Reaction("👍", "u-1"),)))
    at = first.message["reactions"][0]["at"]
    second = await store.change_message("api", "a", "m1", MessageChange(
        reactions=(Reaction("👍", "u-1"), Reaction("❤️", "u-2"))))
    assert second.message["reactions"] == [{"emoji": "👍", "by": "u-1", "at": at},
                                           {"emoji": "❤️", "by": "u-2",
                                            "at": second.message["reactions"][1]["at"]}]
    same = await store.change_message("api", "a", "m1", MessageChange(
        reactions=(Reaction("❤️", "u-2"), Reaction("👍", "u-1"))))
    assert same.changed == ()
    # One person's reactions (Meta, Telegram): u-1 takes theirs back.
    mine = await store.change_message("api", "a", "m1", MessageChange(reactions_of=("u-1", ())))
    assert [r["by"] for r in mine.message["reactions"]] == ["u-2"]
    assert [e["type"] for e in await events(store, head)] == ["message.updated"] * 3


async def test_a_withdrawal_marks_the_message_once(store: SQLiteStore) -> None:
    await store.ingest(inbound("m1"), [])
    head = await store.head_seq()
    assert (await store.change_message("api", "a", "m1",
                                       MessageChange(withdrawn=True))).changed == ("withdrawn",)
    assert (await store.change_message("api", "a", "m1",
                                       MessageChange(withdrawn=True))).changed == ()
    updates = await events(store, head)
    assert len(updates) == 1 and updates[0]["data"]["message"]["withdrawn"] is True


async def test_a_change_to_an_unknown_message_is_not_found(store: SQLiteStore) -> None:
    with pytest.raises(NotFound):
        await store.change_message("api", "a", "nope", MessageChange(text="x"))
    await store.ingest(inbound("m1"), [])
    with pytest.raises(NotFound):  # another account's id space
        await store.change_message("api", "b", "m1", MessageChange(text="x"))


# ---------------------------------------------------------------- receipts


async def test_a_receipt_moves_an_outbound_message_by_its_provider_id(
        store: SQLiteStore) -> None:
    conversation = (await store.ingest(inbound("m1"), [])).message["conversation_id"]
    sent = await reply(store, conversation, provider_id="p-1")
    assert sent["status"] == "sent"
    head = await store.head_seq()
    read = await store.apply_receipt("api", "a", "p-1", "read")
    assert read is not None and read.message["status"] == "read"
    late = await store.apply_receipt("api", "a", "p-1", "delivered")
    assert late is not None and late.changed == () and late.message["status"] == "read"
    assert [e["type"] for e in await events(store, head)] == ["message.status"]
    assert await store.apply_receipt("api", "a", "unknown", "read") is None
    with pytest.raises(Conflict):  # receipts are for outbound messages
        await store.apply_receipt("api", "a", "m1", "read")


async def test_a_failure_receipt_carries_the_provider_error(store: SQLiteStore) -> None:
    conversation = (await store.ingest(inbound("m1"), [])).message["conversation_id"]
    await reply(store, conversation, provider_id="p-1")
    error = {"code": "30003", "message": "Unreachable destination handset"}
    failed = await store.apply_receipt("api", "a", "p-1", "failed", error)
    assert failed is not None and failed.message["error"] == error
    delivered = await store.apply_receipt("api", "a", "p-1", "delivered")
    assert delivered is not None and delivered.message["error"] is None


# ---------------------------------------------------------------- echoes


async def test_an_echo_of_a_reply_typed_elsewhere_is_stored_as_outbound(
        store: SQLiteStore) -> None:
    first = (await store.ingest(inbound("m1"), [])).message
    head = await store.head_seq()
    result = await store.ingest(echo("e1"), [])
    assert result.created
    message = result.message
    assert message["direction"] == "outbound" and message["agent"] is None
    assert message["status"] == "sent" and message["from"]["address"] == "omnirelay:a"
    assert message["conversation_id"] == first["conversation_id"]
    assert message["customer_id"] == first["customer_id"]
    assert [e["type"] for e in await events(store, head)] == ["message.received"]
    assert not (await store.ingest(echo("e1"), [])).created  # a repeat adds nothing


async def test_an_echo_of_our_own_send_is_matched_by_provider_id(store: SQLiteStore) -> None:
    conversation = (await store.ingest(inbound("m1"), [])).message["conversation_id"]
    sent = await reply(store, conversation, provider_id="p-9")
    head = await store.head_seq()
    result = await store.ingest(echo("p-9", text="our reply"), [])
    assert not result.created and result.message["id"] == sent["id"]
    assert await events(store, head) == []


async def test_an_echo_without_ids_is_matched_by_recipient_text_and_window(
        store: SQLiteStore) -> None:
    conversation = (await store.ingest(inbound("m1"), [])).message["conversation_id"]
    sent = await reply(store, conversation, text="same words", provider_id=None)
    head = await store.head_seq()
    matched = await store.ingest(echo("talk-1", text="same words", window=60), [])
    assert not matched.created and matched.message["id"] == sent["id"]
    # A second echo of the same words is another message: the send was matched once.
    other = await store.ingest(echo("talk-2", text="same words", window=60), [])
    assert other.created and other.message["agent"] is None
    # Outside the window nothing matches.
    await reply(store, conversation, text="old words", provider_id=None)
    stale = await store.ingest(echo("talk-3", text="old words", window=0), [])
    assert stale.created
    assert [e["type"] for e in await events(store, head)].count("message.received") == 2


# ---------------------------------------------------------------- customer changes


async def test_a_new_linked_identity_and_a_new_name_emit_customer_updated(
        store: SQLiteStore) -> None:
    await store.ingest(inbound("m1", name="Kim"), [])
    head = await store.head_seq()
    await store.ingest(inbound("m2", name="Kim", linked=[Party("email", "kim@x.example")]), [])
    await store.ingest(inbound("m3", name="Kim"), [])  # nothing new: no event
    await store.ingest(inbound("m4", name="Kim Jisoo"), [])  # renamed profile
    updated = [e for e in await events(store, head) if e["type"] == "customer.updated"]
    assert len(updated) == 2
    assert ("email", "kim@x.example") in {
        (i["kind"], i["address"]) for i in updated[0]["data"]["customer"]["identities"]}
    assert updated[1]["data"]["customer"]["name"] == "Kim Jisoo"


async def test_another_identity_does_not_replace_the_name(store: SQLiteStore) -> None:
    first = (await store.ingest(inbound("m1", name="Kim",
                                        linked=[Party("email", "kim@x.example")]), [])).message
    mail = InboundMessage(channel="email", account="a", provider_message_id="mail-1",
                          sender=Party("email", "kim@x.example", "KIM (work)"), text="hi")
    await store.ingest(mail, [])
    assert (await store.get_customer(first["customer_id"]))["name"] == "Kim"


async def test_removing_an_identity_takes_the_name_it_gave(store: SQLiteStore) -> None:
    first = (await store.ingest(inbound("m1", name="Kim",
                                        linked=[Party("phone", "+821012345678")]), [])).message
    head = await store.head_seq()
    customer = await store.remove_identity("phone", "+821012345678")
    assert [i["kind"] for i in customer["identities"]] == ["external"]
    assert customer["name"] == "Kim"  # the external id gave it
    customer = await store.remove_identity("external", "u1")
    assert customer["identities"] == [] and customer["name"] is None
    assert [e["type"] for e in await events(store, head)] == ["customer.updated"] * 2
    with pytest.raises(NotFound):
        await store.remove_identity("external", "u1")
    # The identity is free again: the next message from it is a new customer.
    again = (await store.ingest(inbound("m2"), [])).message
    assert again["customer_id"] != first["customer_id"]


def profile(provider_id: str, user: str = "talk-1", nickname: str | None = "톡톡이",
            phone: str | None = "+821012345678") -> InboundMessage:
    """A TalkTalk shared profile: the nickname names, the phone is linked."""
    return InboundMessage(channel="navertalk", account="shop", provider_message_id=provider_id,
                          sender=Party("navertalk", user, nickname), text="Shared their profile",
                          linked_identities=[Party("phone", phone)] if phone else [])


async def test_taking_back_a_name_clears_it_and_unlinks_the_phone_in_one_event(
        store: SQLiteStore) -> None:
    first = (await store.ingest(profile("p1"), [])).message
    assert (await store.get_customer(first["customer_id"]))["name"] == "톡톡이"
    head = await store.head_seq()
    customer = await store.take_back("navertalk", "talk-1", name=True,
                                      identities=[("phone", "+821012345678")])
    assert customer["name"] is None
    assert [(i["kind"], i["address"]) for i in customer["identities"]] == [
        ("navertalk", "talk-1")]  # the TalkTalk user stays the customer's
    [updated] = await events(store, head)
    assert updated["type"] == "customer.updated"
    assert updated["data"]["customer"] == customer
    stored = await store.get_customer(first["customer_id"])
    assert stored["name"] is None and stored["identities"] == customer["identities"]
    # A redelivered withdrawal finds nothing left: no change, no event.
    again = await store.take_back("navertalk", "talk-1", name=True,
                                  identities=[("phone", "+821012345678")])
    assert again == customer
    assert await events(store, head) == [updated]


async def test_a_name_another_identity_gave_stays_when_one_takes_its_own_back(
        store: SQLiteStore) -> None:
    # The API channel named the customer first; TalkTalk's profile then links to them by
    # the phone, and its nickname does not replace the name.
    first = (await store.ingest(inbound("m1", name="Kim",
                                        linked=[Party("phone", "+821012345678")]), [])).message
    await store.ingest(profile("p1"), [])
    assert (await store.get_customer(first["customer_id"]))["name"] == "Kim"
    head = await store.head_seq()
    customer = await store.take_back("navertalk", "talk-1", name=True)
    assert customer["name"] == "Kim"
    assert await events(store, head) == []  # nothing moved
    # Only the name: the phone stays linked when it is not named.
    assert ("phone", "+821012345678") in {(i["kind"], i["address"])
                                          for i in customer["identities"]}


async def test_a_cleared_name_is_not_handed_to_another_identity_the_next_named_message_names(
        store: SQLiteStore) -> None:
    first = (await store.ingest(profile("p1"), [])).message
    mail = InboundMessage(channel="email", account="a", provider_message_id="mail-1",
                          sender=Party("email", "kim@x.example", "Kim (work)"), text="hi",
                          linked_identities=[Party("phone", "+821012345678")])
    assert (await store.ingest(mail, [])).message["customer_id"] == first["customer_id"]
    customer = await store.take_back("navertalk", "talk-1", name=True)
    assert customer["name"] is None  # the e-mail's display name does not take over by itself
    later = InboundMessage(channel="email", account="a", provider_message_id="mail-2",
                           sender=Party("email", "kim@x.example", "Kim (work)"), text="again")
    await store.ingest(later, [])
    assert (await store.get_customer(first["customer_id"]))["name"] == "Kim (work)"
    # A TalkTalk message without a nickname does not bring the withdrawn name back; sharing
    # the profile again would not either now, since another identity named the customer.
    talk = InboundMessage(channel="navertalk", account="shop", provider_message_id="t-1",
                          sender=Party("navertalk", "talk-1"), text="hello")
    await store.ingest(talk, [])
    assert (await store.get_customer(first["customer_id"]))["name"] == "Kim (work)"


async def test_taking_back_skips_an_identity_now_someone_elses_and_needs_a_customer(
        store: SQLiteStore) -> None:
    await store.ingest(profile("p1"), [])
    other = (await store.ingest(inbound("m1", "u9", name="Lee",
                                        linked=[Party("phone", "+821099998888")]), [])).message
    head = await store.head_seq()
    customer = await store.take_back("navertalk", "talk-1", name=False,
                                     identities=[("phone", "+821099998888")])
    assert customer["name"] == "톡톡이"
    assert await events(store, head) == []
    theirs = await store.get_customer(other["customer_id"])
    assert ("phone", "+821099998888") in {(i["kind"], i["address"])
                                          for i in theirs["identities"]}
    with pytest.raises(NotFound):
        await store.take_back("navertalk", "nobody", name=True)


async def test_a_merged_customer_loses_the_name_the_merged_away_identity_gave(
        store: SQLiteStore) -> None:
    survivor = (await store.ingest(inbound("m1", "u1"), [])).message  # no name
    merged = (await store.ingest(profile("p1"), [])).message
    await store.merge_customers(survivor["customer_id"], merged["customer_id"])
    assert (await store.get_customer(survivor["customer_id"]))["name"] == "톡톡이"
    customer = await store.take_back("navertalk", "talk-1", name=True)
    assert customer["id"] == survivor["customer_id"] and customer["name"] is None


# ---------------------------------------------------------------- groups


async def test_a_group_is_one_conversation_with_a_customer_per_poster(
        store: SQLiteStore) -> None:
    group = Group("g-1", "Order #12")
    a = (await store.ingest(inbound("m1", "alice", group=group), [])).message
    b = (await store.ingest(inbound("m2", "bob", group=group, refs=["m1"]), [])).message
    assert a["conversation_id"] == b["conversation_id"]
    assert a["customer_id"] != b["customer_id"]
    assert b["in_reply_to"] == a["id"]  # threading inside the group
    conversation = await store.get_conversation(a["conversation_id"])
    assert conversation["group"] == {"id": "g-1", "name": "Order #12"}
    # Alice's direct message is her own 1:1 conversation, not the group's.
    direct = (await store.ingest(inbound("m3", "alice"), [])).message
    assert direct["conversation_id"] != a["conversation_id"]
    assert (await store.get_conversation(direct["conversation_id"]))["group"] is None
    # A reference from a direct message into the group does not pull it in.
    direct2 = (await store.ingest(inbound("m4", "alice", refs=["m2"]), [])).message
    assert direct2["conversation_id"] == direct["conversation_id"]
    # Another group is another conversation.
    other = (await store.ingest(inbound("m5", "bob", group=Group("g-2")), [])).message
    assert other["conversation_id"] not in (a["conversation_id"], direct["conversation_id"])


async def test_a_read_watermark_reads_the_replies_sent_up_to_it(store: SQLiteStore) -> None:
    conversation = (await store.ingest(inbound("m1"), [])).message["conversation_id"]
    first = await reply(store, conversation, provider_id="p-1")
    sent_at = parse_iso(first["sent_at"])
    customer = Party("external", "u1")
    head = await store.head_seq()
    assert await store.apply_read_watermark("api", "a", customer,
                                            sent_at - timedelta(seconds=1)) == 0
    assert await store.apply_read_watermark("api", "a", customer, sent_at) == 1
    assert (await store.get_message(first["id"]))["status"] == "read"
    assert [e["type"] for e in await events(store, head)] == ["message.status"]
    assert await store.apply_read_watermark("api", "a", customer, sent_at) == 0
    assert await store.apply_read_watermark("api", "a", Party("external", "nobody"),
                                            sent_at) == 0


async def test_erasing_a_group_poster_takes_their_posts_and_leaves_the_group(
        store: SQLiteStore) -> None:
    group = Group("g-1", "Order #12")
    alice = (await store.ingest(inbound("m1", "alice", group=group), [])).message
    bob = (await store.ingest(inbound("m2", "bob", group=group), [])).message
    own = (await store.ingest(inbound("m3", "alice"), [])).message  # her 1:1 conversation
    group_id = alice["conversation_id"]

    erased = await store.erase_customer(alice["customer_id"])
    assert (erased["conversations"], erased["messages"]) == (1, 2)
    for gone in (alice, own):
        with pytest.raises(NotFound):
            await store.get_message(gone["id"])
    assert (await store.get_message(bob["id"]))["text"] == "hi"  # another poster's stays
    conversation = await store.get_conversation(group_id)
    assert conversation["customer_id"] == bob["customer_id"]  # the group passes on
    assert [m["id"] for m in await store.list_messages(group_id, None, 10)] == [bob["id"]]
    # Nothing of hers is left in the feed (her address, her messages).
    feed = b"".join(orjson.dumps(e) for e in await events(store))
    assert b'"alice"' not in feed and alice["id"].encode() not in feed

    await store.erase_customer(bob["customer_id"])  # the last poster: the group goes
    with pytest.raises(NotFound):
        await store.get_conversation(group_id)


async def test_merging_a_group_opener_moves_only_their_own_posts(store: SQLiteStore) -> None:
    group = Group("g-1")
    alice = (await store.ingest(inbound("m1", "alice", group=group), [])).message
    bob = (await store.ingest(inbound("m2", "bob", group=group), [])).message
    carol = (await store.ingest(inbound("m3", "carol", group=group), [])).message
    await store.merge_customers(carol["customer_id"], alice["customer_id"])
    assert (await store.get_message(alice["id"]))["customer_id"] == carol["customer_id"]
    assert (await store.get_message(bob["id"]))["customer_id"] == bob["customer_id"]

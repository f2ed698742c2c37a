"""normalizer/meta.py on its own (pure): the shapes Meta documents, and the odd ones."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from gateway.media import MediaSource
from normalizer.errors import MalformedInput
from normalizer.meta import (
    MetaAccount,
    MetaChange,
    MetaReadWatermark,
    MetaReceipt,
    MetaSkipped,
    parse_meta_webhook,
)
from normalizer.model import InboundMessage

ACCOUNT = MetaAccount("shop", page_id="1", instagram_account_id="2",
                      whatsapp_phone_number_id="3", graph_url="https://graph.example/v21.0",
                      cdn_source="meta:shop", graph_source="meta:shop/whatsapp")


def page(*events: dict[str, object], object_: str = "page", entry: str = "1") -> object:
    return {"object": object_, "entry": [{"id": entry, "time": 1, "messaging": list(events)}]}


def whatsapp(message: dict[str, object], contacts: list[object] | None = None) -> object:
    value: dict[str, object] = {"messaging_product": "whatsapp", "metadata": {
        "display_phone_number": "15550783881", "phone_number_id": "3"}, "messages": [message]}
    if contacts is not None:
        value["contacts"] = contacts
    return {"object": "whatsapp_business_account",
            "entry": [{"id": "9", "changes": [{"field": "messages", "value": value}]}]}


def one(body: object) -> object:
    (event,) = parse_meta_webhook(body, ACCOUNT)
    return event


@pytest.mark.parametrize("body", [None, [], {"object": "page"}, {"entry": []},
                                  {"object": 1, "entry": []}])
def test_anything_but_a_webhook_is_malformed(body: object) -> None:
    with pytest.raises(MalformedInput):
        parse_meta_webhook(body, ACCOUNT)


def test_a_messenger_text_with_its_time_and_parties() -> None:
    event = one(page({"sender": {"id": "u1"}, "recipient": {"id": "1"},
                      "timestamp": 1700000000000, "message": {"mid": "m_1", "text": "hi"}}))
    assert isinstance(event, InboundMessage)
    assert (event.channel, event.provider_message_id, event.text) == ("messenger", "m_1", "hi")
    assert (event.sender.kind, event.sender.address) == ("messenger", "u1")
    assert event.sent_at == datetime.fromtimestamp(1700000000, tz=UTC)
    assert event.raw and b'"m_1"' in event.raw


def test_attachments_become_remote_files_on_the_cdn_source() -> None:
    event = one(page({"sender": {"id": "u1"}, "recipient": {"id": "1"}, "timestamp": 1,
                      "message": {"mid": "m_2", "attachments": [
                          {"type": "image", "payload": {"url": "https://x.fbcdn.net/a.jpg"}},
                          {"type": "file", "payload": {"url": "https://cdn.fbsbx.com/f.pdf"}},
                          {"type": "location", "title": "Shop", "payload": {
                              "coordinates": {"lat": 1.5, "long": 2.5}}}]}}))
    assert isinstance(event, InboundMessage)
    assert [(r.url, r.source) for r in event.remote_attachments] == [
        ("https://x.fbcdn.net/a.jpg", "meta:shop"), ("https://cdn.fbsbx.com/f.pdf", "meta:shop")]
    assert event.content == {"type": "location", "latitude": 1.5, "longitude": 2.5,
                             "name": "Shop", "address": None}
    assert "Shop" in event.text and "1.5, 2.5" in event.text


def test_a_postback_without_mid_dedupes_by_sender_and_time() -> None:
    body = page({"sender": {"id": "u1"}, "recipient": {"id": "1"}, "timestamp": 1700000000123,
                 "postback": {"title": "Get Started", "payload": "START"}})
    first, again = one(body), one(body)
    assert isinstance(first, InboundMessage) and isinstance(again, InboundMessage)
    assert first.provider_message_id == again.provider_message_id == "postback:u1:1700000000123"
    assert first.text == "Get Started" and first.content == {"type": "postback",
                                                             "payload": "START"}


def test_an_echo_is_outbound_from_the_page_to_the_customer() -> None:
    event = one(page({"sender": {"id": "1"}, "recipient": {"id": "u1"}, "timestamp": 1,
                      "message": {"mid": "m_3", "is_echo": True, "text": "typed by staff"}}))
    assert isinstance(event, InboundMessage) and event.direction == "outbound"
    assert event.sender.address == "1" and event.recipient is not None
    assert event.recipient.address == "u1"


def test_receipts_one_per_named_message_and_watermarks() -> None:
    events = parse_meta_webhook(page(
        {"sender": {"id": "u1"}, "recipient": {"id": "1"}, "timestamp": 5,
         "delivery": {"mids": ["m_a", "m_b"], "watermark": 5}},
        {"sender": {"id": "u1"}, "recipient": {"id": "1"}, "timestamp": 6,
         "delivery": {"watermark": 6}},
        {"sender": {"id": "u1"}, "recipient": {"id": "1"}, "timestamp": 7,
         "read": {"watermark": 7000}}), ACCOUNT)
    assert [(e.provider_message_id, e.status) for e in events[:2]
            if isinstance(e, MetaReceipt)] == [("m_a", "delivered"), ("m_b", "delivered")]
    assert isinstance(events[2], MetaSkipped)
    assert isinstance(events[3], MetaReadWatermark)
    assert events[3].watermark == datetime.fromtimestamp(7, tz=UTC)
    instagram = one(page({"sender": {"id": "u1"}, "recipient": {"id": "2"}, "timestamp": 1,
                          "read": {"mid": "ig_1"}}, object_="instagram", entry="2"))
    assert isinstance(instagram, MetaReceipt) and instagram.status == "read"


def test_unhandled_events_and_other_accounts_are_skipped_not_errors() -> None:
    events = parse_meta_webhook({"object": "page", "entry": [
        {"id": "1", "messaging": [{"sender": {"id": "u1"}, "recipient": {"id": "1"},
                                   "timestamp": 1, "optin": {"ref": "x"}}, "junk"]},
        {"id": "77", "messaging": []}, "junk", {"id": "1", "standby": []}]}, ACCOUNT)
    assert all(isinstance(e, MetaSkipped) for e in events) and len(events) == 5
    assert isinstance(one({"object": "permissions", "entry": [{"id": "1"}]}), MetaSkipped)


def test_whatsapp_reaction_removal_and_unknown_types() -> None:
    removal = one(whatsapp({"from": "15551234567", "id": "wamid.1", "timestamp": "1",
                            "type": "reaction", "reaction": {"message_id": "wamid.0"}}))
    assert isinstance(removal, MetaChange)
    assert removal.change.reactions_of == ("+15551234567", ())
    odd = one(whatsapp({"from": "15551234567", "id": "wamid.2", "timestamp": "1",
                        "type": "unsupported", "errors": [{"code": 131051,
                                                           "title": "Message type unknown"}]}))
    assert isinstance(odd, InboundMessage)
    assert odd.content == {"type": "unsupported", "provider_type": "unsupported"}
    assert "Message type unknown" in odd.text


def test_whatsapp_media_points_at_the_graph_lookup_and_cards_are_readable() -> None:
    image = one(whatsapp({"from": "15551234567", "id": "wamid.3", "timestamp": "1",
                          "type": "image", "image": {"id": "555", "mime_type": "image/jpeg"}}))
    assert isinstance(image, InboundMessage)
    (ref,) = image.remote_attachments
    assert (ref.url, ref.source, ref.content_type) == (
        "https://graph.example/v21.0/555", "meta:shop/whatsapp", "image/jpeg")
    card = one(whatsapp({"from": "15551234567", "id": "wamid.4", "timestamp": "1",
                         "type": "contacts", "contacts": [{"name": {"formatted_name": "Ann"},
                                                            "phones": [{"phone": "+1 555"}]}]}))
    assert isinstance(card, InboundMessage) and card.text == "Ann: +1 555"
    assert card.linked_identities == []  # someone else's card links nothing


def test_wildcard_media_hosts_take_subdomains_only_over_the_same_scheme() -> None:
    source = MediaSource.of(["https://*.fbcdn.net"])
    assert source.allows("https://scontent-iad3-1.xx.fbcdn.net/v/t1/a.jpg?oh=1")
    for url in ("https://fbcdn.net/a", "https://evilfbcdn.net/a", "http://x.fbcdn.net/a",
                "https://x.fbcdn.net.evil.example/a", "https://x.fbcdn.net:8443/a"):
        assert not source.allows(url), url

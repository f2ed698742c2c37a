"""normalizer/twilio.py: pure mapping of Twilio's form fields."""

from __future__ import annotations

import pytest

from normalizer.errors import InvalidInput
from normalizer.twilio import (
    STATUSES,
    describe_error,
    opt_out_of,
    parse_twilio_inbound,
    parse_twilio_status,
)
from tests.twilio.fake import inbound_fields, status_fields


@pytest.mark.parametrize(("twilio", "ours"), [
    ("accepted", "queued"), ("scheduled", "queued"), ("queued", "queued"),
    ("sending", "sent"), ("sent", "sent"), ("delivered", "delivered"),
    ("partially_delivered", "delivered"), ("read", "read"), ("undelivered", "failed"),
    ("failed", "failed"), ("canceled", "failed"), ("receiving", None), ("received", None),
])
def test_every_twilio_status_maps_as_the_contract_says(twilio: str, ours: str | None) -> None:
    report = parse_twilio_status(status_fields("SM1", twilio))
    assert report.status == ours and report.twilio_status == twilio
    assert STATUSES.get(twilio) == ours


def test_a_failure_keeps_twilios_code_and_message() -> None:
    fields = {**status_fields("SM1", "undelivered", error_code="30007"),
              "ErrorMessage": "Carrier violation"}
    assert parse_twilio_status(fields).error == (
        "filtered", "Carrier violation (Twilio error 30007)")
    assert parse_twilio_status(status_fields("SM1", "failed", error_code="12345")).error == (
        "12345", "Twilio reported an error (Twilio error 12345)")
    assert describe_error(63016)[0] == "window_closed"
    assert describe_error(21610)[0] == "opted_out"
    assert describe_error(21211)[0] == "invalid_number"


@pytest.mark.parametrize(("body", "extra", "expected"), [
    ("STOP", {}, "stop"), (" unsubscribe ", {}, "stop"), ("Quit", {}, "stop"),
    ("start", {}, "start"), ("UNSTOP", {}, "start"), ("stop sending me coupons", {}, None),
    ("help", {}, None), ("Arrêt", {"OptOutType": "STOP"}, "stop"),
    ("oui", {"OptOutType": "START"}, "start"), ("HELP", {"OptOutType": "HELP"}, None),
])
def test_opt_out_keywords(body: str, extra: dict[str, str], expected: str | None) -> None:
    assert opt_out_of({"Body": body, **extra}) == expected


def test_a_whatsapp_sender_is_the_same_phone_identity_with_a_profile_name() -> None:
    message = parse_twilio_inbound(inbound_fields("SM1", "whatsapp:+821012345678", "안녕"),
                                   "acct", media_source="twilio:acct")
    assert message.channel == "whatsapp"
    assert (message.sender.kind, message.sender.address, message.sender.name) == (
        "phone", "+821012345678", "Kim")
    assert message.recipient is not None and message.recipient.address == "+15550001111"


def test_media_reply_context_and_referral_are_kept() -> None:
    fields = inbound_fields(
        "SM2", "whatsapp:+15551234567", "", NumMedia="2",
        MediaUrl0="https://api.twilio.com/2010-04-01/Accounts/AC1/Messages/MM1/Media/ME1",
        MediaContentType0="image/jpeg",
        MediaUrl1="https://api.twilio.com/2010-04-01/Accounts/AC1/Messages/MM1/Media/ME2",
        MediaContentType1="audio/ogg", OriginalRepliedMessageSid="SM0",
        ReferralSourceUrl="https://fb.me/ad", ReferralHeadline="Spring sale")
    message = parse_twilio_inbound(fields, "acct", media_source="twilio:acct")
    assert [(a.filename, a.content_type) for a in message.remote_attachments] == [
        ("ME1.jpg", "image/jpeg"), ("ME2.ogg", "audio/ogg")]
    assert message.reply_refs == ["SM0"]
    assert message.context == {"referral": {"source_url": "https://fb.me/ad",
                                            "headline": "Spring sale"}}


def test_a_button_reply_is_the_label_tapped() -> None:
    fields = inbound_fields("SM3", "whatsapp:+15551234567", "", ButtonText="Track order",
                            ButtonPayload="track", MessageType="button")
    message = parse_twilio_inbound(fields, "acct", media_source="s")
    assert message.text == "Track order"
    assert message.content == {"type": "button", "text": "Track order", "payload": "track"}


@pytest.mark.parametrize(("fields", "error"), [
    ({"From": "+15551234567"}, "MessageSid is required"),
    ({"MessageSid": "SM1"}, "From is required"),
    ({"MessageSid": "SM1", "From": "not a number"}, "From is not a phone number"),
    ({"MessageSid": "SM1", "From": "+15551234567", "NumMedia": "x"}, "NumMedia"),
    ({"MessageSid": "SM1", "From": "+15551234567", "NumMedia": "1"}, "MediaUrl0"),
])
def test_bad_fields_are_named(fields: dict[str, str], error: str) -> None:
    with pytest.raises(InvalidInput, match=error):
        parse_twilio_inbound(fields, "acct", media_source="s")

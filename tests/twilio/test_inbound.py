"""Twilio's incoming message webhook: signatures over the public URL, SMS and WhatsApp
as one customer, repeats stored once, media fetched after the commit, opt-outs."""

from __future__ import annotations

import uuid

import pytest

from gateway.errors import NotFound
from tests.helpers import bearer, wait_until
from tests.twilio.conftest import PUBLIC_URL, Env, phone
from tests.twilio.fake import IMAGE, inbound_fields

HOOK = "/hooks/twilio/us-sms/messages"


def sid() -> str:
    """A fresh MessageSid."""
    return "SM" + uuid.uuid4().hex


async def test_a_signed_sms_is_stored_and_answered_with_empty_twiml(env: Env) -> None:
    number, message_sid = phone(), sid()
    status, body, content_type = await env.hooks.post(
        HOOK, inbound_fields(message_sid, number.replace("+1", "+1 "), "Where is my order?"))
    assert status == 200
    assert content_type == "text/xml"
    assert body == b'<?xml version="1.0" encoding="UTF-8"?><Response></Response>'
    message = await env.message_of(message_sid)
    assert message["channel"] == "sms" and message["account"] == "us-sms"
    assert message["direction"] == "inbound" and message["text"] == "Where is my order?"
    assert message["from"] == {"kind": "phone", "address": number, "name": None}
    assert message["to"]["address"] == "+15550001111"
    customer = await env.gateway.store.find_customer("phone", number)
    assert customer["id"] == message["customer_id"]


@pytest.mark.parametrize("case", ["missing", "forged", "local_url", "tampered", "other_token"])
async def test_a_forged_or_unsigned_webhook_gets_403_and_stores_nothing(
        env: Env, case: str) -> None:
    number, message_sid = phone(), sid()
    fields = inbound_fields(message_sid, number, "hi")
    before = await env.gateway.store.head_seq()
    if case == "missing":
        result = await env.hooks.post(HOOK, fields, sign=False)
    elif case == "forged":
        result = await env.hooks.post(HOOK, fields, signature="bm90IGEgc2lnbmF0dXJl")
    elif case == "local_url":  # signed for the address the daemon sees, not the public one
        local = env.hooks.validator.compute_signature(env.base + HOOK, fields)
        result = await env.hooks.post(HOOK, fields, signature=local)
    elif case == "tampered":
        signature = env.hooks.sign(HOOK, list(fields.items()))
        result = await env.hooks.post(HOOK, {**fields, "Body": "send it to me instead"},
                                      signature=signature)
    else:
        from twilio.request_validator import RequestValidator
        other = RequestValidator("another-token").compute_signature(PUBLIC_URL + HOOK, fields)
        result = await env.hooks.post(HOOK, fields, signature=other)
    status, body, _ = result
    assert status == 403, body
    assert b"invalid_signature" in body
    assert await env.gateway.store.head_seq() == before
    with pytest.raises(NotFound):
        await env.gateway.store.find_customer("phone", number)


async def test_the_query_string_is_part_of_the_signed_url(env: Env) -> None:
    message_sid = sid()
    fields = inbound_fields(message_sid, phone(), "with a query")
    path = HOOK + "?tenant=eu&x=1"
    status, _, _ = await env.hooks.post(path, fields, signature=env.hooks.sign(HOOK, list(
        fields.items())))
    assert status == 403  # signed without the query
    status, _, _ = await env.hooks.post(path, fields)
    assert status == 200
    assert (await env.message_of(message_sid))["text"] == "with a query"


async def test_a_twilio_retry_of_the_same_message_sid_stores_nothing_new(env: Env) -> None:
    message_sid = sid()
    fields = inbound_fields(message_sid, phone(), "once")
    assert (await env.hooks.post(HOOK, fields))[0] == 200
    head = await env.gateway.store.head_seq()
    for _ in range(2):
        status, body, _ = await env.hooks.post(HOOK, fields)
        assert status == 200 and b"<Response>" in body
    assert await env.gateway.store.head_seq() == head


async def test_sms_and_whatsapp_from_one_number_are_one_customer(env: Env) -> None:
    number = phone()
    sms, whatsapp = sid(), sid()
    assert (await env.hooks.post(HOOK, inbound_fields(sms, number, "by text")))[0] == 200
    assert (await env.hooks.post(HOOK, inbound_fields(whatsapp, f"whatsapp:{number}",
                                                      "on WhatsApp")))[0] == 200
    first, second = await env.message_of(sms), await env.message_of(whatsapp)
    assert (first["channel"], second["channel"]) == ("sms", "whatsapp")
    assert second["from"] == {"kind": "phone", "address": number, "name": "Kim"}
    assert first["customer_id"] == second["customer_id"]
    customer = await env.gateway.store.get_customer(first["customer_id"])
    identity = next(i for i in customer["identities"] if i["kind"] == "phone")
    assert identity["address"] == number
    assert set(identity["channels"]) == {"sms", "whatsapp"}


async def test_a_whatsapp_location_becomes_readable_text_and_content(env: Env) -> None:
    message_sid = sid()
    fields = inbound_fields(message_sid, f"whatsapp:{phone()}", "", MessageType="location",
                            Latitude="37.5665", Longitude="126.978", Label="City Hall",
                            Address="110 Sejong-daero")
    assert (await env.hooks.post(HOOK, fields))[0] == 200
    message = await env.message_of(message_sid)
    assert message["text"] == "City Hall, 110 Sejong-daero (37.5665, 126.978)"
    assert message["content"] == {"type": "location", "latitude": 37.5665,
                                  "longitude": 126.978, "name": "City Hall",
                                  "address": "110 Sejong-daero"}


async def test_mms_media_is_fetched_after_the_commit_without_credentials_on_the_redirect(
        env: Env) -> None:
    message_sid, media_sid = sid(), "ME" + uuid.uuid4().hex
    url = env.fake.add_media(media_sid)
    fields = inbound_fields(message_sid, phone(), "photo of the damage", NumMedia="1",
                            MediaUrl0=url, MediaContentType0="image/png")
    assert (await env.hooks.post(HOOK, fields))[0] == 200

    async def fetched() -> dict[str, object] | None:
        message = await env.message_of(message_sid)
        return message if message["attachments"] else None
    message = await wait_until(fetched)
    attachment = message["attachments"][0]
    assert attachment["filename"] == f"{media_sid}.png"
    assert attachment["content_type"] == "image/png" and attachment["size"] == len(IMAGE)
    async with env.http.get(env.base + attachment["url"], headers=bearer()) as response:
        assert await response.read() == IMAGE
    # The API host got the account's credentials; the storage host never did.
    api = [h for p, h in env.fake.media_requests if p.endswith(media_sid)]
    assert api and all(h["Authorization"].startswith("Basic ") for h in api)
    storage = [h for p, h in env.storage.requests if p.endswith(media_sid)]
    assert storage and all("Authorization" not in h for h in storage)

    async def announced() -> bool:
        # The feed shows an event once its commit is synced, a moment after readers see it.
        return any(e["type"] == "message.updated" and e["data"]["message"]["id"] == message["id"]
                   for e in await env.events())

    assert await wait_until(announced)


async def test_a_failed_media_download_is_retried(env: Env) -> None:
    message_sid, media_sid = sid(), "ME" + uuid.uuid4().hex
    url = env.fake.add_media(media_sid, b"%PDF-1.7 receipt", "application/pdf")
    env.fake.media_script[media_sid] = [503]
    fields = inbound_fields(message_sid, f"whatsapp:{phone()}", "", NumMedia="1",
                            MediaUrl0=url, MediaContentType0="application/pdf",
                            MessageType="document")
    assert (await env.hooks.post(HOOK, fields))[0] == 200

    async def fetched() -> dict[str, object] | None:
        message = await env.message_of(message_sid)
        return message if message["attachments"] else None
    message = await wait_until(fetched, timeout=20)
    assert message["attachments"][0]["size"] == len(b"%PDF-1.7 receipt")
    assert len([p for p, _ in env.fake.media_requests if p.endswith(media_sid)]) == 2


async def test_a_media_url_off_the_api_host_is_never_fetched(env: Env) -> None:
    message_sid = sid()
    fields = inbound_fields(message_sid, phone(), "", NumMedia="1",
                            MediaUrl0=f"{env.storage.url}/elsewhere",
                            MediaContentType0="image/png")
    assert (await env.hooks.post(HOOK, fields))[0] == 200

    async def failed() -> dict[str, object] | None:
        message = await env.message_of(message_sid)
        return message if message["attachments"] else None
    message = await wait_until(failed)
    assert message["attachments"][0]["error"]["code"] == "media_host_refused"
    assert not [p for p, _ in env.storage.requests if p == "/elsewhere"]


async def test_bad_input_is_refused_clearly(env: Env) -> None:
    fields = inbound_fields(sid(), "messenger:12345", "hi")
    status, body, _ = await env.hooks.post(HOOK, fields)
    assert status == 422 and b"unsupported Twilio address" in body
    fields = inbound_fields("", phone(), "no sid")
    status, body, _ = await env.hooks.post(HOOK, fields)
    assert status == 422 and b"MessageSid is required" in body


async def test_a_signature_over_the_url_with_its_default_port_is_accepted(env: Env) -> None:
    message_sid = sid()
    fields = inbound_fields(message_sid, phone(), "signed with :443")
    with_port = PUBLIC_URL.replace("sms.shop.example", "sms.shop.example:443")
    signature = env.hooks.validator.compute_signature(with_port + HOOK, fields)
    assert (await env.hooks.post(HOOK, fields, signature=signature))[0] == 200
    assert (await env.message_of(message_sid))["text"] == "signed with :443"

"""Replies through the real twilio SDK against the fake REST API: senders, status
callbacks through the core's receipts, error codes, retries, opt-outs, MMS links, pacing."""

from __future__ import annotations

import base64
import time
import uuid
from typing import Any

import pytest

from adapters.twilio.outbound import SenderPacer
from tests.conftest import TOKEN as TOKEN_ADMIN
from tests.twilio.conftest import PUBLIC_URL, SERVICE_SID, Env, phone
from tests.twilio.fake import SID, TOKEN, Scripted, inbound_fields, status_fields

STATUS_HOOK = "/hooks/twilio/us-sms/status"


async def inbound(env: Env, number: str, text: str = "Hi", *, whatsapp: bool = False,
                  account: str = "us-sms") -> dict[str, Any]:
    """A customer's message; returns it as stored."""
    message_sid = "SM" + uuid.uuid4().hex
    sender = f"whatsapp:{number}" if whatsapp else number
    status, body, _ = await env.hooks.post(f"/hooks/twilio/{account}/messages",
                                           inbound_fields(message_sid, sender, text))
    assert status == 200, body
    return await env.message_of(message_sid)


async def reply(env: Env, number: str, text: str = "Your order shipped.", *,
                whatsapp: bool = False, account: str = "us-sms",
                **extra: Any) -> dict[str, Any]:
    """A customer's message and an agent's reply to it; returns the queued reply."""
    message = await inbound(env, number, whatsapp=whatsapp, account=account)
    return await env.reply(message["conversation_id"], {"text": text, **extra})


def created_for(env: Env, to: str) -> list[Any]:
    """What the fake accepted for ``to`` (an address as Twilio got it)."""
    return [c for c in env.fake.created if c.form.get("To") == to]


async def test_a_reply_goes_from_the_number_with_a_status_callback(env: Env) -> None:
    number = phone()
    queued = await reply(env, number, "Your order shipped.")
    message = await env.settled(queued["id"], "queued", "sent")
    [created] = created_for(env, number)
    assert created.form["From"] == "+15550001111"
    assert created.form["Body"] == "Your order shipped."
    assert created.form["StatusCallback"] == f"{PUBLIC_URL}/hooks/twilio/us-sms/status"
    assert created.authorization == "Basic " + base64.b64encode(
        f"{SID}:{TOKEN}".encode()).decode()
    assert message["provider"]["message_id"] == created.sid
    assert message["status"] == "queued"  # Twilio accepted it; callbacks move it on


async def test_a_whatsapp_reply_goes_from_the_whatsapp_sender(env: Env) -> None:
    number = phone()
    queued = await reply(env, number, whatsapp=True)
    await env.settled(queued["id"], "queued")
    [created] = created_for(env, f"whatsapp:{number}")
    assert created.form["From"] == "whatsapp:+15550001111"


async def test_a_messaging_service_account_names_the_service_and_its_whatsapp_sender(
        env: Env) -> None:
    sms_number, wa_number = phone(), phone()
    first = await reply(env, sms_number, account="svc")
    second = await reply(env, wa_number, whatsapp=True, account="svc")
    await env.settled(first["id"], "queued")
    await env.settled(second["id"], "queued")
    [sms] = created_for(env, sms_number)
    assert sms.form["MessagingServiceSid"] == SERVICE_SID and "From" not in sms.form
    [whatsapp] = created_for(env, f"whatsapp:{wa_number}")
    assert whatsapp.form["From"] == "whatsapp:+15550002222"


async def callback(env: Env, sid: str, status: str, to: str, **extra: Any) -> None:
    result = await env.hooks.post(STATUS_HOOK, status_fields(sid, status, to=to, **extra))
    assert result[0] == 204, result


async def test_status_callbacks_move_the_status_forwards_only(env: Env) -> None:
    number = phone()
    queued = await reply(env, number)
    message = await env.settled(queued["id"], "queued")
    sid = message["provider"]["message_id"]
    await callback(env, sid, "sending", number)
    assert (await env.get_message(queued["id"]))["status"] == "sent"
    await callback(env, sid, "delivered", number)
    assert (await env.get_message(queued["id"]))["status"] == "delivered"
    head = await env.gateway.store.head_seq()
    for late in ("sent", "queued", "undelivered"):  # out of order: never backwards
        await callback(env, sid, late, number, error_code="30003")
    assert (await env.get_message(queued["id"]))["status"] == "delivered"
    assert await env.gateway.store.head_seq() == head
    await callback(env, sid, "read", number)
    assert (await env.get_message(queued["id"]))["status"] == "read"
    statuses = [e["data"]["message"]["status"] for e in await env.events()
                if e["type"] == "message.status" and e["data"]["message"]["id"] == queued["id"]]
    assert statuses == ["queued", "sent", "delivered", "read"]


async def test_a_callback_that_beats_the_send_being_recorded_still_counts(env: Env) -> None:
    number = phone()
    message = await inbound(env, number)
    answers: list[int] = []

    async def early_callback(sid: str, form: Any) -> None:
        if form.get("To") == number:  # Twilio calls back before its 201 reached us
            answers.append((await env.hooks.post(STATUS_HOOK, status_fields(
                sid, "sent", to=number)))[0])
    env.fake.before_answer = early_callback
    try:
        queued = await env.reply(message["conversation_id"], {"text": "fast carrier"})
        await env.settled(queued["id"], "sent")
    finally:
        env.fake.before_answer = None
    assert answers == [204]


async def test_a_whatsapp_failure_outside_the_window_is_window_closed(env: Env) -> None:
    number = phone()
    queued = await reply(env, number, whatsapp=True)
    message = await env.settled(queued["id"], "queued")
    await callback(env, message["provider"]["message_id"], "undelivered", f"whatsapp:{number}",
                   error_code="63016")
    failed = await env.get_message(queued["id"])
    assert failed["status"] == "failed"
    assert failed["error"]["code"] == "window_closed"
    assert "63016" in failed["error"]["message"]


async def test_a_callback_for_an_unknown_message_is_acknowledged(env: Env) -> None:
    head = await env.gateway.store.head_seq()
    await callback(env, "SM" + uuid.uuid4().hex, "delivered", phone())
    assert await env.gateway.store.head_seq() == head


async def test_a_forged_status_callback_changes_nothing(env: Env) -> None:
    number = phone()
    queued = await reply(env, number)
    message = await env.settled(queued["id"], "queued")
    status, _, _ = await env.hooks.post(
        STATUS_HOOK, status_fields(message["provider"]["message_id"], "delivered", to=number),
        signature="Zm9yZ2Vk")
    assert status == 403
    assert (await env.get_message(queued["id"]))["status"] == "queued"


@pytest.mark.parametrize(("answer", "code"), [
    (Scripted(400, 21211, "Invalid 'To' Phone Number"), "invalid_number"),
    (Scripted(400, 21610, "Attempt to send to unsubscribed recipient"), "opted_out"),
    (Scripted(400, 21999, "Something new"), "provider_rejected"),
])
async def test_twilio_error_codes_fail_permanently_with_a_clear_code(
        env: Env, answer: Scripted, code: str) -> None:
    number = phone()
    message = await inbound(env, number)
    env.fake.fail_next(answer)
    attempts = env.fake.attempts
    queued = await env.reply(message["conversation_id"], {"text": "hello"})
    failed = await env.settled(queued["id"], "failed")
    assert failed["error"]["code"] == code
    assert str(answer.code) in failed["error"]["message"]
    assert env.fake.attempts == attempts + 1  # never retried


@pytest.mark.parametrize("answer", [
    Scripted(429, 20429, "Too Many Requests", {"Retry-After": "0"}),
    Scripted(500, None, "Internal Server Error"),
    Scripted(503, None, "Service Unavailable"),
    Scripted(hang=True),
], ids=["429", "500", "503", "timeout"])
async def test_rate_limits_server_errors_and_timeouts_are_retried(
        env: Env, answer: Scripted) -> None:
    number = phone()
    message = await inbound(env, number)
    env.fake.fail_next(answer)
    queued = await env.reply(message["conversation_id"], {"text": "retry me"})
    sent = await env.settled(queued["id"], "queued", "sent")
    assert len(created_for(env, number)) == 1
    assert sent["provider"]["message_id"] == created_for(env, number)[0].sid


async def test_stop_opts_out_and_start_resubscribes(env: Env) -> None:
    number = phone()
    stop = await inbound(env, number, "Stop")
    adapter = env.gateway.adapters[("twilio", "us-sms")]
    assert await adapter.opted_out(number)  # type: ignore[attr-defined]
    # Recorded on the customer's phone identity, announced with customer.updated.
    customer = await env.gateway.store.get_customer(stop["customer_id"])
    [identity] = customer["identities"]
    assert [(o["channel"], o["account"], o["keyword"]) for o in identity["opt_outs"]] == [
        ("sms", "us-sms", "STOP")]
    updates = [e for e in await env.events() if e["type"] == "customer.updated"
               and e["data"]["customer"]["id"] == stop["customer_id"]]
    assert updates and updates[-1]["data"]["customer"]["identities"][0]["opt_outs"]
    head = await env.gateway.store.head_seq()
    await inbound(env, number, "UNSUBSCRIBE")  # a repeat changes nothing on the identity
    events = [e for e in await env.events() if int(e["seq"]) > head]
    assert [e["type"] for e in events] == ["message.received"]
    attempts = env.fake.attempts
    queued = await env.reply(stop["conversation_id"], {"text": "Sorry to see you go"})
    failed = await env.settled(queued["id"], "failed")
    assert failed["error"]["code"] == "opted_out"
    assert env.fake.attempts == attempts  # failed at once, Twilio never asked

    await inbound(env, number, "START")
    assert not await adapter.opted_out(number)  # type: ignore[attr-defined]
    customer = await env.gateway.store.get_customer(stop["customer_id"])
    assert "opt_outs" not in customer["identities"][0]
    queued = await env.reply(stop["conversation_id"], {"text": "Welcome back"})
    await env.settled(queued["id"], "queued")
    assert [c.form["Body"] for c in created_for(env, number)] == ["Welcome back"]


async def test_an_opt_out_twilio_reports_is_remembered(env: Env) -> None:
    number = phone()
    message = await inbound(env, number)
    env.fake.fail_next(Scripted(400, 21610, "Attempt to send to unsubscribed recipient"))
    first = await env.reply(message["conversation_id"], {"text": "one"})
    await env.settled(first["id"], "failed")
    attempts = env.fake.attempts
    second = await env.reply(message["conversation_id"], {"text": "two"})
    failed = await env.settled(second["id"], "failed")
    assert failed["error"]["code"] == "opted_out" and env.fake.attempts == attempts


async def test_whatsapp_stop_is_not_an_sms_opt_out(env: Env) -> None:
    number = phone()
    await inbound(env, number, "STOP", whatsapp=True)
    adapter = env.gateway.adapters[("twilio", "us-sms")]
    assert not await adapter.opted_out(number)  # type: ignore[attr-defined]


async def test_an_mms_reply_carries_signed_expiring_links_to_its_attachments(env: Env) -> None:
    number = phone()
    picture = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8
    queued = await reply(env, number, "Here is the label", attachments=[{
        "filename": "label.png", "content_type": "image/png",
        "content_base64": base64.b64encode(picture).decode()}])
    await env.settled(queued["id"], "queued")
    [created] = created_for(env, number)
    [link] = created.form.getall("MediaUrl")
    assert link.startswith(f"{PUBLIC_URL}/hooks/twilio/us-sms/media/")
    local = env.base + link.removeprefix(PUBLIC_URL)
    async with env.http.get(local) as response:  # no token: Twilio fetches it as it is
        assert response.status == 200
        assert response.headers["Content-Type"] == "image/png"
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert await response.read() == picture
    token = link.rsplit("/", 1)[1]
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    async with env.http.get(local.replace(token, forged)) as response:
        assert response.status == 403


async def test_more_than_one_attachment_on_whatsapp_fails_clearly(env: Env) -> None:
    number = phone()
    item = {"filename": "a.png", "content_type": "image/png",
            "content_base64": base64.b64encode(b"png").decode()}
    queued = await reply(env, number, whatsapp=True, attachments=[item, item])
    failed = await env.settled(queued["id"], "failed")
    assert failed["error"]["code"] == "too_many_attachments"


def test_the_pacer_spaces_one_senders_sends_and_leaves_others_alone() -> None:
    pacer = SenderPacer(rate=2.0)
    assert [pacer.delay("+1555", now=10.0) for _ in range(3)] == [0.0, 0.5, 1.0]
    assert pacer.delay("+1666", now=10.0) == 0.0
    assert pacer.delay("+1555", now=20.0) == 0.0  # idle since: no debt carried


async def test_a_burst_of_replies_is_paced_not_rejected(env: Env) -> None:
    numbers = [phone() for _ in range(4)]
    messages = [await inbound(env, n, account="svc") for n in numbers]
    started = time.monotonic()
    queued = [await env.reply(m["conversation_id"], {"text": "burst"}) for m in messages]
    for item in queued:
        await env.settled(item["id"], "queued")
    # sender_rate = 20: four sends from the one sender take at least 3 intervals.
    assert time.monotonic() - started >= 3 / 20
    assert all(len(created_for(env, n)) == 1 for n in numbers)


async def test_a_21610_status_callback_fails_the_reply_and_records_the_opt_out(env: Env) -> None:
    number = phone()
    queued = await reply(env, number)
    message = await env.settled(queued["id"], "queued")
    await callback(env, message["provider"]["message_id"], "failed", number, error_code="21610")
    failed = await env.get_message(queued["id"])
    assert (failed["status"], failed["error"]["code"]) == ("failed", "opted_out")
    adapter = env.gateway.adapters[("twilio", "us-sms")]
    assert await adapter.opted_out(number)  # type: ignore[attr-defined]


async def test_an_opt_out_follows_its_identity_through_a_merge(env: Env) -> None:
    number = phone()
    stop = await inbound(env, number, "STOP")
    other = await inbound(env, phone(), "hello from my other phone")
    async with env.http.post(f"{env.base}/v1/customers/{other['customer_id']}/merge",
                             json={"from": stop["customer_id"]},
                             headers={"Authorization": f"Bearer {TOKEN_ADMIN}"}) as response:
        assert response.status == 200, await response.text()
    survivor = await env.gateway.store.get_customer(other["customer_id"])
    opted = [i for i in survivor["identities"] if i["address"] == number]
    assert opted and opted[0]["opt_outs"][0]["keyword"] == "STOP"
    queued = await env.reply(other["conversation_id"], {"text": "to the other phone"})
    await env.settled(queued["id"], "queued")  # the other number did not opt out

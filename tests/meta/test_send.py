"""Sends through the fake Graph API: each network's window rules, templates, uploads, and
every Graph error class mapped to a retryable or permanent outcome with a clear code."""

from __future__ import annotations

import time
from typing import Any

import aiohttp
import orjson
import pytest

from adapters.base import OutboundMessage
from adapters.meta.adapter import split_text
from gateway.errors import PermanentSendError, RetryableSendError, SendError
from gateway.store.base import StoredAttachment
from normalizer.model import Party
from tests.helpers import wait_until
from tests.meta.conftest import (
    MetaGateway,
    messenger_text,
    now_ms,
    page_batch,
    uid,
    whatsapp_batch,
    whatsapp_message,
)
from tests.meta.fake import INSTAGRAM_ID, PAGE_ID, PHONE_NUMBER_ID, Failure, FakeGraph

HOUR = 3600.0


async def inbound(meta: MetaGateway, channel: str, hours_ago: float,
                  address: str | None = None) -> dict[str, Any]:
    """A customer's message written ``hours_ago`` (its provider timestamp), as stored."""
    if channel == "whatsapp":
        wa_id = address or "1" + uid()[:10]
        message = whatsapp_message(wa_id, "text", {"body": "hello"},
                                   at=int(time.time() - hours_ago * HOUR))
        await meta.hook(whatsapp_batch(message))
        mid = message["id"]
    else:
        own = PAGE_ID if channel == "messenger" else INSTAGRAM_ID
        event = messenger_text(address or uid(), "hello", recipient=own,
                               at_ms=now_ms(-hours_ago * HOUR))
        await meta.hook(page_batch(event, object_="page" if channel == "messenger"
                                   else "instagram", entry_id=own))
        mid = event["message"]["mid"]
    stored = await meta.message(mid, channel)
    assert stored is not None
    return stored


def reply_to(message: dict[str, Any], meta: MetaGateway, account: str = "shop", *,
             text: str = "Thanks for waiting", template: str | None = None,
             variables: dict[str, object] | None = None,
             attachments: tuple[StoredAttachment, ...] = (),
             answered: bool = True) -> OutboundMessage:
    """The reply the outbox would hand the adapter."""
    channel = message["channel"]
    return OutboundMessage(
        id=uid("msg_"), conversation_id=message["conversation_id"],
        customer_id=message["customer_id"], channel=channel, account=account,
        to=Party(message["from"]["kind"], message["from"]["address"]),
        sender=meta.adapter(account).sender(channel), text=text, template=template,
        variables=variables or {}, attachments=attachments,
        in_reply_to=message["id"] if answered else None)


async def outcome(meta: MetaGateway, message: OutboundMessage,
                  account: str = "shop") -> str | SendError:
    try:
        result = await meta.adapter(account).send(message)
    except SendError as exc:
        return exc
    assert result.provider_message_id
    return result.provider_message_id


# ------------------------------------------------------------------ windows

@pytest.mark.parametrize("channel", ["messenger", "instagram"])
async def test_messenger_and_instagram_answer_inside_24_hours(
        meta: MetaGateway, graph: FakeGraph, channel: str) -> None:
    message = await inbound(meta, channel, hours_ago=2)
    for account in ("shop", "strict"):
        sent = await outcome(meta, reply_to(message, meta, account), account)
        assert isinstance(sent, str) and sent.startswith("m_")
    for body in graph.sends(PAGE_ID):
        assert body["messaging_type"] == "RESPONSE" and "tag" not in body
        assert body["recipient"] == {"id": message["from"]["address"]}
        assert body["message"] == {"text": "Thanks for waiting"}
    assert all(c.authorization == "Bearer page-token-for-tests" for c in graph.calls)


@pytest.mark.parametrize("channel", ["messenger", "instagram"])
async def test_the_human_agent_tag_reaches_7_days_where_the_page_may_use_it(
        meta: MetaGateway, graph: FakeGraph, channel: str) -> None:
    message = await inbound(meta, channel, hours_ago=72)
    sent = await outcome(meta, reply_to(message, meta, "shop"))
    assert isinstance(sent, str)
    (body,) = graph.sends(PAGE_ID)
    assert (body["messaging_type"], body["tag"]) == ("MESSAGE_TAG", "HUMAN_AGENT")

    refused = await outcome(meta, reply_to(message, meta, "strict"), "strict")
    assert isinstance(refused, PermanentSendError) and refused.code == "window_closed"
    assert "24 hours" in str(refused)
    assert len(graph.sends()) == 1  # nothing was sent for the refused one


@pytest.mark.parametrize("channel", ["messenger", "instagram", "whatsapp"])
async def test_past_every_window_or_with_nothing_answered_is_window_closed(
        meta: MetaGateway, graph: FakeGraph, channel: str) -> None:
    message = await inbound(meta, channel, hours_ago=8 * 24)
    for reply in (reply_to(message, meta), reply_to(message, meta, answered=False)):
        refused = await outcome(meta, reply)
        assert isinstance(refused, PermanentSendError) and refused.code == "window_closed"
    assert graph.sends() == []


async def test_whatsapp_sends_a_session_message_inside_24_hours(
        meta: MetaGateway, graph: FakeGraph) -> None:
    message = await inbound(meta, "whatsapp", hours_ago=23)
    sent = await outcome(meta, reply_to(message, meta, template="order_update"))
    assert isinstance(sent, str) and sent.startswith("wamid.")
    (body,) = graph.sends(PHONE_NUMBER_ID)
    assert body["messaging_product"] == "whatsapp" and body["type"] == "text"
    assert body["to"] == message["from"]["address"].lstrip("+")
    assert body["text"]["body"] == "Thanks for waiting"
    assert graph.calls[-1].authorization == "Bearer whatsapp-token-for-tests"


async def test_whatsapp_outside_24_hours_sends_the_named_template_else_refuses(
        meta: MetaGateway, graph: FakeGraph) -> None:
    message = await inbound(meta, "whatsapp", hours_ago=30)
    refused = await outcome(meta, reply_to(message, meta))
    assert isinstance(refused, PermanentSendError) and refused.code == "window_closed"
    assert "template" in str(refused) and graph.sends() == []

    sent = await outcome(meta, reply_to(message, meta, template="order_update",
                                        variables={"2": "ORD-7", "1": "Kim"}))
    assert isinstance(sent, str)
    (body,) = graph.sends(PHONE_NUMBER_ID)
    assert body["type"] == "template"
    assert body["template"] == {
        "name": "order_update", "language": {"code": "en_US"},
        "components": [{"type": "body", "parameters": [{"type": "text", "text": "Kim"},
                                                       {"type": "text", "text": "ORD-7"}]}]}


async def test_a_withheld_number_is_answered_by_its_business_scoped_user_id(
        meta: MetaGateway, graph: FakeGraph) -> None:
    bsuid = "US." + uid()
    payload = whatsapp_batch({"from_user_id": bsuid, "id": uid("wamid.HBgL"),
                              "timestamp": str(int(time.time())), "type": "text",
                              "text": {"body": "hi"}},
                             contacts=[{"profile": {"name": "anon"}, "user_id": bsuid}])
    await meta.hook(payload)
    message = await meta.message(payload["entry"][0]["changes"][0]["value"]["messages"][0]
                                 ["id"], "whatsapp")
    assert message is not None
    assert isinstance(await outcome(meta, reply_to(message, meta)), str)
    (body,) = graph.sends(PHONE_NUMBER_ID)
    assert body["recipient"] == bsuid and "to" not in body


# ------------------------------------------------------------------ attachments

async def stored(meta: MetaGateway, filename: str, content_type: str,
                 data: bytes) -> StoredAttachment:
    (attachment,) = await meta.gateway.store.put_blobs(
        [(filename, content_type, data, False, None)])
    return attachment


async def test_messenger_attachments_are_uploaded_then_sent_by_attachment_id(
        meta: MetaGateway, graph: FakeGraph) -> None:
    message = await inbound(meta, "messenger", hours_ago=1)
    photo = await stored(meta, "parcel.png", "image/png", b"\x89PNG parcel")
    sent = await outcome(meta, reply_to(message, meta, attachments=(photo,)))
    assert isinstance(sent, str)
    upload = next(c for c in graph.calls if c.path.endswith("/message_attachments"))
    assert upload.form is not None
    assert upload.form["filedata"]["bytes"] == b"\x89PNG parcel"
    assert upload.form["filedata"]["filename"] == "parcel.png"
    assert orjson.loads(upload.form["message"])["attachment"]["type"] == "image"
    text, image = graph.sends(PAGE_ID)
    assert text["message"] == {"text": "Thanks for waiting"}
    assert image["message"]["attachment"]["type"] == "image"
    assert image["message"]["attachment"]["payload"]["attachment_id"]


async def test_whatsapp_documents_are_uploaded_as_media_then_sent_by_id(
        meta: MetaGateway, graph: FakeGraph) -> None:
    message = await inbound(meta, "whatsapp", hours_ago=1)
    pdf = await stored(meta, "invoice.pdf", "application/pdf", b"%PDF-1.7 ours")
    sent = await outcome(meta, reply_to(message, meta, text="", attachments=(pdf,)))
    assert isinstance(sent, str)
    upload = next(c for c in graph.calls if c.path.endswith("/media"))
    assert upload.form is not None and upload.form["messaging_product"] == "whatsapp"
    assert upload.form["file"]["bytes"] == b"%PDF-1.7 ours"
    (body,) = graph.sends(PHONE_NUMBER_ID)
    assert body["type"] == "document" and body["document"]["filename"] == "invoice.pdf"
    assert body["document"]["id"]


async def test_a_retry_after_a_failed_attachment_does_not_send_the_text_twice(
        meta: MetaGateway, graph: FakeGraph) -> None:
    message = await inbound(meta, "messenger", hours_ago=1)
    photo = await stored(meta, "a.jpg", "image/jpeg", b"\xff\xd8 jpeg")
    reply = reply_to(message, meta, attachments=(photo,))
    adapter = meta.adapter()
    upload = adapter.graph.post_form

    async def upload_answering_503_once(path: str, token: str, form: Any) -> dict[str, Any]:
        adapter.graph.post_form = upload  # type: ignore[method-assign]
        graph.fail_next(Failure(503, 2, None, "Service temporarily unavailable",
                                transient=True))
        return await upload(path, token, form)

    adapter.graph.post_form = upload_answering_503_once  # type: ignore[method-assign]
    failed = await outcome(meta, reply)
    assert isinstance(failed, RetryableSendError)
    assert [b["message"] for b in graph.sends(PAGE_ID)] == [{"text": "Thanks for waiting"}]
    retried = await outcome(meta, reply)  # the outbox's retry carries the same id
    assert isinstance(retried, str) and retried.startswith("m_")
    assert ["text" in b["message"] for b in graph.sends(PAGE_ID)] == [True, False]


# ------------------------------------------------------------------ Graph errors

@pytest.mark.parametrize(("failure", "retryable", "code"), [
    (Failure(429, 4, None, "Application request limit reached"), True, "rate_limited"),
    (Failure(400, 613, None, "Calls to this api have exceeded the rate limit."), True,
     "rate_limited"),
    (Failure(400, 131056, None, "(Business Account, Consumer Account) pair rate limit hit"),
     True, "rate_limited"),
    (Failure(500, 2, None, "Service temporarily unavailable", transient=True), True,
     "provider_unavailable"),
    (Failure(503, 1, None, "An unknown error occurred"), True, "provider_unavailable"),
    (Failure(400, 190, 463, "Error validating access token: Session has expired"), False,
     "auth_failed"),
    (Failure(400, 10, 2018278, "This message is sent outside of allowed window."), False,
     "window_closed"),
    (Failure(400, 131047, None, "Re-engagement message"), False, "window_closed"),
    (Failure(400, 551, 1545041, "This person isn't available right now."), False,
     "recipient_unavailable"),
    (Failure(400, 132001, None, "Template name does not exist in the translation"), False,
     "template_rejected"),
    (Failure(403, 200, None, "Requires pages_messaging permission"), False,
     "permission_denied"),
    (Failure(400, 100, None, "Invalid parameter"), False, "provider_rejected"),
])
async def test_graph_errors_map_to_retryable_or_permanent_with_clear_codes(
        meta: MetaGateway, graph: FakeGraph, failure: Failure, retryable: bool,
        code: str) -> None:
    message = await inbound(meta, "whatsapp" if failure.code in (131047, 131056, 132001)
                            else "messenger", hours_ago=1)
    adapter = meta.adapter()
    adapter.graph.paused_until = 0.0
    graph.fail_next(failure)
    result = await outcome(meta, reply_to(message, meta))
    adapter.graph.paused_until = 0.0  # the next test is not paced by this one's limit
    assert isinstance(result, RetryableSendError if retryable else PermanentSendError)
    assert result.code == code
    assert result.provider_code == str(failure.code)
    assert failure.message in str(result)
    if code == "rate_limited":
        assert isinstance(result, RetryableSendError) and result.retry_after


async def test_a_rate_limit_paces_the_account_for_as_long_as_meta_asks(
        meta: MetaGateway, graph: FakeGraph) -> None:
    message = await inbound(meta, "messenger", hours_ago=1)
    adapter = meta.adapter()
    usage = orjson.dumps({PAGE_ID: [{"type": "messenger", "call_count": 100,
                                     "estimated_time_to_regain_access": 2}]}).decode()
    graph.fail_next(Failure(400, 80006, None, "There have been too many messenger api calls",
                            headers={"X-Business-Use-Case-Usage": usage}))
    try:
        first = await outcome(meta, reply_to(message, meta))
        assert isinstance(first, RetryableSendError) and first.retry_after == 120.0
        calls = len(graph.calls)
        second = await outcome(meta, reply_to(message, meta))  # paced: Graph is not called
        assert isinstance(second, RetryableSendError) and second.code == "rate_limited"
        assert second.retry_after is not None and 100 < second.retry_after <= 120
        assert len(graph.calls) == calls
    finally:
        adapter.graph.paused_until = 0.0


async def test_a_graph_api_that_hangs_is_a_retryable_timeout(meta: MetaGateway,
                                                            graph: FakeGraph) -> None:
    message = await inbound(meta, "messenger", hours_ago=1)
    graph.fail_next(Failure(hang=True))
    client = meta.adapter().graph
    configured, client.timeout = client.timeout, aiohttp.ClientTimeout(total=0.3)
    try:
        result = await outcome(meta, reply_to(message, meta))
    finally:
        client.timeout = configured
    assert isinstance(result, RetryableSendError) and result.code == "provider_unreachable"


async def test_a_reply_outside_the_window_fails_in_the_feed_with_window_closed(
        meta: MetaGateway, graph: FakeGraph) -> None:
    message = await inbound(meta, "messenger", hours_ago=72)
    status, queued = await meta.api(
        "POST", f"/v1/conversations/{message['conversation_id']}/messages",
        {"text": "Sorry for the wait", "account": "strict", "channel": "messenger"})
    assert status == 202, queued
    queued_id = queued.get("message", queued)["id"]

    async def failed() -> Any:
        _, page = await meta.api(
            "GET", f"/v1/conversations/{message['conversation_id']}/messages")
        found = next(m for m in page["messages"] if m["id"] == queued_id)
        return found if found["status"] == "failed" else None
    found = await wait_until(failed)
    assert found["error"]["code"] == "window_closed"
    assert graph.sends() == []


def test_long_texts_are_split_within_each_networks_limit() -> None:
    words = " ".join(f"word{n}" for n in range(900))  # about 6,900 characters
    for channel, limit in (("messenger", 2000), ("whatsapp", 4096)):
        pieces = split_text(words, channel)
        assert len(pieces) > 1 and all(len(p) <= limit for p in pieces)
        assert " ".join(pieces) == words  # cut between words, nothing lost
    hangul = "한" * 600  # 1,800 UTF-8 bytes, no spaces: cut hard, by bytes
    pieces = split_text(hangul, "instagram")
    assert [len(p.encode()) for p in pieces] == [999, 801] and "".join(pieces) == hangul
    assert split_text("short", "instagram") == ["short"] and split_text("  ", "whatsapp") == []


async def test_a_long_reply_goes_out_as_several_messages_in_order(
        meta: MetaGateway, graph: FakeGraph) -> None:
    message = await inbound(meta, "messenger", hours_ago=1)
    text = "\n".join(f"Line {n}: " + "x" * 90 for n in range(50))  # about 5,000 characters
    sent = await outcome(meta, reply_to(message, meta, text=text))
    assert isinstance(sent, str)
    bodies = [b["message"]["text"] for b in graph.sends(PAGE_ID)]
    assert len(bodies) == 3 and all(len(b) <= 2000 for b in bodies)
    assert "\n".join(bodies) == text

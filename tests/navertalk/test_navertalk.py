"""Naver TalkTalk end to end: a daemon subprocess, the fake send API, webhooks from addresses."""

from __future__ import annotations

import base64
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from tests.conftest import ROOT, Daemon, base_config, free_port
from tests.helpers import all_events, get_json, post_json, unique, wait_until
from tests.navertalk.fake import FakeTalkTalk, Planned

TOKEN = "ct_wc8b1i_test_partner_token"
NAVER_IP = "211.249.40.7"  # inside Naver's published 211.249.40.0/27
JPEG = base64.b64decode("/9j/4AAQSkZJRgABAQAAAQABAAD/2wBDAAgGBgcGBQgHBwcJCQgKDBQNDAsLDBkSEw8U"
                        "HRofHh0aHBwgJC4nICIsIxwcKDcpLDAxNDQ0Hyc5PTgyPC4zNDL/wAALCAABAAEBAREA/8QA"
                        "FAABAAAAAAAAAAAAAAAAAAAACf/EABQQAQAAAAAAAAAAAAAAAAAAAAD/2gAIAQEAAD8AKp//2Q==")


@pytest.fixture(scope="module")
async def fake() -> AsyncIterator[FakeTalkTalk]:
    server = FakeTalkTalk(TOKEN)
    await server.start()
    yield server
    await server.stop()


@pytest.fixture(scope="module")
async def daemon(tmp_path_factory: pytest.TempPathFactory, fake: FakeTalkTalk
                 ) -> AsyncIterator[Daemon]:
    tmp: Path = tmp_path_factory.mktemp("navertalk")
    http_port, smtp_port = free_port(), free_port()
    extra = f"""
        [[channels]]
        type = "navertalk"
        name = "smartstore"
        authorization = "{TOKEN}"
        api_base_url = "{fake.url}"
        allowed_ips = ["127.0.0.1/32"]
        media_hosts = ["{fake.url}"]
        timeout = 2
        [[channels]]
        type = "navertalk"
        name = "behind-proxy"
        authorization = "{TOKEN}"
        api_base_url = "{fake.url}"
        """
    config = base_config(tmp / "data", http_port, smtp_port, extra=extra).replace(
        "max_body_bytes = 1048576", 'max_body_bytes = 1048576\ntrusted_proxies = ["127.0.0.2/32"]')
    proc = Daemon(tmp, config, http_port)
    proc.start()
    await proc.wait_ready(timeout=60)
    yield proc
    await proc.stop()


@pytest.fixture(scope="module")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def post_event(daemon: Daemon, event: dict[str, Any], *, account: str = "smartstore",
                     source: str = "127.0.0.1", forwarded: str | None = None
                     ) -> tuple[int, bytes]:
    """POST one TalkTalk event from ``source`` (a loopback address this test binds)."""
    headers = {"Content-Type": "application/json;charset=UTF-8"}
    if forwarded is not None:
        headers["X-Forwarded-For"] = forwarded
    connector = aiohttp.TCPConnector(local_addr=(source, 0))
    async with aiohttp.ClientSession(connector=connector) as session, session.post(
            f"{daemon.url}/hooks/navertalk/{account}", data=orjson.dumps(event),
            headers=headers) as resp:
        return resp.status, await resp.read()


async def customer(http: aiohttp.ClientSession, daemon: Daemon, user: str
                   ) -> dict[str, Any] | None:
    status, answer = await get_json(http, f"{daemon.url}/v1/customers",
                                    identity=f"navertalk:{user}")
    if status == 404:
        return None
    assert status == 200, answer
    if "customers" in answer:
        return answer["customers"][0] if answer["customers"] else None
    return dict(answer)


async def conversations(http: aiohttp.ClientSession, daemon: Daemon, user: str
                        ) -> list[dict[str, Any]]:
    found = await customer(http, daemon, user)
    result = []
    for item in (found or {}).get("conversations", []):
        cid = item["id"] if isinstance(item, dict) else item
        status, conversation = await get_json(http, f"{daemon.url}/v1/conversations/{cid}")
        assert status == 200
        result.append(conversation)
    return result


async def messages(http: aiohttp.ClientSession, daemon: Daemon, user: str
                   ) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = []
    for conversation in await conversations(http, daemon, user):
        status, page = await get_json(
            http, f"{daemon.url}/v1/conversations/{conversation['id']}/messages")
        assert status == 200
        result += page["messages"] if isinstance(page, dict) else page
    return result


async def test_open_from_a_product_page_becomes_the_conversation_context(
        http: aiohttp.ClientSession, daemon: Daemon) -> None:
    user = unique("nt")
    referer = "https://smartstore.naver.com/shop/products/309672359"
    status, body = await post_event(daemon, {"event": "open", "user": user, "options": {
        "inflow": "button", "referer": referer, "from": "309672359", "friend": False,
        "under14": False, "under19": False}})
    assert (status, body) == (200, b"")
    assert await customer(http, daemon, user) is None  # opening alone is no message
    text = "이 상품 언제 배송되나요? 🙏 サイズは\uff1f"
    status, body = await post_event(daemon, {"event": "send", "user": user,
                                             "textContent": {"text": text,
                                                             "inputType": "typing"}})
    assert (status, body) == (200, b"")  # empty: a JSON body would reach the customer
    [conversation] = await conversations(http, daemon, user)
    assert conversation["context"]["referer"] == referer
    assert conversation["context"]["inflow"] == "button"
    assert conversation["context"]["from"] == "309672359"
    [message] = await messages(http, daemon, user)
    assert message["text"] == text
    assert message["from"]["kind"] == "navertalk" and message["from"]["address"] == user
    # Coming back through the chat list does not hide the product page.
    await post_event(daemon, {"event": "open", "user": user, "options": {"inflow": "list"}})
    await post_event(daemon, {"event": "send", "user": user, "textContent": {"text": "또"}})
    [conversation] = await conversations(http, daemon, user)
    assert conversation["context"]["referer"] == referer


async def test_a_button_answer_and_an_image_are_messages_the_image_fetched_after_commit(
        http: aiohttp.ClientSession, daemon: Daemon, fake: FakeTalkTalk) -> None:
    user = unique("nt")
    await post_event(daemon, {"event": "send", "user": user, "textContent": {
        "text": "주문 조회", "code": "ORDER_LOOKUP", "inputType": "button"}})
    fake.images["photo.jpg"] = JPEG
    fake.image_failures["photo.jpg"] = 1
    status, _ = await post_event(daemon, {"event": "send", "user": user, "imageContent": {
        "imageUrl": f"{fake.url}/img/photo.jpg"}})
    assert status == 200
    button, image = await messages(http, daemon, user)
    assert button["text"] == "주문 조회"
    assert button["content"] == {"type": "button", "label": "주문 조회", "code": "ORDER_LOOKUP"}
    assert image["text"] == "(image)"

    async def fetched() -> Any:
        found = (await messages(http, daemon, user))[1]
        return found if found["attachments"] else None

    stored = await wait_until(fetched, timeout=20)
    assert stored["attachments"][0]["size"] == len(JPEG)


async def test_echoes_of_our_replies_add_nothing_and_an_agents_own_are_outbound(
        http: aiohttp.ClientSession, daemon: Daemon, fake: FakeTalkTalk) -> None:
    user = unique("nt")
    await post_event(daemon, {"event": "send", "user": user, "textContent": {"text": "환불?"}})
    cid = (await conversations(http, daemon, user))[0]["id"]
    text = "네, 환불 가능합니다 😊 返品もOKです"
    status, queued = await post_json(http, f"{daemon.url}/v1/conversations/{cid}/messages",
                                     {"text": text, "agent": {"id": "a-1", "name": "김상담"}})
    assert status == 202, queued

    async def delivered() -> bool:
        return any(s["json"].get("textContent", {}).get("text") == text for s in fake.sent)

    await wait_until(delivered, timeout=20)
    sent = next(s for s in fake.sent if s["json"].get("textContent", {}).get("text") == text)
    assert sent["json"] == {"event": "send", "user": user, "textContent": {"text": text}}
    assert sent["headers"]["Authorization"] == TOKEN
    before = len(await all_events(http, daemon.url))
    status, body = await post_event(daemon, {"event": "echo", "echoedEvent": "send",
                                             "user": user, "partner": "wc8b1i",
                                             "textContent": {"text": text},
                                             "options": {"mobile": False}})
    assert (status, body) == (200, b"")
    found = await messages(http, daemon, user)
    assert [m["text"] for m in found] == ["환불?", text]  # the echo added nothing
    assert len(await all_events(http, daemon.url)) == before
    # An agent answering in the partner center: stored as outbound, agent null.
    await post_event(daemon, {"event": "echo", "echoedEvent": "send", "user": user,
                              "textContent": {"text": "파트너센터에서 답변"}})
    last = (await messages(http, daemon, user))[-1]
    assert last["direction"] == "outbound" and last["agent"] is None
    assert last["text"] == "파트너센터에서 답변" and last["to"]["address"] == user
    received = [m for m in await messages(http, daemon, user) if m["direction"] == "inbound"]
    assert len(received) == 1


async def test_requests_from_outside_allowed_ips_and_forged_forwarding_are_refused(
        http: aiohttp.ClientSession, daemon: Daemon) -> None:
    user = unique("nt")
    event = {"event": "send", "user": user, "textContent": {"text": "forged"}}
    # Straight from an address outside Naver's ranges.
    assert (await post_event(daemon, event, account="behind-proxy"))[0] == 403
    # X-Forwarded-For naming Naver, from a peer that is not a trusted proxy: ignored.
    assert (await post_event(daemon, event, account="behind-proxy",
                             forwarded=NAVER_IP))[0] == 403
    # A trusted proxy forwarding for an address outside the ranges.
    assert (await post_event(daemon, event, account="behind-proxy", source="127.0.0.2",
                             forwarded="203.0.113.9"))[0] == 403
    assert await customer(http, daemon, user) is None
    # The trusted proxy forwarding for Naver: accepted.
    status, body = await post_event(daemon, {**event, "textContent": {"text": "진짜"}},
                                    account="behind-proxy", source="127.0.0.2",
                                    forwarded=f"198.51.100.1, {NAVER_IP}")
    assert (status, body) == (200, b"")
    assert [m["text"] for m in await messages(http, daemon, user)] == ["진짜"]


async def test_leave_friend_and_payments_store_nothing_and_payments_are_not_approved(
        http: aiohttp.ClientSession, daemon: Daemon) -> None:
    user = unique("nt")
    assert await post_event(daemon, {"event": "leave", "user": user}) == (200, b"")
    assert await post_event(daemon, {"event": "friend", "user": user,
                                     "options": {"set": "on"}}) == (200, b"")
    status, body = await post_event(daemon, {"event": "pay_complete", "user": user, "options": {
        "paymentResult": {"code": "Success", "paymentId": "20170811D3adfaasLL",
                          "merchantPayKey": "k"}}})
    assert status != 200 and body == b""  # only a 200 approves a payment
    assert await customer(http, daemon, user) is None


def korean_mobile() -> str:
    """A fresh 010 number, as TalkTalk gives it (no dashes)."""
    return "010" + unique("")[-8:].translate(str.maketrans("abcdef", "123456"))


async def customer_updates(http: aiohttp.ClientSession, daemon: Daemon, customer_id: str
                           ) -> list[dict[str, Any]]:
    """The ``customer.updated`` events of one customer, oldest first."""
    return [e for e in await all_events(http, daemon.url) if e["type"] == "customer.updated"
            and e["data"]["customer"]["id"] == customer_id]


async def test_a_shared_profile_names_the_customer_and_its_withdrawal_takes_name_and_phone(
        http: aiohttp.ClientSession, daemon: Daemon) -> None:
    user, phone = unique("nt"), korean_mobile()
    status, _ = await post_event(daemon, {"event": "profile", "user": user, "options": {
        "nickname": "톡톡이", "cellphone": phone, "result": "SUCCESS"}})
    assert status == 200
    found = await customer(http, daemon, user)
    assert found is not None and found["name"] == "톡톡이"
    e164 = "+82" + phone[1:]
    assert ("phone", e164) in [(i["kind"], i["address"]) for i in found["identities"]]
    before = await customer_updates(http, daemon, found["id"])

    withdrawal = {"event": "profile", "user": user, "options": {
        "result": "WITHDRAW", "withdrawals": ["nickname", "cellphone"]}}
    assert await post_event(daemon, withdrawal) == (200, b"")
    after = await customer(http, daemon, user)
    assert after is not None and after["id"] == found["id"]
    assert after["name"] is None
    assert [(i["kind"], i["address"]) for i in after["identities"]] == [("navertalk", user)]
    [updated] = (await customer_updates(http, daemon, found["id"]))[len(before):]
    assert updated["data"]["customer"]["name"] is None
    assert all(i["kind"] != "phone" for i in updated["data"]["customer"]["identities"])
    status, by_phone = await get_json(http, f"{daemon.url}/v1/customers",
                                      identity=f"phone:{e164}")
    assert (status, by_phone) == (200, {"customers": []})  # an SMS would be someone new

    # TalkTalk redelivers nothing, but a repeated withdrawal must still change nothing.
    assert await post_event(daemon, withdrawal) == (200, b"")
    assert len(await customer_updates(http, daemon, found["id"])) == len(before) + 1
    assert await customer(http, daemon, user) == after


async def test_withdrawing_a_nickname_keeps_the_name_another_channel_gave(
        http: aiohttp.ClientSession, daemon: Daemon) -> None:
    user, phone = unique("nt"), korean_mobile()
    status, body = await post_json(http, f"{daemon.url}/hooks/api/default/messages", {
        "message_id": unique("m"), "from": {"id": unique("crm"), "name": "Kim Minji",
                                            "phone": "+82" + phone[1:]},
        "text": "order question"})
    assert status == 201, body
    named = body["message"]["customer_id"]
    # The shared profile's phone finds the customer the API channel named first.
    await post_event(daemon, {"event": "profile", "user": user, "options": {
        "nickname": "톡톡이", "cellphone": phone, "result": "SUCCESS"}})
    found = await customer(http, daemon, user)
    assert found is not None and (found["id"], found["name"]) == (named, "Kim Minji")
    before = await customer_updates(http, daemon, named)
    assert await post_event(daemon, {"event": "profile", "user": user, "options": {
        "result": "WITHDRAW", "withdrawals": ["nickname"]}}) == (200, b"")
    after = await customer(http, daemon, user)
    assert after is not None and after["name"] == "Kim Minji"
    assert await customer_updates(http, daemon, named) == before  # nothing of its moved


async def test_replies_are_split_at_the_limit_and_result_codes_map_to_retry_or_failure(
        http: aiohttp.ClientSession, daemon: Daemon, fake: FakeTalkTalk) -> None:
    user = unique("nt")
    await post_event(daemon, {"event": "send", "user": user, "textContent": {"text": "긴 답"}})
    cid = (await conversations(http, daemon, user))[0]["id"]
    text = ("교환 및 반품 안내입니다. " * 900 + "\n") * 2  # 27,002 characters
    fake.plans.append(Planned(result_code="99", message="일시적인 오류"))
    status, queued = await post_json(http, f"{daemon.url}/v1/conversations/{cid}/messages",
                                     {"text": text})
    assert status == 202

    async def sent_pieces() -> list[str]:
        return [s["json"]["textContent"]["text"] for s in fake.sent
                if s["json"]["user"] == user]

    pieces = await wait_until(lambda: _joined(sent_pieces, text), timeout=20)
    assert all(len(p) <= 10_000 for p in pieces) and len(pieces) == 3
    stored = len(await messages(http, daemon, user))
    for piece in pieces:  # TalkTalk echoes each piece: all ours, nothing new
        await post_event(daemon, {"event": "echo", "echoedEvent": "send", "user": user,
                                  "textContent": {"text": piece}})
    assert len(await messages(http, daemon, user)) == stored
    fake.plans.append(Planned(result_code="01", message="Authorization 정보 오류"))
    status, queued = await post_json(http, f"{daemon.url}/v1/conversations/{cid}/messages",
                                     {"text": "실패할 답"})

    async def failed() -> Any:
        for event in reversed(await all_events(http, daemon.url)):
            data = event["data"].get("message") or {}
            if event["type"] == "message.status" and data.get("id") == queued["id"] \
                    and data["status"] == "failed":
                return data["error"]
        return None

    error = await wait_until(failed, timeout=20)
    assert error["code"] == "navertalk_auth_failed"


async def _joined(pieces: Any, text: str) -> list[str] | None:
    found: list[str] = await pieces()
    return found if "".join(found) == text else None


def test_check_config_shows_the_default_allowed_ips_and_their_source(tmp_path: Path) -> None:
    config = tmp_path / "omnirelay.toml"
    config.write_text('[[channels]]\ntype = "navertalk"\nname = "smartstore"\n'
                      'authorization_env = "NT_TOKEN"\n')
    result = subprocess.run([sys.executable, "-m", "gateway", "check-config", str(config)],
                            capture_output=True, text=True, cwd=ROOT,
                            env={"NT_TOKEN": "ct_x", "PATH": "/usr/bin:/bin"}, check=False)
    assert result.returncode == 0, result.stderr
    assert "211.249.40.0/27, 211.249.68.0/27, 220.230.168.0/27" in result.stderr
    assert "navertalk/chatbot-api" in result.stderr


async def test_an_image_reply_is_sent_by_a_signed_link_only_its_account_serves(
        http: aiohttp.ClientSession, daemon: Daemon, fake: FakeTalkTalk) -> None:
    user = unique("nt")
    await post_event(daemon, {"event": "send", "user": user, "textContent": {"text": "사진?"}})
    cid = (await conversations(http, daemon, user))[0]["id"]
    status, _ = await post_json(http, f"{daemon.url}/v1/conversations/{cid}/messages", {
        "attachments": [{"filename": "item.jpg", "content_type": "image/jpeg",
                         "content_base64": base64.b64encode(JPEG).decode()}]})
    assert status == 202

    async def image_url() -> str | None:
        return next((s["json"]["imageContent"]["imageUrl"] for s in fake.sent
                     if s["json"]["user"] == user and "imageContent" in s["json"]), None)

    url = await wait_until(image_url, timeout=20)
    assert url.startswith(f"{daemon.url}/hooks/navertalk/smartstore/media/")
    async with http.get(url) as resp:  # TalkTalk downloads it as it is, without credentials
        assert resp.status == 200 and await resp.read() == JPEG
        assert resp.headers["Content-Type"] == "image/jpeg"
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
    # The same token under another account (even one with the same secret) opens nothing.
    elsewhere = url.replace("/smartstore/", "/behind-proxy/")
    async with http.get(elsewhere) as resp:
        assert resp.status == 403
        assert (await resp.json())["error"]["code"] == "invalid_media_link"

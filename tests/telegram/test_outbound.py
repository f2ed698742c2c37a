"""Agents' replies through the Bot API: text, long text, files, flood control, blocks."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from adapters.telegram.outbound import formatted, split_text, utf16_units
from tests.telegram.conftest import Client
from tests.telegram.fake import Failure, FakeBotApi
from tests.telegram.updates import message

SENDS = ("sendMessage", "sendPhoto", "sendDocument")


async def conversation_with(fake: FakeBotApi, client: Client, user_id: int) -> str:
    """A conversation with a new customer who wrote to the bot."""
    user = {"id": user_id, "is_bot": False, "first_name": f"User{user_id}"}
    update = fake.queue({"message": message(user, text="hello")})
    body = update["message"]
    stored = await client.message(f"{body['chat']['id']}:{body['message_id']}")
    return str(stored["conversation_id"])


async def reply(client: Client, conversation: str, **body: Any) -> dict[str, Any]:
    status, answer = await client.post(f"/v1/conversations/{conversation}/messages",
                                       {"agent": {"id": "a-1", "name": "Sora"}, **body})
    assert status == 202, answer
    return dict(answer.get("message", answer))


async def final(client: Client, message_id: str, timeout: float = 15.0) -> dict[str, Any]:
    """The reply once it is sent or failed."""
    async def settled() -> Any:
        current = await client.get(f"/v1/messages/{message_id}")
        return current if current["status"] in ("sent", "failed") else None
    return dict(await client.until(settled, timeout))


def sends_to(fake: FakeBotApi, chat_id: int) -> list[Any]:
    return [c for c in fake.calls if c.method in SENDS and str(c.params.get("chat_id")) ==
            str(chat_id)]


async def test_a_reply_goes_to_the_users_chat_as_plain_text(
        fake: FakeBotApi, client: Client) -> None:
    conversation = await conversation_with(fake, client, 610001)
    queued = await reply(client, conversation, text="Shipped today <b>not bold</b> *x*")
    sent = await final(client, queued["id"])
    assert sent["status"] == "sent"
    [call] = sends_to(fake, 610001)
    assert call.method == "sendMessage"
    assert call.params["text"] == "Shipped today <b>not bold</b> *x*"
    assert "parse_mode" not in call.params
    assert sent["provider"]["message_id"] == f"610001:{fake.next_message_id}"


async def test_text_over_4096_characters_is_split_and_nothing_is_lost(
        fake: FakeBotApi, client: Client) -> None:
    conversation = await conversation_with(fake, client, 610002)
    words = " ".join(f"word{i}" for i in range(2000))  # 16,889 characters: five messages
    sent = await final(client, (await reply(client, conversation, text=words))["id"])
    assert sent["status"] == "sent"
    calls = sends_to(fake, 610002)
    assert len(words) == 16_889 and len(calls) == 5
    assert all(utf16_units(c.params["text"]) <= 4096 for c in calls)
    assert "".join(c.params["text"] for c in calls) == words


async def test_photos_and_documents_are_sent_from_attachments(
        fake: FakeBotApi, client: Client) -> None:
    conversation = await conversation_with(fake, client, 610003)
    png = b"\x89PNG\r\n\x1a\n" + b"p" * 64
    pdf = b"%PDF-1.4 receipt"
    attachments = [
        {"filename": "label.png", "content_type": "image/png",
         "content_base64": base64.b64encode(png).decode()},
        {"filename": "receipt.pdf", "content_type": "application/pdf",
         "content_base64": base64.b64encode(pdf).decode()}]
    queued = await reply(client, conversation, text="Your label and receipt",
                         attachments=attachments)
    assert (await final(client, queued["id"]))["status"] == "sent"
    text_call, photo_call, document_call = sends_to(fake, 610003)
    assert text_call.method == "sendMessage"
    assert text_call.params["text"] == "Your label and receipt"
    assert photo_call.method == "sendPhoto" and photo_call.files["photo"] == png
    assert document_call.method == "sendDocument" and document_call.files["document"] == pdf
    # One file with a short text: one captioned message.
    queued = await reply(client, conversation, text="the label again",
                         attachments=attachments[:1])
    assert (await final(client, queued["id"]))["status"] == "sent"
    last = sends_to(fake, 610003)[-1]
    assert last.method == "sendPhoto" and last.params["caption"] == "the label again"


async def test_flood_control_is_honoured_with_retry_after(
        fake: FakeBotApi, client: Client) -> None:
    conversation = await conversation_with(fake, client, 610004)
    fake.fail["sendMessage"].append(Failure(429, "Too Many Requests: retry after 1",
                                            retry_after=1))
    queued = await reply(client, conversation, text="after the flood")
    sent = await final(client, queued["id"])
    assert sent["status"] == "sent"
    refused, accepted = [c for c in fake.calls_of("sendMessage")
                         if str(c.params.get("chat_id")) == "610004"]
    assert accepted.at - refused.at >= 1.0  # not before Telegram's retry_after


async def test_a_user_who_blocked_the_bot_fails_the_reply_for_good(
        fake: FakeBotApi, client: Client) -> None:
    conversation = await conversation_with(fake, client, 610005)
    fake.blocked_chats.add("610005")
    failed = await final(client, (await reply(client, conversation, text="hello?"))["id"])
    assert failed["status"] == "failed"
    assert failed["error"]["code"] == "blocked"
    assert len(sends_to(fake, 610005)) == 1  # never retried


@pytest.mark.parametrize("failure", [Failure(500, "Internal Server Error"),
                                     Failure(502, "Bad Gateway"),
                                     Failure(200, "late", hang=2.5)],
                         ids=["500", "502", "timeout"])
async def test_server_errors_and_timeouts_are_retried(
        fake: FakeBotApi, client: Client, failure: Failure) -> None:
    user_id = 610100 + failure.status + (1 if failure.hang else 0)
    conversation = await conversation_with(fake, client, user_id)
    fake.fail["sendMessage"].append(failure)
    sent = await final(client, (await reply(client, conversation, text="retry me"))["id"])
    assert sent["status"] == "sent"
    assert len(sends_to(fake, user_id)) == 2


async def test_a_retry_after_a_partial_send_does_not_repeat_the_parts_sent(
        fake: FakeBotApi, client: Client) -> None:
    conversation = await conversation_with(fake, client, 610006)
    fake.fail["sendDocument"].append(Failure(503, "Service Unavailable"))
    queued = await reply(client, conversation, text="two parts", attachments=[
        {"filename": "a.pdf", "content_type": "application/pdf",
         "content_base64": base64.b64encode(b"%PDF a").decode()},
        {"filename": "b.pdf", "content_type": "application/pdf",
         "content_base64": base64.b64encode(b"%PDF b").decode()}])
    assert (await final(client, queued["id"]))["status"] == "sent"
    methods = [c.method for c in sends_to(fake, 610006)]
    assert methods == ["sendMessage", "sendDocument", "sendDocument", "sendDocument"]


# ------------------------------------------------------------------ pure parts


def test_split_text_keeps_words_whole_and_counts_utf16() -> None:
    emoji = "🙂" * 3000  # 6,000 UTF-16 units
    pieces = split_text(emoji)
    assert [utf16_units(p) for p in pieces] == [4096, 1904]
    assert "".join(pieces) == emoji
    text = ("abc " * 1500).strip()
    pieces = split_text(text)
    assert all(not p.startswith(" ") and p.endswith(" ") for p in pieces[:-1])
    assert "".join(pieces) == text
    assert split_text("short") == ["short"]


def test_formatting_escapes_what_the_agent_typed() -> None:
    assert formatted("a <b> & c", "plain") == ("a <b> & c", None)
    assert formatted("a <b> & c", "html") == ("a &lt;b&gt; &amp; c", "HTML")
    assert formatted("1.5 * (x_y)!", "markdown") == (r"1\.5 \* \(x\_y\)\!", "MarkdownV2")

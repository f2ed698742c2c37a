"""Attachment metadata through the daemon: refused at the API, safe on download."""

from __future__ import annotations

import base64
import urllib.parse

import aiohttp
import pytest

from tests.conftest import Daemon
from tests.e2e.test_rejections import head
from tests.helpers import bearer, get_json, post_inbound, post_json, unique

PDF = b"%PDF-1.4\n%%EOF\n"


def attachment(filename: str, content_type: str) -> dict[str, str]:
    """One attachment object as the API takes it."""
    return {"filename": filename, "content_type": content_type,
            "content_base64": base64.b64encode(PDF).decode()}


async def new_conversation(http: aiohttp.ClientSession, daemon: Daemon) -> str:
    """A fresh customer writes in through the CRM account; returns the conversation id."""
    status, body = await post_inbound(http, daemon.url, {
        "message_id": unique("m"), "from": {"id": unique("u")}, "text": "help"})
    assert status == 201, body
    return str(body["message"]["conversation_id"])


async def new_events(http: aiohttp.ClientSession, daemon: Daemon, after: str) -> list[dict]:
    """Events after a cursor."""
    status, page = await get_json(http, f"{daemon.url}/v1/events", after=after, limit=1000)
    assert status == 200, page
    return list(page["events"])


@pytest.mark.parametrize("content_type", [
    "application/pdf\r\nX-Injected: 1", "application/pdf\n", "pdf", "multipart/mixed",
    "text/plain; charset", 7])
async def test_a_reply_with_invalid_content_type_is_422_and_nothing_is_queued(
        daemon: Daemon, http: aiohttp.ClientSession, content_type: str) -> None:
    conversation = await new_conversation(http, daemon)
    before = await head(http, daemon)
    status, error = await post_json(
        http, f"{daemon.url}/v1/conversations/{conversation}/messages",
        {"text": "the quote", "attachments": [attachment("quote.pdf", content_type)]})
    assert status == 422, error
    assert error["error"]["code"] == "validation_failed"
    assert "attachments[0].content_type" in error["error"]["message"]
    _, page = await get_json(http, f"{daemon.url}/v1/conversations/{conversation}/messages")
    assert [m["direction"] for m in page["messages"]] == ["inbound"]  # nothing in the outbox
    assert await new_events(http, daemon, before) == []


async def test_an_api_channel_attachment_with_invalid_content_type_is_422_and_not_stored(
        daemon: Daemon, http: aiohttp.ClientSession) -> None:
    before = await head(http, daemon)
    status, error = await post_inbound(http, daemon.url, {
        "message_id": unique("m"), "from": {"id": unique("u")},
        "attachments": [attachment("scan.pdf", "image/png\r\nSet-Cookie: x=1")]})
    assert status == 422, error
    assert "attachments[0].content_type" in error["error"]["message"]
    status, error = await post_inbound(http, daemon.url, {
        "message_id": unique("m"), "from": {"id": unique("u")},
        "attachments": [attachment("", "image/png")]})
    assert status == 422, error
    assert "attachments[0].filename" in error["error"]["message"]
    assert await head(http, daemon) == before


async def test_names_are_cleaned_and_downloaded_with_rfc_6266_filename_star(
        daemon: Daemon, http: aiohttp.ClientSession) -> None:
    status, body = await post_inbound(http, daemon.url, {
        "message_id": unique("m"), "from": {"id": unique("u")}, "attachments": [
            attachment("견적서 2026.pdf", "Application/PDF"),
            attachment("invoice\r\n\u202efdp.exe", "application/octet-stream"),
            attachment("../../etc/passwd", "text/plain; charset=utf-8")]})
    assert status == 201, body
    stored = body["message"]["attachments"]
    assert [(a["filename"], a["content_type"]) for a in stored] == [
        ("견적서 2026.pdf", "application/pdf"), ("invoicefdp.exe", "application/octet-stream"),
        (".._.._etc_passwd", "text/plain; charset=utf-8")]

    async with http.get(f"{daemon.url}/v1/attachments/{stored[0]['id']}",
                        headers=bearer()) as resp:
        assert resp.status == 200
        assert await resp.read() == PDF
        disposition = resp.headers["Content-Disposition"]
        assert resp.headers["Content-Type"] == "application/pdf"
    assert disposition.startswith('attachment; filename="___ 2026.pdf"; filename*=UTF-8\'\'')
    encoded = disposition.rpartition("filename*=UTF-8''")[2]
    assert urllib.parse.unquote(encoded, errors="strict") == "견적서 2026.pdf"

    async with http.get(f"{daemon.url}/v1/attachments/{stored[1]['id']}",
                        headers=bearer()) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Disposition"] == 'attachment; filename="invoicefdp.exe"'

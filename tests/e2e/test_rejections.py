"""Bad input gets a clear 4xx and stores nothing."""

from __future__ import annotations

import time

import aiohttp
import orjson
import pytest

from gateway import signing
from tests.conftest import API_SECRET, READ_TOKEN, TOKEN, WRITE_TOKEN, Daemon
from tests.helpers import bearer, get_json, post_inbound, unique


async def head(http: aiohttp.ClientSession, daemon: Daemon) -> str:
    """The feed's newest cursor."""
    cursor = "0"
    while True:
        _, page = await get_json(http, f"{daemon.url}/v1/events", after=cursor, limit=1000)
        if not page["events"]:
            return cursor
        cursor = page["next"]


async def post_raw(http: aiohttp.ClientSession, daemon: Daemon, body: bytes,
                   headers: dict[str, str]) -> tuple[int, dict]:
    """POST raw bytes to the CRM account's inbound hook."""
    async with http.post(f"{daemon.url}/hooks/api/crm/messages", data=body,
                         headers={"Content-Type": "application/json", **headers}) as resp:
        return resp.status, await resp.json(content_type=None)


def valid_body() -> bytes:
    """A well-formed inbound body."""
    return orjson.dumps({"message_id": unique("m"), "from": {"id": unique("u")},
                         "text": "hi"})


@pytest.mark.parametrize(("name", "make", "status", "code"), [
    ("unsigned", lambda b: (b, {}), 401, "invalid_signature"),
    ("forged", lambda b: (b, {"Omnirelay-Signature": signing.sign("not-the-secret", b)}),
     401, "invalid_signature"),
    ("tampered", lambda b: (b.replace(b"hi", b"ho"),
                            {"Omnirelay-Signature": signing.sign(API_SECRET, b)}),
     401, "invalid_signature"),
    ("stale", lambda b: (b, {"Omnirelay-Signature": signing.sign(
        API_SECRET, b, int(time.time()) - 600)}), 401, "invalid_signature"),
    ("garbage signature", lambda b: (b, {"Omnirelay-Signature": "v1=abc"}),
     401, "invalid_signature"),
    ("read-only token", lambda b: (b, bearer(READ_TOKEN)), 403, "forbidden"),
    ("unknown token", lambda b: (b, bearer("nope-nope-nope-nope")), 401, "unauthorized"),
    ("malformed JSON", lambda b: (b"{not json", {"Omnirelay-Signature": signing.sign(
        API_SECRET, b"{not json")}), 400, "malformed_payload"),
    ("not an object", lambda b: (b"[1]", {"Omnirelay-Signature": signing.sign(
        API_SECRET, b"[1]")}), 400, "malformed_payload"),
    ("unknown field", lambda b: (b'{"message_id":"x","from":{"id":"u"},"txt":"typo"}',
                                 {"Omnirelay-Signature": signing.sign(
                                     API_SECRET,
                                     b'{"message_id":"x","from":{"id":"u"},"txt":"typo"}')}),
     422, "validation_failed"),
    ("no text", lambda b: (b'{"message_id":"x","from":{"id":"u"}}', {
        "Omnirelay-Signature": signing.sign(API_SECRET, b'{"message_id":"x","from":{"id":"u"}}')}),
     422, "validation_failed"),
])
async def test_bad_inbound_is_refused_and_nothing_is_stored(
        daemon: Daemon, http: aiohttp.ClientSession, name: str, make: object, status: int,
        code: str) -> None:
    before = await head(http, daemon)
    body, headers = make(valid_body())  # type: ignore[operator]
    got, error = await post_raw(http, daemon, body, headers)
    assert (got, error["error"]["code"]) == (status, code), error
    assert error["error"]["message"]
    assert await head(http, daemon) == before


async def test_oversized_body_gets_413_before_it_is_read(
        daemon: Daemon, http: aiohttp.ClientSession) -> None:
    before = await head(http, daemon)
    big = orjson.dumps({"message_id": unique("m"), "from": {"id": "u"},
                        "text": "x" * (2 * 1024 * 1024)})
    status, error = await post_raw(http, daemon, big,
                                   {"Omnirelay-Signature": signing.sign(API_SECRET, big)})
    assert status == 413
    assert error["error"]["code"] == "payload_too_large"

    # Chunked, with no Content-Length: refused once the limit is passed. (The timestamp is
    # current: a stale one is refused before the body is read.)
    async def chunks():  # type: ignore[no-untyped-def]
        for _ in range(40):
            yield b"x" * 65536

    async with http.post(f"{daemon.url}/hooks/api/crm/messages", data=chunks(),
                         headers={"Omnirelay-Signature": f"t={int(time.time())},v1=0"}
                         ) as resp:
        assert resp.status == 413
    assert await head(http, daemon) == before


async def test_unknown_account_and_type_are_404(daemon: Daemon,
                                                http: aiohttp.ClientSession) -> None:
    for path in ("/hooks/api/nope/messages", "/hooks/sms/crm/messages", "/hooks/api/crm/x"):
        async with http.post(f"{daemon.url}{path}", data=b"{}") as resp:
            assert resp.status == 404, path
            assert (await resp.json())["error"]["code"] == "not_found"


@pytest.mark.parametrize(("method", "path", "headers", "status"), [
    ("GET", "/v1/events", {}, 401),
    ("GET", "/v1/events", {"Authorization": "Bearer wrong-token-0000000000"}, 401),
    ("GET", "/v1/events", {"Authorization": f"Basic {TOKEN}"}, 401),
    ("GET", f"/v1/events?access_token={TOKEN}", {}, 401),
    ("GET", "/v1/events", bearer(WRITE_TOKEN), 403),
    ("POST", "/v1/conversations/cnv_x/close", bearer(READ_TOKEN), 403),
    ("GET", "/v1/webhooks/dead-letters", bearer(READ_TOKEN), 403),
    ("DELETE", "/v1/customers/cus_x", bearer(WRITE_TOKEN), 403),
    ("GET", "/v1/conversations/cnv_unknown", bearer(), 404),
    ("GET", "/v1/customers/cus_unknown", bearer(), 404),
    ("GET", "/v1/messages/msg_unknown", bearer(), 404),
    ("GET", "/v1/attachments/att_unknown", bearer(), 404),
    ("GET", "/v1/events?limit=0", bearer(), 400),
    ("GET", "/v1/events?limit=1001", bearer(), 400),
    ("GET", "/v1/events?wait=61", bearer(), 400),
    ("GET", "/v1/events?after=abc", bearer(), 400),
    ("GET", "/v1/events?cursor=1", bearer(), 400),
    ("GET", "/v1/customers?identity=nonsense", bearer(), 400),
    ("GET", "/v1/nothing-here", bearer(), 404),
    ("GET", "/healthz", {}, 200),
    ("GET", "/metrics", {}, 200),
])
async def test_api_auth_scopes_and_parameters(daemon: Daemon, http: aiohttp.ClientSession,
                                              method: str, path: str, headers: dict,
                                              status: int) -> None:
    async with http.request(method, f"{daemon.url}{path}", headers=headers) as resp:
        assert resp.status == status, await resp.text()
        if status >= 400:
            body = await resp.json()
            assert set(body["error"]) >= {"code", "message"}


async def test_long_poll_returns_empty_after_wait_with_the_same_cursor(
        daemon: Daemon, http: aiohttp.ClientSession) -> None:
    cursor = await head(http, daemon)
    started = time.monotonic()
    status, page = await get_json(http, f"{daemon.url}/v1/events", after=cursor, wait=1)
    assert status == 200
    assert page == {"events": [], "next": cursor}
    assert time.monotonic() - started >= 0.9


async def test_metrics_count_messages_by_channel(daemon: Daemon,
                                                 http: aiohttp.ClientSession) -> None:
    await post_inbound(http, daemon.url, {"message_id": unique("m"), "from": {"id": "metric"},
                                          "text": "count me"})
    # A refusal of its own: the test must not rely on an earlier one having made the counter.
    status, _ = await post_raw(http, daemon, valid_body(), {"Omnirelay-Signature": "v1=abc"})
    assert status == 401
    async with http.get(f"{daemon.url}/metrics") as resp:
        text = await resp.text()
    assert 'omnirelay_messages_received_total{account="crm",channel="api"}' in text
    assert "omnirelay_ingest_latency_seconds_bucket" in text
    assert "omnirelay_outbox_depth" in text
    assert 'omnirelay_inbound_rejected_total{channel="api",reason="invalid_signature"}' in text
    batches = next(line for line in text.splitlines()
                   if line.startswith("omnirelay_store_batch_size_count"))
    assert float(batches.split()[-1]) > 0  # group commits are observed

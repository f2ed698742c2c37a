"""Store jobs of attachments fetched after the commit: queued with the message, claimed,
added once with ``message.updated``, retried, given up, recovered, erased."""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest

from gateway.config import StoreConfig
from gateway.store.base import StoredAttachment
from gateway.store.sqlite import SQLiteStore
from normalizer.model import InboundMessage, Party, RemoteAttachment
from tests.postgres.fixtures import new_store, store_config


@pytest.fixture
async def store(tmp_path: Path, backend: str,
                request: pytest.FixtureRequest) -> AsyncIterator[SQLiteStore]:
    """A fresh store of each backend (SQLite in a temp dir, a new PostgreSQL database)."""
    config = store_config(backend, tmp_path, request, synchronous="FULL")
    s = new_store(config)
    await s.open()
    yield s
    await s.close()


def with_urls(provider_id: str, *urls: str) -> InboundMessage:
    """An API-channel message whose attachments are given by URL."""
    return InboundMessage(
        channel="api", account="crm", provider_message_id=provider_id,
        sender=Party("external", "u1"), text="",
        remote_attachments=[RemoteAttachment(url, "api:crm", f"f{i}.pdf", "application/pdf")
                            for i, url in enumerate(urls)])


async def events_of(store: SQLiteStore, kind: str) -> list[dict[str, object]]:
    page = await store.events_after(0, 1000)
    events = [orjson.loads(body) for body in page.bodies]
    return [e for e in events if e["type"] == kind]


async def stage(store: SQLiteStore, data: bytes) -> StoredAttachment:
    """Put ``data`` in the blob store the way the fetcher does; its attachment."""
    digest = hashlib.sha256(data).hexdigest()
    staged = store.staging_path("test.part")
    staged.parent.mkdir(parents=True, exist_ok=True)
    staged.write_bytes(data)
    await store.put_blob_file(staged, digest)
    assert not staged.exists()
    return StoredAttachment("att_test1", "f0.pdf", "application/pdf", len(data), digest)


async def test_fetches_are_queued_with_their_message_and_only_once(
        store: SQLiteStore) -> None:
    first = await store.ingest(
        with_urls("m1", "https://files.example/a", "https://files.example/b"), [])
    repeat = await store.ingest(with_urls("m1", "https://files.example/a"), [])
    assert first.created and not repeat.created
    assert first.message["attachments"] == []
    claimed = await store.claim_fetches(10)
    assert [(c.message_id, c.url, c.attempts) for c in claimed] == [
        (first.message["id"], "https://files.example/a", 1),
        (first.message["id"], "https://files.example/b", 1)]
    assert await store.claim_fetches(10) == []  # in flight: not claimed twice
    backlog = await store.fetch_backlog()
    assert backlog["api:crm"].pending == 2


async def test_a_fetch_done_twice_adds_the_attachment_once(store: SQLiteStore) -> None:
    result = await store.ingest(with_urls("m2", "https://files.example/a"), [])
    (item,) = await store.claim_fetches(10)
    attachment = await stage(store, b"%PDF-1.7 hello")
    updated = await store.fetch_done(item.id, attachment)
    assert updated is not None
    assert await store.fetch_done(item.id, attachment) is None
    message = await store.get_message(result.message["id"])
    assert [a["id"] for a in message["attachments"]] == ["att_test1"]
    assert message["attachments"][0]["url"] == "/v1/attachments/att_test1"
    (event,) = await events_of(store, "message.updated")
    assert event["data"]["changed"] == ["attachments"]
    assert event["data"]["message"]["attachments"] == message["attachments"]
    _meta, path = await store.get_attachment("att_test1")
    assert path.read_bytes() == b"%PDF-1.7 hello"
    assert await store.fetch_backlog() == {}
    assert await store.next_fetch_due() is None


async def test_a_retried_fetch_waits_its_delay_and_keeps_its_error(store: SQLiteStore) -> None:
    await store.ingest(with_urls("m3", "https://files.example/a"), [])
    (item,) = await store.claim_fetches(10)
    await store.fetch_retry(item.id, 60.0, "HTTP 503")
    assert await store.claim_fetches(10) == []
    due = await store.next_fetch_due()
    assert due is not None and due > time.time() + 50
    assert (await store.fetch_backlog())["api:crm"].last_error == "HTTP 503"


async def test_a_failed_fetch_shows_the_attachment_with_its_error(store: SQLiteStore) -> None:
    result = await store.ingest(with_urls("m4", "https://files.example/gone"), [])
    (item,) = await store.claim_fetches(10)
    error = {"code": "media_refused", "message": "HTTP 404"}
    await store.fetch_failed(item.id, "f0.pdf", "application/pdf", error)
    assert await store.fetch_failed(item.id, "f0.pdf", "application/pdf", error) is None
    (entry,) = (await store.get_message(result.message["id"]))["attachments"]
    assert entry["error"] == error
    assert (entry["url"], entry["size"], entry["sha256"]) == (None, None, None)
    assert len(await events_of(store, "message.updated")) == 1


async def test_inflight_fetches_go_back_to_pending_after_a_crash(tmp_path: Path) -> None:
    config = StoreConfig(url=f"sqlite:///{tmp_path}/c.db", data_dir=tmp_path,
                         synchronous="FULL")
    first = SQLiteStore(config)
    await first.open()
    await first.ingest(with_urls("m5", "https://files.example/a"), [])
    assert len(await first.claim_fetches(10)) == 1
    await first.close()
    second = SQLiteStore(config)
    await second.open()
    try:
        assert await second.claim_fetches(10) == []
        assert await second.recover_fetches() == 1
        (again,) = await second.claim_fetches(10)
        assert again.attempts == 2
    finally:
        await second.close()


async def test_erasing_the_customer_drops_their_pending_fetches(store: SQLiteStore) -> None:
    result = await store.ingest(with_urls("m6", "https://files.example/private"), [])
    await store.erase_customer(result.message["customer_id"])
    assert await store.fetch_backlog() == {}
    assert await store.claim_fetches(10) == []

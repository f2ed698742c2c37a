"""Attachment bytes on PostgreSQL: in the database, each instance's ``<data_dir>/blobs`` a
cache of them, so instances with different data dirs serve each other's attachments
(docs/postgresql.md, "Attachment bytes")."""

from __future__ import annotations

import asyncio
import base64
import email
import email.policy
import hashlib
import os
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from adapters.email.config import EmailConfig
from adapters.email.outbound import Thread, render
from gateway.config import StoreConfig
from gateway.media_links import MediaLinks
from gateway.store.base import StoredAttachment
from gateway.store.postgres import PostgresStore, blobs
from gateway.store.sqlite import SQLiteStore
from gateway.store.transfer import transfer
from normalizer.model import InboundMessage, Party
from tests.conftest import API_SECRET, Daemon, base_config, free_port
from tests.email.test_adapter import item
from tests.helpers import bearer, post_inbound, unique, wait_until
from tests.postgres.server import PgServer

Open = Callable[[str, Path], Awaitable[PostgresStore]]


@pytest.fixture
async def open_store() -> AsyncIterator[Open]:
    """``await open_store(dsn, data_dir)``: an instance on the database with its own dir."""
    opened: list[PostgresStore] = []

    async def make(dsn: str, data_dir: Path) -> PostgresStore:
        store = PostgresStore(StoreConfig(url=dsn, data_dir=data_dir))
        await store.open()
        opened.append(store)
        return store

    yield make
    for store in opened:
        await store.close()


def inbound(provider_id: str, sender: str = "u1") -> InboundMessage:
    return InboundMessage(channel="api", account="a", provider_message_id=provider_id,
                          sender=Party("external", sender), text="see attached")


def rows(dsn: str, digest: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT COUNT(*) FROM blobs WHERE sha256 = %s", (digest,)).fetchone()
    assert row is not None
    return int(row[0])


async def test_bytes_stored_by_one_instance_are_read_by_another_through_its_cache(
        pg_server: PgServer, tmp_path: Path, open_store: Open) -> None:
    dsn = pg_server.fresh_database()
    a, b = await open_store(dsn, tmp_path / "a"), await open_store(dsn, tmp_path / "b")
    data = os.urandom(2_500_000)  # more than one chunk of the cache fill
    (att,) = await a.put_blobs([("scan.pdf", "application/pdf", data, False, None)])
    await a.ingest(inbound("m1"), [att])
    cached = b.blob_path(att.sha256)
    assert not cached.exists()
    meta, path = await b.get_attachment(att.id)
    assert path == cached and path.read_bytes() == data
    assert meta.filename == "scan.pdf" and meta.size == len(data)
    assert [p.name for p in cached.parent.iterdir()] == [att.sha256]  # no temporary file
    # Stored once, however often the same bytes come.
    (again,) = await b.put_blobs([("copy.pdf", "application/pdf", data, False, None)])
    assert again.sha256 == att.sha256 and rows(dsn, att.sha256) == 1


async def test_readers_of_the_same_missing_file_at_once_share_one_fetch(
        pg_server: PgServer, tmp_path: Path, open_store: Open,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Ten agents open the same image at once on an instance that has no copy: the bytes
    come from the database once, every reader gets them whole, and a reader who gives up
    cancels nothing for the others."""
    dsn = pg_server.fresh_database()
    a, b = await open_store(dsn, tmp_path / "a"), await open_store(dsn, tmp_path / "b")
    data = os.urandom(3_000_000)
    (att,) = await a.put_blobs([("photo.jpg", "image/jpeg", data, False, None)])
    fills: list[str] = []
    fill_cache = blobs.fill_cache

    def counted(conn: Any, sha256: str, path: Path) -> int | None:
        fills.append(sha256)
        return fill_cache(conn, sha256, path)

    monkeypatch.setattr(blobs, "fill_cache", counted)
    quitter = asyncio.ensure_future(b.blob_file(att.sha256))
    readers = [asyncio.ensure_future(b.blob_file(att.sha256)) for _ in range(10)]
    await asyncio.sleep(0)
    quitter.cancel()
    paths = await asyncio.gather(*readers)
    assert fills == [att.sha256]
    assert all(p.read_bytes() == data for p in paths)
    assert await b.blob_file(att.sha256) == paths[0] and fills == [att.sha256]


async def test_bytes_erased_while_an_instance_fetches_them_do_not_stay_in_its_cache(
        pg_server: PgServer, tmp_path: Path, open_store: Open,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """B reads an attachment's bytes from the database; before its file is in place, A
    erases the customer (the row goes, B hears it and finds no file to remove yet). The
    file B then puts in place goes too: an erased customer's bytes stay on no disk, and
    the reader gets the answer for bytes no longer stored."""
    dsn = pg_server.fresh_database()
    a, b = await open_store(dsn, tmp_path / "a"), await open_store(dsn, tmp_path / "b")
    (att,) = await a.put_blobs([("passport.jpg", "image/jpeg", b"personal bytes", False,
                                 None)])
    stored = await a.ingest(inbound("m1", "erase-me"), [att])
    read_them, go_on = threading.Event(), threading.Event()
    fill_cache = blobs.fill_cache

    def paused(conn: Any, sha256: str, path: Path) -> int | None:
        held = path.with_name(path.name + ".held")
        size = fill_cache(conn, sha256, held)  # read while the row exists
        read_them.set()
        assert go_on.wait(10)
        held.rename(path)  # in place only after the erasure
        return size

    monkeypatch.setattr(blobs, "fill_cache", paused)
    reading = asyncio.ensure_future(b.blob_file(att.sha256))
    assert await asyncio.to_thread(read_them.wait, 10)
    heard: list[str] = []
    # Noted once B's listener handed the notification to its loop (which runs it before
    # the fetch's end, scheduled later).
    b.pg.listens = {channel: (lambda payload, handler=handler: (handler(payload),
                                                               heard.append(payload)))
                    for channel, handler in b.pg.listens.items()}
    await a.erase_customer(stored.message["customer_id"])

    async def b_heard() -> bool:
        return any(att.sha256 in payload for payload in heard)
    await wait_until(b_heard)
    go_on.set()
    path = await reading
    assert not path.exists()
    assert not any(p.is_file() and att.sha256 in p.name
                   for p in b.blob_dir.rglob("*"))


async def test_a_fetched_file_is_streamed_into_the_database(
        pg_server: PgServer, tmp_path: Path, open_store: Open) -> None:
    dsn = pg_server.fresh_database()
    a, b = await open_store(dsn, tmp_path / "a"), await open_store(dsn, tmp_path / "b")
    data = os.urandom(3_000_001)
    digest = hashlib.sha256(data).hexdigest()
    staged = a.staging_path("f1.part")
    staged.parent.mkdir(parents=True, exist_ok=True)
    staged.write_bytes(data)
    await a.put_blob_file(staged, digest)
    assert not staged.exists() and a.blob_path(digest).read_bytes() == data
    assert (await b.blob_file(digest)).read_bytes() == data
    # The same download again (another instance fetched it too) is stored once.
    staged = b.staging_path("f2.part")
    staged.parent.mkdir(parents=True, exist_ok=True)
    staged.write_bytes(data)
    await b.put_blob_file(staged, digest)
    assert not staged.exists() and rows(dsn, digest) == 1


async def test_bytes_no_row_holds_are_a_missing_file(
        pg_server: PgServer, tmp_path: Path, open_store: Open) -> None:
    store = await open_store(pg_server.fresh_database(), tmp_path)
    assert not (await store.blob_file("0" * 64)).exists()


async def test_erasure_removes_the_row_and_every_instance_s_cached_file(
        pg_server: PgServer, tmp_path: Path, open_store: Open) -> None:
    dsn = pg_server.fresh_database()
    a, b = await open_store(dsn, tmp_path / "a"), await open_store(dsn, tmp_path / "b")
    (att,) = await a.put_blobs([("id.png", "image/png", b"personal bytes", False, None)])
    stored = await a.ingest(inbound("m1", "erase-me"), [att])
    (kept,) = await a.put_blobs([("other.txt", "text/plain", b"someone else's", False, None)])
    await a.ingest(inbound("m2", "stays"), [kept])
    assert (await b.blob_file(att.sha256)).is_file()
    await a.erase_customer(stored.message["customer_id"])
    assert rows(dsn, att.sha256) == 0 and rows(dsn, kept.sha256) == 1
    assert not a.blob_path(att.sha256).exists()

    async def evicted() -> bool:
        return not b.blob_path(att.sha256).exists()
    await wait_until(evicted)  # B heard it (NOTIFY)
    assert (await b.get_attachment(kept.id))[1].read_bytes() == b"someone else's"


async def test_a_purge_removes_the_rows_and_an_instance_down_meanwhile_drops_its_copy(
        pg_server: PgServer, tmp_path: Path, open_store: Open) -> None:
    dsn = pg_server.fresh_database()
    a = await open_store(dsn, tmp_path / "a")
    (att,) = await a.put_blobs([("old.txt", "text/plain", b"old bytes", False, None)])
    await a.ingest(inbound("m1"), [att])
    down = PostgresStore(StoreConfig(url=dsn, data_dir=tmp_path / "b"))
    await down.open()
    assert (await down.blob_file(att.sha256)).is_file()
    await down.close()
    result = await a.purge_older_than(0)
    assert result["attachments"] == 1 and rows(dsn, att.sha256) == 0
    b = await open_store(dsn, tmp_path / "b")
    assert b._sweep is not None
    await b._sweep  # the start-up sweep
    assert not b.blob_path(att.sha256).exists()


async def test_an_erasure_an_instance_did_not_hear_is_caught_up_when_it_listens_again(
        pg_server: PgServer, tmp_path: Path, open_store: Open) -> None:
    """B's listener was down when A erased a customer (B heard no NOTIFY): once B listens
    again (``resumed``, as its listener calls it), it drops the erased bytes' cached copy
    and keeps the rest."""
    dsn = pg_server.fresh_database()
    a, b = await open_store(dsn, tmp_path / "a"), await open_store(dsn, tmp_path / "b")
    assert b._sweep is not None
    await b._sweep
    (att,) = await a.put_blobs([("id.png", "image/png", b"personal bytes", False, None)])
    stored = await a.ingest(inbound("m1", "erase-me"), [att])
    (kept,) = await a.put_blobs([("other.txt", "text/plain", b"someone else's", False, None)])
    await a.ingest(inbound("m2", "stays"), [kept])
    for digest in (att.sha256, kept.sha256):
        assert (await b.blob_file(digest)).is_file()
    hear = b.pg.listens
    b.pg.listens = {}  # B's listener hears nothing from now on
    await a.erase_customer(stored.message["customer_id"])
    assert rows(dsn, att.sha256) == 0
    assert b.blob_path(att.sha256).exists()  # B did not hear it
    b.pg.listens = hear
    b.broadcasts.resumed()  # as its listener does: the handlers run on the loop

    async def rechecking() -> bool:
        return b._recheck is not None
    await wait_until(rechecking)
    assert b._recheck is not None
    await b._recheck
    assert not b.blob_path(att.sha256).exists()
    assert att.sha256 not in b.blob_cache
    assert (await b.get_attachment(kept.id))[1].read_bytes() == b"someone else's"


async def test_files_from_a_shared_directory_are_copied_in_at_start(
        pg_server: PgServer, tmp_path: Path, open_store: Open) -> None:
    """An upgrade: bytes stored before migration 0011 are only files in the shared dir."""
    dsn = pg_server.fresh_database()
    shared = tmp_path / "shared"
    data = b"stored before 0011"
    digest = hashlib.sha256(data).hexdigest()
    file = shared / "blobs" / digest[:2] / digest[2:4] / digest
    file.parent.mkdir(parents=True)
    file.write_bytes(data)
    first = await open_store(dsn, tmp_path / "first")
    att = StoredAttachment("att_old", "old.txt", "text/plain", len(data), digest, False, None)
    await first.ingest(inbound("m1"), [att])
    upgraded = await open_store(dsn, shared)
    assert upgraded._sweep is not None
    await upgraded._sweep
    assert rows(dsn, digest) == 1 and file.read_bytes() == data
    other = await open_store(dsn, tmp_path / "other")
    assert (await other.get_attachment("att_old"))[1].read_bytes() == data


async def test_migrate_carries_the_files_into_the_table_and_back(
        pg_server: PgServer, tmp_path: Path, open_store: Open) -> None:
    source = SQLiteStore(StoreConfig(url=f"sqlite:///{tmp_path}/s/omnirelay.db",
                                     data_dir=tmp_path / "s"))
    await source.open()
    data = os.urandom(1_500_000)
    (att,) = await source.put_blobs([("a.bin", "application/octet-stream", data, False, None)])
    await source.ingest(inbound("m1"), [att])
    await source.close()
    dsn = pg_server.new_database(template=None)
    counts = await asyncio.to_thread(transfer, f"sqlite:///{tmp_path}/s/omnirelay.db", dsn)
    assert counts["blobs"] == 1 and counts["blobs_missing"] == 0
    moved = await open_store(dsn, tmp_path / "elsewhere")
    assert (await moved.get_attachment(att.id))[1].read_bytes() == data
    back = f"sqlite:///{tmp_path}/back/omnirelay.db"
    counts = await asyncio.to_thread(transfer, dsn, back)
    assert counts["blobs"] == 1
    returned = SQLiteStore(StoreConfig(url=back, data_dir=tmp_path / "back"))
    await returned.open()
    try:
        assert (await returned.get_attachment(att.id))[1].read_bytes() == data
    finally:
        await returned.close()


async def test_two_daemons_with_their_own_data_dirs_serve_each_other_s_attachments(
        pg_server: PgServer, tmp_path: Path) -> None:
    """What an operator sees: instance B downloads what A took in, caches it, and forgets
    it when the customer is erased on A."""
    dsn = pg_server.new_database(template=None)
    extra = f"""
        [[channels]]
        type = "api"
        name = "crm"
        secret = "{API_SECRET}"
        """
    daemons = []
    for name in ("a", "b"):
        home = tmp_path / name
        home.mkdir()
        port = free_port()
        daemon = Daemon(home, base_config(home / "data", port, free_port(), extra=extra,
                                          store_url=dsn), port)
        daemon.start()
        daemons.append(daemon)
    a, b = daemons
    try:
        await asyncio.gather(a.wait_ready(timeout=60), b.wait_ready(timeout=60))
        data = os.urandom(200_000)
        digest = hashlib.sha256(data).hexdigest()
        async with aiohttp.ClientSession() as http:
            status, body = await post_inbound(http, a.url, {
                "message_id": unique("ext"), "from": {"id": unique("u"), "name": "Kim"},
                "text": "the receipt", "attachments": [{
                    "filename": "receipt.pdf", "content_type": "application/pdf",
                    "content_base64": base64.b64encode(data).decode()}]})
            assert status == 201, body
            (attachment,) = body["message"]["attachments"]
            cached = tmp_path / "b" / "data" / "blobs" / digest[:2] / digest[2:4] / digest
            assert not cached.exists()
            url = f"{b.url}/v1/attachments/{attachment['id']}"
            async with http.get(url, headers=bearer()) as resp:
                assert resp.status == 200
                assert resp.headers["Content-Type"] == "application/pdf"
                assert await resp.read() == data
            assert cached.read_bytes() == data
            async with http.delete(f"{a.url}/v1/customers/{body['message']['customer_id']}",
                                   headers=bearer()) as resp:
                assert resp.status == 200, await resp.text()

            async def gone_from_b() -> bool:
                async with http.get(url, headers=bearer()) as resp:
                    return resp.status == 404 and not cached.exists()
            await wait_until(gone_from_b)
    finally:
        for daemon in daemons:
            assert await daemon.stop() == 0, daemon.logs()[-3000:]


async def test_a_media_link_and_an_email_reply_on_another_instance_use_the_bytes(
        pg_server: PgServer, tmp_path: Path, open_store: Open) -> None:
    dsn = pg_server.fresh_database()
    a, b = await open_store(dsn, tmp_path / "a"), await open_store(dsn, tmp_path / "b")
    data = os.urandom(150_000)
    (att,) = await a.put_blobs([("photo.jpg", "image/jpeg", data, False, None)])
    await a.ingest(inbound("m1"), [att])

    links = MediaLinks(b, secret="secret", purpose="line images",
                       base_url="https://relay.example/hooks/line/main", ttl=600)
    app = web.Application()
    app.add_routes([links.route()])
    client: TestClient[web.Request, web.Application] = TestClient(
        TestServer(app, host="127.0.0.1"))
    await client.start_server()
    try:
        token = links.link(att.sha256, "image/jpeg").rsplit("/", 1)[1]
        response = await client.get(f"/media/{token}")
        assert response.status == 200 and await response.read() == data
    finally:
        await client.close()

    other = await open_store(dsn, tmp_path / "c")
    reply = item(attachments=[{"id": att.id, "filename": "photo.jpg",
                               "content_type": "image/jpeg", "size": len(data),
                               "sha256": att.sha256}])
    _id, wire = await render(EmailConfig("support@shop.example"), reply, Thread("Re: x"),
                             other.blob_file, plus_addressing=False)
    message = email.message_from_bytes(wire, policy=email.policy.default)
    (part,) = [p for p in message.walk() if p.get_filename() == "photo.jpg"]
    assert part.get_payload(decode=True) == data

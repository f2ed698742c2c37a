"""The PostgreSQL store's local attachment cache kept to ``[store] blob_cache_max_bytes``:
least recently read files go, a removed one is fetched again, a reader never gets a path
a removal takes away (docs/postgresql.md, "Cache size")."""

from __future__ import annotations

import asyncio
import email
import email.policy
import hashlib
import os
import random
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest
from structlog.testing import capture_logs

from adapters.email.config import EmailConfig
from adapters.email.outbound import Thread, render
from gateway.config import BLOB_CACHE_MAX_BYTES, StoreConfig, parse_config
from gateway.errors import ConfigErrors, StoreError
from gateway.metrics import Metrics
from gateway.store.base import StoredAttachment
from gateway.store.postgres import PostgresStore, blobs, cache
from gateway.store.postgres.blobs import cached_files
from gateway.store.postgres.cache import BlobCache
from normalizer.model import InboundMessage, Party
from tests.email.test_adapter import item
from tests.helpers import wait_until
from tests.postgres.server import PgServer

Open = Callable[..., Awaitable[PostgresStore]]
SIZE = 100_000


@pytest.fixture
async def open_store() -> AsyncIterator[Open]:
    """``await open_store(dsn, data_dir, **store_options)``: an instance with its own dir."""
    opened: list[PostgresStore] = []

    async def make(dsn: str, data_dir: Path, **options: Any) -> PostgresStore:
        store = PostgresStore(StoreConfig(url=dsn, data_dir=data_dir, **options))
        await store.open()
        opened.append(store)
        assert store._sweep is not None
        await store._sweep  # counted what it found
        return store

    yield make
    for store in opened:
        await store.close()


async def put(store: PostgresStore, count: int, size: int = SIZE) -> list[str]:
    """``count`` attachments of random bytes stored through ``store``: their digests."""
    stored = await store.put_blobs([(f"f{i}.bin", "application/octet-stream",
                                     os.urandom(size), False, None) for i in range(count)])
    return [att.sha256 for att in stored]


async def read(store: PostgresStore, digest: str) -> str:
    """Read an attachment as a caller does; the SHA-256 of the bytes it got."""
    path = await store.blob_file(digest)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def on_disk(store: PostgresStore) -> set[str]:
    return {f.sha256 for f in cached_files(store.blob_dir)}


async def test_the_cache_keeps_to_its_budget_dropping_the_least_recently_read(
        pg_server: PgServer, tmp_path: Path, open_store: Open) -> None:
    dsn = pg_server.fresh_database()
    writer = await open_store(dsn, tmp_path / "a", blob_cache_max_bytes=0)
    reader = await open_store(dsn, tmp_path / "b", blob_cache_max_bytes=350_000)
    reader.blob_cache.pin_seconds = 0  # callers here read at once
    metrics = Metrics()
    metrics.watch_blob_cache(reader.blob_cache)
    staged = reader.staging_path("download.part")
    staged.parent.mkdir(parents=True)
    staged.write_bytes(b"a download in progress" * 50_000)
    d = await put(writer, 4)
    with capture_logs() as logs:
        for digest in (d[0], d[1], d[2], d[0], d[3]):  # d[1] is the least recently read
            assert await read(reader, digest) == digest
        await reader.blob_cache.idle()
        assert on_disk(reader) == {d[0], d[2], d[3]}
        assert reader.blob_cache.size_bytes == 300_000
        # Read again: fetched from the database with the right bytes; d[2] goes now.
        assert await read(reader, d[1]) == d[1]
        await reader.blob_cache.idle()
    assert on_disk(reader) == {d[0], d[3], d[1]}
    passes = [e for e in logs if e["event"] == "store.blob_cache_evicted"]
    assert [(e["files"], e["bytes"]) for e in passes] == [(1, SIZE), (1, SIZE)]
    assert staged.read_bytes() == b"a download in progress" * 50_000
    exposition = generate_latest(metrics.registry).decode()
    assert "omnirelay_blob_cache_bytes 300000.0" in exposition
    assert "omnirelay_blob_cache_evicted_files_total 2.0" in exposition


async def test_an_email_reply_with_more_attachments_than_the_cache_holds_goes_out_whole(
        pg_server: PgServer, tmp_path: Path, open_store: Open) -> None:
    """An agent's reply carries three files that together exceed the cache's budget, on
    an instance that must fetch each one, slowly enough that an eviction pass runs after
    each: every file is read as soon as it is handed out, so the reply goes out with all
    three, never failing as "no longer stored"."""
    dsn = pg_server.fresh_database()
    writer = await open_store(dsn, tmp_path / "a", blob_cache_max_bytes=0)
    reader = await open_store(dsn, tmp_path / "b", blob_cache_max_bytes=250_000)
    reader.blob_cache.pin_seconds = 0  # the fetches outlast any pin
    stored = await writer.put_blobs([(f"scan{i}.pdf", "application/pdf", os.urandom(SIZE),
                                      False, None) for i in range(3)])

    async def slow_blob_file(sha256: str) -> Path:
        path = await reader.blob_file(sha256)
        await reader.blob_cache.idle()  # the pass this fetch started has finished
        return path

    reply = item(attachments=[{"id": att.id, "filename": att.filename,
                               "content_type": att.content_type, "size": att.size,
                               "sha256": att.sha256} for att in stored])
    _id, wire = await render(EmailConfig("support@shop.example"), reply, Thread("Re: x"),
                             slow_blob_file, plus_addressing=False)
    message = email.message_from_bytes(wire, policy=email.policy.default)
    sent = {part.get_filename(): hashlib.sha256(part.get_payload(decode=True)).hexdigest()
            for part in message.walk() if part.get_filename()}
    assert sent == {att.filename: att.sha256 for att in stored}
    assert reader.blob_cache.evicted_files >= 1  # the budget was kept meanwhile


async def test_a_reader_of_a_file_being_removed_waits_and_gets_the_bytes_again(
        pg_server: PgServer, tmp_path: Path, open_store: Open,
        monkeypatch: pytest.MonkeyPatch) -> None:
    dsn = pg_server.fresh_database()
    writer = await open_store(dsn, tmp_path / "a", blob_cache_max_bytes=0)
    reader = await open_store(dsn, tmp_path / "b", blob_cache_max_bytes=250_000)
    reader.blob_cache.pin_seconds = 0
    d = await put(writer, 3)
    for digest in d[:2]:
        assert await read(reader, digest) == digest
    gate = threading.Event()
    unlink_all = cache._unlink_all

    def held_up(files: list[tuple[Path, int]]) -> tuple[int, int]:
        assert gate.wait(10)
        return unlink_all(files)
    monkeypatch.setattr(cache, "_unlink_all", held_up)
    assert await read(reader, d[2]) == d[2]  # over budget: d[0] is chosen, not yet gone
    assert reader.blob_path(d[0]).is_file()
    late = asyncio.create_task(read(reader, d[0]))
    for _ in range(20):
        await asyncio.sleep(0)
    assert not late.done()  # the file is still there, but the path is not handed out
    gate.set()
    assert await late == d[0]
    await reader.blob_cache.idle()
    assert on_disk(reader) == {d[2], d[0]}


async def test_concurrent_readers_over_a_small_budget_always_get_the_bytes(
        pg_server: PgServer, tmp_path: Path, open_store: Open) -> None:
    dsn = pg_server.fresh_database()
    writer = await open_store(dsn, tmp_path / "a", blob_cache_max_bytes=0)
    reader = await open_store(dsn, tmp_path / "b", blob_cache_max_bytes=350_000)
    reader.blob_cache.pin_seconds = 0  # each reader reads the moment it has the path
    d = await put(writer, 8)
    order = [d[i] for i in random.Random(7).choices(range(8), k=80)]
    assert await asyncio.gather(*(read(reader, digest) for digest in order)) == order
    await reader.blob_cache.idle()
    assert reader.blob_cache.size_bytes <= 350_000 and reader.blob_cache.evicted_files > 0
    assert sum(reader.blob_path(x).stat().st_size for x in on_disk(reader)) \
        == reader.blob_cache.size_bytes


async def test_a_handed_out_file_stays_until_its_pin_runs_out(
        pg_server: PgServer, tmp_path: Path, open_store: Open) -> None:
    dsn = pg_server.fresh_database()
    writer = await open_store(dsn, tmp_path / "a", blob_cache_max_bytes=0)
    reader = await open_store(dsn, tmp_path / "b", blob_cache_max_bytes=250_000)
    now = [1000.0]
    reader.blob_cache.clock = lambda: now[0]
    d = await put(writer, 3)
    for digest in d:
        assert await read(reader, digest) == digest
    await reader.blob_cache.idle()
    assert on_disk(reader) == set(d)  # over budget, but each was handed out just now
    now[0] += cache.PIN_SECONDS + 1
    assert await read(reader, d[2]) == d[2]
    await reader.blob_cache.idle()
    assert on_disk(reader) == {d[1], d[2]}


async def test_a_file_larger_than_the_budget_is_served_then_goes_alone(
        pg_server: PgServer, tmp_path: Path, open_store: Open) -> None:
    dsn = pg_server.fresh_database()
    writer = await open_store(dsn, tmp_path / "a", blob_cache_max_bytes=0)
    reader = await open_store(dsn, tmp_path / "b", blob_cache_max_bytes=150_000)
    reader.blob_cache.pin_seconds = 0.2
    (small,) = await put(writer, 1, 50_000)
    (big,) = await put(writer, 1, 1_500_000)  # two chunks of the cache fill
    assert await read(reader, small) == small
    assert await read(reader, big) == big
    assert on_disk(reader) == {small, big}  # the rest is not pushed out to make room

    async def big_gone() -> bool:
        return big not in on_disk(reader)
    await wait_until(big_gone)  # once its pin ran out
    await reader.blob_cache.idle()
    assert on_disk(reader) == {small} and reader.blob_cache.size_bytes == 50_000
    assert await read(reader, big) == big  # and served again


async def test_the_start_sweep_counts_the_cache_and_brings_it_within_budget(
        pg_server: PgServer, tmp_path: Path, open_store: Open) -> None:
    dsn = pg_server.fresh_database()
    first = PostgresStore(StoreConfig(url=dsn, data_dir=tmp_path / "a"))
    await first.open()
    d = await put(first, 5)  # the storing instance keeps a copy of each
    await first.close()
    for age, digest in enumerate((d[2], d[0], d[4], d[1], d[3])):  # d[3] least recent
        when = 1_700_000_000 - 3600 * age
        os.utime(first.blob_path(digest), (when, when))
    staged = first.staging_path("download.part")
    staged.parent.mkdir(parents=True)
    staged.write_bytes(b"partial")

    unbounded = PostgresStore(StoreConfig(url=dsn, data_dir=tmp_path / "a",
                                          blob_cache_max_bytes=0))
    await unbounded.open()
    assert unbounded._sweep is not None
    await unbounded._sweep
    assert unbounded.blob_cache.size_bytes == 5 * SIZE and len(unbounded.blob_cache) == 5
    await unbounded.close()
    assert on_disk(unbounded) == set(d)

    bounded = await open_store(dsn, tmp_path / "a", blob_cache_max_bytes=350_000)
    await bounded.blob_cache.idle()
    assert on_disk(bounded) == {d[2], d[0], d[4]}
    assert bounded.blob_cache.size_bytes == 3 * SIZE and bounded.blob_cache.evicted_files == 2
    assert staged.read_bytes() == b"partial"
    assert await read(bounded, d[3]) == d[3]


async def test_a_file_whose_bytes_are_not_in_the_table_is_never_evicted(
        pg_server: PgServer, tmp_path: Path, open_store: Open,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """An upgrade from a shared directory whose copy-in failed: the file is the bytes."""
    dsn = pg_server.fresh_database()
    data = os.urandom(SIZE)
    digest = hashlib.sha256(data).hexdigest()
    shared = tmp_path / "shared"
    file = shared / "blobs" / digest[:2] / digest[2:4] / digest
    file.parent.mkdir(parents=True)
    file.write_bytes(data)
    first = await open_store(dsn, tmp_path / "first")
    await first.ingest(InboundMessage(
        channel="api", account="a", provider_message_id="m1", sender=Party("external", "u1"),
        text="see attached"), [StoredAttachment(
        "att_old", "old.bin", "application/octet-stream", SIZE, digest, False, None)])

    def refused(conn: object, sha256: str, path: Path) -> None:
        raise StoreError("the database refused it")
    monkeypatch.setattr(blobs, "copy_in", refused)
    upgraded = await open_store(dsn, shared, blob_cache_max_bytes=150_000)
    upgraded.blob_cache.pin_seconds = 0
    assert await read(upgraded, digest) == digest
    d = await put(first, 2)
    for other in d:
        assert await read(upgraded, other) == other
    await upgraded.blob_cache.idle()
    assert file.read_bytes() == data and digest not in upgraded.blob_cache
    assert on_disk(upgraded) == {digest, d[1]}


async def test_a_held_file_is_never_chosen(tmp_path: Path) -> None:
    def path_of(digest: str) -> Path:
        return tmp_path / digest
    for name in ("old", "new"):
        path_of(name).write_bytes(b"x" * 100)
    blob_cache = BlobCache(path_of, 150, pin_seconds=0)
    blob_cache.seed([("old", 100)])
    async with blob_cache.held(["old"]):  # being looked up: the next one goes instead
        blob_cache.added("new", 100)
        await blob_cache.idle()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old"]
    assert blob_cache.size_bytes == 100 and "new" not in blob_cache


def test_the_budget_is_a_store_setting_and_zero_means_none() -> None:
    assert StoreConfig().blob_cache_max_bytes == BLOB_CACHE_MAX_BYTES == 2 * 1024 ** 3
    config = parse_config('[store]\nurl = "postgresql://o@db/o"\nblob_cache_max_bytes = 0\n',
                          environ={})
    assert config.store.blob_cache_max_bytes == 0
    with pytest.raises(ConfigErrors) as caught:
        parse_config("[store]\nblob_cache_max_bytes = -1\n", environ={})
    assert [e.key for e in caught.value.errors] == ["store.blob_cache_max_bytes"]

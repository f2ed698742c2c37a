"""Compact storage (migration 0007): one stored copy of a message's JSON shared by its row
and its message.received event, zstd-compressed values, space given back by purges."""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import orjson
import pytest

from gateway.config import StoreConfig
from gateway.ids import iso, utcnow
from gateway.store import compact
from gateway.store.feed import read_events
from gateway.store.jobs.tx import Tx, _save_message
from gateway.store.sqlite import SQLiteStore, apply_migrations, migration_scripts
from normalizer.model import InboundMessage, Party


def inbound(provider_id: str, sender: str, text: str, raw: bytes | None = None
            ) -> InboundMessage:
    """An API-channel message with its raw payload."""
    body = raw if raw is not None else orjson.dumps({"message_id": provider_id, "text": text})
    return InboundMessage(channel="api", account="a", provider_message_id=provider_id,
                          sender=Party("external", sender, f"Name {sender}"), text=text,
                          raw=body, raw_content_type="application/json")


def config_for(folder: Path) -> StoreConfig:
    return StoreConfig(url=f"sqlite:///{folder}/c.db", data_dir=folder)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    s = SQLiteStore(config_for(tmp_path))
    await s.open()
    yield s
    await s.close()


async def from_table(store: SQLiteStore) -> dict[int, bytes]:
    """Every event as the feed serves it from the table (not from the tail in memory)."""
    page = await store.read(read_events, 0, 2**62, 1000)
    return dict(zip(page.seqs, page.bodies, strict=True))


async def test_events_stay_the_bytes_they_were_emitted_with_when_their_messages_change(
        store: SQLiteStore) -> None:
    [kept] = await store.put_blobs([("a.txt", "text/plain", b"attached", False, None)])
    first = await store.ingest(inbound("p1", "u1", "first text"), [kept])
    second = await store.ingest(inbound("p2", "u2", "second text"), [])
    third = await store.ingest(inbound("p3", "u3", "third text"), [])
    fourth = await store.ingest(inbound("p4", "u4", "fourth text"), [])
    emitted = await store.events_after(0, 1000)  # from memory: the bytes as emitted
    assert emitted.bodies and dict(zip(emitted.seqs, emitted.bodies, strict=True)) == (
        await from_table(store))

    # Every way a message row changes or goes: a status saved by a job, a merge, a purge
    # marking an attachment purged, any other UPDATE, a DELETE (an echo's duplicate).
    def changes(tx: Tx) -> None:
        _save_message(tx, {**first.message, "status": "read"})
        tx.conn.execute("UPDATE messages SET data = ? WHERE id = ?",
                        (orjson.dumps({**third.message, "text": "edited"}).decode(),
                         third.message["id"]))
        tx.conn.execute("DELETE FROM messages WHERE id = ?", (fourth.message["id"],))
        tx.conn.execute("UPDATE attachments SET created_at = ?",
                        (iso(utcnow() - timedelta(days=30)),))

    await store.write(changes)
    await store.merge_customers(first.message["customer_id"], second.message["customer_id"])
    await store.purge_older_than(7)

    assert (await store.get_message(first.message["id"]))["status"] == "read"
    assert (await store.get_message(first.message["id"]))["attachments"][0]["purged"]
    assert (await store.get_message(second.message["id"]))["customer_id"] == (
        first.message["customer_id"])
    assert (await store.get_message(third.message["id"]))["text"] == "edited"
    table = await from_table(store)
    for seq, body in zip(emitted.seqs, emitted.bodies, strict=True):
        assert table[seq] == body, orjson.loads(body)["type"]


async def test_a_message_received_event_stores_no_second_copy_of_its_message(
        store: SQLiteStore) -> None:
    text = "a text long enough to see where it is stored " * 4
    result = await store.ingest(inbound("p1", "u1", text), [])

    def stored(conn: sqlite3.Connection) -> tuple[bytes, str, bytes]:
        event = conn.execute("SELECT body, message_ref FROM events "
                             "WHERE type = 'message.received'").fetchone()
        message = conn.execute("SELECT data FROM messages").fetchone()
        return compact.unpack_bytes(event[0]), event[1], bytes(message[0])

    event_body, message_ref, message_data = await store.read(stored)
    assert message_ref == result.message["id"]
    assert text.encode() not in event_body  # the row's copy is the only one
    assert message_data.startswith(compact.MAGIC)  # stored compressed
    assert orjson.loads(compact.unpack(message_data)) == result.message


async def test_erasure_still_erases_events_that_shared_their_messages(
        tmp_path: Path) -> None:
    store = SQLiteStore(config_for(tmp_path))
    await store.open()
    secret = f"secret-{secrets.token_hex(8)}"
    try:
        gone = await store.ingest(inbound("p1", "gone", f"{secret} one"), [])
        await store.ingest(inbound("p2", "gone", f"{secret} two"), [])
        kept = await store.ingest(inbound("p3", "kept", "a keeper's text"), [])
        # One of the erased messages changed: its event holds its own copy.
        await store.write(lambda tx: _save_message(tx, {**gone.message, "status": "read"}))
        await store.erase_customer(gone.message["customer_id"])
        bodies = [orjson.loads(b) for b in (await from_table(store)).values()]
        erased = [b for b in bodies if b["data"] == {"erased": True}]
        assert len(erased) == 4  # customer.created, conversation.opened, 2 messages
        assert any(b["type"] == "message.received"
                   and b["data"].get("message") == kept.message for b in bodies)
    finally:
        await store.close()
    files = b"".join(p.read_bytes() for p in tmp_path.glob("c.db*"))
    everything = files + b"".join(compact.frames_in(files))
    assert b"a keeper's text" in everything  # the search sees compressed values
    assert secret.encode() not in everything


async def test_a_purge_gives_the_space_back_to_the_file_system(tmp_path: Path) -> None:
    config = config_for(tmp_path)
    store = SQLiteStore(config)
    await store.open()
    for i in range(300):  # random bytes do not compress: ~1.2 MB of raw payloads
        await store.ingest(inbound(f"p{i}", f"u{i % 30}", "hi",
                                   raw=secrets.token_bytes(4000)), [])
    await store.close()
    before = config.sqlite_path.stat().st_size
    store = SQLiteStore(config)
    await store.open()
    try:
        await store.write(lambda tx: tx.conn.execute(
            "UPDATE raw_payloads SET created_at = ?", (iso(utcnow() - timedelta(days=30)),)))
        assert (await store.purge_older_than(7))["raw_payloads"] == 300
        freelist = await store.read(
            lambda conn: conn.execute("PRAGMA freelist_count").fetchone()[0])
        assert freelist == 0
    finally:
        await store.close()
    after = config.sqlite_path.stat().st_size
    assert after < before - 1_000_000, (before, after)


async def test_rows_written_before_migration_0007_read_as_before(tmp_path: Path) -> None:
    config = config_for(tmp_path)
    conn = sqlite3.connect(config.sqlite_path, isolation_level=None)
    for version, sql in migration_scripts():
        if version < 7:
            conn.executescript(sql)
    conn.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, "
                 "applied_at TEXT NOT NULL)")
    conn.executemany("INSERT INTO schema_migrations VALUES (?, 'then')",
                     [(v,) for v, _ in migration_scripts() if v < 7])
    message = {"id": "msg_01", "conversation_id": "cnv_01", "customer_id": "cus_01",
               "channel": "api", "account": "a", "direction": "inbound", "text": "old",
               "provider": {"message_id": "p-old", "thread_id": None}, "status": "received"}
    body = orjson.dumps({"id": "evt_01", "seq": "1", "type": "message.received",
                         "created_at": "2025-01-01T00:00:00.000Z",
                         "data": {"message": message}})
    conn.execute("INSERT INTO customers (id, created_at, updated_at) VALUES ('cus_01', 't', 't')")
    conn.execute("INSERT INTO conversations (id, customer_id, channel, account, status, "
                 "opened_at, last_message_at) VALUES ('cnv_01', 'cus_01', 'api', 'a', "
                 "'open', 't', 't')")
    conn.execute("INSERT INTO messages VALUES ('msg_01', 'cnv_01', 'cus_01', 'api', 'a', "
                 "'inbound', 'p-old', 'received', 't', ?)", (orjson.dumps(message).decode(),))
    conn.execute("INSERT INTO raw_payloads VALUES ('msg_01', 'text/plain', ?, 't')",
                 (b"old raw",))
    conn.execute("INSERT INTO events VALUES (1, 'evt_01', 'message.received', 't', "
                 "'cnv_01', 'cus_01', ?)", (body,))
    conn.close()

    store = SQLiteStore(config)
    await store.open()  # applies 0007
    try:
        assert await from_table(store) == {1: body}
        assert await store.get_message("msg_01") == message
        assert await store.get_raw("msg_01") == ("text/plain", b"old raw")
        await store.write(lambda tx: _save_message(tx, {**message, "status": "read"}))
        assert await from_table(store) == {1: body}
        assert (await store.get_message("msg_01"))["status"] == "read"
    finally:
        await store.close()


def test_compact_values_read_back_and_plain_ones_read_as_they_are() -> None:
    value = orjson.dumps({"id": "msg_1", "text": "hello " * 20})
    packed = compact.pack(value)
    assert packed.startswith(compact.MAGIC) and len(packed) < len(value)
    assert compact.unpack(packed) == value
    assert compact.pack_many([value, b"{}"]) == [packed, compact.pack(b"{}")]
    assert compact.unpack('{"plain": "text"}') == '{"plain": "text"}'
    assert compact.unpack(b'{"plain": 1}') == b'{"plain": 1}'
    noise = secrets.token_bytes(500)  # does not compress: kept as received
    assert compact.pack_raw(noise) == noise
    lookalike = compact.MAGIC + noise  # a payload that starts like a frame is framed
    assert compact.unpack_bytes(compact.pack_raw(lookalike)) == lookalike


def test_the_builtin_dictionary_never_changes() -> None:
    # Stored values are compressed against it: other bytes need another dictionary id.
    dictionary_id, data = compact.builtin_dictionary()
    assert dictionary_id == 1
    assert hashlib.sha256(data).hexdigest() == BUILTIN_SHA256
    with pytest.raises(ValueError, match="differs"):
        compact.register(1, data + b"x")


def test_a_new_database_vacuums_incrementally(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "n.db", isolation_level=None)
    apply_migrations(conn)
    assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental
    conn.close()


BUILTIN_SHA256 = "8f4639c1718b27b210bd81dbaa1e054e55b22a07793af70fa9ff7f133d3f8a48"

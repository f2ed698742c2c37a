"""The SQLite store: migrations, group commit, dedupe under concurrency, threading rules."""

from __future__ import annotations

import asyncio
import secrets
import sqlite3
import threading
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.config import StoreConfig
from gateway.errors import NotFound, StoreError
from gateway.ids import iso, utcnow
from gateway.store.feed import read_events
from gateway.store.sqlite import SQLiteStore, apply_migrations, migration_scripts
from normalizer.model import InboundMessage, Party
from tests.postgres.fixtures import new_store, store_config


@pytest.fixture
async def store(tmp_path: Path, backend: str,
                request: pytest.FixtureRequest) -> AsyncIterator[SQLiteStore]:
    """A fresh store of each backend (SQLite in a temp dir, a new PostgreSQL database)."""
    config = store_config(backend, tmp_path, request, synchronous="NORMAL")
    seqs: list[int] = []
    s = new_store(config, on_commit=seqs.append)
    await s.open()
    s.commits = seqs  # type: ignore[attr-defined]
    yield s
    await s.close()


def inbound(provider_id: str, sender: str = "u1", *, channel: str = "api",
            refs: list[str] | None = None, text: str = "hi") -> InboundMessage:
    """An inbound message from an external id."""
    kind = "email" if channel == "email" else "external"
    return InboundMessage(channel=channel, account="a", provider_message_id=provider_id,
                          sender=Party(kind, sender), text=text, reply_refs=refs or [])


def test_migrations_apply_once_and_build_the_whole_schema(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "m.db", isolation_level=None)
    assert apply_migrations(conn) == [v for v, _ in migration_scripts()]
    assert apply_migrations(conn) == []
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"customers", "identities", "conversations", "messages", "events", "outbox",
            "webhook_deliveries", "idempotency_keys", "checkpoints"} <= tables
    # Every hot-path lookup is an index, not a scan.
    plan = " ".join(r[3] for r in conn.execute(
        "EXPLAIN QUERY PLAN SELECT data FROM messages WHERE channel='api' AND account='a' "
        "AND provider_message_id='x'"))
    assert "USING INDEX messages_by_provider_id" in plan
    plan = " ".join(r[3] for r in conn.execute(
        "EXPLAIN QUERY PLAN SELECT * FROM conversations WHERE customer_id='c' "
        "ORDER BY last_message_at DESC LIMIT 1"))
    assert "USING INDEX conversations_by_customer" in plan
    plan = " ".join(r[3] for r in conn.execute(  # e-mail threading, any account
        "EXPLAIN QUERY PLAN SELECT id FROM messages WHERE provider_message_id = 'x' "
        "AND channel = 'email' ORDER BY id LIMIT 1"))
    assert "USING INDEX messages_by_provider_id" in plan
    plan = " ".join(r[3] for r in conn.execute(  # merges and erasure
        "EXPLAIN QUERY PLAN SELECT m.id FROM messages m JOIN conversations c "
        "ON c.id = m.conversation_id WHERE c.customer_id = 'c'"))
    assert "SCAN" not in plan
    conn.close()


async def test_concurrent_ingest_of_one_message_stores_it_once(store: SQLiteStore) -> None:
    results = await asyncio.gather(*(store.ingest(inbound("same"), []) for _ in range(50)))
    assert sum(r.created for r in results) == 1
    assert len({r.message["id"] for r in results}) == 1
    page = await store.events_after(0, 100)
    assert len(page.bodies) == 3  # customer.created, conversation.opened, message.received


async def test_concurrent_writes_share_commits(store: SQLiteStore) -> None:
    batches_before = store.engine.batches
    await asyncio.gather(*(store.ingest(inbound(f"m{i}", f"u{i % 7}"), [])
                           for i in range(300)))
    batches = store.engine.batches - batches_before
    assert batches < 300 / 4, f"{batches} commits for 300 messages: no group commit"
    assert store.engine.jobs >= 300


async def test_known_senders_cost_no_per_batch_lookups_once_the_writer_knows_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLite's writer cache outlives batches: a second wave from the same customers in the
    same quarter hour reads none of their identities, conversations or metrics rows again
    (the batch prefetch asks only for what the cache lacks)."""
    from gateway.store import engine

    statements: list[str] = []
    connect = engine.CommitEngine.connect

    def traced(self: engine.CommitEngine, *, readonly: bool = False) -> sqlite3.Connection:
        conn = connect(self, readonly=readonly)
        if not readonly:
            conn.set_trace_callback(statements.append)
        return conn

    monkeypatch.setattr(engine.CommitEngine, "connect", traced)
    store = SQLiteStore(StoreConfig(url=f"sqlite:///{tmp_path}/k.db", data_dir=tmp_path))
    await store.open()
    try:
        senders = [f"known-{i}" for i in range(30)]
        await asyncio.gather(*(store.ingest(inbound(f"a-{s}", s), []) for s in senders))
        statements.clear()
        again = await asyncio.gather(*(store.ingest(inbound(f"b-{s}", s), [])
                                       for s in senders))
    finally:
        await store.close()
    assert all(result.created for result in again)
    lookups = [sql for sql in statements if sql.startswith("SELECT") and any(
        table in sql for table in ("FROM identities", "FROM customers", "FROM conversations",
                                   "FROM stat_conversations", "FROM stat_writers"))]
    assert lookups == []


async def test_a_failing_job_does_not_undo_the_others_in_its_batch(
        store: SQLiteStore) -> None:
    def boom(tx: object) -> None:
        raise ValueError("job failed")

    results = await asyncio.gather(store.ingest(inbound("before"), []), store.write(boom),
                                   store.ingest(inbound("after"), []), return_exceptions=True)
    assert isinstance(results[1], ValueError)
    assert results[0].created and results[2].created  # type: ignore[union-attr]
    for result in (results[0], results[2]):
        stored = await store.get_message(result.message["id"])  # type: ignore[union-attr]
        assert stored["provider"]["message_id"] in ("before", "after")


async def test_database_errors_reach_callers_as_store_errors(store: SQLiteStore) -> None:
    def broken(tx: object) -> None:
        tx.conn.execute("INSERT INTO no_such_table VALUES (1)")  # type: ignore[attr-defined]

    with pytest.raises(StoreError):
        await store.write(broken)


async def test_feed_is_notified_only_after_commit(store: SQLiteStore) -> None:
    await store.ingest(inbound("n1"), [])
    assert store.commits[-1] == await store.head_seq() == 3  # type: ignore[attr-defined]


async def test_reply_reference_joins_the_referenced_conversation(store: SQLiteStore) -> None:
    first = await store.ingest(inbound("a@x", "kim@x.com", channel="email"), [])
    # A second conversation of the same customer is newer, but the reference wins.
    await store.set_conversation_status(first.message["conversation_id"], "closed", None)
    await store.write(lambda tx: tx.conn.execute(
        "UPDATE conversations SET closed_at = ? WHERE id = ?",
        (iso(utcnow() - timedelta(days=30)), first.message["conversation_id"])))
    fresh = await store.ingest(inbound("b@x", "kim@x.com", channel="email"), [])
    assert fresh.message["conversation_id"] != first.message["conversation_id"]
    reply = await store.ingest(inbound("c@x", "kim@x.com", channel="email",
                                       refs=["unknown@x", "a@x"]), [])
    assert reply.message["conversation_id"] == first.message["conversation_id"]
    assert reply.message["in_reply_to"] == first.message["id"]
    conversation = await store.get_conversation(first.message["conversation_id"])
    assert conversation["status"] == "open"  # a threaded reply reopens


async def test_a_reference_into_another_customers_conversation_is_ignored(
        store: SQLiteStore) -> None:
    theirs = await store.ingest(inbound("t@x", "lee@x.com", channel="email"), [])
    mine = await store.ingest(inbound("m@x", "kim@x.com", channel="email", refs=["t@x"]), [])
    assert mine.message["conversation_id"] != theirs.message["conversation_id"]
    assert mine.message["in_reply_to"] is None


async def test_closed_conversation_reopens_within_the_window_not_after(
        store: SQLiteStore) -> None:
    first = await store.ingest(inbound("w1"), [])
    conversation_id = first.message["conversation_id"]
    await store.set_conversation_status(conversation_id, "closed", {"id": "a1", "name": None})
    again = await store.ingest(inbound("w2"), [])
    assert again.message["conversation_id"] == conversation_id
    await store.set_conversation_status(conversation_id, "closed", None)
    await store.write(lambda tx: tx.conn.execute(
        "UPDATE conversations SET closed_at = ? WHERE id = ?",
        (iso(utcnow() - timedelta(days=8)), conversation_id)))
    later = await store.ingest(inbound("w3"), [])
    assert later.message["conversation_id"] != conversation_id
    types = [b for b in (await store.events_after(0, 100)).bodies]
    assert sum(b"conversation.reopened" in b for b in types) == 1
    assert sum(b"conversation.opened" in b for b in types) == 2


async def test_a_failing_ingest_in_a_batch_is_undone_alone(store: SQLiteStore) -> None:
    bad = inbound("bad", "sender-of-bad")
    bad.context = {"not json": object()}  # fails after the customer row was written
    results = await asyncio.gather(store.ingest(inbound("good1", "g1"), []),
                                   store.ingest(bad, []),
                                   store.ingest(inbound("good2", "g2"), []),
                                   return_exceptions=True)
    assert isinstance(results[1], TypeError)
    assert results[0].created and results[2].created  # type: ignore[union-attr]
    with pytest.raises(NotFound):
        await store.find_customer("external", "sender-of-bad")
    seqs = [int(orjson.loads(b)["seq"]) for b in (await store.events_after(0, 100)).bodies]
    assert seqs == sorted(seqs)
    assert len(seqs) == 6


async def _in_one_batch(store: SQLiteStore, *writes: Any) -> list[Any]:
    """Run ``writes`` (awaitables of store writes) so that they share one writer batch.

    The writer is held busy by a job that waits on a gate; the writes queue up behind it
    and the writer then takes them all together.
    """
    started, gate = threading.Event(), threading.Event()

    def hold(tx: object) -> None:
        started.set()
        gate.wait(10)

    holder = asyncio.ensure_future(store.write(hold))
    await asyncio.to_thread(started.wait, 10)
    jobs_before = store.engine.jobs
    tasks = [asyncio.ensure_future(w) for w in writes]
    await asyncio.sleep(0)  # each task runs to its queue.put and waits for its future
    assert store.engine.queue.qsize() == len(writes)
    batches_before, reruns_before = store.engine.batches, store.engine.reruns
    gate.set()
    await holder
    results = await asyncio.gather(*tasks, return_exceptions=True)
    # The holder's batch, then one batch with every write.
    assert store.engine.batches == batches_before + 2
    assert store.engine.jobs == jobs_before + 1 + len(writes)
    assert store.engine.reruns == reruns_before  # no job failed: the fast path did it all
    return results


async def test_jobs_in_one_batch_see_what_earlier_jobs_of_the_batch_stored(
        store: SQLiteStore) -> None:
    count_messages = store.write(lambda tx: tx.conn.execute(
        "SELECT COUNT(*) FROM messages").fetchone()[0])
    first, again, reply, seen, other = await _in_one_batch(
        store,
        store.ingest(inbound("<a@shop>", "kim@x.com", channel="email"), []),
        store.ingest(inbound("<a@shop>", "kim@x.com", channel="email"), []),
        store.ingest(inbound("<b@x>", "kim@x.com", channel="email", refs=["<a@shop>"]), []),
        count_messages,
        store.ingest(inbound("<c@x>", "lee@x.com", channel="email"), []))
    assert first.created and not again.created
    assert again.message["id"] == first.message["id"]  # the same message, stored once
    assert reply.message["in_reply_to"] == first.message["id"]
    assert reply.message["conversation_id"] == first.message["conversation_id"]
    assert seen == 2  # a non-ingest job reads the rows its batch already wrote
    assert other.created
    for result in (first, reply, other):
        stored = await store.get_message(result.message["id"])
        assert stored == result.message
        conversation = await store.get_conversation(result.message["conversation_id"])
        assert conversation["last_message_at"] == result.message["received_at"]
    assert (await store.get_raw(first.message["id"])) is None  # these carried no raw bytes
    bodies = (await store.events_after(0, 100)).bodies
    events = [orjson.loads(b) for b in bodies]
    assert [int(e["seq"]) for e in events] == list(range(1, len(events) + 1))
    received = [e["data"]["message"]["id"] for e in events if e["type"] == "message.received"]
    assert received == [first.message["id"], reply.message["id"], other.message["id"]]


async def test_raw_payloads_of_a_batch_are_kept_with_their_messages(
        store: SQLiteStore) -> None:
    def with_raw(provider_id: str) -> InboundMessage:
        message = inbound(provider_id, f"sender-{provider_id}")
        message.raw, message.raw_content_type = f"raw {provider_id}".encode(), "text/plain"
        return message

    results = await _in_one_batch(store, *(store.ingest(with_raw(f"r{i}"), [])
                                           for i in range(37)))  # 32 + 4 + 1 rows
    for i, result in enumerate(results):
        assert await store.get_raw(result.message["id"]) == ("text/plain", f"raw r{i}".encode())


async def test_a_batch_finds_redeliveries_of_earlier_messages_and_sees_its_own_changes(
        store: SQLiteStore) -> None:
    earlier = await store.ingest(inbound("old-1"), [])
    erased = await store.ingest(inbound("old-2", "u2"), [])

    def forget(tx: object) -> None:  # stands in for any other job between the ingests
        tx.conn.execute("DELETE FROM messages WHERE id = ?",  # type: ignore[attr-defined]
                        (erased.message["id"],))

    again, _, after_forget = await _in_one_batch(
        store, store.ingest(inbound("old-1"), []), store.write(forget),
        store.ingest(inbound("old-2", "u2"), []))
    assert not again.created and again.message["id"] == earlier.message["id"]
    assert after_forget.created  # gone when it came again: stored anew
    assert after_forget.message["id"] != erased.message["id"]


# ------------------------------------------------------------ synchronous = FULL (default)


@pytest.fixture
async def durable_store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    """A store with the default durability: callers hear of a commit after its fsync."""
    config = StoreConfig(url=f"sqlite:///{tmp_path}/d.db", data_dir=tmp_path)
    assert config.synchronous == "FULL"
    s = SQLiteStore(config)
    await s.open()
    yield s
    await s.close()


async def test_a_write_is_answered_and_shown_in_the_feed_only_after_the_wal_is_synced(
        durable_store: SQLiteStore, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    store = durable_store
    await store.ingest(inbound("first"), [])  # the WAL exists; the syncer has its fd
    head = await store.head_seq()
    entered, release = threading.Event(), threading.Event()
    real_fdatasync = os.fdatasync

    def slow_fdatasync(fd: int) -> None:
        entered.set()
        release.wait(10)
        real_fdatasync(fd)

    monkeypatch.setattr(os, "fdatasync", slow_fdatasync)
    write = asyncio.ensure_future(store.ingest(inbound("second"), []))
    await asyncio.to_thread(entered.wait, 10)  # committed; its fsync is under way
    assert not write.done()
    assert await store.head_seq() == head
    assert (await store.events_after(head, 10)).bodies == []  # committed, not yet durable
    release.set()
    result = await write
    assert result.created
    assert await store.head_seq() > head
    assert len((await store.events_after(head, 10)).bodies) == 1


async def test_a_failed_fsync_stops_the_store_for_good(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """After a failed fsync the kernel may have dropped the pages while SQLite counts the
    commit as done: a retry would be "found" though not on disk. So the store stops taking
    writes (the daemon exits 75 and systemd restarts it), as PostgreSQL does."""
    import os

    reasons: list[str] = []
    config = StoreConfig(url=f"sqlite:///{tmp_path}/f.db", data_dir=tmp_path)
    store = SQLiteStore(config, on_fatal=reasons.append)
    await store.open()
    try:
        await store.ingest(inbound("before"), [])
        head = await store.head_seq()

        def failing_fdatasync(fd: int) -> None:
            raise OSError(5, "Input/output error")

        monkeypatch.setattr(os, "fdatasync", failing_fdatasync)
        with pytest.raises(StoreError, match="fsync"):
            await store.ingest(inbound("during"), [])
        monkeypatch.undo()
        with pytest.raises(StoreError, match="restart"):
            await store.ingest(inbound("after"), [])  # the disk works again: still refused
        with pytest.raises(StoreError):
            await store.ping()
        assert len(reasons) == 1 and "restart" in reasons[0]
        assert await store.head_seq() == head  # nothing unsynced reached the feed
        assert (await store.events_after(head, 10)).bodies == []
    finally:
        await store.close()
    # A restart recovers: the store opens and takes writes again.
    again = SQLiteStore(config)
    await again.open()
    try:
        assert (await again.ingest(inbound("after restart"), [])).created
        await again.ping()
    finally:
        await again.close()


async def test_the_wal_is_folded_back_and_restarted_under_continuous_writes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.store import engine

    monkeypatch.setattr(engine, "_CHECKPOINT_PAGES", 64)
    monkeypatch.setattr(engine, "_CHECKPOINT_EVERY", 2)
    config = StoreConfig(url=f"sqlite:///{tmp_path}/w.db", data_dir=tmp_path)
    store = SQLiteStore(config)
    await store.open()
    try:
        wal = tmp_path / "w.db-wal"
        sizes: list[int] = []
        steady = 0  # rounds in a row that wrote ~100 KB and did not grow the WAL file
        round_ = 0
        # At least 40 rounds, more (bounded) until the WAL is reused for 10 rounds in a
        # row: on a disk shared with other work the background checkpoint's fsyncs lag.
        while round_ < 40 or (steady < 10 and round_ < 200):
            await asyncio.gather(*(store.ingest(inbound(f"r{round_}-{i}", f"u{i}",
                                                        text=secrets.token_urlsafe(4500)), [])
                                   for i in range(20)))
            sizes.append(wal.stat().st_size)
            steady = steady + 1 if len(sizes) > 1 and sizes[-1] == sizes[-2] else 0
            round_ += 1
    finally:
        await store.close()
    # 800+ messages of ~4.5 KB (random: stored compressed, they stay that big) went through
    # the WAL (never folded back, it reaches ~10 MiB by round 40), yet the file stopped
    # growing: it was folded back and written again from its start (SQLite reuses the file
    # rather than truncating it), a few multiples of the 64-page threshold at most.
    assert steady >= 10
    assert (tmp_path / "w.db").stat().st_size > 3 * 1024 * 1024
    assert max(sizes) <= 8 * 1024 * 1024
    check = sqlite3.connect(tmp_path / "w.db")
    assert check.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 20 * round_
    assert check.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    check.close()


async def test_the_feed_reads_the_same_from_memory_and_from_the_table(
        durable_store: SQLiteStore) -> None:
    store = durable_store
    store.tail.max_bytes = 20_000  # a short tail: older cursors are read from the table
    for round_ in range(10):
        await asyncio.gather(*(store.ingest(inbound(f"t{round_}-{i}", f"u{i % 5}"), [])
                               for i in range(12)))
    head = await store.head_seq()
    assert 0 < store.tail.lo < head - 10  # trimmed, and still holds the newest events

    def from_table(conn: sqlite3.Connection, after: int, limit: int) -> list[tuple[int, bytes]]:
        page = read_events(conn, after, 2**62, limit)
        return list(zip(page.seqs, page.bodies, strict=True))

    for after in (0, store.tail.lo - 1, store.tail.lo, store.tail.lo + 3, head - 1, head):
        for limit in (1, 7, 1000):
            page = await store.events_after(after, limit)
            expected = await store.read(from_table, after, limit)
            assert list(zip(page.seqs, page.bodies, strict=True)) == expected, (after, limit)
            assert page.next == (expected[-1][0] if expected else after)


async def test_a_proactive_message_on_a_channel_with_several_accounts_must_name_one(
        store: SQLiteStore) -> None:
    from gateway.errors import ValidationFailed
    from gateway.store.base import OutboundRequest, Route

    first = await store.ingest(InboundMessage(
        channel="sms", account="kr-sms", provider_message_id="SM1",
        sender=Party("phone", "+821012345678"), text="hi"), [])
    routes = [Route("sms", "us-sms", Party("phone", "+15550100"), ("phone",)),
              Route("sms", "kr-sms", Party("phone", "+8220000000"), ("phone",))]
    with pytest.raises(ValidationFailed) as refused:
        await store.enqueue_outbound(
            conversation_id=None, customer_id=first.message["customer_id"],
            request=OutboundRequest(text="sale!", channel="sms"), routes=routes,
            idempotency=None)
    assert refused.value.details["accounts"] == ["kr-sms", "us-sms"]
    _, sent = await store.enqueue_outbound(
        conversation_id=None, customer_id=first.message["customer_id"],
        request=OutboundRequest(text="sale!", channel="sms", account="us-sms"),
        routes=routes, idempotency=None)
    assert (sent["account"], sent["to"]["address"]) == ("us-sms", "+821012345678")
    # A reply naming the channel goes out on the account the customer wrote to.
    _, reply = await store.enqueue_outbound(
        conversation_id=first.message["conversation_id"], customer_id=None,
        request=OutboundRequest(text="thanks", channel="sms"), routes=routes,
        idempotency=None)
    assert reply["account"] == "kr-sms"


async def test_close_leaves_the_database_file_self_contained(tmp_path: Path) -> None:
    import shutil

    config = StoreConfig(url=f"sqlite:///{tmp_path}/c.db", data_dir=tmp_path)
    store = SQLiteStore(config)
    await store.open()
    results = await asyncio.gather(*(store.ingest(inbound(f"c{i}", f"u{i % 9}"), [])
                                     for i in range(300)))
    await store.get_message(results[0].message["id"])  # reader connections are open
    await store.close()
    assert not (tmp_path / "c.db-wal").exists() or (tmp_path / "c.db-wal").stat().st_size == 0
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copyfile(tmp_path / "c.db", alone / "c.db")
    check = sqlite3.connect(alone / "c.db")
    assert check.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 300
    check.close()


async def test_a_checkpoint_made_once_keeps_the_first_value(store: SQLiteStore) -> None:
    assert await store.init_checkpoint("webchat:shop:token-secret", "first") == "first"
    assert await store.init_checkpoint("webchat:shop:token-secret", "second") == "first"
    assert await store.get_checkpoint("webchat:shop:token-secret") == "first"

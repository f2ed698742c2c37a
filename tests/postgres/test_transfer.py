"""``omnirelay migrate --from … --to …``: a store moved to PostgreSQL and back keeps every
id, seq and cursor; an interrupted copy resumes; a non-empty target is refused."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gateway.automation.jobs import _send_automatic
from gateway.config import StoreConfig
from gateway.stats.query import StatsQuery, period
from gateway.store.base import OutboundRequest, Route
from gateway.store.postgres import PostgresStore
from gateway.store.sqlite import SQLiteStore
from gateway.store.transfer import Interrupted, TransferError, transfer
from normalizer.model import InboundMessage, Party, RemoteAttachment
from tests.postgres.server import PgServer

ROUTE = Route("api", "a", Party("external", "omnirelay:a"), ("external", "email"))
AGENT = {"id": "a-1", "name": "Ji-woo"}


def inbound(provider_id: str, sender: str, **kwargs: Any) -> InboundMessage:
    return InboundMessage(channel="api", account="a", provider_message_id=provider_id,
                          sender=Party("external", sender, f"Name {sender}"),
                          text=f"text {provider_id}",
                          raw=b'{"raw": "' + provider_id.encode() + b'"}',
                          raw_content_type="application/json", **kwargs)


async def fill(store: SQLiteStore) -> dict[str, Any]:
    """A store with something of everything: customers (one merged, one erased), replies
    (one sent, one queued), an attachment, a pending fetch, webhook rows, a checkpoint,
    conversation fields, an opt-out, an automatic send, a closed conversation's metrics."""
    blobs = await store.put_blobs([("a.txt", "text/plain", b"attached bytes", False, None)])
    first = await store.ingest(inbound("m1", "u1", linked_identities=[
        Party("email", "kim@example.com")]), blobs)
    for i in range(2, 30):
        await store.ingest(inbound(f"m{i}", f"u{i % 7}"), [])
    await store.ingest(inbound("m-fetch", "u2", remote_attachments=[
        RemoteAttachment("https://files.example/a", "api:a", "a.pdf", "application/pdf")]), [])
    other = await store.ingest(inbound("m-merge", "u-other"), [])
    await store.merge_customers(first.message["customer_id"], other.message["customer_id"])
    erased = await store.ingest(inbound("m-erase", "u-erase"), [])
    await store.erase_customer(erased.message["customer_id"])
    conversation = first.message["conversation_id"]
    for text in ("sent reply", "queued reply"):
        await store.enqueue_outbound(conversation_id=conversation, customer_id=None,
                                     request=OutboundRequest(text=text), routes=[ROUTE],
                                     idempotency=("admin", text, "hash"))
    (claimed,) = await store.claim_outbox(10)
    await store.outbox_sent(claimed.message["id"], "provider-1")
    await store.fan_out("hook", lambda _t: True)
    await store.ingest(inbound("m-late", "u1"), [])
    await store.fan_out("hook", lambda _t: True)
    await store.set_checkpoint("imap:x", "42")
    await store.patch_conversation(conversation, {"tags": ["vip"], "assignee": AGENT}, AGENT)
    await store.set_opt_out("email", "kim@example.com", "api", "a", "STOP")
    await store.write(_send_automatic, conversation, OutboundRequest(
        text="thanks", automatic="acknowledgement"), [ROUTE], [("ack:x", None)], None)
    closed = (await store.ingest(inbound("m-closed", "u-closed"), [])).message
    await store.set_conversation_status(closed["conversation_id"], "closed", AGENT)
    return {"first": first.message, "conversation": conversation, "blob": blobs[0]}


async def snapshot(store: SQLiteStore, known: dict[str, Any]) -> dict[str, Any]:
    """What a help desk and the daemon read: the feed from several cursors, messages,
    the customer, the checkpoint, the outbox and the webhook rows."""
    page = await store.events_after(0, 10_000)
    middle = await store.events_after(page.seqs[len(page.seqs) // 2], 5)
    first = known["first"]
    return {
        "feed": list(zip(page.seqs, page.bodies, strict=True)), "middle": middle.bodies,
        "head": await store.head_seq(),
        "messages": await store.list_messages(known["conversation"], None, 100),
        "customer": await store.get_customer(first["customer_id"]),
        "raw": await store.get_raw(first["id"]),
        "attachment": (await store.get_attachment(known["blob"].id))[0],
        "checkpoint": await store.get_checkpoint("imap:x"),
        "depth": await store.outbox_depth(),
        "backlog": await store.fetch_backlog(),
        "tagged": await store.list_conversations(status=None, customer_id=None, after=None,
                                                 limit=10, tag="vip", assignee="a-1"),
        "opted_out": await store.opted_out("email", "kim@example.com", "api", "a"),
        "stats": await store.stats(StatsQuery(*period(None, None), "agent")),
        # The acknowledgement's key came along: the same one again queues nothing.
        "ack_again": await store.write(_send_automatic, known["conversation"], OutboundRequest(
            text="thanks", automatic="acknowledgement"), [ROUTE], [("ack:x", None)], None),
    }


async def opened(store: SQLiteStore) -> SQLiteStore:
    await store.open()
    return store


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/source.db"


async def test_a_store_moved_to_postgres_and_back_reads_the_same(
        pg_server: PgServer, tmp_path: Path, sqlite_url: str) -> None:
    source = await opened(SQLiteStore(StoreConfig(url=sqlite_url, data_dir=tmp_path)))
    known = await fill(source)
    before = await snapshot(source, known)
    await source.close()
    assert [c["tags"] for c in before["tagged"]] == [["vip"]] and before["opted_out"]
    assert before["ack_again"] is None
    [closer] = [g for g in before["stats"]["groups"] if g["key"] == "a-1"]
    assert closer["conversations_closed"] == 1

    pg_url = pg_server.new_database(template=None)
    counts = transfer(sqlite_url, pg_url)
    assert counts["events"] == len(before["feed"]) and counts["messages"] > 30
    moved = await opened(PostgresStore(StoreConfig(url=pg_url, data_dir=tmp_path)))
    try:
        assert await snapshot(moved, known) == before
        # Numbering goes on after the copied rows: the feed, the outbox, the deliveries.
        late = await moved.ingest(inbound("m-after", "u3"), [])
        page = await moved.events_after(before["head"], 10)
        assert page.seqs[0] == before["head"] + 1
        assert late.message["id"].encode() in page.bodies[-1]
        (queued,) = await moved.claim_outbox(10)
        assert queued.message["text"] == "queued reply"
        assert await moved.fan_out("hook", lambda _t: True) > 0
        assert len(await moved.claim_deliveries("hook", 100)) > 0
    finally:
        await moved.close()

    back_url = f"sqlite:///{tmp_path}/back.db"
    transfer(pg_url, back_url)
    back = await opened(SQLiteStore(StoreConfig(url=back_url, data_dir=tmp_path)))
    try:
        again = await snapshot(back, known)
        assert again["feed"][:len(before["feed"])] == before["feed"]
        assert again["head"] == before["head"] + 1
        assert again["tagged"] == before["tagged"] and again["opted_out"]
        assert again["ack_again"] is None
    finally:
        await back.close()


async def test_a_non_empty_target_is_refused(pg_server: PgServer, tmp_path: Path,
                                             sqlite_url: str) -> None:
    source = await opened(SQLiteStore(StoreConfig(url=sqlite_url, data_dir=tmp_path)))
    await source.ingest(inbound("m1", "u1"), [])
    await source.close()
    pg_url = pg_server.new_database(template=None)
    transfer(sqlite_url, pg_url)
    with pytest.raises(TransferError, match="not empty"):
        transfer(sqlite_url, pg_url)


async def test_an_interrupted_copy_resumes_where_it_stopped(
        pg_server: PgServer, tmp_path: Path, sqlite_url: str) -> None:
    source = await opened(SQLiteStore(StoreConfig(url=sqlite_url, data_dir=tmp_path)))
    known = await fill(source)
    before = await snapshot(source, known)
    await source.close()
    pg_url = pg_server.new_database(template=None)
    with pytest.raises(Interrupted):
        transfer(sqlite_url, pg_url, chunk=7, stop_after=6)
    transfer(sqlite_url, pg_url, chunk=7)  # not refused: it goes on
    moved = await opened(PostgresStore(StoreConfig(url=pg_url, data_dir=tmp_path)))
    try:
        assert await snapshot(moved, known) == before
    finally:
        await moved.close()


def test_the_cli_moves_a_store_and_says_why_it_refuses(
        pg_server: PgServer, tmp_path: Path, sqlite_url: str) -> None:
    import asyncio

    async def make() -> None:
        store = await opened(SQLiteStore(StoreConfig(url=sqlite_url, data_dir=tmp_path)))
        await store.ingest(inbound("m1", "u1"), [])
        await store.close()

    asyncio.run(make())
    pg_url = pg_server.new_database(template=None)
    command = [sys.executable, "-m", "gateway", "migrate", "--from", sqlite_url, "--to", pg_url]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert "messages 1" in done.stdout
    again = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert again.returncode == 1
    assert "not empty" in again.stderr

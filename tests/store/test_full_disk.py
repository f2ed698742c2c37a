"""A full disk: every write fails cleanly with the store's unavailable error (503 +
Retry-After at the API, never 500), nothing is half-stored, and the store recovers by
itself when space returns."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from gateway.config import StoreConfig
from gateway.errors import StoreError
from gateway.store.base import OutboundRequest, Route
from gateway.store.sqlite import SQLiteStore
from normalizer.model import InboundMessage, Party

TABLES = ("customers", "identities", "conversations", "messages", "raw_payloads",
          "attachments", "events", "outbox", "checkpoints")

# Run in a child process: the file-size limit applies to the whole process. Past the
# limit a write() fails with EFBIG, as it does with ENOSPC on a full disk.
CHILD = r'''
import asyncio, json, resource, sqlite3, sys
from pathlib import Path
from gateway.config import StoreConfig
from gateway.errors import StoreError
from gateway.store.base import OutboundRequest, Route
from gateway.store.sqlite import SQLiteStore
from normalizer.model import InboundMessage, Party

TABLES = @TABLES@


def inbound(provider_id, sender, raw=None):
    message = InboundMessage(channel="api", account="a", provider_message_id=provider_id,
                             sender=Party("external", sender), text="x" * 300)
    message.raw = raw
    return message


def counts(path):
    conn = sqlite3.connect(path)
    try:
        return {t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in TABLES}
    finally:
        conn.close()


async def main(data):
    db = data / "f.db"
    store = SQLiteStore(StoreConfig(url=f"sqlite:///{db}", data_dir=data,
                                    synchronous=sys.argv[2]))
    await store.open()
    first = await store.ingest(inbound("before", "u1"), [])
    conversation_id = first.message["conversation_id"]
    routes = [Route("api", "a", Party("external", "shop"), ("external",))]
    before = counts(db)
    files_before = sorted(str(p) for p in data.rglob("*") if p.is_file())

    async def attach(i):
        stored = await store.put_blobs([("a.bin", "application/octet-stream",
                                         bytes([i]) * 20000, False, None)])
        return await store.ingest(inbound(f"att{i}", f"s{i}"), stored)

    writes = [
        lambda i: store.ingest(inbound(f"new{i}", f"s{i}"), []),
        lambda i: store.ingest(inbound(f"raw{i}", "u1", raw=b"r" * 5000), []),
        attach,
        lambda i: store.enqueue_outbound(conversation_id=conversation_id, customer_id=None,
                                         request=OutboundRequest(text="hi"), routes=routes,
                                         idempotency=None),
        lambda i: store.set_conversation_status(conversation_id, "closed", None),
        lambda i: store.set_checkpoint(f"k{i}", "v" * 1000),
        lambda i: store.add_identity(first.message["customer_id"], "email", f"u{i}@x.com"),
        lambda i: store.purge_older_than(0),
    ]
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1, hard))
    outcomes = []

    async def one(i):
        try:
            await writes[i % len(writes)](i)
            outcomes.append("stored")
        except StoreError as exc:
            outcomes.append("StoreError")
        except Exception as exc:
            outcomes.append(f"{type(exc).__name__}: {exc}")

    await asyncio.gather(*(one(i) for i in range(40)))
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    during = counts(db)
    files_during = sorted(str(p) for p in data.rglob("*") if p.is_file()
                          and not p.name.startswith("f.db"))
    after = await store.ingest(inbound("after", "u2"), [])
    reply = await store.enqueue_outbound(conversation_id=conversation_id, customer_id=None,
                                         request=OutboundRequest(text="back"), routes=routes,
                                         idempotency=None)
    await store.ping()
    await store.close()
    print(json.dumps({"outcomes": outcomes, "before": before, "during": during,
                      "files_before": [f for f in files_before if "f.db" not in f],
                      "files_during": files_during, "after": after.created,
                      "reply": reply[0], "final": counts(db)}))


asyncio.run(main(Path(sys.argv[1])))
'''.replace("@TABLES@", repr(TABLES))


@pytest.mark.parametrize("synchronous", ["FULL", "NORMAL"])
def test_with_the_disk_full_every_write_fails_cleanly_and_the_store_recovers(
        tmp_path: Path, synchronous: str) -> None:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    data = tmp_path / "data"
    data.mkdir()
    done = subprocess.run([sys.executable, str(script), str(data), synchronous],
                          capture_output=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    result = orjson.loads(done.stdout.splitlines()[-1])
    assert result["outcomes"] == ["StoreError"] * 40  # 503 + Retry-After, never a 500
    assert result["during"] == result["before"]  # nothing half-stored
    assert result["files_during"] == result["files_before"]  # no partial attachment files
    assert result["after"] and result["reply"] == 202  # space is back: it works again
    assert result["final"]["messages"] == result["before"]["messages"] + 2


async def test_database_or_disk_is_full_fails_the_batch_with_that_error(
        tmp_path: Path) -> None:
    """SQLITE_FULL from a statement (here: the database may not grow) rolls SQLite's whole
    transaction back; the callers hear why, not "no such savepoint"."""
    store = SQLiteStore(StoreConfig(url=f"sqlite:///{tmp_path}/s.db", data_dir=tmp_path))
    await store.open()
    try:
        first = await store.ingest(InboundMessage(
            channel="api", account="a", provider_message_id="m0",
            sender=Party("external", "u0"), text="hi"), [])
        pages = await store.read(lambda conn: conn.execute("PRAGMA page_count").fetchone()[0])
        await store.write(lambda tx: tx.conn.execute(f"PRAGMA max_page_count = {pages + 2}"))
        events_before = await store.head_seq()
        routes = [Route("api", "a", Party("external", "shop"), ("external",))]
        results = await asyncio.gather(
            *(store.ingest(InboundMessage(channel="api", account="a",
                                          provider_message_id=f"m{i}",
                                          sender=Party("external", f"u{i}"),
                                          text="x" * 3000), []) for i in range(1, 20)),
            *(store.enqueue_outbound(conversation_id=first.message["conversation_id"],
                                     customer_id=None, request=OutboundRequest(text="y" * 3000),
                                     routes=routes, idempotency=None) for _ in range(10)),
            return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        assert failures and all(isinstance(r, StoreError) for r in failures), failures
        assert all("database or disk is full" in str(r) for r in failures)
        stored = [r for r in results if not isinstance(r, BaseException)]
        assert await store.head_seq() >= events_before  # what committed is whole
        await store.write(lambda tx: tx.conn.execute("PRAGMA max_page_count = 1073741823"))
        assert (await store.ingest(InboundMessage(
            channel="api", account="a", provider_message_id="later",
            sender=Party("external", "u0"), text="hi"), [])).created
        await store.ping()
        count = await store.read(lambda c: c.execute("SELECT COUNT(*) FROM messages"
                                                     ).fetchone()[0])
        assert count == 2 + len(stored)
    finally:
        await store.close()

"""Backups that restore, retention that purges, erasure that leaves nothing behind."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import random
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from gateway.store import compact
from tests.conftest import TOKEN, Receiver
from tests.helpers import all_events, bearer, get_json, post_inbound, post_json, unique
from tests.ops.conftest import OpsDaemon, crm_config, omnirelay_async, table_text

OLD = "2000-01-01T00:00:00.000Z"


def attachment(filename: str, data: bytes) -> dict[str, str]:
    """An API-channel attachment."""
    return {"filename": filename, "content_type": "application/octet-stream",
            "content_base64": base64.b64encode(data).decode()}


def blob(data_dir: Path, data: bytes) -> Path:
    """Where the attachment store keeps these bytes."""
    digest = hashlib.sha256(data).hexdigest()
    return data_dir / "blobs" / digest[:2] / digest[2:4] / digest


async def send(http: aiohttp.ClientSession, base: str, customer: str, text: str,
               **fields: Any) -> dict[str, Any]:
    """One signed inbound message from ``customer``; returns the stored message."""
    sender = {"id": customer, **fields.pop("sender", {})}
    status, body = await post_inbound(http, base, {
        "message_id": unique("m"), "from": sender, "text": text, **fields})
    assert status == 201, body
    return body["message"]  # type: ignore[no-any-return]


async def start(tmp: Path, config: str, port: int, daemons: list[OpsDaemon]) -> OpsDaemon:
    """Start a daemon and wait for /readyz."""
    daemon = OpsDaemon(tmp, config, port)
    daemons.append(daemon)
    daemon.start()
    await daemon.wait_ready()
    return daemon


async def test_online_backup_restores_to_a_working_store(
        tmp_path: Path, daemons: list[OpsDaemon]) -> None:
    config, port = crm_config(tmp_path)
    daemon = await start(tmp_path, config, port, daemons)
    payload = random.randbytes(4096)
    async with aiohttp.ClientSession() as http:
        first = await send(http, daemon.url, unique("c"), "with a file",
                           attachments=[attachment("invoice.pdf", payload)])
        before = [await send(http, daemon.url, unique("c"), f"n{i}") for i in range(20)]

        # Traffic goes on while the backup runs.
        stop = asyncio.Event()

        async def poster() -> None:
            while not stop.is_set():
                await send(http, daemon.url, unique("c"), "during")

        posting = asyncio.create_task(poster())
        target = tmp_path / "backups" / "omnirelay-backup.db"
        target.parent.mkdir()
        result = await omnirelay_async("backup", str(target), "--config",
                                       str(daemon.config_path))
        stop.set()
        await posting
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(f"backup written to {target}: ")
        assert "check ok" in result.stdout and "copy that directory too" in result.stdout

        # A second writer on a live store is refused, with the way to do it online.
        refused = await omnirelay_async("erase-customer", first["customer_id"], "--config",
                                        str(daemon.config_path))
        assert refused.returncode == 1
        assert f"in use by omnirelay pid {daemon.proc.pid}" in refused.stderr  # type: ignore[union-attr]
        assert f"DELETE /v1/customers/{first['customer_id']}" in refused.stderr
    assert await daemon.stop() == 0

    # A second daemon on the same store refuses to start (exit 75, EX_TEMPFAIL).
    twin_dir = tmp_path / "twin"
    twin_dir.mkdir()
    twin = OpsDaemon(twin_dir, config, port)
    daemons.append(twin)
    daemon = await start(tmp_path, config, port, daemons)
    twin.start()
    assert twin.proc is not None
    assert await asyncio.to_thread(twin.proc.wait, 30) == 75
    assert any(e["event"] == "daemon.start_failed" and "in use by omnirelay" in e["error"]
               for e in twin.lines())
    assert await daemon.stop() == 0

    # Restore: the backup file becomes the database of a fresh data dir, blobs copied.
    assert not Path(f"{target}-wal").exists()
    assert sqlite3.connect(target).execute("PRAGMA integrity_check").fetchone() == ("ok",)
    restored = tmp_path / "restored"
    restored.mkdir()
    shutil.copy(target, restored / "omnirelay.db")
    shutil.copytree(tmp_path / "data" / "blobs", restored / "blobs")
    config2, port2 = crm_config(tmp_path, data=restored)
    other = tmp_path / "other"
    other.mkdir()
    copy = await start(other, config2, port2, daemons)
    async with aiohttp.ClientSession() as http:
        events = await all_events(http, copy.url)
        ids = {e["data"]["message"]["id"] for e in events if e["type"] == "message.received"}
        assert {m["id"] for m in [first, *before]} <= ids
        [att] = first["attachments"]
        async with http.get(f"{copy.url}/v1/attachments/{att['id']}",
                            headers=bearer()) as resp:
            assert resp.status == 200 and await resp.read() == payload
        # The restored store takes new messages, continuing the feed.
        new = await send(http, copy.url, unique("c"), "after restore")
        status, message = await get_json(http, f"{copy.url}/v1/messages/{new['id']}")
        assert status == 200 and message["text"] == "after restore"
    assert await copy.stop() == 0


async def test_retention_purges_old_raw_payloads_and_attachment_bytes(
        tmp_path: Path, daemons: list[OpsDaemon]) -> None:
    data = tmp_path / "data"
    config, port = crm_config(tmp_path)
    daemon = await start(tmp_path, config, port, daemons)
    own_a, own_b, shared, fresh = (random.randbytes(2048) for _ in range(4))
    async with aiohttp.ClientSession() as http:
        old_cli = await send(http, daemon.url, unique("c"), "old 1",
                             attachments=[attachment("a.bin", own_a)])
        old_daemon = await send(http, daemon.url, unique("c"), "old 2",
                                attachments=[attachment("b.bin", own_b),
                                             attachment("s.bin", shared)])
        new = await send(http, daemon.url, unique("c"), "new",
                         attachments=[attachment("s.bin", shared),
                                      attachment("f.bin", fresh)])
    assert await daemon.stop() == 0

    def backdate(message_id: str) -> None:
        with sqlite3.connect(data / "omnirelay.db") as conn:
            for table in ("raw_payloads", "attachments"):
                conn.execute(f"UPDATE {table} SET created_at = ? WHERE message_id = ?",
                             (OLD, message_id))

    # Offline: `omnirelay purge DAYS`.
    backdate(old_cli["id"])
    result = await omnirelay_async("purge", "30", "--config", str(daemon.config_path))
    assert result.returncode == 0, result.stderr
    assert orjson.loads(result.stdout) == {"raw_payloads": 1, "attachments": 1}
    assert not blob(data, own_a).exists()

    # Online: [store] retention_days, applied from the start and then hourly.
    backdate(old_daemon["id"])
    config, port = crm_config(tmp_path, retention_days=30)
    daemon = await start(tmp_path, config, port, daemons)
    purged = await daemon.wait_log(lambda e: e["event"] == "retention.purged")
    assert (purged["raw_payloads"], purged["attachments"]) == (1, 2)
    async with aiohttp.ClientSession() as http:
        for old in (old_cli, old_daemon):
            status, _ = await get_json(http, f"{daemon.url}/v1/messages/{old['id']}/raw")
            assert status == 404
            status, message = await get_json(http, f"{daemon.url}/v1/messages/{old['id']}")
            assert status == 200 and message["text"].startswith("old")  # the message stays
            assert all(a.get("purged") for a in message["attachments"])
            for att in old["attachments"]:
                status, _ = await get_json(http, f"{daemon.url}/v1/attachments/{att['id']}")
                assert status == 404
        status, _ = await get_json(http, f"{daemon.url}/v1/messages/{new['id']}/raw")
        assert status == 200
        for att in new["attachments"]:
            async with http.get(f"{daemon.url}/v1/attachments/{att['id']}",
                                headers=bearer()) as resp:
                assert resp.status == 200
    assert not blob(data, own_b).exists()
    assert blob(data, shared).exists()  # a newer message still uses these bytes
    assert blob(data, fresh).exists()
    assert await daemon.stop() == 0


def person(tag: str) -> dict[str, Any]:
    """A customer with every kind of personal data the API channel carries."""
    digits = "".join(random.choices("0123456789", k=8))
    name = f"Erin {tag} {unique('n')}"
    return {"id": unique(f"crm-user-{tag}"), "name": name,
            "email": f"{unique(tag)}@Example.com", "phone": f"+82 10-{digits[:4]}-{digits[4:]}",
            "e164": f"+8210{digits}", "texts": [f"{tag} says {unique('t')}" for _ in range(2)],
            "file": f"{unique(tag)}-passport.jpg", "bytes": random.randbytes(3000)}


async def test_erasure_by_api_and_cli_leaves_nothing_of_the_customer(
        tmp_path: Path, daemons: list[OpsDaemon]) -> None:
    callback = Receiver()
    await callback.start()
    data = tmp_path / "data"
    config, port = crm_config(tmp_path, callback=f"{callback.url}/crm")
    daemon = await start(tmp_path, config, port, daemons)
    shared = random.randbytes(2500)
    by_api, by_cli, keeper = person("api"), person("cli"), person("keeper")
    customer_ids: dict[str, str] = {}
    try:
        async with aiohttp.ClientSession() as http:
            for who in (by_api, by_cli, keeper):
                sender = {"name": who["name"], "email": who["email"], "phone": who["phone"]}
                first = await send(http, daemon.url, who["id"], who["texts"][0],
                                   sender=sender, subject=f"about {who['name']}",
                                   attachments=[attachment(who["file"], who["bytes"]),
                                                attachment("logo.png", shared)])
                await send(http, daemon.url, who["id"], who["texts"][1], sender=sender)
                customer_ids[who["id"]] = first["customer_id"]
                # An agent's reply, with an idempotency key (its response is kept).
                reply = f"Dear {who['name']}, {unique('reply')}"
                who["texts"].append(reply)
                status, _ = await post_json(
                    http, f"{daemon.url}/v1/conversations/{first['conversation_id']}/messages",
                    {"text": reply}, headers={"Idempotency-Key": unique("idem")})
                assert status == 202
            await callback.wait_for(lambda reqs: len(reqs) >= 3)

            erased = customer_ids[by_api["id"]]
            async with http.delete(f"{daemon.url}/v1/customers/{erased}",
                                   headers=bearer(TOKEN)) as resp:
                assert resp.status == 200, await resp.text()
                result = await resp.json()
            assert (result["customer_id"], result["messages"]) == (erased, 3)
            status, _ = await get_json(http, f"{daemon.url}/v1/customers/{erased}")
            assert status == 404
            events = await all_events(http, daemon.url)
            assert [e["data"]["customer_id"] for e in events
                    if e["type"] == "customer.erased"] == [erased]
            feed = orjson.dumps(events).decode()  # the feed serves erased bodies too
            for value in (by_api["email"], by_api["name"], *by_api["texts"]):
                assert value not in feed, f"{value!r} still in the feed"
            assert keeper["texts"][0] in feed
            # Not even in the files' free pages or the WAL (secure_delete + checkpoint).
            raw = b"".join(p.read_bytes() for p in data.glob("omnirelay.db*"))
            raw += b"".join(compact.frames_in(raw))  # compressed values, decompressed
            assert keeper["texts"][0].encode() in raw  # the search finds what is there
            for value in (by_api["email"], by_api["phone"], *by_api["texts"]):
                assert value.encode() not in raw, f"{value!r} left in the database file"
    finally:
        assert await daemon.stop() == 0
        await callback.stop()

    result = await omnirelay_async("erase-customer", customer_ids[by_cli["id"]], "--config",
                                   str(daemon.config_path))
    assert result.returncode == 0, result.stderr
    assert orjson.loads(result.stdout)["messages"] == 3

    everything = table_text(data / "omnirelay.db")
    for who in (by_api, by_cli):
        for value in (who["id"], who["name"], who["email"], who["email"].lower(),
                      who["phone"], who["e164"], who["file"], *who["texts"]):
            assert value not in everything, f"{value!r} survived the erasure"
        assert not blob(data, who["bytes"]).exists()
    assert blob(data, shared).exists()  # the keeper's message still references it
    assert keeper["name"] in everything and blob(data, keeper["bytes"]).exists()
    with sqlite3.connect(data / "omnirelay.db") as conn:
        erased_events = [orjson.loads(compact.unpack(row[0])) for row in conn.execute(
            "SELECT body FROM events WHERE type = 'customer.erased' ORDER BY seq")]
    assert [e["data"]["customer_id"] for e in erased_events] == [
        customer_ids[by_api["id"]], customer_ids[by_cli["id"]]]

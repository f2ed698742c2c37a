"""A clean stop leaves the database file self-contained: an operator who copies only the
``.db`` (not the ``-wal`` beside it) has every acknowledged message."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
from pathlib import Path

import aiohttp

from tests.helpers import post_inbound, unique
from tests.ops.conftest import OpsDaemon, crm_config

MESSAGES = 3000


async def test_after_sigterm_the_database_file_alone_holds_every_message(
        tmp_path: Path) -> None:
    config, http_port = crm_config(tmp_path)
    daemon = OpsDaemon(tmp_path, config, http_port)
    daemon.start()
    try:
        await daemon.wait_ready()
        async with aiohttp.ClientSession() as http:
            for start in range(0, MESSAGES, 100):  # 100 at a time: many commits, a long WAL
                answers = await asyncio.gather(*(post_inbound(http, daemon.url, {
                    "message_id": unique("m"), "from": {"id": f"c{i % 50}"},
                    "text": "x" * 500}) for i in range(start, start + 100)))
                assert {status for status, _ in answers} == {201}
        assert await daemon.stop() == 0
    finally:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.proc.kill()
            daemon.proc.wait(10)
    copy = tmp_path / "copy" / "omnirelay.db"
    copy.parent.mkdir()
    shutil.copyfile(tmp_path / "data" / "omnirelay.db", copy)  # the file alone, no -wal
    conn = sqlite3.connect(copy)
    try:
        assert conn.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == MESSAGES
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()
    wal = tmp_path / "data" / "omnirelay.db-wal"
    assert not wal.exists() or wal.stat().st_size == 0

"""``omnirelay vacuum``: a database from before migration 0007 gives its free pages back
and vacuums incrementally from then on."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from tests.conftest import base_config, free_port
from tests.ops.conftest import omnirelay


def test_vacuum_shrinks_an_old_database_and_turns_incremental_vacuum_on(
        tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    db = data / "omnirelay.db"
    conn = sqlite3.connect(db, isolation_level=None)  # as before 0007: auto_vacuum NONE
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("CREATE TABLE old_payloads (body BLOB)")
    conn.executemany("INSERT INTO old_payloads VALUES (?)", [(b"x" * 3000,)] * 1000)
    conn.execute("DELETE FROM old_payloads")  # a purge: the pages stay in the file
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    before = db.stat().st_size
    config = tmp_path / "omnirelay.toml"
    config.write_text(base_config(data, free_port(), free_port()))

    result = omnirelay("vacuum", "--config", str(config))

    assert result.returncode == 0, result.stderr
    assert db.stat().st_size < before - 2_000_000
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental
    assert conn.execute("PRAGMA freelist_count").fetchone()[0] == 0
    conn.close()

"""The migration runner: numbered SQL scripts in ``gateway/store/migrations/``, each
applied once in its own transaction (at start and by ``omnirelay migrate``)."""

from __future__ import annotations

import sqlite3
from importlib import resources
from pathlib import Path

from gateway.ids import iso, utcnow


def migration_scripts() -> list[tuple[int, str]]:
    """Return (version, SQL) of every packaged migration, in order."""
    folder = resources.files("gateway.store") / "migrations"
    scripts = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            scripts.append((int(entry.name.split("_", 1)[0]), entry.read_text("utf-8")))
    return sorted(scripts)


def apply_migrations(conn: sqlite3.Connection) -> list[int]:
    """Apply pending migrations, each in its own transaction; return the versions applied."""
    # A new database reclaims freed pages on request (``PRAGMA incremental_vacuum`` after a
    # purge or an erasure); this must precede its first table and changes nothing later.
    conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
    conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations "
                 "(version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)")
    done = {r[0] for r in conn.execute("SELECT version FROM schema_migrations")}
    applied = []
    for version, sql in migration_scripts():
        if version in done:
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _split_sql(sql):
                conn.execute(statement)
            conn.execute("INSERT INTO schema_migrations VALUES (?, ?)", (version, iso(utcnow())))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        applied.append(version)
    return applied


def migrate_file(path: str | Path) -> list[int]:
    """Make or bring up to date the SQLite database at ``path`` as the daemon's store
    (WAL, freed pages reclaimable); the caller holds the store's lock. Return the versions
    applied."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA auto_vacuum = INCREMENTAL")  # a new database (see engine.py)
        conn.execute("PRAGMA journal_mode = WAL")
        return apply_migrations(conn)
    finally:
        conn.close()


def _split_sql(sql: str) -> list[str]:
    """The script's statements (a trigger's body holds semicolons of its own)."""
    statements: list[str] = []
    current = ""
    for line in sql.splitlines():
        if line.strip().startswith("--"):
            continue
        current += line + "\n"
        if sqlite3.complete_statement(current):
            statements.append(current.strip())
            current = ""
    if current.strip():
        statements.append(current.strip())
    return statements

